"""Pure-PyTorch reference of the `hf_ilp::fp4_quantize` op.

It runs wherever torch runs and is registered as the op's implementation when no compiled
kernel is available. It mirrors `csrc/fp4_core.h` operation for operation (same float32
divisions and products, same thresholds, same counter-based random bits), so the C++ and CUDA
kernels must equal it bitwise; the tests check exactly that.

Semantics (shared by every implementation):

- `x` is seen as rows x cols (cols = last dim). `group_size > 0`: blocks of that many consecutive
  elements of a row (the last block of a row may be shorter); `-1`: one group per row; `0`: one
  group for the whole tensor. Scales come back flat, one per group, row-major.
- Per group, `amax` = largest finite |x|; candidate scales (real float32 values): `max` =
  amax / 6; `half` = amax / 12 (Half-S: one exponent lower, values above 6 s clip); `mse` = the
  lowest-error of amax * r / 6 for 18 clip ratios r in [0.15, 1]; `halfs` = the lowest-error of
  {half, max, the 18 clipped scales}, half preferred on ties. Error = sum over the group's
  finite elements of the squared float32 dequantization error, in float64; a later candidate wins
  only if lower by a relative 1e-9 (so ties resolve identically everywhere).
- Values: y = |x| / s rounded to E2M1 {0, .5, 1, 1.5, 2, 3, 4, 6} (nearest, ties to even;
  saturating at 6) or stochastically (seeded; unbiased below 6 s), dequantized as copysign(q s, x).
- A group with amax = 0 gets scale 0 and returns signed zeros. Non-finite inputs never affect a
  scale and pass through unchanged (NaN stays NaN, +-inf stay +-inf); in the packed codes
  (E2M1 has no inf or NaN) +-inf saturate to +-6 and NaN is coded 0.
- Packed codes: uint8, two per byte, element 2i in the low nibble; bit 3 is the sign.
"""

from __future__ import annotations

import torch

MODES = ("max", "half", "halfs", "mse")
DEVICES = ("cpu", "cuda", "meta")  # the op's kernels (meta: its fake, for torch.compile)
INT64 = (-(2**63), 2**63 - 1)
FLOAT_MAX = 3.4028234663852886e38
NUM_CLIP = 18
TIE_MARGIN = 1.0 - 1e-9
_MASK32 = 0xFFFFFFFF


def clip_factors() -> list[float]:
    """The float32 factors amax is multiplied by for the clipped candidates: r / 6."""
    return [(0.15 + 0.85 * i / 17.0) / 6.0 for i in range(NUM_CLIP)]


