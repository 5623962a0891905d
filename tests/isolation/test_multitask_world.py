"""The multi-task world: deterministic data, clean splits, a working base, and real interference."""

import pytest
from transformers import TrainerCallback

from hf_ilp import check_learned
from hf_ilp.training import train_stages
from hf_ilp.world.multitask import _rows_and_corpus, build_multitask_world


def test_rows_are_deterministic_by_seed_and_splits_disjoint():
    a, corpus_a, tasks, _ = _rows_and_corpus("small", 3)
    b, corpus_b, _, _ = _rows_and_corpus("small", 3)
    c, _, _, _ = _rows_and_corpus("small", 4)
    assert a == b and corpus_a == corpus_b and a != c
    assert tasks == ["copy", "reverse", "shift", "swap"]
    inputs = {split: {r["prompt"].split(" ", 1)[1] for r in rows} for split, rows in a.items()}
    assert not inputs["train"] & inputs["validation"]
    row = next(r for r in a["train"] if r["task"] == "reverse")
    xs = row["prompt"].split()[1:-1]
    assert row["completion"] == " " + " ".join(reversed(xs))
    assert not any(set(text.split()) & set(tasks) for text in corpus_a)  # no task word in pre-training


def test_world_contents(mt_world):
    assert mt_world.tasks == ["copy", "reverse", "shift"]
    assert set(mt_world.train.column_names) >= {"id", "prompt", "completion", "task", "stage"}
    assert len(mt_world.train) == 3 * 96 and len(mt_world.validation) == 3 * 32
    again = build_multitask_world("tiny", seed=0, cache_dir=mt_world.path.parent)  # from the cache
    assert again.train["id"] == mt_world.train["id"]
    with pytest.raises(ValueError, match="size"):
        build_multitask_world("huge")
    with pytest.raises(ValueError, match="split"):
        mt_world.evaluate(mt_world.load_base_model(), split="test")


def test_sequential_training_shows_interference(mt_world, tmp_path):
    """The seesaw: learning 'reverse' after 'copy' destroys 'copy' (same input format, other mapping).

    Asserted with wide margins (seen on seeds 0-5 with 16 epochs a stage): copy is learned alone
    (0.97-1.0 exact on 32 held-out rows, bound 0.8) and collapses once reverse is trained (to 0.06 or less;
    the bound, a drop of 0.5, needs 15 rows to move). Reverse's exact match is not asserted: after
    the same budget it ranges from 0.59 to 1.0 across seeds and machines. That stage 1 did learn it
    is read from its mean completion NLL, which falls 14x or more (bound: 4x)."""
    after_stage = []
    reverse = mt_world.validation.filter(lambda t: t == "reverse", input_columns="task")

    class _Eval(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            nll = check_learned(model, mt_world.tokenizer, reverse, progress=False)["nll"]
            after_stage.append({**mt_world.evaluate(model), "reverse_nll": sum(nll) / len(nll)})

    two_tasks = mt_world.train.filter(lambda r: r["task"] in ("copy", "reverse"))
    args = mt_world.sft_config(tmp_path / "seq", num_train_epochs=16, logging_steps=1000)
    train_stages(mt_world.load_base_model(), mt_world.tokenizer, two_tasks, args, callbacks=[_Eval()])
    assert after_stage[0]["copy"] >= 0.8, after_stage  # learned in its own stage
    assert after_stage[1]["copy"] <= after_stage[0]["copy"] - 0.5, after_stage  # then mostly forgotten
    assert after_stage[1]["reverse_nll"] <= after_stage[0]["reverse_nll"] / 4, after_stage  # while reverse was learned
