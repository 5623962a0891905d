"""LearnTracker on real TRL / transformers trainers."""

import copy
import dataclasses
import shutil
import warnings

import numpy as np
import pytest
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from hf_ilp import LearnTracker, LearnTrackerConfig, check_learned, load_records
from hf_ilp.tracking.learn_check import tokenize_rows
from hf_ilp.training import bind_trainer
from tests.tracking.conftest import make_rows, sft_args

FLOAT_COLUMNS = ("nll", "token_acc", "p_gold")


class _LogReader(TrainerCallback):
    """Stands for a report_to backend: registered before the tracker, reads logs at on_log."""

    def __init__(self):
        self.seen = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append(dict(logs))


def _assert_same_records(a, b, rtol=1e-5, atol=1e-7):
    assert a.column_names == b.column_names
    for col in a.column_names:
        x, y = a[col], b[col]
        if col in FLOAT_COLUMNS or col in ("obs_epoch",):
            for u, v in zip(x, y):
                np.testing.assert_allclose(u, v, rtol=rtol, atol=atol, err_msg=col)
        elif isinstance(x[0], float):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, equal_nan=True, err_msg=col)
        else:
            assert x == y, col


@pytest.mark.parametrize("trainer_kind", ["sft", "sft_full_loss", "plain"])
def test_training_pass_statistics_equal_learn_check(trainer_kind, half_trained, word_tokenizer, rows, tmp_path):
    """With the weights frozen (lr 0), what the hook reads from the training forwards must equal check_learned."""
    model = copy.deepcopy(half_trained)
    reader = _LogReader()
    # full loss: the trainer's labels cover the prompt too; given the rows, the records still score the completion
    tracker = LearnTracker(dataset=rows if trainer_kind == "sft_full_loss" else None, config=LearnTrackerConfig(every_n_steps=2))
    if trainer_kind.startswith("sft"):
        args = sft_args(tmp_path, learning_rate=0.0, num_train_epochs=1, completion_only_loss=trainer_kind == "sft")
        trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=word_tokenizer, callbacks=[reader])
    else:  # transformers.Trainer on tokenized rows: the hook reads the logits
        tok = tokenize_rows(rows, word_tokenizer)
        data = Dataset.from_dict({"input_ids": tok.ids,
                                  "labels": [[i if t else -100 for i, t in zip(ids, tg)] for ids, tg in zip(tok.ids, tok.targets)]})
        args = TrainingArguments(output_dir=str(tmp_path), learning_rate=0.0, num_train_epochs=1, per_device_train_batch_size=16,
                                 report_to="none", disable_tqdm=True, logging_steps=1, use_cpu=True)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorForLanguageModeling(pad_token_id=0),
                          callbacks=[reader])
    tracker.trainer = trainer  # TRL's convention: the callback is given its trainer, then added to it
    trainer.add_callback(tracker)
    trainer.train()
    records = load_records(tmp_path)
    assert len(records) == len(rows)
    verdict = check_learned(half_trained, word_tokenizer, rows, progress=False)
    by_hash = {h: k for k, h in enumerate(tokenize_rows(rows, word_tokenizer).hashes)}
    if trainer_kind != "plain":  # the `id` column is found even though the dataloader drops it
        assert sorted(records["id"]) == sorted(rows["id"])
    order = [by_hash[h] for h in records["row_hash"]]
    # 3 steps of 16 rows: rows of steps 1-2 are observed at step 2, those of step 3 at the epoch end
    assert sorted(tuple(k) for k in records["obs_kind"]) == [("epoch", "final")] * 16 + [("steps", "final")] * 32
    for r, k in zip(records, order):
        assert r["obs_step"] == ([3, 3] if r["obs_kind"][0] == "epoch" else [2, 3])
        for col in ("nll", "token_acc", "p_gold"):
            np.testing.assert_allclose(r[col], [verdict[k][col]] * 2, rtol=2e-4, atol=1e-6, err_msg=col)
        assert r["exact"] == [verdict[k]["exact"]] * 2
        assert r["final_exact"] == verdict[k]["exact"]
    assert 0 < sum(records["final_exact"]) < len(rows)
    # aggregates reached a callback registered before the tracker (where report_to backends sit)
    logged = [logs for logs in reader.seen if "ilp/learned" in logs]
    assert logged and logged[-1]["ilp/learned"] == pytest.approx(np.mean(verdict["exact"]))
    assert logged[-1]["ilp/learned"] + logged[-1]["ilp/forgotten"] + logged[-1]["ilp/never_learned"] == pytest.approx(1)