def check_arguments(
    x: torch.Tensor, mode: str, group_size: int, stochastic: bool = False, seed: int = 0, return_codes: bool = False
) -> None:
    """Raise a TypeError / ValueError naming the first argument of `fp4_quantize` that is wrong.

    Every Python path into the op runs it before any work (`quantize_fp4`, this reference, the
    fake), so a bad argument from Python never reaches native code; the compiled kernels repeat
    the checks for direct calls of the op. Strided inputs are fine: they are read as contiguous.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (float32, bfloat16, float16, float64), got {x.dtype}")
    if x.layout != torch.strided:
        raise ValueError(f"x must be a dense tensor (layout torch.strided), got {x.layout}")
    if x.device.type not in DEVICES:
        raise ValueError(f"x must be a CPU or CUDA tensor, got one on {x.device}")
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    for name, value in (("group_size", group_size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"{name} must fit in int64 [-2**63, 2**63 - 1], got {value}")
    if not (group_size > 0 or group_size in (-1, 0)):
        raise ValueError(
            "group_size must be a positive block size (e.g. 16 or 32), -1 (one group per row) or 0 "
            f"(one group for the whole tensor), got {group_size}"
        )
    for name, value in (("stochastic", stochastic), ("return_codes", return_codes)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def group_layout(shape: torch.Size | tuple[int, ...], group_size: int) -> tuple[int, int, int, int]:
    """(rows, cols, group size, groups per row) of a tensor of `shape` under a `group_size`
    that `check_arguments` accepts."""
    numel = 1
    for d in shape:
        numel *= d
    if group_size == 0:
        return 1, numel, max(numel, 1), 1
    cols = shape[-1] if len(shape) > 0 else 1
    rows = numel // cols if cols > 0 else 0
    gsize = group_size if group_size > 0 else max(cols, 1)
    return rows, cols, gsize, -(-cols // gsize)


def _rne_magnitude(y: torch.Tensor) -> torch.Tensor:
    half, one, zero = y.new_tensor(0.5), y.new_tensor(1.0), y.new_tensor(0.0)
    return (
        torch.where(y > 0.25, half, zero)
        + torch.where(y >= 0.75, half, zero)
        + torch.where(y > 1.25, half, zero)
        + torch.where(y >= 1.75, half, zero)
        + torch.where(y > 2.5, one, zero)
        + torch.where(y >= 3.5, one, zero)
        + torch.where(y > 5.0, 2 * one, zero)
    )


def _rne_code(y: torch.Tensor) -> torch.Tensor:
    return (
        (y > 0.25).to(torch.uint8)
        + (y >= 0.75)
        + (y > 1.25)
        + (y >= 1.75)
        + (y > 2.5)
        + (y >= 3.5)
        + (y > 5.0)
    )


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), without int64 overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sr_uniform(seed: int, index: torch.Tensor) -> torch.Tensor:
    """The 24-bit uniform in [0, 1) used to stochastically round element `index` (int64)."""
    seed &= 0xFFFFFFFFFFFFFFFF
    k = (seed >> 32) ^ _mul32(index >> 32, 0x9E3779B9)
    h = _mix32(_mix32((index & _MASK32) ^ (seed & _MASK32)) ^ k)
    return (h >> 8).to(torch.float32) * 2.0**-24


def _sr_magnitude(y: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    steps = ((0.5, 0.5), (1.0, 0.5), (1.5, 0.5), (2.0, 0.5), (3.0, 1.0), (4.0, 1.0), (6.0, 2.0))
    lo = torch.zeros_like(y)
    lo_code = torch.zeros_like(y, dtype=torch.uint8)
    for threshold, inc in steps:
        hit = y >= threshold
        lo = lo + torch.where(hit, y.new_tensor(inc), y.new_tensor(0.0))
        lo_code = lo_code + hit
    step = torch.where(y < 2.0, y.new_tensor(0.5), torch.where(y < 4.0, y.new_tensor(1.0), y.new_tensor(2.0)))
    p = (y - lo) / step
    up = (y < 6.0) & (u < p)
    return torch.where(up, lo + step, lo), lo_code + up


def _errors(a: torch.Tensor, finite: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    d = _rne_magnitude(a / s[:, None]) * s[:, None]
    e = torch.where(finite, a - d, 0.0).double()
    return (e * e).sum(dim=1)


def _select_scales(a: torch.Tensor, finite: torch.Tensor, mode: str) -> torch.Tensor:
    amax = torch.where(finite, a, 0.0).amax(dim=1)
    s_max = amax / torch.full_like(amax, 6.0)
    if mode == "max":
        scales = s_max
    elif mode == "half":
        scales = s_max * 0.5
    else:
        cands = [s_max * 0.5, s_max] if mode == "halfs" else []
        cands += [amax * amax.new_tensor(f) for f in clip_factors()]
        best = cands[0]
        best_err = _errors(a, finite, best)
        for cand in cands[1:]:
            err = _errors(a, finite, cand)
            better = err < best_err * TIE_MARGIN
            best = torch.where(better, cand, best)
            best_err = torch.where(better, err, best_err)
        scales = best
    return torch.where(amax > 0, scales, 0.0)


def fp4_quantize_reference(
    x: torch.Tensor,
    mode: str,
    group_size: int,
    stochastic: bool = False,
    seed: int = 0,
    return_codes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize-dequantize `x` to FP4 E2M1; returns (dequantized, packed codes, scales)."""
    check_arguments(x, mode, group_size, stochastic, seed, return_codes)
    rows, cols, gsize, gpr = group_layout(x.shape, group_size)
    n = x.numel()
    codes = torch.zeros((n + 1) // 2 if return_codes else 0, dtype=torch.uint8, device=x.device)
    if n == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format), codes, torch.zeros(
            rows * gpr, dtype=torch.float32, device=x.device
        )
    flat = x.to(torch.float32).reshape(rows, cols)
    index = torch.arange(n, dtype=torch.int64, device=x.device).reshape(rows, cols)
    pad = gpr * gsize - cols
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
        index = torch.nn.functional.pad(index, (0, pad))
    g = flat.reshape(rows * gpr, gsize)
    a = g.abs()
    finite = a <= FLOAT_MAX
    scales = _select_scales(a, finite, mode)
    s = scales[:, None]
    y = torch.where(s > 0, a / torch.where(s > 0, s, 1.0), 0.0)
    y = torch.where(finite, y, torch.where(torch.isnan(a), a.new_tensor(0.0), a.new_tensor(6.0)))
    if stochastic:
        m, code = _sr_magnitude(y, sr_uniform(seed, index.reshape(rows * gpr, gsize)))
    else:
        m, code = _rne_magnitude(y), _rne_code(y)
    out = torch.where(finite, torch.copysign(m * s, g), g)
    out = out.reshape(rows, gpr * gsize)[:, :cols].reshape(x.shape).to(x.dtype)
    if return_codes:
        code = (code | (torch.signbit(g).to(torch.uint8) << 3)).reshape(rows, gpr * gsize)[:, :cols].reshape(-1)
        if n % 2:
            code = torch.cat([code, code.new_zeros(1)])
        codes = code[0::2] | (code[1::2] << 4)
    return out.contiguous(), codes, scales
