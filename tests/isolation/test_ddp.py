"""EPI under `accelerate launch --multi_gpu --num_processes 2` on the CPU: one mask on every rank."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ilp.isolation import load_masks


@pytest.mark.slow
def test_two_processes_share_masks(mt_world, tmp_path):
    script = Path(__file__).with_name("_ddp_train.py")
    cache = mt_world.path.parent  # already built: the ranks only load it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(cache), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2: 2 mask updates" in proc.stdout and "rank 1 of 2: 2 mask updates" in proc.stdout
    m0, m1 = (load_masks(tmp_path / f"masks-rank{r}.safetensors") for r in (0, 1))
    assert m0.keys() == m1.keys() and all(m0[n] == m1[n] for n in m0)
    p0, p1 = (load_file(str(tmp_path / f"params-rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(p0[n], p1[n]) for n in p0)
