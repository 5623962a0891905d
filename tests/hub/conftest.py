"""Fixtures for the Hub tests: a Hub-compatible server on loopback, and small reports.

The server (`hub_server.py` beside this file) runs in its own process so that a test can kill it
for real. `huggingface_hub` reads `HF_ENDPOINT` and `HF_HUB_DISABLE_XET` once at import, so the
session fixture sets both in `os.environ` (for subprocesses) and in `huggingface_hub.constants`
(for this process), and points the download cache at a temporary folder.
"""

from __future__ import annotations

import pytest

from hub_server import point_client_at, start_hub_server


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
    server = start_hub_server(tmp_path_factory.mktemp("hub_storage"))
    point_client_at(hub_env, server.endpoint)
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
        "ft_says": "" if learned else f" other-{sample_id}",
        "ft_expected": "" if learned else f" value-{sample_id}",
    }


def _write_png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.bar(["a", "b"], [1, 2])
    fig.savefig(path)
    plt.close(fig)
