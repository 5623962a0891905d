"""ILP-World calibration: under the default SFT budget each planted cause leaves >= 30% of its
samples unlearned while >= 95% of normal samples are learned, and removing a cause makes most of
its samples learned (the causal check). Real SFTTrainer runs through `train_stages`.

The tiny world plants 4-12 samples per cause, so one sample moves a share by 8-25%: its calibration
is a slow test over three seeds that prints each seed's figures and asserts the shares pooled over
the seeds. The default suite keeps only what holds by construction."""

from collections import Counter

import pytest
from datasets import Dataset
from transformers import TrainerCallback

from hf_ilp.training import train_stages
from hf_ilp.world import build_world, reproduced
from hf_ilp.world.evaluate import inconsistent_members

CAUSES = ("missing_knowledge", "knowledge_conflict", "data_inconsistency", "forgetting", "under_training")
MOST = 0.6  # "most of those samples learned" once the cause is removed
TINY_SEEDS = (0, 1, 2)


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


class _Tally:
    """Learned / total counts per named group of samples, summed over runs (seeds) and printed."""

    def __init__(self):
        self.learned, self.total = Counter(), Counter()

    def add(self, name, dataset, flags, cause, stage=None):
        picked = [f for f, c, s in zip(flags, dataset["world_cause"], dataset["stage"]) if c == cause and stage in (None, s)]
        self.learned[name] += sum(picked)
        self.total[name] += len(picked)
        return f"{name} {sum(picked)}/{len(picked)}"

    def share(self, name):
        return self.learned[name] / self.total[name]

    def report(self, label):
        print(f"{label}: " + ", ".join(f"{k} {self.learned[k]}/{self.total[k]}" for k in self.total))


def _calibrate(world, out, tally, longer_epochs):
    """One seed's calibration figures, added to `tally`: learned shares after the default budget and
    after each cause is removed (the causal checks)."""
    line = [f"seed {world.seed}:"]
    base = world.load_base_model()
    rows = [{"prompt": p, "completion": c, "world_cause": cause, "stage": 0}
            for probes, cause in zip(world.probes, world.train["world_cause"])
            for p, c in zip(probes["probe_prompts"], probes["probe_completions"])]
    probes = Dataset.from_list(rows)
    known = reproduced(base, world.tokenizer, probes)
    for cause in ("",) + CAUSES:
        line.append(tally.add(f"base knows [{cause or 'normal'}]", probes, known, cause))
    ends, _ = _fine_tune(world, world.train, out / "default")
    assert ends.begins == 2 and len(ends.flags) == 2  # one trainer per stage, same callback instance
    for cause in ("",) + CAUSES:
        line.append(tally.add(f"learned [{cause or 'normal'}]", world.train, ends.flags[-1], cause))
    # forgetting: learned at the end of stage 0 (i.e. without the second stage), lost at the end
    line.append(tally.add("forgetting learned after stage 0", world.train, ends.flags[0], "forgetting"))
    line.append(tally.add("normal stage-0 rows kept", world.train, ends.flags[-1], "", stage=0))
    wrong = {i for i, right in inconsistent_members(world).items() if not right}
    cleaned = world.train.filter(lambda i: i not in wrong, input_columns="id")
    ends, _ = _fine_tune(world, cleaned, out / "consistent")
    line.append(tally.add("causal: data_inconsistency", cleaned, ends.flags[-1], "data_inconsistency"))
    stage0 = world.train.filter(lambda s: s == 0, input_columns="stage")
    ends, longer = _fine_tune(world, stage0, out / "longer", num_train_epochs=longer_epochs * world.spec.sft_epochs)
    line.append(tally.add("causal: under_training", stage0, ends.flags[-1], "under_training"))
    complete = build_world(world.size, seed=world.seed, cache_dir=world.path.parent, complete_knowledge=True)
    assert list(complete.train["prompt"]) == list(world.train["prompt"])
    ends, _ = _fine_tune(complete, complete.train, out / "complete")
    for cause in ("missing_knowledge", "knowledge_conflict"):
        line.append(tally.add(f"causal: {cause}", complete.train, ends.flags[-1], cause))
    print(" ".join(line[:1]) + " " + ", ".join(line[1:]))
    return longer


def _assert_calibrated(tally, stage0_survival):
    for cause in ("", "forgetting", "under_training"):  # facts the corpus states: the base knows them
        assert tally.share(f"base knows [{cause or 'normal'}]") >= (0.95 if not cause else 0.9), cause
    assert tally.share("base knows [missing_knowledge]") <= 0.2  # never stated in the corpus
    assert tally.share("base knows [knowledge_conflict]") <= 0.1  # the corpus states another value
    for cause in CAUSES:
        assert tally.share(f"learned [{cause}]") <= 0.7, cause  # >= 30% unlearned
    assert tally.share("learned [normal]") >= 0.95
    assert tally.share("forgetting learned after stage 0") >= MOST
    assert tally.share("normal stage-0 rows kept") >= stage0_survival
    for cause in CAUSES:
        if cause != "forgetting":
            assert tally.share(f"causal: {cause}") >= MOST, cause


def test_stages_share_one_callback(tiny_world, tmp_path):
    """`train_stages` runs one trainer per stage with the same callbacks; the last writes to stage-1.
    (By construction: no training outcome is asserted.)"""
    ends, trainer = _fine_tune(tiny_world, tiny_world.train, tmp_path, max_steps=1)
    assert ends.begins == 2 and len(ends.flags) == 2
    assert trainer.args.output_dir.endswith("stage-1")


def test_wrong_members_are_one_per_inconsistent_pair(tiny_world):
    wrong = {i for i, right in inconsistent_members(tiny_world).items() if not right}
    assert len(wrong) == sum(c == "data_inconsistency" for c in tiny_world.train["world_cause"]) // 2


@pytest.mark.slow
def test_tiny_world_calibration(world_cache_dir, tmp_path):
    """Seeds 0-2 of the tiny world, pooled. Training the profiles' own stage four times longer fits
    them (in the tiny world the second stage erases them again; the small world's calibration checks
    that they survive it). Its 6 ordinary stage-0 samples are held to "most" surviving stage 1."""
    tally = _Tally()
    for seed in TINY_SEEDS:
        _calibrate(build_world("tiny", seed=seed, cache_dir=world_cache_dir), tmp_path / f"seed{seed}", tally, longer_epochs=4)
    tally.report(f"tiny, seeds {TINY_SEEDS} pooled")
    _assert_calibrated(tally, stage0_survival=MOST)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_small_world_calibration(seed, world_cache_dir, tmp_path):
    world = build_world("small", seed=seed, cache_dir=world_cache_dir)
    tally = _Tally()
    # stage 0 of the small world is 66 rows (5 steps an epoch): its profiles need 6x the budget
    longer = _calibrate(world, tmp_path, tally, longer_epochs=6)
    _assert_calibrated(tally, stage0_survival=0.9)
    # ... and are still reproduced once the last stage is trained as usual: their cause is the
    # optimization alone, not forgetting too (world v2's profiles, in the QA frame, were erased)
    stage1 = world.train.filter(lambda s: s == 1, input_columns="stage")
    args = world.sft_config(tmp_path / "then", disable_tqdm=True, logging_strategy="no")
    final = train_stages(longer.model, world.tokenizer, stage1, args).model
    print(tally.add("profiles kept after stage 1", world.train, reproduced(final, world.tokenizer, world.train), "under_training"))
    assert tally.share("profiles kept after stage 1") >= MOST
