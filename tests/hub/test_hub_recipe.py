"""recipes/diagnose_sft.py with --push_to_hub, launched as the README launches it, against the loopback Hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "diagnose_sft.py"


def test_recipe_pushes_model_card_and_diagnosis(hub, tiny_world, world_cache_dir, tmp_path):
    import hf_ilp

    out = tmp_path / "run"
    env = {**os.environ, "HF_ILP_CACHE": str(world_cache_dir), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
           "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_" + "r" * 34}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", str(RECIPE),
           "--ilp_world_size", "tiny", "--output_dir", str(out), "--disable_tqdm", "true",
           "--push_to_hub", "true", "--hub_model_id", "grace/ilp-tiny"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "grace/ilp-tiny" in proc.stdout

    report = hf_ilp.load_report("grace/ilp-tiny", samples=True)
    local = hf_ilp.load_report(out / "diagnosis")
    assert report.counts == local.counts and len(report.samples) == len(tiny_world.train)
    assert report.summary["diagnosis_dataset"] == "grace/ilp-tiny-ilp-diagnosis"
    assert report.summary["trained_on"].startswith("ilp-world")
    from huggingface_hub import HfApi

    files = set(HfApi(endpoint=hub.endpoint).list_repo_files("grace/ilp-tiny"))
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= files
    assert not any(f.startswith(("stage-", "checkpoint-", "hf_ilp_records")) for f in files)
    card = (out / "final_model" / "README.md").read_text()
    assert "hf_" + "r" * 34 not in card and str(Path.home()) + "/" not in card and str(tmp_path) not in card
