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
    again = build_multitask_world("tiny", seed=0, cache_dir=mt_world.path.parent, version=1)  # from the cache
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


def test_version_2_rows_follow_each_skill_and_splits_are_disjoint():
    from hf_ilp.world.multitask import _rows_and_corpus_v2

    rows, corpus, tasks, vocab = _rows_and_corpus_v2("small", 5)
    again, corpus_again, _, _ = _rows_and_corpus_v2("small", 5)
    assert (rows, corpus) == (again, corpus_again) and rows != _rows_and_corpus_v2("small", 6)[0]
    assert tasks == ["partner", "reverse", "add", "format"]
    assert not {r["prompt"] for r in rows["train"]} & {r["prompt"] for r in rows["validation"]}
    partner = {}
    for row in rows["train"] + rows["validation"]:
        words, out = row["prompt"].split(), row["completion"].split()
        assert words[0] == row["task"] and words[-1] == "=" and row["stage"] == tasks.index(row["task"])
        xs = words[1:-1]
        if row["task"] == "reverse":
            assert out == xs[::-1]
        elif row["task"] == "format":
            assert out == ["(", xs[0], ",", xs[1], ",", xs[2], ")"]
        elif row["task"] == "add":
            k, digits = int(xs[0]), xs[2:]
            assert xs[1] == ":" and out == [str((int(d) + k) % 10) for d in digits]
        else:  # one fixed relation: every symbol always has the same partner, never itself
            for x, y in zip(xs, out):
                assert partner.setdefault(x, y) == y and x != y
    assert len(set(partner.values())) == len(partner)  # a permutation of the symbols
    assert set(vocab) >= set(partner)
    assert not any(set(text.split()) & set(tasks) for text in corpus)  # no task word in pre-training
    assert not any(w in text.split() for text in corpus for w in ("(", ",", ")", ":"))


def test_version_2_world_builds_and_evaluates(tmp_path):
    world = build_multitask_world("tiny", seed=0, cache_dir=tmp_path, version=2)
    assert world.tasks == ["partner", "reverse", "add", "format"] and world.version == 2
    assert len(world.train) == 4 * 128 and len(world.validation) == 4 * 32
    assert world.sft_config(tmp_path / "out").num_train_epochs == 12
    scores = world.evaluate(world.load_base_model())
    assert set(scores) == set(world.tasks) and all(0.0 <= v <= 1.0 for v in scores.values())
    with pytest.raises(ValueError, match="version"):
        build_multitask_world("tiny", version=3)


def test_cache_entry_is_checked_and_a_corrupt_one_rebuilt(tmp_path):
    """The multi-task world's cache has ILP-World's guarantees: checksums on load, rebuild when corrupt."""
    from hf_ilp.world.build import CorruptWorldError
    from hf_ilp.world.multitask import MultiTaskWorld

    world = build_multitask_world("tiny", seed=1, cache_dir=tmp_path, version=2)
    assert world.path.name.startswith("multitask2-") and "-tiny-seed1" in world.path.name
    assert MultiTaskWorld(path=world.path, size="tiny", seed=1).version == 2  # read from the folder
    shard = next((world.path / "train").glob("*.arrow"))
    shard.write_bytes(shard.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(CorruptWorldError, match="checksum"):
        MultiTaskWorld(path=world.path, size="tiny", seed=1, version=2)
    again = build_multitask_world("tiny", seed=1, cache_dir=tmp_path, version=2)  # rebuilt, not reused
    assert again.train["prompt"] == world.train["prompt"]
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {world.path.name}