@pytest.mark.parametrize("given", [True, False])
def test_sequential_stages_observe_every_row(given, make_model, word_tokenizer, tmp_path):
    """One trainer per stage sharing the tracker (the train_stages protocol): with the full dataset
    given, every row at each stage end; without it, a stage's rows join when first trained."""
    data = make_rows(n_items=8, stages=True)
    model = make_model(hidden_size=48)
    tracker = LearnTracker(dataset=data if given else None)
    for stage in (0, 1):
        part = data.filter(lambda r: r["stage"] == stage)
        bind_trainer(SFTTrainer(model=model, args=sft_args(tmp_path / f"stage-{stage}", num_train_epochs=2,
                                                           per_device_train_batch_size=4),
                                train_dataset=part, processing_class=word_tokenizer, callbacks=[tracker])).train()
    records = load_records(tmp_path / "stage-1")
    assert records["id"] == data["id"] and records["stage"] == data["stage"]
    for r in records:
        if r["stage"] == 0:
            assert r["obs_kind"] == ["epoch", "epoch", "stage_end", "final"] and r["obs_stage"] == [0, 0, 0, 1]
            assert r["obs_step"] == [2, 4, 4, 8]
        elif given:
            assert r["obs_kind"] == ["stage_end", "epoch", "epoch", "final"] and r["obs_stage"] == [0, 1, 1, 1]
            assert r["obs_step"] == [4, 6, 8, 8]  # steps add up across stages
        else:
            assert r["obs_kind"] == ["epoch", "epoch", "final"] and r["obs_stage"] == [1, 1, 1]
            assert r["obs_step"] == [6, 8, 8]
        flips = sum(a and not b for a, b in zip(r["exact"], r["exact"][1:]))
        assert r["forgetting_events"] == flips
        assert r["learned_ever"] == any(r["exact"]) and r["final_exact"] == r["exact"][-1]
    final = check_learned(model, word_tokenizer, data, progress=False)
    assert records["final_exact"] == final["exact"]
    np.testing.assert_allclose(records["final_p_gold"], final["p_gold"], rtol=1e-6)


@pytest.mark.parametrize("extra_rows", [[0, 1, 8, 9], [0, 1, 2, 3]], ids=["both_stages", "stage_0_only"])
def test_fork_continues_the_history_after_the_stages(extra_rows, make_model, word_tokenizer, tmp_path):
    """Extra epochs after stage-by-stage runs, over rows of both stages or of the first stage only: a
    fork records them as the next stage after the earlier ones (never as the rows' own stage, which
    would hide that stage 1 came in between), writes to the new run's folder and leaves the original
    as it was."""
    data = make_rows(n_items=8, stages=True)
    model = make_model(hidden_size=48)
    tracker = LearnTracker(dataset=data, config=LearnTrackerConfig(records_dir=str(tmp_path / "records")))
    for stage in (0, 1):
        part = data.filter(lambda r: r["stage"] == stage)
        bind_trainer(SFTTrainer(model=model, args=sft_args(tmp_path / f"stage-{stage}", num_train_epochs=1,
                                                           per_device_train_batch_size=4),
                                train_dataset=part, processing_class=word_tokenizer, callbacks=[tracker])).train()
    before = tracker.records
    fork = tracker.fork()
    extra = data.select(extra_rows).rename_column("stage", "source_stage")
    assert fork.trainer is None  # the copy serves the next run's trainer, not the last stage's
    bind_trainer(SFTTrainer(model=model, args=sft_args(tmp_path / "extra", num_train_epochs=1, per_device_train_batch_size=4),
                            train_dataset=extra, processing_class=word_tokenizer, callbacks=[fork])).train()
    after = fork.records
    _assert_same_records(tracker.records, before)  # the original is untouched
    assert after["id"] == before["id"]
    for old, new in zip(before, after):
        assert new["obs_stage"][: len(old["obs_stage"])] == old["obs_stage"]
        assert new["obs_kind"][: len(old["obs_kind"]) - 1] == old["obs_kind"][:-1]  # the old final became a stage end
        assert new["obs_kind"][len(old["obs_kind"]) - 1] == "stage_end" and new["obs_kind"][-1] == "final"
        assert set(new["obs_stage"][len(old["obs_stage"]):]) == {2}  # the continuation is stage 2
        assert new["obs_step"][-1] == 2 + 2 + 1  # 8 rows a stage in 2 steps of 4, then 4 rows in 1 step
    assert load_records(tmp_path / "extra")["obs_stage"] == after["obs_stage"]  # written where the new run writes
    assert len(load_records(tmp_path / "records")["obs_kind"][0]) == len(before["obs_kind"][0])
    final = check_learned(model, word_tokenizer, data, progress=False)
    assert after["final_exact"] == final["exact"]


