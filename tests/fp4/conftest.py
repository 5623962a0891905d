import pytest
import torch


@pytest.fixture(scope="session")
def fp4_backends():
    """Registers the op once per session (compiles the C++ kernel once per machine)."""
    from hf_ilp.fp4 import backends

    return backends()

