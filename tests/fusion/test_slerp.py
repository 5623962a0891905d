"""hf_ilp.fusion.slerp against mergekit's slerp on flattened tensors (shape (1, N))."""

import math

import pytest
import torch
from mergekit.merge_methods.slerp import slerp as mergekit_slerp

from hf_ilp.fusion import slerp


def _reference(a, b, t):
    out = mergekit_slerp(torch.tensor(t), a.reshape(1, -1).float(), b.reshape(1, -1).float())
    return out.reshape(a.shape)


def _rel(x, y):
    return ((x.double() - y.double()).norm() / y.double().norm()).item()


@pytest.mark.parametrize("t", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(257,), (64, 48), (3, 5, 70), (300_000,)])
def test_random_pairs_match_mergekit(shape, t):
    g = torch.Generator().manual_seed(hash((shape, t)) % 2**31)
    a, b = torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g)
    assert _rel(slerp(a, b, t), _reference(a, b, t)) < 1e-5


@pytest.mark.parametrize("t", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("noise", [1e-4, 1e-2, 5e-2])  # cos ~ 1 - 5e-9 (lerp), 0.99995 (lerp), ~0.9988 (slerp)
def test_nearly_colinear_pairs_match_mergekit(noise, t):
    g = torch.Generator().manual_seed(7)
    a = torch.randn(128, 96, generator=g)
    b = 1.5 * a + noise * torch.randn(128, 96, generator=g)
    assert _rel(slerp(a, b, t), _reference(a, b, t)) < 1e-5


def test_is_per_tensor_not_per_row():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    rowwise = mergekit_slerp(torch.tensor(0.5), a, b)
    assert _rel(slerp(a, b, 0.5), rowwise) > 1e-4  # a different operation
    assert _rel(slerp(a, b, 0.5), _reference(a, b, 0.5)) < 1e-5


def test_orthogonal_unit_vectors_and_dtypes():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    s = math.sqrt(0.5)
    torch.testing.assert_close(slerp(a, b, 0.5), torch.tensor([s, s]))
    out = slerp(a.bfloat16(), b.bfloat16(), 0.5)
    assert out.dtype == torch.bfloat16
    assert slerp(a.double(), b.double(), 0.3).dtype == torch.float64
    # end points are exact and inputs are left untouched
    x, y = torch.randn(100), torch.randn(100)
    x0 = x.clone()
    assert torch.equal(slerp(x, y, 0.0), x) and torch.equal(x, x0)


@pytest.mark.parametrize("t", [-0.01, 1.5, float("nan")])
def test_t_outside_unit_interval_is_refused(t):
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        slerp(torch.ones(3), torch.ones(3), t)


def test_bad_shapes_and_dtypes_are_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        slerp(torch.ones(3), torch.ones(4), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        slerp(torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long), 0.5)
