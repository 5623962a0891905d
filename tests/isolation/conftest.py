"""Fixtures of the isolation tests: the tiny multi-task world, built once per session."""

import pytest
import torch


@pytest.fixture(scope="session")
def mt_world(tmp_path_factory):
    from hf_ilp.world import build_multitask_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared CPU
    try:
        return build_multitask_world("tiny", seed=0, cache_dir=tmp_path_factory.mktemp("multitask"), version=1)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def few_rows(mt_world):
    return mt_world.train.select(range(64))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
