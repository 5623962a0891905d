"""Spherical linear interpolation of whole tensors (METHODS.md section 5).

`slerp(a, b, t)` treats each tensor as one vector: the angle comes from the flattened tensors, so
the result is a per-tensor SLERP (a per-element SLERP would be meaningless, and mergekit's
row-wise SLERP is a different operation). Nearly colinear pairs (|cos| > `dot_threshold`) fall
back to linear interpolation, where SLERP is numerically unstable and equal to lerp anyway.

The math runs in float32 (float64 inputs stay float64). `_slerp_` does the same update in place
on a float accumulator; streaming fusion uses it so that a tensor needs no extra scratch copy.

    >>> import torch
    >>> from hf_ilp.fusion import slerp
    >>> slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5)
    tensor([0.7071, 0.7071])
"""

import math

import torch

DOT_THRESHOLD = 0.9995
"""Above this |cos(angle)| the pair counts as colinear and is interpolated linearly."""


def _check_t(t) -> float:
    t = float(t)
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise ValueError(f"slerp: interpolation factor t={t} is outside [0, 1]; pass 0 <= t <= 1")
    return t


_CHUNK = 1 << 22  # elements per partial dot product: few calls, exact enough in float32


def _dots(a: torch.Tensor, b: torch.Tensor):
    """(a.a, b.b, a.b) of flattened tensors, as Python floats.

    Whole-tensor float32 reductions lose up to 1e-5 (BLAS dot) or 1e-3 (vector_norm) relative on
    25M elements; partial dots over 4M-element chunks summed in double precision stay near 1e-6,
    need no scratch, and keep the number of (threaded) calls small.
    """
    a, b = a.reshape(-1), b.reshape(-1)
    aa = bb = ab = 0.0
    for start in range(0, a.numel(), _CHUNK):
        x, y = a[start : start + _CHUNK], b[start : start + _CHUNK]
        aa += torch.dot(x, x).item()
        bb += torch.dot(y, y).item()
        ab += torch.dot(x, y).item()
    return aa, bb, ab


def _slerp_coefficients(a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float, eps: float):
    """Coefficients (ca, cb) with slerp(a, b, t) = ca * a + cb * b, from the flattened tensors."""
    aa, bb, ab = _dots(a, b)
    norm_a, norm_b = math.sqrt(aa), math.sqrt(bb)
    norm_a = norm_a if norm_a > eps else 1.0
    norm_b = norm_b if norm_b > eps else 1.0
    cos = max(-1.0, min(1.0, ab / (norm_a * norm_b)))
    if abs(cos) > dot_threshold:
        return 1.0 - t, t
    theta = math.acos(cos)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def _slerp_(acc: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float = DOT_THRESHOLD, eps: float = 1e-8):
    """In place: acc <- slerp(acc, b, t). `acc` must be a float32/float64 tensor; `b` is cast."""
    b = b.to(acc.dtype)
    ca, cb = _slerp_coefficients(acc, b, t, dot_threshold, eps)
    return acc.mul_(ca).add_(b, alpha=cb)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, dot_threshold: float = DOT_THRESHOLD, eps: float = 1e-8) -> torch.Tensor:
    """Per-tensor SLERP from `a` (t = 0) to `b` (t = 1); returns a tensor of `a`'s shape and dtype.

    Args:
        a, b: floating-point tensors of the same shape.
        t: interpolation factor in [0, 1].
        dot_threshold: |cos(angle)| above which linear interpolation is used.
        eps: norms below this count as 1 (a zero tensor has no direction).
    """
    t = _check_t(t)
    if a.shape != b.shape:
        raise ValueError(f"slerp: shapes differ, a {tuple(a.shape)} vs b {tuple(b.shape)}; pass tensors of one shape")
    if not (a.is_floating_point() and b.is_floating_point()):
        raise TypeError(f"slerp: needs floating-point tensors, got {a.dtype} and {b.dtype}")
    work = torch.float64 if a.dtype == torch.float64 else torch.float32
    acc = a.to(work, copy=True)
    return _slerp_(acc, b, t, dot_threshold, eps).to(a.dtype)
