"""Files hf_ilp reads at run time, shipped inside the package and found with `importlib.resources`.

pyproject.toml maps them from the source tree's top-level folders: `hf_ilp.csrc` (`csrc/`, the
FP4 kernel sources), `hf_ilp.model_cards` (`model_cards/`, the card templates) and
`hf_ilp.recipe_configs` (`recipes/configs/`, the recipes' default configs).
"""

from __future__ import annotations

import atexit
import functools
import importlib.resources
import shutil
import tempfile
from pathlib import Path


@functools.cache
def data_dir(package: str) -> Path:
    """A folder of the file system that holds the files of `package` (e.g. "hf_ilp.csrc").

    Installed from a wheel or a source tree this is the package's own folder. Imported from a zip
    archive, its files are copied once per process into a temporary folder, since the compiler,
    Jinja and `evaluate.load` read real files.
    """
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        if exc.name != package:
            raise
        raise FileNotFoundError(
            f"the package data {package!r} is not installed; reinstall hf_ilp "
            "(`pip install -e .` in a source tree, whose pyproject.toml maps it)"
        ) from exc
    if isinstance(root, Path):
        return root
    copy = Path(tempfile.mkdtemp(prefix=f"{package}-"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    for entry in root.iterdir():
        if entry.is_file():
            (copy / entry.name).write_bytes(entry.read_bytes())
    return copy
