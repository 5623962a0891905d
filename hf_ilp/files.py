"""Atomic outputs for every part of hf_ilp and the scripts built on it (recipes, benchmarks).

Files and folders appear complete or not at all: `atomic_dir`, `move_into_place`,
`write_text_atomic`, `write_json_atomic`.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(path, overwrite: bool = True):
    """Yield a temporary folder beside `path`; move it to `path` only if the block succeeds.

    A crash halfway leaves `path` as it was (absent, or the previous complete version).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True or choose another folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_place(tmp, path)


def move_into_place(tmp, path) -> None:
    """Replace `path` by the complete folder `tmp` (same parent folder), keeping the old one until then."""
    tmp, path = Path(tmp), Path(path)
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder, readable by all
    (0644); nothing is left behind when writing fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path, obj) -> None:
    """Write `obj` as indented JSON to `path` through a temporary file in the same folder."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str))
