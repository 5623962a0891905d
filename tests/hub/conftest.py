"""Fixtures for the Hub tests: a Hub-compatible server on loopback, and small reports.

The server (`hub_server.py` beside this file) runs in its own process so that a test can kill it
for real. `huggingface_hub` reads `HF_ENDPOINT` and `HF_HUB_DISABLE_XET` once at import, so the
session fixture sets both in `os.environ` (for subprocesses) and in `huggingface_hub.constants`
(for this process), and points the download cache at a temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

_SERVER = Path(__file__).with_name("hub_server.py")


@dataclass
class HubServer:
    """A running test Hub: `endpoint` to pass to `HfApi(endpoint=...)`, its process and storage."""

    endpoint: str
    port: int
    root: Path
    process: subprocess.Popen

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def start_hub_server(root, port: int = 0, exit_on: str | None = None, timeout: float = 20.0) -> HubServer:
    """Start `hub_server.py` on 127.0.0.1 and wait until it listens."""
    cmd = [sys.executable, str(_SERVER), "--root", str(root), "--port", str(port)]
    if exit_on:
        cmd += ["--exit-on", exit_on]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.match(r"PORT (\d+)", line)
        if m:
            port = int(m.group(1))
            return HubServer(f"http://127.0.0.1:{port}", port, Path(root), proc)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"test Hub server did not start: {line!r}")


@pytest.fixture(scope="session")
def hub_env(tmp_path_factory):
    """Client settings for every Hub test: no Xet, not offline, a private download cache."""
    import huggingface_hub.constants as constants

    cache = tmp_path_factory.mktemp("hf_cache")
    mp = pytest.MonkeyPatch()
    for name, value in {"HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(cache)}.items():
        mp.setenv(name, value)
    mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
    mp.setattr(constants, "HF_HUB_OFFLINE", False)
    mp.setattr(constants, "HF_HUB_CACHE", str(cache))
    yield mp
    mp.undo()


@pytest.fixture(scope="session")
def hub(hub_env, tmp_path_factory):
    """The session's test Hub, with `HF_ENDPOINT` pointing at it."""
    import huggingface_hub.constants as constants

    server = start_hub_server(tmp_path_factory.mktemp("hub_storage"))
    hub_env.setenv("HF_ENDPOINT", server.endpoint)
    hub_env.setattr(constants, "ENDPOINT", server.endpoint)
    yield server
    server.kill()


@pytest.fixture
def make_report(tmp_path):
    """Build a small DiagnosisReport with every cause present, one PNG plot, saved to a folder."""

    def _make(n_learned: int = 6, settings: dict | None = None):
        from hf_ilp.diagnosis.report import CAUSES, UNEXPLAINED, DiagnosisReport

        rows = []
        for i in range(n_learned):
            rows.append(_row(f"s{i:03d}", True, "", 0.0))
        for k, cause in enumerate(CAUSES + (UNEXPLAINED,)):
            for j in range(k + 1):
                rows.append(_row(f"u{k}{j}", False, cause, 0.5 + 0.05 * k))
        report = DiagnosisReport.from_rows(rows, settings=settings or {"exact_threshold": 1.0}, notes=["test"])
        plot = tmp_path / "counts.png"
        _write_png(plot)
        report.plots = {"counts": str(plot)}
        return report

    return _make


def _row(sample_id, learned, cause, confidence):
    return {
        "id": sample_id,
        "learned": learned,
        "cause": cause,
        "confidence": confidence,
        "runner_up": "" if learned else "under_training",
        "runner_up_confidence": 0.0 if learned else 0.1,
        "prompt": f"What is the value of {sample_id}?",
        "completion": f" value-{sample_id}",
        "final_p_gold": 0.9 if learned else 0.1,
    }


def _write_png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.bar(["a", "b"], [1, 2])
    fig.savefig(path)
    plt.close(fig)
