"""The compiled kernels equal the pure-PyTorch reference bitwise, and the op's semantics hold."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_ilp.fp4 import quantize_fp4
from hf_ilp.fp4.reference import MODES, fp4_quantize_reference



def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a float or uint8 tensor, for bitwise comparisons (NaN == NaN)."""
    t = t.contiguous().reshape(-1)
    return t if t.dtype == torch.uint8 else t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])

GROUPS = (16, 32, -1, 0, 7)
SPECIALS = (0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e-45, -3e-42, 1e-39, 3.4e38)


@st.composite
def tensors(draw):
    rows = draw(st.integers(0, 6))
    cols = draw(st.integers(1, 97))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    dist = draw(st.sampled_from(["normal", "student", "uniform", "ints"]))
    if dist == "normal":
        x = rng.standard_normal((rows, cols))
    elif dist == "student":
        x = rng.standard_t(3, (rows, cols))
    elif dist == "uniform":
        x = rng.uniform(-1, 1, (rows, cols))
    else:  # exact grid points and midpoints: ties everywhere
        x = rng.integers(-12, 13, (rows, cols)) / 2.0
    x = x * 10.0 ** draw(st.integers(-44, 37))  # huge and tiny scales (denormals)
    x = x.astype(np.float32)
    if x.size:
        special = draw(st.lists(st.sampled_from(SPECIALS), max_size=4))
        for value in special:
            x.flat[rng.integers(0, x.size)] = value
        if draw(st.booleans()):  # an all-zero group
            x[rng.integers(0, rows), : min(cols, 16)] = 0.0
    t = torch.from_numpy(x)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided", "3d"]))
    if layout == "transposed":
        t = t.t()
    elif layout == "strided":
        t = t[:, ::2]
    elif layout == "3d" and rows % 2 == 0:
        t = t.reshape(2, rows // 2, cols)
    return t


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=tensors(), mode=st.sampled_from(MODES), group=st.sampled_from(GROUPS),
       stochastic=st.booleans(), seed=st.integers(-(2**63), 2**63 - 1))
def test_kernel_equals_reference_bitwise(fp4_backends, x, mode, group, stochastic, seed):
    got = quantize_fp4(x, mode, group, stochastic, seed, return_codes=True)
    want = fp4_quantize_reference(x, mode, group, stochastic, seed, return_codes=True)
    for g, w, what in zip(got, want, ("dequantized", "codes", "scales")):
        assert g.shape == w.shape and g.dtype == w.dtype, what
        assert torch.equal(bits(g), bits(w)), what


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes_round_trip_through_float32(fp4_backends, dtype):
    x = torch.randn(8, 64).to(dtype)
    got = quantize_fp4(x, "halfs", 32)[0]
    want = fp4_quantize_reference(x, "halfs", 32)[0]
    assert got.dtype == dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_tensors_equal_the_reference(fp4_backends, dtype, mode):
    """The CPU kernel reads and writes bfloat16 and float16 as they are (no float32 copies); the
    reference computes in float32 and casts back. Equal bitwise, but for NaN payloads."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 97, generator=gen) / torch.rand(6, 97, generator=gen)).to(dtype)  # heavy tails
    tiny = 1e-40 if dtype == torch.bfloat16 else 1e-7  # subnormal
    x[0, :7] = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), tiny, -60000.0])
    x[1, :16] = 0.0  # an all-zero block
    for t in (x, x[:, 1::2], x.t()):
        for group in (16, 32, -1, 0, 7):
            for stochastic in (False, True):
                seed = int(torch.randint(0, 2**31, (), generator=gen))
                got = quantize_fp4(t, mode, group, stochastic, seed, return_codes=True)
                want = fp4_quantize_reference(t, mode, group, stochastic, seed, return_codes=True)
                nan = torch.isnan(want[0])
                assert got[0].dtype == dtype and torch.equal(torch.isnan(got[0]), nan)
                assert torch.equal(bits(got[0][~nan]), bits(want[0][~nan])), (group, stochastic)
                assert torch.equal(got[1], want[1]) and torch.equal(bits(got[2]), bits(want[2]))


@pytest.mark.parametrize("group", [16, 32])
@pytest.mark.parametrize("mode", ["halfs", "mse"])
def test_blocks_decided_with_and_without_estimates_equal_the_reference(fp4_backends, mode, group):
    """The CPU kernel decides most blocks of 16 and 32 from float32 estimates of the candidate
    errors; near ties (in halfs, s_half and the r = 1/2 clip are often one float apart), exact ties
    (values on the grid), tiny and huge blocks go to the float64 sums. Every pick is the reference's."""
    gen = torch.Generator().manual_seed(1)
    normal = torch.randn(2048, group, generator=gen)
    on_grid = torch.randint(-12, 13, (512, group), generator=gen) / 2.0
    x = torch.cat([normal, on_grid, normal[:64] * 1e-30, normal[:64] * 1e25])
    got = quantize_fp4(x, mode, group, return_codes=True)
    want = fp4_quantize_reference(x, mode, group, return_codes=True)
    for g, w in zip(got, want):
        assert torch.equal(bits(g), bits(w))


