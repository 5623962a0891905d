"""recipes/diagnose_sft.py end to end on ILP-World tiny, launched as the README launches it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "diagnose_sft.py"
CONFIG = ROOT / "recipes" / "configs" / "diagnose_sft.yaml"


def _run_recipe(world_cache_dir, out, *flags, seed=0):
    env = {**os.environ, "HF_ILP_CACHE": str(world_cache_dir), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", str(RECIPE),
           "--ilp_world_size", "tiny", "--world_seed", str(seed), "--output_dir", str(out), "--disable_tqdm", "true", *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _samples(report_dir):
    return pd.read_parquet(Path(report_dir) / "samples.parquet").set_index("id")


def test_recipe_config_is_the_world_budget(tiny_world, tmp_path):
    """The recipe's YAML defaults and `World.sft_config` are one SFT budget."""
    config = yaml.safe_load(CONFIG.read_text())
    budget = tiny_world.sft_config(tmp_path)
    for key in ("num_train_epochs", "learning_rate", "per_device_train_batch_size", "max_length", "seed"):
        assert config[key] == getattr(budget, key), key
    assert budget.lr_scheduler_type.value == config["lr_scheduler_type"]


def test_recipe_end_to_end_on_tiny(tiny_world, world_cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = _run_recipe(world_cache_dir, out)
    assert "fails to reproduce" in proc.stdout and str(out) in proc.stdout
    summary = json.loads((out / "diagnose_summary.json").read_text())
    by_cause = summary["unlearned_by_planted_cause"]
    assert set(by_cause) == {"", "missing_knowledge", "knowledge_conflict", "data_inconsistency", "forgetting", "under_training"}
    assert summary["n_unlearned"] == sum(c["unlearned"] for c in by_cause.values())
    assert sum(c["total"] for c in by_cause.values()) == len(tiny_world.train)
    # The world's calibration (per cause, over seeds) is the slow tests' job. Here only what holds with
    # a wide margin: planted samples (42 on tiny) as a whole stay unlearned far more often than normal
    # ones (50). Seen on seeds 0-3: 31-35 planted and 0-2 normal samples unlearned; either bound would
    # need 10 samples to move. The forgetting samples are erased by construction (stage 1 re-targets
    # their prompt): 12 of 12 on every seed, against a bound of 4.
    planted = [c for cause, c in by_cause.items() if cause]
    assert sum(c["unlearned"] for c in planted) >= 0.5 * sum(c["total"] for c in planted), by_cause
    assert by_cause[""]["unlearned"] <= 0.2 * by_cause[""]["total"], by_cause
    assert by_cause["forgetting"]["unlearned"] >= 0.3 * by_cause["forgetting"]["total"], by_cause
    assert (out / "final_model" / "model.safetensors").is_file() and (out / "stage-0").is_dir() and (out / "stage-1").is_dir()


def test_recipe_intervenes_and_rediagnoses(tiny_world, world_cache_dir, tmp_path):
    """`--intervene`: a new run and a new diagnosis per cause, the table before/after and how many
    flagged samples each fix made learned; the continued run (under_training) is diagnosed with the
    stages before it on record. Only what holds by construction is asserted here; how well each fix
    works is measured over seeds by the slow `test_interventions_fix_their_cause`."""
    out = tmp_path / "run"
    proc = _run_recipe(world_cache_dir, out, "--intervene", "forgetting,under_training")
    assert "fixed / flagged" in proc.stdout
    before = _samples(out / "diagnosis")
    counts = json.loads((out / "diagnosis" / "summary.json").read_text())["counts"]
    done = json.loads((out / "diagnose_summary.json").read_text())["interventions"]
    assert set(done) == {"forgetting", "under_training"}
    for cause, result in done.items():
        saved = json.loads((Path(result["path"]) / "report" / "summary.json").read_text())
        found = result["confirmation"]
        assert saved["intervention"]["confirmation"] == found
        # every planted forgetting sample is erased by stage 1 (12 of 12 on seeds 0-3), and the
        # diagnosis has flagged 6-8 samples under_training on every seed seen: both far from zero
        assert found["flagged"] == counts[cause] > 0
        after = _samples(Path(result["path"]) / "report")
        flagged = before.index[before["cause"] == cause]
        assert found["fixed"] == int(after.loc[flagged, "learned"].sum()) == found["flagged"] - found["unfixed"] - found["removed"]
        assert sum(found["still"].values()) == found["unfixed"]
    # Extra epochs continue the fine-tuned model: a sample forgotten across stages (learned in
    # stage 0, lost in stage 1) that the extra epochs did not bring back is still forgetting, since
    # the continued records keep the stages before them and forgetting across stages comes first in
    # the precedence (a record of the extra epochs alone would show no stage and call it otherwise).
    after = _samples(Path(done["under_training"]["path"]) / "report")
    across = before.index[(before["cause"] == "forgetting") & before["forgot_stage"].notna()]
    still = [i for i in across if not after.loc[i, "learned"]]
    assert len(across) > 0 and still  # stage 1 erased them; extra epochs on stage-0 profiles leave them lost
    assert (after.loc[still, "cause"] == "forgetting").all(), after.loc[still, ["cause", "forgot_stage"]]
    assert after.loc[still, "forgot_stage"].notna().all()


@pytest.mark.slow
def test_interventions_fix_their_cause(world_cache_dir, tmp_path):
    """The causal check behind the intervention: global shuffle plus dynamic resampling makes most
    forgotten samples learned again, on every seed, and pooled over the seeds (each seed flags 11-15)."""
    fixed = flagged = 0
    for seed in (0, 1, 2):
        out = tmp_path / f"seed{seed}"
        _run_recipe(world_cache_dir, out, "--intervene", "forgetting", seed=seed)
        counts = json.loads((out / "diagnosis" / "summary.json").read_text())["counts"]
        result = json.loads((out / "diagnose_summary.json").read_text())["interventions"]["forgetting"]
        found = result["confirmation"]
        print(f"seed {seed}: forgetting fixed {found['fixed']} / flagged {found['flagged']}; "
              f"forgetting after {result['counts_after']['forgetting']} (before {counts['forgetting']})")
        fixed, flagged = fixed + found["fixed"], flagged + found["flagged"]
        assert result["counts_after"]["forgetting"] <= 0.4 * counts["forgetting"]
    print(f"pooled: fixed {fixed} / flagged {flagged}")
    assert fixed >= 0.6 * flagged
