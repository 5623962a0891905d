"""The on-disk cache both demo worlds (ILP-World, the multi-task world) share.

One folder per key (the world's name, the hash of its settings, its size and seed, the layout's
version), so a change of any setting builds a new entry rather than reusing a stale one. Building
holds a file lock (concurrent callers wait for one another) inside accelerate's
`PartialState().main_process_first()` (in a process group the main process builds, the others
then load what it wrote), and writes into a temporary folder moved into place when complete. The
metadata file lists a SHA-256 of every other file; an entry whose files are missing or differ is
rebuilt, never reused.
"""

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


class CorruptWorldError(RuntimeError):
    """A world folder whose files are missing or do not match the checksums in its metadata file."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("HF_ILP_CACHE") or Path.home() / ".cache" / "hf_ilp")


def writable_cache_dir(cache_dir, what: str) -> Path:
    """`cache_dir` (else `$HF_ILP_CACHE`, else `~/.cache/hf_ilp`), created; a clear error if it cannot be written."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        raise PermissionError(
            f"the {what} cache directory {str(root)!r} cannot be written ({err.strerror or err}); "
            "pass cache_dir= (--cache-dir) or set HF_ILP_CACHE to a writable folder"
        ) from err
    return root


def spec_hash(spec: dict) -> str:
    """8 hex digits that change with any setting of `spec` (a JSON-serializable dict)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksums(root: Path, meta_name: str) -> dict[str, str]:
    """SHA-256 of every file under `root` but the metadata file itself, by relative path."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != meta_name)
    return {rel: sha256(root / rel) for rel in files}


def verified_meta(path: Path, meta_name: str) -> dict:
    """The metadata of the world folder `path`, once every file it lists matches its checksum."""
    try:
        meta = json.loads((path / meta_name).read_text())
        expected = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptWorldError(f"{path / meta_name} is missing or unreadable: {err}") from err
    for rel, digest in expected.items():
        file = path / rel
        if not file.is_file():
            raise CorruptWorldError(f"{file} is missing")
        if sha256(file) != digest:
            raise CorruptWorldError(f"{file} does not match its checksum")
    return meta


def build_or_load(root: Path, key: str, build: Callable[[Path], None], load: Callable[[Path], object],
                  rebuild: bool = False, what: str = "world"):
    """`load(root / key)`, after `build(root / key)` if the entry is missing, corrupt or `rebuild` is set."""
    from accelerate import PartialState
    from filelock import FileLock

    path = root / key
    state = PartialState()
    with state.main_process_first(), FileLock(str(root / f".{key}.lock")):
        if path.exists() and not (rebuild and state.is_main_process):
            try:
                return load(path)
            except CorruptWorldError as err:
                logger.warning("%s cache entry %s is corrupt (%s); rebuilding it", what, path, err)
        build(path)
        return load(path)