def test_results_do_not_depend_on_the_number_of_threads(fp4_backends):
    """Few large groups are summed in parallel chunks, many groups are split among threads: the
    sums are chunked alike either way, so any thread count gives the same bits (and the reference's)."""
    gen = torch.Generator().manual_seed(2)
    cases = [(torch.randn(6, 32, generator=gen), 32), (torch.randn(64, 256, generator=gen), 16),
             (torch.randn(4, 70001, generator=gen), -1), (torch.randn(150001, generator=gen), 0)]
    threads = torch.get_num_threads()
    try:
        for x, group in cases:
            for mode in MODES:
                runs = []
                for n in (1, 2, 3):
                    torch.set_num_threads(n)
                    runs.append(quantize_fp4(x, mode, group, return_codes=True))
                want = fp4_quantize_reference(x, mode, group, return_codes=True)
                for run in runs:
                    assert all(torch.equal(bits(g), bits(w)) for g, w in zip(run, want)), (x.shape, mode)
    finally:
        torch.set_num_threads(threads)


def test_round_to_nearest_even_on_the_e2m1_grid(fp4_backends):
    # amax = 6 -> s_max = 1, so y = x: ties go to the even code (0, 1, 2, 4 are even codes).
    y = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.26, 2.6, 4.9, 5.1, -0.75, -0.1])
    q, codes, scales = quantize_fp4(y, "max", 0, return_codes=True)
    assert scales.item() == 1.0
    assert q.tolist() == [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 0.5, 3.0, 4.0, 6.0, -1.0, -0.0]
    assert math.copysign(1.0, q[-1].item()) == -1.0
    low, high = (codes & 0xF).tolist(), (codes >> 4).tolist()
    assert [v for pair in zip(low, high) for v in pair] == [7, 0, 2, 2, 4, 4, 6, 6, 1, 5, 6, 7, 10, 8]


def test_scales_per_mode_and_group_layout(fp4_backends):
    x = torch.randn(3, 70)
    amax_blocks = torch.nn.functional.pad(x.abs(), (0, 26)).reshape(3, 3, 32).amax(-1).reshape(-1)
    assert torch.equal(quantize_fp4(x, "max", 32)[2], amax_blocks / 6)  # 3 rows x 3 blocks (last: 6)
    assert torch.equal(quantize_fp4(x, "half", 32)[2], amax_blocks / 6 * 0.5)
    assert torch.equal(quantize_fp4(x, "max", -1)[2], x.abs().amax(-1) / 6)
    assert torch.equal(quantize_fp4(x, "max", 0)[2], (x.abs().max() / 6).reshape(1))


def _group_errors(x, mode, group):
    q = quantize_fp4(x, mode, group)[0]
    e = (x.double() - q.double()) ** 2
    return e.reshape(-1, group).sum(-1) if group > 0 else e.sum(-1)


@pytest.mark.parametrize("group", [16, 32, -1])
def test_halfs_picks_the_lowest_error_candidate(fp4_backends, group):
    gen = torch.Generator().manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((64, 256)) if group == -1 else torch.randn(64, 256, generator=gen)
    e_halfs, e_half, e_max, e_mse = (_group_errors(x, m, group) for m in ("halfs", "half", "max", "mse"))
    floor = torch.minimum(torch.minimum(e_half, e_max), e_mse)
    assert torch.all(e_halfs <= floor * (1 + 1e-6))


def test_halfs_beats_max_on_heavy_tailed_rows(fp4_backends):
    x = torch.distributions.StudentT(3.0).sample((64, 4096))
    rel = {m: ((quantize_fp4(x, m, -1)[0] - x) ** 2).sum() / (x**2).sum() for m in ("max", "halfs")}
    assert rel["halfs"] <= 0.7 * rel["max"], rel


def test_non_finite_values_pass_through_and_never_set_the_scale(fp4_backends):
    x = torch.tensor([[1.0, float("nan"), -float("inf"), 3.0], [0.0, 0.0, float("nan"), -0.0]])
    q, codes, scales = quantize_fp4(x, "max", -1, return_codes=True)
    assert scales.tolist() == [0.5, 0.0]  # amax 3 / 6; a row without finite non-zeros: 0
    assert torch.isnan(q[0, 1]) and q[0, 2].item() == -float("inf") and torch.isnan(q[1, 2])
    assert q[0, 0].item() == 1.0 and q[0, 3].item() == 3.0 and q[1, 0].item() == 0.0
    assert (codes[1].item() & 0xF) == 0xF  # -inf saturates to code -6


