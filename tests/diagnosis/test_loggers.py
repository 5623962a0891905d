"""The records and the diagnosis in the report_to loggers, read back from what each backend wrote.

One real tiny SFT run (LearnTracker attached) reports to TensorBoard, and to W&B (offline),
Trackio (local) and MLflow (a folder) when they are installed; it is diagnosed and `log_report`
sends the diagnosis. Comet is stood for by a recorder behind transformers' own CometCallback.
"""

import copy
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from trl import SFTTrainer

from hf_ilp import LearnTracker, LearnTrackerConfig
from hf_ilp.diagnosis import DiagnoserConfig, DiagnosisReport, diagnose, log_records, log_report
from hf_ilp.diagnosis.loggers import TEXT_COLUMNS
from hf_ilp.world.tokenizer import build_word_tokenizer
from tests.tracking.conftest import ITEMS, RELATIONS, VALUES, make_rows, sft_args, tiny_model

MAX_ROWS = 3  # the diagnosis table's cap
EPOCHS = 12  # some rows learned, some not
RECORD_ROWS = 5  # the tracker's log_samples
pytest.importorskip("tensorboard")
OPTIONAL = [name for name in ("wandb", "trackio", "mlflow") if importlib.util.find_spec(name) is not None]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train, diagnose and log once; every test reads what the backends wrote."""
    tmp = tmp_path_factory.mktemp("loggers")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            env.setenv(var, str(tmp))
        env.setenv("WANDB_SILENT", "true")
        env.setenv("TRACKIO_DIR", str(tmp / "trackio"))  # read when trackio is first imported
        env.setenv("MLFLOW_TRACKING_URI", (tmp / "mlruns").as_uri())
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow-skinny has no database backend
        env.setenv("MLFLOW_EXPERIMENT_NAME", "ilp-tests")
        tokenizer = build_word_tokenizer(["what", "is", "the", "of", "?"] + ITEMS + RELATIONS + VALUES)
        rows = make_rows()
        model = tiny_model(tokenizer, seed=0)
        base = copy.deepcopy(model)
        tracker = LearnTracker(config=LearnTrackerConfig(log_samples=RECORD_ROWS))
        args = sft_args(tmp / "out", num_train_epochs=EPOCHS, per_device_train_batch_size=8,
                        report_to=["tensorboard", *OPTIONAL], run_name="ilp-loggers", project="ilp-tests")
        trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
        tracker.trainer = trainer
        trainer.add_callback(tracker)
        trainer.train()  # the tracker sends the records at its end
        report = diagnose(trainer.model, base, tokenizer, rows, tracker.records,
                          config=DiagnoserConfig(encoder="lexical", progress=False))
        sent = log_report(report, trainer, max_rows=MAX_ROWS)
        sent_secrets = log_report(_report_with_secrets(), trainer, max_rows=10, prefix="secrets")
        comet = _recording_comet_callback()
        trainer.callback_handler.callbacks.append(comet)
        sent_comet = log_report(report, trainer, max_rows=MAX_ROWS, prefix="comet")
        trainer.callback_handler.callbacks.remove(comet)
        sent_zero = log_records(tmp / "out", trainer, max_rows=0, prefix="zero")  # records read from their folder
        if "wandb" in OPTIONAL:
            import wandb

            wandb.finish()
    return {"tmp": tmp, "trainer": trainer, "tracker": tracker, "report": report, "sent": sent,
            "sent_secrets": sent_secrets, "comet": comet, "sent_comet": sent_comet, "sent_zero": sent_zero}


def _report_with_secrets():
    row = {"learned": False, "cause": "under_training", "confidence": 0.9, "runner_up": "forgetting",
           "runner_up_confidence": 0.1}
    return DiagnosisReport.from_rows(
        [{**row, "id": "a", "prompt": f"see {Path.home()}/notes", "completion": " fine"},
         {**row, "id": "b", "prompt": "hf_" + "x" * 30, "completion": " also fine"}],
        notes=[f"records read from {Path.cwd()}/out", "a plain note"],
    )


def _events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (logdir,) = {p.parent for p in (run["tmp"] / "out").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0, "images": 0, "scalars": 0})
    acc.Reload()
    return acc


def _text(acc, tag) -> str:
    return acc.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def _first_column(markdown: str) -> list:
    return [line.split(" | ")[0].removeprefix("| ") for line in markdown.splitlines()[2:]]


def _top_unlearned(report, n) -> list:
    rows = sorted((r for r in report.samples if not r["learned"]), key=lambda r: -r["confidence"])
    return [r["id"] for r in rows[:n]]


def test_tensorboard_holds_the_diagnosis_and_the_records(run):
    report, trainer, records = run["report"], run["trainer"], run["tracker"].records
    assert report.summary["n_unlearned"] > MAX_ROWS  # the cap is exercised
    step = trainer.state.global_step
    acc = _events(run)
    for cause, count in report.counts.items():
        (event,) = acc.Scalars(f"train/ilp/diagnosis/{cause}")
        assert event.value == count and event.step == step
    assert acc.Scalars("train/ilp/diagnosis/n_unlearned")[-1].value == report.summary["n_unlearned"]
    assert acc.Scalars("train/ilp/diagnosis/learned_share")[-1].value == pytest.approx(report.summary["learned_share"])
    table = _text(acc, "ilp/diagnosis/unlearned")
    texts = [c for c in TEXT_COLUMNS if c in report.samples.column_names]
    assert table.splitlines()[0] == "| " + " | ".join(["id", "cause", "confidence", "runner_up", *texts]) + " |"
    assert _first_column(table) == _top_unlearned(report, MAX_ROWS)
    assert {"ilp/diagnosis/cartography", "ilp/diagnosis/causes", "ilp/records/cartography"} <= set(acc.Tags()["images"])
    assert acc.Images("ilp/diagnosis/causes")[-1].width > 100
    # the records at the end of training, before any diagnosis
    final, ever = np.array(records["final_exact"]), np.array(records["learned_ever"])
    assert 0 < final.sum() < len(records)
    assert acc.Scalars("train/ilp/records/n_learned")[-1].value == final.sum()
    assert acc.Scalars("train/ilp/records/n_forgotten")[-1].value == (ever & ~final).sum()
    assert acc.Scalars("train/ilp/records/n_never_learned")[-1].value == (~ever).sum()
    assert acc.Scalars("train/ilp/records/n_observed")[-1].value == len(records)
    unlearned = sorted((r for r in records if not r["final_exact"]), key=lambda r: r["final_p_gold"])
    assert _first_column(_text(acc, "ilp/records/unlearned")) == [r["id"] for r in unlearned[:RECORD_ROWS]]
    assert run["sent"]["backends"]["tensorboard"] == ["table", "notes", "cartography", "causes"]
    assert "ilp/diagnosis/forgetting" in run["sent"]["scalars"] and run["sent"]["step"] == step


def test_secrets_and_local_paths_are_redacted(run):
    """A text holding a path of this machine or a Hub token goes out as <redacted>; the rest as is."""
    assert run["sent_secrets"]["backends"]["tensorboard"] == ["table", "notes", "causes"]  # no cartography columns
    acc = _events(run)
    table, notes = _text(acc, "secrets/diagnosis/unlearned"), _text(acc, "secrets/diagnosis/notes")
    assert str(Path.home()) not in table + notes and "hf_xxx" not in table
    assert table.count("<redacted>") == 2 and " fine " in table and "a plain note" in notes and "<redacted>" in notes


def test_no_table_with_max_rows_0_and_nothing_without_report_to(run):
    assert run["sent_zero"]["backends"]["tensorboard"] == ["cartography"]
    assert "zero/records/unlearned/text_summary" not in _events(run).Tags()["tensors"]
    quiet = SimpleNamespace(args=SimpleNamespace(report_to=[]), state=SimpleNamespace(is_world_process_zero=True))
    assert log_report(run["report"], quiet) == {} and log_records(run["tracker"].records, quiet) == {}


@pytest.mark.skipif("wandb" not in OPTIONAL, reason="wandb is not installed")
def test_wandb_offline_run_holds_the_tables_and_images(run):
    (media,) = (run["tmp"] / "wandb").glob("offline-run-*/files/media")
    tables = {str(p.parent.relative_to(media / "table")): p for p in (media / "table").rglob("unlearned_*.table.json")}
    assert {"ilp/records", "ilp/diagnosis", "secrets/diagnosis"} <= set(tables)
    diagnosis = json.loads(tables["ilp/diagnosis"].read_text())
    assert diagnosis["columns"][:4] == ["id", "cause", "confidence", "runner_up"]
    assert [r[0] for r in diagnosis["data"]] == _top_unlearned(run["report"], MAX_ROWS)
    assert "<redacted>" in tables["secrets/diagnosis"].read_text()
    images = {str(p.relative_to(media / "images")).split("_")[0] for p in (media / "images").rglob("*.png")}
    assert {"ilp/diagnosis/cartography", "ilp/diagnosis/causes", "ilp/records/cartography"} <= images
    assert run["sent"]["backends"]["wandb"] == ["table", "cartography", "causes"]


@pytest.mark.skipif("trackio" not in OPTIONAL, reason="trackio is not installed")
def test_trackio_local_run_holds_the_tables_and_images(run):
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs(project="ilp-tests", run="ilp-loggers")
    logged = {k: v for entry in logs for k, v in entry.items()}
    assert logged["ilp/diagnosis/unlearned"]["_type"] == "trackio.table"
    assert logged["ilp/records/unlearned"]["_type"] == "trackio.table"
    for key in ("ilp/diagnosis/cartography", "ilp/diagnosis/causes", "ilp/records/cartography"):
        assert logged[key]["_type"] == "trackio.image"
    assert logged["train/ilp/diagnosis/forgetting"] == run["report"].counts["forgetting"]
    assert run["sent"]["backends"]["trackio"] == ["table", "notes", "cartography", "causes"]


@pytest.mark.skipif("mlflow" not in OPTIONAL, reason="mlflow is not installed")
def test_mlflow_run_ended_by_training_is_resumed_for_the_diagnosis(run):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(run["tmp"] / "mlruns").as_uri())
    (only,) = client.search_runs([client.get_experiment_by_name("ilp-tests").experiment_id])
    assert only.info.status == "FINISHED"  # one run: the diagnosis went into the run training ended
    assert only.data.metrics["ilp/diagnosis/forgetting"] == run["report"].counts["forgetting"]
    assert only.data.metrics["ilp/records/n_observed"] == len(run["tracker"].records)
    step = run["trainer"].state.global_step
    run_id = only.info.run_id
    files = {a.path for folder in ("ilp/diagnosis", "ilp/records") for a in client.list_artifacts(run_id, folder)}
    assert {"ilp/diagnosis/unlearned.json", "ilp/diagnosis/notes.txt", f"ilp/diagnosis/cartography-step{step}.png",
            f"ilp/diagnosis/causes-step{step}.png", "ilp/records/unlearned.json",
            f"ilp/records/cartography-step{step}.png"} <= files


class _Recorder:
    """Stands for a Comet experiment: records every call made on it."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def _recording_comet_callback():
    """transformers' CometCallback around a `_Recorder` (comet_ml itself is not needed)."""
    from transformers.integrations import CometCallback

    comet = CometCallback.__new__(CometCallback)
    comet._initialized, comet._log_assets, comet._experiment = True, False, _Recorder()
    return comet


def test_comet_gets_a_table_the_notes_and_the_figures(run):
    assert run["sent_comet"]["backends"]["comet_ml"] == ["table", "notes", "cartography", "causes"]
    calls = {name: (args, kwargs) for name, args, kwargs in run["comet"]._experiment.calls}
    args, kwargs = calls["log_table"]
    assert args == ("comet_diagnosis_unlearned.csv",) and kwargs["headers"][:2] == ["id", "cause"]
    assert [r[0] for r in kwargs["tabular_data"]] == _top_unlearned(run["report"], MAX_ROWS)
    assert calls["log_image"][0][0].ndim == 3 and calls["log_image"][1]["name"] == "comet_diagnosis_causes"
    assert "__internal_api__log_metrics__" in calls  # the scalars, through CometCallback.on_log
