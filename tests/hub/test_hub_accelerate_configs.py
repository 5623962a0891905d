"""The example accelerate configs in recipes/accelerate_configs are valid accelerate config files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "accelerate_configs"
EXPECTED = {
    "single_process.yaml": "NO",
    "multi_gpu.yaml": "MULTI_GPU",
    "deepspeed_zero2.yaml": "DEEPSPEED",
    "deepspeed_zero3.yaml": "DEEPSPEED",
    "fsdp.yaml": "FSDP",
}


def test_every_example_config_is_present():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_and_names_only_known_launch_options(name):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    config = ClusterConfig.from_yaml_file(CONFIGS / name)  # refuses unknown top-level keys
    assert config.distributed_type.value == EXPECTED[name]
    options = {s.lstrip("-") for a in launch_command_parser()._actions for s in a.option_strings}
    for section in ("deepspeed_config", "fsdp_config"):
        unknown = sorted(set(getattr(config, section)) - options)
        assert not unknown, f"{name}: {section} keys that `accelerate launch` does not know: {unknown}"
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-6])
    if name == "fsdp.yaml":
        assert config.fsdp_config["fsdp_version"] == 2


# Each process writes its rank to a file of its own: two processes printing to one stdout at once
# can interleave their lines ('RANK 1/2RANK 0/2').
_PROBE = """\
import os
import sys
from pathlib import Path

import torch.distributed as dist

if int(os.environ.get("WORLD_SIZE", 1)) > 1:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.barrier()
    dist.destroy_process_group()
else:
    rank, world = 0, 1
(Path(sys.argv[1]) / f"rank-{rank}").write_text(f"{rank}/{world}")
"""


@pytest.mark.slow
@pytest.mark.parametrize("name,n", [("single_process.yaml", 1), ("multi_gpu.yaml", 2)])
def test_config_launches_on_cpu(name, n, tmp_path):
    """`accelerate launch --config_file` starts the expected number of processes (gloo on CPU)."""
    script, ranks = tmp_path / "probe.py", tmp_path / "ranks"
    script.write_text(_PROBE)
    ranks.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / name),
           "--num_processes", str(n), "--mixed_precision", "no", str(script), str(ranks)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert {p.name: p.read_text() for p in ranks.iterdir()} == {f"rank-{r}": f"{r}/{n}" for r in range(n)}