def test_a_mixed_run_without_earlier_stages_has_no_stage(make_model, word_tokenizer, tmp_path):
    data = make_rows(n_items=4, stages=True)
    tracker = LearnTracker(dataset=data)
    bind_trainer(SFTTrainer(model=make_model(), args=sft_args(tmp_path, num_train_epochs=1, per_device_train_batch_size=4),
                            train_dataset=data, processing_class=word_tokenizer, callbacks=[tracker])).train()
    assert {s for r in tracker.records["obs_stage"] for s in r} == {-1}


class _Crash(TrainerCallback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt("simulated interruption")


def _tracked(tracker, callbacks=(), **kwargs):
    """An SFTTrainer with `tracker`, added as TRL's callbacks are: given the trainer, then added to it."""
    trainer = SFTTrainer(callbacks=list(callbacks), **kwargs)
    trainer.add_callback(tracker)
    tracker.trainer = trainer
    return trainer


def test_resume_yields_the_uninterrupted_records(make_model, word_tokenizer, rows, tmp_path):
    config = LearnTrackerConfig(every_n_steps=2)
    kwargs = dict(num_train_epochs=3, save_strategy="steps", save_steps=4)  # 3 steps per epoch: save mid-epoch
    straight = tmp_path / "straight"
    _tracked(LearnTracker(dataset=rows, config=config), model=make_model(), args=sft_args(straight, **kwargs),
             train_dataset=rows, processing_class=word_tokenizer).train()
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _tracked(LearnTracker(dataset=rows, config=config), [_Crash(at_step=6)], model=make_model(),
                 args=sft_args(resumed, **kwargs), train_dataset=rows, processing_class=word_tokenizer).train()
    assert (resumed / "checkpoint-4" / "hf_ilp_records" / "meta.json").is_file()
    trainer = _tracked(LearnTracker(dataset=rows, config=config), model=make_model(seed=5), args=sft_args(resumed, **kwargs),
                       train_dataset=rows, processing_class=word_tokenizer)
    trainer.train(resume_from_checkpoint=str(resumed / "checkpoint-4"))
    a, b = load_records(straight), load_records(resumed)
    # one training-pass observation per epoch (at the 2-step mark or the epoch end), then the final check
    assert all(len(k) == 4 and k[-1] == "final" and set(k[:3]) <= {"steps", "epoch"} for k in a["obs_kind"])
    assert {k for kinds in a["obs_kind"] for k in kinds} == {"steps", "epoch", "final"}
    _assert_same_records(a, b)

    # a dataset changed between save and resume is refused, naming the rows
    changed = rows.map(lambda r: {"completion": r["completion"] + " val1"} if r["id"] == "item3-color" else {})
    with pytest.raises(ValueError, match=r"edited: item3-color\. "):
        _tracked(LearnTracker(dataset=changed, config=config), model=make_model(), args=sft_args(resumed, **kwargs),
                 train_dataset=changed, processing_class=word_tokenizer
                 ).train(resume_from_checkpoint=str(resumed / "checkpoint-4"))


def test_bad_setups_are_named(make_model, word_tokenizer, rows, tmp_path):
    with pytest.raises(ValueError, match="packing=False"):
        _tracked(LearnTracker(), model=make_model(), args=sft_args(tmp_path, packing=True, max_length=32), train_dataset=rows,
                 processing_class=word_tokenizer).train()
    dup_ids = rows.map(lambda r, k: {"id": "same" if k < 2 else r["id"]}, with_indices=True)
    with pytest.raises(ValueError, match="duplicates.*same"):
        _tracked(LearnTracker(dataset=dup_ids), model=make_model(), args=sft_args(tmp_path, max_steps=1), train_dataset=dup_ids,
                 processing_class=word_tokenizer).train()
    # identical rows share a record; a row truncated to no completion is not observed: both named
    long_prompt = {"id": "too-long", "prompt": "what is the color of " + " ".join(["item1"] * 40) + " ?", "completion": " val1"}
    twin = dict(rows[0], id="twin-of-item0")
    data = Dataset.from_list(list(rows.select(range(14))) + [twin, long_prompt])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tracked(LearnTracker(dataset=data), model=make_model(), args=sft_args(tmp_path, max_steps=1, max_length=20),
                 train_dataset=data, processing_class=word_tokenizer).train()
    text = " ".join(str(w.message) for w in caught)
    assert "twin-of-item0" in text and "item0-color" in text and "too-long" in text
    records = load_records(tmp_path)
    row = records[records["id"].index("too-long")]
    assert row["n_completion_tokens"] == 0 and row["obs_kind"] == [] and row["first_learned_step"] == -1


def test_a_tracker_serves_the_trainer_it_is_given(make_model, word_tokenizer, rows, tmp_path):
    """Given another trainer than the one training (a shared tracker not passed on), it says so; not
    given one, it still finds it (the deprecated call-stack lookup, with a FutureWarning) and
    records what the explicit form records, ids from the trainer's prepared set included."""
    tracker = LearnTracker()
    idle = SFTTrainer(model=make_model(), args=sft_args(tmp_path / "idle", max_steps=1), train_dataset=rows,
                      processing_class=word_tokenizer, callbacks=[tracker])
    training = SFTTrainer(model=make_model(), args=sft_args(tmp_path / "stale", max_steps=1), train_dataset=rows,
                          processing_class=word_tokenizer, callbacks=[tracker])
    tracker.trainer = idle
    with pytest.raises(ValueError, match=r"`tracker\.trainer` is not the trainer that is training"):
        training.train()

    explicit = LearnTracker()
    _tracked(explicit, model=make_model(), args=sft_args(tmp_path / "explicit", max_steps=2), train_dataset=rows,
             processing_class=word_tokenizer).train()
    with pytest.warns(FutureWarning, match=r"LearnTracker\(trainer=trainer\)"):
        SFTTrainer(model=make_model(), args=sft_args(tmp_path / "looked_up", max_steps=2), train_dataset=rows,
                   processing_class=word_tokenizer, callbacks=[LearnTracker()]).train()
    a, b = load_records(tmp_path / "explicit"), load_records(tmp_path / "looked_up")
    assert sorted(a["id"]) == sorted(rows["id"])
    _assert_same_records(a, b)


@pytest.mark.slow
def test_two_processes_record_what_one_process_records(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on CPU) with half the per-device batch."""
    import subprocess
    import sys
    from pathlib import Path

    script = str(Path(__file__).with_name("two_process_run.py"))
    for cmd in ([sys.executable, script, str(tmp_path / "one"), "16"],
                [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", script,
                 str(tmp_path / "two"), "8"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = load_records(tmp_path / "one"), load_records(tmp_path / "two")
    assert {k for kinds in one["obs_kind"] for k in kinds} == {"steps", "epoch", "final"}
    _assert_same_records(one, two, rtol=1e-4, atol=1e-6)


def test_train_stages_resumes_every_stage_from_its_last_checkpoint(make_model, word_tokenizer, tmp_path):
    """`resume_from_checkpoint=True` in the arguments: each stage continues from the last checkpoint
    in its own folder, and the tracker's records equal those of the uninterrupted run."""
    from hf_ilp.training import train_stages

    data = make_rows(n_items=8, stages=True)
    args = sft_args(tmp_path / "run", num_train_epochs=2, per_device_train_batch_size=4, save_strategy="steps",
                    save_steps=2)
    reference = LearnTracker(dataset=data)
    train_stages(make_model(hidden_size=48), word_tokenizer, data, args, callbacks=[reference])
    # as if stage 1 had stopped after its second step: its first checkpoint is the last one
    shutil.rmtree(tmp_path / "run" / "stage-1" / "checkpoint-4")
    resumed = LearnTracker(dataset=data)

    class _Steps(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.steps.append(0)

        def on_step_end(self, args, state, control, **kwargs):
            self.steps[-1] += 1

    steps = _Steps()
    args = dataclasses.replace(args, resume_from_checkpoint="true")
    trainer = train_stages(make_model(hidden_size=48), word_tokenizer, data, args, callbacks=[resumed, steps])
    assert steps.steps == [0, 2] and trainer.state.global_step == 4  # stage 0 was done; stage 1 ran steps 3-4
    _assert_same_records(resumed.records, reference.records)
    with pytest.raises(ValueError, match="each stage has its own checkpoints"):
        train_stages(make_model(), word_tokenizer, data, dataclasses.replace(args, resume_from_checkpoint="x"))