@pytest.mark.parametrize("value", [0.1, 0.3, 0.8, 1.3, 2.2, 3.7, 5.5])
def test_stochastic_rounding_is_unbiased(fp4_backends, value):
    n_rows = 20000
    x = torch.full((n_rows, 32), value)
    x[:, 0] = 6.0  # amax 6 -> scale 1 in every block
    q = quantize_fp4(x, "max", 32, stochastic=True, seed=1234)[0][:, 1:]
    step = 0.5 if value < 2 else (1.0 if value < 4 else 2.0)
    assert abs(q.mean().item() - value) < 4 * (step / 2) / math.sqrt(q.numel())
    assert set(torch.unique(q).tolist()) <= {value - value % step, value - value % step + step}
    rne = quantize_fp4(x, "max", 32)[0][:, 1:]
    assert abs(rne.mean().item() - value) > 0.05  # nearest rounding is biased at these values


def test_stochastic_rounding_is_a_function_of_the_seed(fp4_backends):
    x = torch.randn(16, 64)
    a, b, c = (quantize_fp4(x, "max", 32, True, s)[0] for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


ON_EVERY_BACKEND = [
    "cpu",
    "meta",  # the fake implementation (torch.compile)
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                      reason="needs a CUDA device")]),
]


@pytest.mark.parametrize("device", ON_EVERY_BACKEND)
@pytest.mark.parametrize(
    ("change", "error", "named"),
    [
        ({"mode": "nvfp4"}, ValueError, "mode must be one of 'max', 'half', 'halfs', 'mse', got 'nvfp4'"),
        ({"group_size": -3}, ValueError, "group_size must be a positive block size .* got -3"),
        ({"group_size": -(2**63)}, ValueError, "group_size must be a positive block size"),
        ({"dtype": torch.int32}, TypeError, "x must be a floating-point tensor"),
    ],
)
def test_bad_arguments_are_named_by_the_function_and_by_the_op(fp4_backends, device, change, error, named):
    # The raw op reaches the compiled kernel's own checks (or the reference's, or the fake's).
    args = {"mode": "halfs", "group_size": 32, "dtype": torch.float32, **change}
    x = torch.ones(4, 8, dtype=args["dtype"], device=device)
    inputs = [x] + ([x.clone().requires_grad_()] if x.is_floating_point() else [])  # + the autograd path
    for call in (quantize_fp4, torch.ops.hf_ilp.fp4_quantize):
        for xi in inputs:
            with pytest.raises(error, match=named):
                call(xi, args["mode"], args["group_size"])
    assert quantize_fp4(torch.ones(4, 8, device=device), "max", 4)[0].shape == (4, 8)  # still works


@pytest.mark.parametrize(
    ("change", "error", "named"),
    [
        ({"x": [1.0, 2.0]}, TypeError, "x must be a torch.Tensor, got list"),
        ({"x": torch.ones(4, 4).to_sparse()}, ValueError, "x must be a dense tensor"),
        ({"mode": None}, ValueError, "mode must be one of"),
        ({"group_size": 16.0}, TypeError, "group_size must be an int, got float"),
        ({"group_size": True}, TypeError, "group_size must be an int, got bool"),
        ({"group_size": 2**63}, ValueError, "group_size must fit in int64"),
        ({"stochastic": 1}, TypeError, "stochastic must be a bool, got int"),
        ({"seed": 0.5}, TypeError, "seed must be an int"),
        ({"seed": 2**64}, ValueError, "seed must fit in int64"),
        ({"return_codes": "yes"}, TypeError, "return_codes must be a bool, got str"),
    ],
)
def test_quantize_fp4_names_a_bad_argument_before_any_kernel_runs(change, error, named):
    args = {"x": torch.ones(4, 4), "mode": "max", "group_size": 2, "stochastic": False, "seed": 0,
            "return_codes": False, **change}
    with pytest.raises(error, match=named):
        quantize_fp4(**args)
    with pytest.raises(error, match=named):
        fp4_quantize_reference(**args)


