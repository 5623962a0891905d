"""Push a run folder to the loopback Hub with the real huggingface_hub client, load it back."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from hub_server import point_client_at, start_hub_server
from hf_ilp.diagnosis.report import SCHEMA_VERSION


def _run_folder(tmp_path, report, name="run"):
    """A run's output folder as a recipe leaves it: a saved model, tokenizer files, checkpoints."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path / name
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
    LlamaForCausalLM(cfg).save_pretrained(out)
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (out / "training_args.bin").write_bytes(str(out).encode())  # holds local paths: must stay local
    return out


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_then_load_report_round_trip(hub, make_report, tmp_path):
    from huggingface_hub import HfApi, ModelCard

    import hf_ilp
    from hf_ilp.diagnosis.report import CAUSES, UNEXPLAINED

    report = make_report(settings={"exact_threshold": 1.0, "encoder": str(Path.home() / "models" / "minilm"), "hub_token": "hf_" + "x" * 30})
    out = _run_folder(tmp_path, report)
    hf_ilp.prepare_push(out, report, hub_model_id="alice/tiny-sft", trained_on="ilp-world-tiny")
    result = hf_ilp.push_run(out, token="hf_" + "s" * 34)
    assert result.model_repo_id == "alice/tiny-sft" and result.dataset_repo_id == "alice/tiny-sft-ilp-diagnosis"

    api = HfApi(endpoint=hub.endpoint)
    files = set(api.list_repo_files("alice/tiny-sft"))
    assert {"README.md", "config.json", "model.safetensors", "hf_ilp_report/summary.json", "hf_ilp_report/plots/counts.png",
            "hf_ilp_report/report.html"} <= files
    assert not any(f.startswith(("checkpoint-", "hf_ilp_records")) for f in files)
    assert "training_args.bin" not in files and "hf_ilp_report/samples.parquet" not in files
    assert set(api.list_repo_files("alice/tiny-sft-ilp-diagnosis", repo_type="dataset")) == {
        "README.md", "data/train-00000-of-00001.parquet", "report.html"}
    page = Path(api.hf_hub_download("alice/tiny-sft-ilp-diagnosis", "report.html", repo_type="dataset")).read_text()
    assert "What is the value of u50?" in page and "other-u50" in page  # the samples' text and what the model says

    loaded = hf_ilp.load_report("alice/tiny-sft", samples=True)
    assert loaded.counts == report.counts
    assert loaded.summary["n_samples"] == report.summary["n_samples"] == len(loaded.samples)
    assert loaded.summary["learned_share"] == pytest.approx(report.summary["learned_share"])
    assert loaded.summary["diagnosis_dataset"] == "alice/tiny-sft-ilp-diagnosis"
    assert loaded.summary["diagnosis_dataset_revision"] == result.dataset_commit
    assert sorted(loaded.samples["id"]) == sorted(report.samples["id"])
    assert loaded.by_cause("forgetting").num_rows == report.counts["forgetting"] == 4

    summary_only = hf_ilp.load_report("alice/tiny-sft")
    assert summary_only.samples is None and summary_only.counts == report.counts
    from_dataset = hf_ilp.load_report("alice/tiny-sft-ilp-diagnosis", repo_type="dataset", samples=True)
    assert from_dataset.counts == report.counts and len(from_dataset.samples) == len(report)

    card = ModelCard.load("alice/tiny-sft")
    meta = card.data.to_dict()
    assert meta["hf_ilp"]["counts"] == {c: report.counts[c] for c in CAUSES + (UNEXPLAINED,)}
    assert meta["hf_ilp"]["settings"]["encoder"] == "minilm"  # a local path is reduced to its name
    assert "hub_token" not in meta["hf_ilp"]["settings"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["hf_ilp/learned_share"] == pytest.approx(report.summary["learned_share"], abs=1e-6)
    assert results["hf_ilp/data_inconsistency"] == report.counts["data_inconsistency"]
    assert "![counts](hf_ilp_report/plots/counts.png)" in card.text

    # nothing of this machine went out: not the token, not a path, in any text file of both repos
    for repo, kind in (("alice/tiny-sft", "model"), ("alice/tiny-sft-ilp-diagnosis", "dataset")):
        for f in api.list_repo_files(repo, repo_type=kind):
            data = Path(api.hf_hub_download(repo, f, repo_type=kind)).read_bytes()
            for secret in ("hf_sss", "hf_xxx", str(tmp_path), str(Path.home()) + "/"):
                assert secret.encode() not in data, (repo, f, secret)
    rows = from_dataset.samples.to_pandas().astype(str).to_string()
    assert str(tmp_path) not in rows and "hf_s" not in rows

    # the CLI writes the page of a Hub repo from its card and diagnosis dataset
    from hf_ilp.cli import main

    assert main(["report", "alice/tiny-sft", "--html", str(tmp_path / "hub.html")]) == 0
    from_hub = (tmp_path / "hub.html").read_text()
    assert "What is the value of u50?" in from_hub and "other-u50" in from_hub

    # the local folder is complete and loads the same report
    local = hf_ilp.load_report(out, samples=True)
    assert local.counts == report.counts and len(local.samples) == len(report)
    assert Path(local.plots["counts"]).is_file()


def test_push_is_idempotent_and_cli_report(hub, make_report, tmp_path, capsys):
    import hf_ilp
    from hf_ilp.cli import main

    report = make_report()
    out = _run_folder(tmp_path, report)
    hf_ilp.prepare_push(out, report, hub_model_id="bob/again")
    first = hf_ilp.push_run(out)
    assert main(["push", str(out)]) == 0  # pushing the same folder again is harmless
    assert main(["report", "bob/again", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert printed["counts"] == report.counts and printed["schema_version"] == SCHEMA_VERSION
    assert main(["report", "bob/again", "--samples"]) == 0
    text = capsys.readouterr().out
    assert "knowledge_conflict" in text and "unlearned samples" in text
    assert first.attempts == 4  # one attempt per step: nothing was retried


@pytest.fixture
def killable_hub(hub_env, tmp_path):
    """Start servers that share storage and a port, for tests that kill one mid-push."""
    servers = []

    def start(port=0, exit_on=None):
        server = start_hub_server(tmp_path / "storage", port=port, exit_on=exit_on)
        servers.append(server)
        return server

    yield start
    for s in servers:
        if s.alive:
            s.kill()


def test_server_killed_mid_push_is_retried_with_backoff(killable_hub, make_report, tmp_path):
    """The server dies while the model commit is on the wire; it comes back; the retry finishes."""
    import hf_ilp

    report = make_report()
    out = _run_folder(tmp_path, report)
    hf_ilp.prepare_push(out, report, hub_model_id="carol/flaky")
    dying = killable_hub(exit_on=r"^POST /api/models/carol/flaky/commit/")
    endpoint = dying.endpoint

    def restart_when_dead():
        deadline = time.monotonic() + 30
        while dying.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        killable_hub(port=dying.port)

    watcher = threading.Thread(target=restart_when_dead)
    watcher.start()
    start = time.monotonic()
    result = hf_ilp.push_run(out, endpoint=endpoint, backoff=0.5, max_attempts=6)
    watcher.join()
    assert dying.process.returncode == 17  # it really died mid-request
    assert result.attempts > 4  # some step needed more than one attempt
    assert time.monotonic() - start >= 0.5  # and it waited before retrying
    loaded = hf_ilp.load_report("carol/flaky", samples=True, endpoint=endpoint)
    assert loaded.counts == report.counts and len(loaded.samples) == len(report)


def test_push_that_keeps_failing_leaves_the_folder_intact_and_says_how_to_resume(killable_hub, make_report, tmp_path, monkeypatch):
    import hf_ilp
    from hf_ilp.cli import main

    report = make_report()
    out = _run_folder(tmp_path, report)
    hf_ilp.prepare_push(out, report, hub_model_id="dave/offline")
    before = _digest(out)
    dying = killable_hub(exit_on=r"^POST /api/models/dave/offline/commit/")
    with pytest.raises(hf_ilp.HubPushError) as err:
        hf_ilp.push_run(out, endpoint=dying.endpoint, backoff=0.05, max_attempts=3)
    message = str(err.value)
    assert f"hf-ilp push {out}" in message and "complete" in message and "after 3 attempts" in message
    after = _digest(out)
    assert set(after) == set(before)
    changed = [f for f in before if before[f] != after[f]]
    assert changed == ["README.md"]  # only the card, which now names the dataset's commit
    assert hf_ilp.load_report(out, samples=True).counts == report.counts

    # later, with the Hub back: `hf-ilp push DIR` finishes the job
    back = killable_hub(port=dying.port)
    point_client_at(monkeypatch, back.endpoint)
    assert main(["push", str(out)]) == 0
    assert hf_ilp.load_report("dave/offline", samples=True, endpoint=back.endpoint).counts == report.counts


def test_recipe_flow_trains_offline_then_publishes(hub, make_report, tmp_path):
    """take_hub_settings before training (no network, no token in training_args.bin), publish_run after."""
    from datasets import Dataset
    from huggingface_hub import HfApi, ModelCard
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    import hf_ilp
    from hf_ilp.hub import publish_run, take_hub_settings
    from hf_ilp.world.tokenizer import build_word_tokenizer

    token = "hf_" + "t" * 34
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=2, bf16=False, gradient_checkpointing=False, report_to="none",
                     save_strategy="steps", save_steps=1, push_to_hub=True, hub_model_id="erin/recipe", hub_token=token)
    hub_settings = take_hub_settings(args)
    assert args.push_to_hub is False and args.hub_token is None and hub_settings.token == token
    tok = build_word_tokenizer(["a", "b", "c"])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    data = Dataset.from_list([{"prompt": "a b", "completion": " c"}] * 4)
    trainer = SFTTrainer(model=LlamaForCausalLM(cfg), args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    final = tmp_path / "run" / "final_model"  # the model saved apart from the stage outputs, as recipes do
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    assert token.encode() not in (final / "training_args.bin").read_bytes()

    result = publish_run(trainer, make_report(), hub_settings, trained_on="toy", folder=final)
    assert not (tmp_path / "run" / "README.md").exists() and (final / "README.md").is_file()
    assert result.model_repo_id == "erin/recipe"
    api = HfApi(endpoint=hub.endpoint)
    files = set(api.list_repo_files("erin/recipe"))
    assert {"model.safetensors", "tokenizer.json", "README.md"} <= files and not any(f.startswith("checkpoint-") for f in files)
    card = ModelCard.load(api.hf_hub_download("erin/recipe", "README.md"))
    assert 'model="erin/recipe"' in card.text and "sft" in card.data.tags and "hf_ilp" in card.data.tags
    assert hf_ilp.load_report("erin/recipe", samples=True).counts == make_report().counts

    with pytest.raises(ValueError, match="hub_model_id"):
        take_hub_settings(SFTConfig(output_dir=str(tmp_path / "x"), push_to_hub=True, report_to="none", bf16=False, gradient_checkpointing=False))


def test_trainer_push_to_hub_with_the_card_mixin(hub, make_report, tmp_path):
    """Trainer.push_to_hub: on_push_begin -> save -> create_model_card -> upload; the mixin's card survives."""
    from datasets import Dataset
    from huggingface_hub import ModelCard
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    import hf_ilp
    from hf_ilp.world.tokenizer import build_word_tokenizer

    class DiagnosedSFTTrainer(hf_ilp.DiagnosisCardMixin, SFTTrainer):
        pass

    tok = build_word_tokenizer(["a", "b", "c"])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=1, bf16=False, gradient_checkpointing=False, report_to="none",
                     save_strategy="no", push_to_hub=True, hub_model_id="frank/mixin")
    data = Dataset.from_list([{"prompt": "a b", "completion": " c"}] * 2)
    trainer = DiagnosedSFTTrainer(model=LlamaForCausalLM(cfg), args=args, train_dataset=data, processing_class=tok)
    trainer.hf_ilp_report = make_report()
    trainer.push_to_hub()
    card = ModelCard.load("frank/mixin")
    assert card.data.to_dict()["hf_ilp"]["counts"] == trainer.hf_ilp_report.counts
    assert "## Incomplete learning diagnosis" in card.text and "sft" in card.data.tags
    assert hf_ilp.load_report("frank/mixin").counts == trainer.hf_ilp_report.counts


def test_a_run_made_without_hub_settings_is_pushed_later_by_cli(hub, make_report, tmp_path):
    """A run without --hub_model_id leaves a local card; `hf-ilp push DIR --hub_model_id ...` publishes it."""
    import hf_ilp
    from hf_ilp.cli import main
    from hf_ilp.hub import amend_model_card
    from hf_ilp.hub.cards import REPORT_DIRNAME, publishable

    report = make_report()
    out = _run_folder(tmp_path, report)
    publishable(report).save(out / REPORT_DIRNAME)
    amend_model_card(out, report)
    assert hf_ilp.load_report(out).counts == report.counts  # readable locally as it is
    with pytest.raises(FileNotFoundError, match="--hub_model_id"):
        hf_ilp.push_run(out)
    assert main(["push", str(out)]) == 2  # the CLI says the same, without a traceback
    assert main(["push", str(out), "--hub_model_id", "henry/later"]) == 0
    loaded = hf_ilp.load_report("henry/later", samples=True)
    assert loaded.counts == report.counts and loaded.summary["diagnosis_dataset"] == "henry/later-ilp-diagnosis"


@pytest.mark.parametrize("repo_id", ["gpt2", "a/b/c", "user/na--me", "user/name.", "../x", "user/with space", None])
def test_bad_repo_ids_are_refused_before_anything_is_written(make_report, tmp_path, repo_id):
    from hf_ilp.hub.push import prepare_push

    out = tmp_path / "run"
    with pytest.raises(ValueError, match="hub_model_id must look like 'user/name'"):
        prepare_push(out, make_report(), hub_model_id=repo_id)
    with pytest.raises(ValueError, match="dataset_repo_id must look like 'user/name'"):
        prepare_push(out, make_report(), hub_model_id="user/model", dataset_repo_id=repo_id or "a/b/c")
    assert not out.exists()
