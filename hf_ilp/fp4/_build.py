"""Compile-on-first-use of the FP4 kernels (`csrc/`), cached once per machine.

Why JIT and not a build step in `pip install`: a setup.py extension needs torch at build time,
and pip's isolated build environment would download a multi-GB CUDA torch to get it. Instead the
first call of an FP4 op compiles `csrc/` with `torch.utils.cpp_extension.load` (ninja, -O3,
OpenMP, vectorized for this CPU) into `$HF_ILP_KERNEL_CACHE/fp4-<key>` (default
`~/.cache/hf_ilp/torch_extensions`; deliberately not under `$HF_ILP_CACHE`, which tests point at
temporary folders), where `<key>` hashes the sources, the op schema, the flags, the torch and
Python versions and the CPU's instruction-set flags; later processes load the cached library in
milliseconds. The CUDA kernel is built as a second library only with a CUDA build of torch and
nvcc present. Any failure leaves the pure-PyTorch reference in place (same results, slower) and
says so once. `HF_ILP_FP4_BACKEND=reference` skips compilation altogether.

The sources are read from the source tree (`csrc/` next to the `hf_ilp` package, as with
`pip install -e .`) or from `$HF_ILP_CSRC`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
import warnings
from pathlib import Path

CPU_SOURCES = ("fp4_cpu.cpp",)
CUDA_SOURCES = ("fp4_cuda.cu", "fp4_cuda_binding.cpp")
HEADERS = ("fp4_core.h", "fp4_common.h", "fp4_kernels.h")
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fno-math-errno"]
CUDA_CFLAGS = ["-O3", "--fmad=false"]  # architectures: torch's default (the visible GPUs)


def csrc_dir() -> Path:
    return Path(os.environ.get("HF_ILP_CSRC", Path(__file__).resolve().parents[2] / "csrc"))


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
    for part in (kind, schema, torch.__version__, str(torch.version.cuda), sys.version, _cpu_flags(), *flags):
        h.update(part.encode())
    for name in sources + HEADERS:
        path = csrc_dir() / name
        h.update(name.encode())
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()[:16]


def _build(kind: str, schema: str, sources: tuple[str, ...], cuda: bool) -> str:
    """Compile (or reuse) one library and load it into the process; returns its path."""
    import torch
    from torch.utils import cpp_extension

    flags = CFLAGS + (CUDA_CFLAGS if cuda else [])
    build_dir = cache_root() / f"{kind}-{_key(kind, schema, sources, flags)}"
    name = f"hf_ilp_{kind.replace('-', '_')}"
    library = build_dir / f"{name}.so"
    ready = build_dir / "READY"
    if ready.exists() and library.exists():
        torch.ops.load_library(str(library))
        return str(library)
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
    cpp_extension.load(
        name=name,
        sources=[str(csrc_dir() / s) for s in sources],
        extra_cflags=CFLAGS,
        extra_cuda_cflags=CUDA_CFLAGS if cuda else None,
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(build_dir), str(csrc_dir())],
        build_directory=str(build_dir),
        with_cuda=cuda,
        is_python_module=False,
        verbose=False,
    )
    ready.write_text("ok\n")
    print(f"hf_ilp: {kind} kernels ready ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return str(library)


def load_kernels(schema: str) -> dict[str, bool]:
    """Load the compiled CPU (and, where possible, CUDA) kernels; returns which ones loaded."""
    import torch

    loaded = {"cpu": False, "cuda": False}
    if os.environ.get("HF_ILP_FP4_BACKEND", "").lower() == "reference":
        return loaded
    try:
        _build("fp4-cpu", schema, CPU_SOURCES, cuda=False)
        loaded["cpu"] = True
    except Exception as exc:  # noqa: BLE001 - any build failure means: use the reference
        warnings.warn(
            f"hf_ilp: the FP4 C++ kernel could not be built or loaded ({type(exc).__name__}: {exc}); "
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
            _build("fp4-cuda", schema, CUDA_SOURCES, cuda=True)
            loaded["cuda"] = True
        except Exception as exc:  # noqa: BLE001
            warnings.warn(
                f"hf_ilp: the FP4 CUDA kernel could not be built ({type(exc).__name__}: {exc}); "
                "CUDA tensors use the pure-PyTorch reference implementation.",
                RuntimeWarning,
                stacklevel=3,
            )
    return loaded
