"""ILP-World calibration: under the default SFT budget each planted cause leaves >= 30% of its
samples unlearned while >= 95% of normal samples are learned, and removing a cause makes most of
its samples learned (the causal check). Real SFTTrainer runs through `train_stages`."""

import pytest
from datasets import Dataset
from transformers import TrainerCallback

from hf_ilp.training import train_stages
from hf_ilp.world import build_world, reproduced
from hf_ilp.world.evaluate import inconsistent_members, unlearned_by_cause

CAUSES = ("missing_knowledge", "knowledge_conflict", "data_inconsistency", "forgetting", "under_training")
MOST = 0.6  # "most of those samples learned" once the cause is removed


class _StageEnds(TrainerCallback):
    """Which rows of `dataset` the model reproduces at the end of every stage."""

    def __init__(self, tokenizer, dataset):
        self.tokenizer, self.dataset, self.flags, self.begins = tokenizer, dataset, [], 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.begins += 1

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.flags.append(reproduced(model, self.tokenizer, self.dataset))


def _fine_tune(world, train, out, evaluate_on=None, **overrides):
    evaluate_on = evaluate_on if evaluate_on is not None else train
    ends = _StageEnds(world.tokenizer, evaluate_on)
    args = world.sft_config(out, disable_tqdm=True, logging_strategy="no", **overrides)
    trainer = train_stages(world.load_base_model(), world.tokenizer, train, args, callbacks=[ends])
    return ends, trainer


def _learned_share(dataset, flags, cause, stage=None):
    picked = [f for f, c, s in zip(flags, dataset["world_cause"], dataset["stage"]) if c == cause and stage in (None, s)]
    return sum(picked) / len(picked)


def _assert_calibrated(world, ends, stage0_survival=0.9):
    train = world.train
    final = unlearned_by_cause(train, ends.flags[-1])
    for cause in CAUSES:
        assert final[cause]["unlearned"] / final[cause]["total"] >= 0.3, (cause, final)
    assert final[""]["unlearned"] / final[""]["total"] <= 0.05, final
    # forgetting: learned at the end of stage 0 (i.e. without the second stage), lost at the end
    assert _learned_share(train, ends.flags[0], "forgetting") >= MOST, final
    # ordinary stage-0 samples survive the second stage (the tiny world has only 6 of them: one
    # lost sample is 17%, so it is held to "most" and the small world to 90%)
    assert _learned_share(train, ends.flags[-1], "", stage=0) >= stage0_survival
    return final


@pytest.fixture(scope="module")
def default_run(tiny_world, tmp_path_factory):
    return _fine_tune(tiny_world, tiny_world.train, tmp_path_factory.mktemp("sft"))


def test_calibration_and_forgetting(tiny_world, default_run):
    ends, trainer = default_run
    assert ends.begins == 2 and len(ends.flags) == 2  # one trainer per stage, same callback instance
    assert trainer.args.output_dir.endswith("stage-1")
    _assert_calibrated(tiny_world, ends, stage0_survival=MOST)


def _wrong_member_ids(world):
    """Inconsistent pairs: the member whose answer is not the one the corpus states."""
    return {i for i, right in inconsistent_members(world).items() if not right}


def test_causal_inconsistency(tiny_world, tmp_path):
    wrong = _wrong_member_ids(tiny_world)
    n_pairs = sum(c == "data_inconsistency" for c in tiny_world.train["world_cause"]) // 2
    assert len(wrong) == n_pairs
    cleaned = tiny_world.train.filter(lambda i: i not in wrong, input_columns="id")
    ends, _ = _fine_tune(tiny_world, cleaned, tmp_path)
    assert _learned_share(cleaned, ends.flags[-1], "data_inconsistency") >= MOST


def test_causal_under_training(tiny_world, tmp_path):
    """Training the samples' own stage four times longer fits most of the rare, long completions.
    (In the tiny world the second stage erases them again; the small world's calibration checks
    that they survive it.)"""
    stage0 = tiny_world.train.filter(lambda s: s == 0, input_columns="stage")
    ends, _ = _fine_tune(tiny_world, stage0, tmp_path, num_train_epochs=4 * tiny_world.spec.sft_epochs)
    assert _learned_share(stage0, ends.flags[-1], "under_training") >= MOST


def test_causal_missing_knowledge_and_conflict(tiny_world, world_cache_dir, tmp_path):
    """With the corpus stating every fact the SFT set relies on, as it states it, both causes vanish."""
    complete = build_world("tiny", seed=0, cache_dir=world_cache_dir, complete_knowledge=True)
    assert list(complete.train["prompt"]) == list(tiny_world.train["prompt"])
    ends, _ = _fine_tune(complete, complete.train, tmp_path)
    for cause in ("missing_knowledge", "knowledge_conflict"):
        assert _learned_share(complete.train, ends.flags[-1], cause) >= MOST, cause


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_small_world_calibration(seed, world_cache_dir, tmp_path):
    world = build_world("small", seed=seed, cache_dir=world_cache_dir)
    ends, _ = _fine_tune(world, world.train, tmp_path / "default")
    _assert_calibrated(world, ends)
    wrong = _wrong_member_ids(world)
    cleaned = world.train.filter(lambda i: i not in wrong, input_columns="id")
    ends, _ = _fine_tune(world, cleaned, tmp_path / "consistent")
    assert _learned_share(cleaned, ends.flags[-1], "data_inconsistency") >= MOST
    stage0 = world.train.filter(lambda s: s == 0, input_columns="stage")
    # stage 0 of the small world is 66 rows (5 steps an epoch): its profiles need 6x the budget
    ends, longer = _fine_tune(world, stage0, tmp_path / "longer", num_train_epochs=6 * world.spec.sft_epochs)
    assert _learned_share(stage0, ends.flags[-1], "under_training") >= MOST
    # ... and are still reproduced once the last stage is trained as usual: their cause is the
    # optimization alone, not forgetting too (world v2's profiles, in the QA frame, were erased)
    stage1 = world.train.filter(lambda s: s == 1, input_columns="stage")
    args = world.sft_config(tmp_path / "then", disable_tqdm=True, logging_strategy="no")
    final = train_stages(longer.model, world.tokenizer, stage1, args).model
    assert _learned_share(world.train, reproduced(final, world.tokenizer, world.train), "under_training") >= MOST
    complete = build_world("small", seed=seed, cache_dir=world_cache_dir, complete_knowledge=True)
    ends, _ = _fine_tune(complete, complete.train, tmp_path / "complete")
    for cause in ("missing_knowledge", "knowledge_conflict"):
        assert _learned_share(complete.train, ends.flags[-1], cause) >= MOST, cause
