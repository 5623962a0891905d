"""Compile-on-first-use of the FP4 kernels (`csrc/`), cached once per machine.

Why JIT and not a build step in `pip install`: a setup.py extension needs torch at build time,
and pip's isolated build environment would download a multi-GB CUDA torch to get it. Instead the
first call of an FP4 op compiles `csrc/` with `torch.utils.cpp_extension.load` (ninja, -O3,
OpenMP, vectorized for this CPU) into `$HF_ILP_KERNEL_CACHE/fp4-<key>` (default
`~/.cache/hf_ilp/torch_extensions`; deliberately not under `$HF_ILP_CACHE`, which tests point at
temporary folders), where `<key>` hashes the sources, the op schema, the flags (among them
`-D_GLIBCXX_USE_CXX11_ABI` set to torch's C++ ABI, which recent `cpp_extension` no longer adds),
the check below, the torch and Python versions and the CPU's instruction-set flags; later
processes load the cached library in milliseconds. The CUDA kernel is built as a second library only with a CUDA build of torch and
nvcc present. Any failure leaves the pure-PyTorch reference in place (same results, slower) and
says so once. `HF_ILP_FP4_BACKEND=reference` skips compilation altogether.

A library is loaded into this process only once it has passed a check, run once per build in a
child process: the op must work, and its C++ argument check must reach Python as an exception.
Where the toolchain's exceptions cannot cross from the library into torch, the error of a bad
argument would kill the process (seen as a segmentation fault); such a build is recorded as
`UNSAFE` next to it (later processes skip it at no cost) and the reference is used. Compiling
also happens in a child process, because `cpp_extension.load` loads what it builds.

The sources are the package data `hf_ilp.csrc` (the source tree's top-level `csrc/`, shipped in
the wheel and found with `importlib.resources`), or the folder `$HF_ILP_CSRC` where that is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

CPU_SOURCES = ("fp4_cpu.cpp",)
CUDA_SOURCES = ("fp4_cuda.cu", "fp4_cuda_binding.cpp")
HEADERS = ("fp4_core.h", "fp4_common.h", "fp4_kernels.h")
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fno-math-errno"]
CUDA_CFLAGS = ["-O3", "--fmad=false"]  # architectures: torch's default (the visible GPUs)
CHECK_TIMEOUT_S = 300

# Run in a child process: builds one library with `cpp_extension.load` (which also loads it).
_COMPILE = """
import json, sys, torch
from torch.utils import cpp_extension
job = json.loads(sys.argv[1])
for library in job["preload"]:
    torch.ops.load_library(library)
cpp_extension.load(**job["load"])
"""

# Run in a child process on a built library: one valid call, then one whose group size the
# kernel's argument check rejects. Where C++ exceptions cannot cross into torch, this process
# dies instead of the one that would have loaded the library.
_CHECK = """
import sys, torch
device = sys.argv[1]
for library in sys.argv[2:]:
    torch.ops.load_library(library)
x = torch.full((2, 32), 3.0, device=device)
out, _, scales = torch.ops.hf_ilp.fp4_quantize(x, "max", 32)
assert torch.equal(out, x) and scales.tolist() == [0.5, 0.5], (out, scales)
try:
    torch.ops.hf_ilp.fp4_quantize(x, "max", -3)
except ValueError as exc:
    assert "group_size" in str(exc), exc
else:
    raise AssertionError("the kernel accepted a group_size of -3")
