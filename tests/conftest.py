"""Fixtures shared by every test area.

`tiny_world` builds ILP-World tiny (seed 0) once per test session, into a cache folder private to
the session, so tests never depend on (or pollute) the user's cache.
"""

import pytest


@pytest.fixture(scope="session")
def world_cache_dir(tmp_path_factory):
    """The ILP-World cache folder of this test session."""
    return tmp_path_factory.mktemp("hf_ilp_world_cache")


@pytest.fixture(scope="session")
def tiny_world(world_cache_dir):
    """ILP-World `tiny`, seed 0, built once per session (an `hf_ilp.world.World`)."""
    from hf_ilp.world import build_world

    return build_world("tiny", seed=0, cache_dir=world_cache_dir)


def pytest_configure(config):
    """Run torch on HF_ILP_TEST_THREADS CPU threads (default 1) during tests.

    The test models are tiny: extra intra-op threads barely help them, and on a shared CPU
    oversubscribed threads made a training step about 30x slower than one thread did.
    """
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("HF_ILP_TEST_THREADS", "1")))