@pytest.mark.parametrize(
    "args",
    [
        ("halfs", 32, False, 0, True),
        ("max", -1, True, 5, False),
        ("mse", 0, False, 0, False),
        ("half", 16, True, 3, True),
    ],
)
def test_opcheck(fp4_backends, args):
    x = torch.randn(4, 48)
    torch.library.opcheck(torch.ops.hf_ilp.fp4_quantize.default, (x, *args))
    torch.library.opcheck(torch.ops.hf_ilp.fp4_quantize.default, (x.clone().requires_grad_(), *args),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_straight_through_gradient(fp4_backends):
    x = torch.randn(4, 32, requires_grad=True)
    q = quantize_fp4(x, "halfs", 32)[0]
    q.backward(torch.arange(128.0).reshape(4, 32))
    assert torch.equal(x.grad, torch.arange(128.0).reshape(4, 32))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group", GROUPS)
def test_cuda_kernel_equals_reference(fp4_backends, mode, group):
    x = torch.distributions.StudentT(3.0).sample((33, 301))
    x[0, :5] = torch.tensor([0.0, float("nan"), float("inf"), 1e-40, -0.0])
    for stochastic in (False, True):
        got = quantize_fp4(x.cuda(), mode, group, stochastic, 11, return_codes=True)
        want = fp4_quantize_reference(x, mode, group, stochastic, 11, return_codes=True)
        for g, w in zip(got, want):
            assert torch.equal(bits(g.cpu()), bits(w))


def test_failed_build_falls_back_to_the_reference_with_one_notice(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "from hf_ilp.fp4 import quantize_fp4, backends\n"
        "from hf_ilp.fp4.reference import fp4_quantize_reference as ref\n"
        "x = torch.randn(5, 40)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = quantize_fp4(x, 'halfs', 16)\n"
        "    b = quantize_fp4(x, 'halfs', 16)\n"
        "notices = [str(m.message) for m in w if 'pure-PyTorch reference' in str(m.message)]\n"
        "assert len(notices) == 1, notices\n"
        "assert backends() == {'cpu': 'reference', 'cuda': 'reference'}\n"
        "assert all(torch.equal(p, q) for p, q in zip(a, ref(x, 'halfs', 16)))\n"
        "print('fallback ok')\n"
    )
    env = dict(os.environ, HF_ILP_CSRC=str(tmp_path / "missing"), HF_ILP_KERNEL_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "fallback ok" in result.stdout, result.stderr[-2000:]


def test_a_kernel_whose_errors_crash_is_never_loaded(fp4_backends, tmp_path):
    """A build whose argument check kills the process (as a toolchain whose C++ exceptions cannot
    cross into torch does) fails its check in a child process: the reference serves, one warning
    says why, and the next process reads the recorded result instead of building again."""
    import os
    import shutil
    import subprocess
    import sys

    from hf_ilp.fp4._build import csrc_dir

    if fp4_backends["cpu"] != "cpp":
        pytest.skip("needs a C++ compiler whose build passes its check")
    csrc = tmp_path / "csrc"
    shutil.copytree(csrc_dir(), csrc)
    header = csrc / "fp4_common.h"
    anchor = "inline Layout make_layout(const at::Tensor& x, int64_t group_size) {"
    text = header.read_text()
    assert anchor in text
    crash = anchor + "\n  if (group_size < -1) std::raise(SIGSEGV);  // planted: dies where it should throw"
    header.write_text("#include <csignal>\n" + text.replace(anchor, crash))
    code = (
        "import warnings, torch\n"
        "from hf_ilp.fp4 import quantize_fp4, backends\n"
        "from hf_ilp.fp4.reference import fp4_quantize_reference as ref\n"
        "x = torch.randn(5, 40)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    got = quantize_fp4(x, 'halfs', 16)\n"
        "    quantize_fp4(x, 'max', 16)\n"
        "notices = [str(m.message) for m in w if 'pure-PyTorch reference' in str(m.message)]\n"
        "assert len(notices) == 1 and 'SIGSEGV' in notices[0] and 'failed its check' in notices[0], notices\n"
        "assert backends() == {'cpu': 'reference', 'cuda': 'reference'}, backends()\n"
        "assert all(torch.equal(p, q) for p, q in zip(got, ref(x, 'halfs', 16)))\n"
        "try:\n"
        "    torch.ops.hf_ilp.fp4_quantize(x, 'max', -3)\n"
        "except ValueError as exc:\n"
        "    assert 'group_size' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('group_size=-3 accepted')\n"
        "print('reference used')\n"
    )
    env = dict(os.environ, HF_ILP_CSRC=str(csrc), HF_ILP_KERNEL_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    first, second = (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
        for _ in range(2)
    )
    for result in (first, second):
        assert result.returncode == 0 and "reference used" in result.stdout, result.stderr[-3000:]
    assert "compiling" in first.stderr and "compiling" not in second.stderr, second.stderr[-3000:]
    assert list((tmp_path / "cache").glob("fp4-cpu-*/UNSAFE"))
    assert not list((tmp_path / "cache").glob("fp4-cpu-*/READY"))