"""


def csrc_dir() -> Path:
    """The folder of the kernel sources: `$HF_ILP_CSRC` where set, else the package data `hf_ilp.csrc`."""
    if "HF_ILP_CSRC" in os.environ:
        return Path(os.environ["HF_ILP_CSRC"])
    from hf_ilp.resources import data_dir

    return data_dir("hf_ilp.csrc")


def cache_root() -> Path:
    default = Path.home() / ".cache" / "hf_ilp" / "torch_extensions"
    return Path(os.environ.get("HF_ILP_KERNEL_CACHE", default))


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _key(kind: str, schema: str, sources: tuple[str, ...], flags: list[str]) -> str:
    import torch

    h = hashlib.sha256()
    parts = (kind, schema, _CHECK, torch.__version__, str(torch.version.cuda), sys.version, _cpu_flags(), *flags)
    for part in parts:
        h.update(part.encode())
    for name in sources + HEADERS:
        path = csrc_dir() / name
        h.update(name.encode())
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()[:16]


def _tail(text: str, limit: int = 3000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _run(script: str, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _check_library(libraries: list[str], device: str) -> str | None:
    """Load `libraries` (the last one under test) in a child process and call the op on `device`,
    once validly and once with a bad group size; returns None if the kernel's error arrived in
    Python as a ValueError, else what went wrong (a crash shows up as the signal that ended it)."""
    try:
        result = _run(_CHECK, device, *libraries, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"the check did not finish within {CHECK_TIMEOUT_S} s"
    if result.returncode == 0:
        return None
    if result.returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-result.returncode).name}"
        except ValueError:
            how = f"was killed by signal {-result.returncode}"
    else:
        how = f"exited with status {result.returncode}"
    return f"the check process {how}" + (f": {_tail(result.stderr, 1500)}" if result.stderr.strip() else "")


def _build(kind: str, schema: str, sources: tuple[str, ...], cuda: bool, preload: tuple[str, ...] = ()) -> str:
    """Compile (or reuse) one library, check it (`_check_library`) and load it into the process;
    returns its path. `preload`: libraries it needs loaded first (the CPU one defines the op)."""
    import torch

    cflags = [*CFLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"]
    flags = cflags + (CUDA_CFLAGS if cuda else [])
    build_dir = cache_root() / f"{kind}-{_key(kind, schema, sources, flags)}"
    name = f"hf_ilp_{kind.replace('-', '_')}"
    library = build_dir / f"{name}.so"
    ready, unsafe = build_dir / "READY", build_dir / "UNSAFE"
    if unsafe.exists():
        raise RuntimeError(unsafe.read_text().strip())
    if not (ready.exists() and library.exists()):
        build_dir.mkdir(parents=True, exist_ok=True)
        header, text = build_dir / "fp4_schema.h", f'#pragma once\n#define HF_ILP_FP4_SCHEMA "{schema}"\n'
        if not header.exists() or header.read_text() != text:  # an unchanged mtime spares a rebuild
            header.write_text(text)
        print(
            f"hf_ilp: compiling the {kind} kernels into {build_dir} (first use on this machine; "
            "takes about a minute)...",
            file=sys.stderr,
            flush=True,
        )
        start = time.perf_counter()
        load = dict(
            name=name,
            sources=[str(csrc_dir() / s) for s in sources],
            extra_cflags=cflags,
            extra_cuda_cflags=CUDA_CFLAGS if cuda else None,
            extra_ldflags=["-fopenmp"],
            extra_include_paths=[str(build_dir), str(csrc_dir())],
            build_directory=str(build_dir),
            with_cuda=cuda,
            is_python_module=False,
            verbose=False,
        )
        result = _run(_COMPILE, json.dumps({"preload": list(preload), "load": load}))
        if result.returncode != 0 or not library.exists():
            raise RuntimeError(f"compiling failed: {_tail(result.stderr)}")
        failure = _check_library([*preload, str(library)], "cuda" if cuda else "cpu")
        if failure is not None:
            unsafe.write_text(
                f"the {kind} library built in {build_dir} failed its check ({failure}): an error raised "
                "in it may not reach Python as an exception (a bad argument could crash the process), "
                "so it is not used; delete that folder to build and check it again\n"
            )
            raise RuntimeError(unsafe.read_text().strip())
        ready.write_text("ok\n")
        print(f"hf_ilp: {kind} kernels ready ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    torch.ops.load_library(str(library))
    return str(library)


def load_kernels(schema: str) -> dict[str, bool]:
    """Load the compiled CPU (and, where possible, CUDA) kernels; returns which ones loaded."""
    import torch

    loaded = {"cpu": False, "cuda": False}
    if os.environ.get("HF_ILP_FP4_BACKEND", "").lower() == "reference":
        return loaded
    try:
        cpu_library = _build("fp4-cpu", schema, CPU_SOURCES, cuda=False)
        loaded["cpu"] = True
    except Exception as exc:  # noqa: BLE001 - any build failure means: use the reference
        warnings.warn(
            f"hf_ilp: the FP4 C++ kernel could not be built, checked or loaded ({type(exc).__name__}: {exc}); "
            "using the pure-PyTorch reference implementation (same results, slower).",
            RuntimeWarning,
            stacklevel=3,
        )
        return loaded
    if torch.version.cuda and torch.cuda.is_available():
        from torch.utils.cpp_extension import CUDA_HOME

        try:
            if CUDA_HOME is None:
                raise RuntimeError("no CUDA toolkit (nvcc) found")
            _build("fp4-cuda", schema, CUDA_SOURCES, cuda=True, preload=(cpu_library,))
            loaded["cuda"] = True
        except Exception as exc:  # noqa: BLE001
            warnings.warn(
                f"hf_ilp: the FP4 CUDA kernel could not be built ({type(exc).__name__}: {exc}); "
                "CUDA tensors use the pure-PyTorch reference implementation.",
                RuntimeWarning,
                stacklevel=3,
            )
    return loaded
