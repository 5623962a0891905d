"""hf_ilp as a package: the wheel of this checkout ships every module and every file read at run
time (the FP4 kernel sources, the card templates, the recipes' default configs, the metric), and,
installed into a fresh virtual environment and used from a folder outside the checkout, compiles
the FP4 kernel and renders the cards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the build reads; the package data is mapped from these folders (pyproject.toml).
SOURCES = ("pyproject.toml", "README.md", "hf_ilp", "csrc", "model_cards", "recipes")
DATA = {"csrc": "hf_ilp/csrc", "model_cards": "hf_ilp/model_cards", "recipes/configs": "hf_ilp/recipe_configs"}

# Run by the fresh environment's Python, from a folder outside the checkout.
USE_INSTALLED = """
import json, sys, tempfile
from pathlib import Path

import torch

import hf_ilp
from hf_ilp.fp4 import backends, quantize_fp4
from hf_ilp.fp4._build import cache_root, csrc_dir
from hf_ilp.fp4.reference import fp4_quantize_reference
from hf_ilp.hub import amend_model_card
from hf_ilp.hub.cards import render_dataset_card, templates_dir
from hf_ilp.diagnosis.report import DiagnosisReport
from hf_ilp.metrics import INCOMPLETE_LEARNING
from hf_ilp.recipes import recipe_config

venv, recipes = Path(sys.argv[1]).resolve(), sys.argv[2].split(",")
for path in (hf_ilp.__file__, csrc_dir(), templates_dir(), INCOMPLETE_LEARNING):
    assert Path(path).resolve().is_relative_to(venv), f"{path} is not in the fresh environment {venv}"

assert backends()["cpu"] == "cpp", backends()
assert list(cache_root().glob("fp4-cpu-*/READY")), "no kernel compiled into the fresh cache"
x = torch.randn(6, 96, generator=torch.Generator().manual_seed(0))
got, want = quantize_fp4(x, "halfs", 32, return_codes=True), fp4_quantize_reference(x, "halfs", 32, return_codes=True)
assert all(torch.equal(a, b) for a, b in zip(got, want)), "the compiled kernel differs from the reference"

rows = [
    {"id": "a", "learned": False, "cause": "knowledge_conflict", "confidence": 0.9, "runner_up": "", "runner_up_confidence": 0.0,
     "prompt": "Capital of Zorb?", "completion": "Plim"},
    {"id": "b", "learned": True, "cause": "", "confidence": 0.0, "runner_up": "", "runner_up_confidence": 0.0,
     "prompt": "x", "completion": "y"},
]
report = DiagnosisReport.from_rows(rows)
card = amend_model_card(Path(tempfile.mkdtemp()) / "model", report, model_repo_id="me/tiny",
                        dataset_repo_id="me/tiny-ilp-diagnosis").read_text()
assert "## Incomplete learning diagnosis" in card and "| a | Capital of Zorb? | Plim |" in card, card
dataset_card = render_dataset_card(report, "me/tiny-ilp-diagnosis", model_repo_id="me/tiny")
assert "me/tiny-ilp-diagnosis" in dataset_card, dataset_card

configs = {name: recipe_config(name) for name in recipes}
assert all(path.resolve().is_relative_to(venv) for path in configs.values()), configs

import evaluate
metric = evaluate.load(INCOMPLETE_LEARNING)
assert metric.compute(predictions=[[7, 9, 2, 0]], references=[[-100, 7, 9, 2]])["n_learned"] == 1
print(json.dumps({name: path.read_text() for name, path in configs.items()}))
"""


def _pip(python: str | Path, *args: str) -> None:
    result = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _can_build_here() -> bool:
    """setuptools >= 70.1 builds wheels without the `wheel` package, so pip needs no isolation."""
    try:
        from importlib.metadata import version

        from packaging.version import Version

        return Version(version("setuptools")) >= Version("70.1")
    except Exception:  # noqa: BLE001 - not installed or unreadable: let pip fetch the build tools
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout's sources (the build leaves nothing in the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(ROOT / name, src / name)
    flags = ["--no-build-isolation"] if _can_build_here() else []
    _pip(sys.executable, "wheel", "--no-deps", "-q", *flags, "--wheel-dir", str(tmp / "dist"), str(src))
    (found,) = (tmp / "dist").glob("hf_ilp-*.whl")
    return found


def test_wheel_ships_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hf_ilp").rglob("*.py") if "__pycache__" not in p.parts}
    for folder, package in DATA.items():
        expected |= {f"{package}/{p.name}" for p in (ROOT / folder).iterdir() if p.is_file()}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert "hf_ilp/metrics/incomplete_learning/incomplete_learning.py" in names


def test_installed_wheel_compiles_the_kernel_and_renders_cards_outside_the_checkout(wheel, tmp_path):
    import site

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (and pip) of this environment, without reinstalling them; an editable
    # hf_ilp here is not carried over, since .pth files are read only in the site folders themselves.
    Path(own, "_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _pip(python, "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel))

    env = {k: v for k, v in os.environ.items() if k not in ("HF_ILP_CSRC", "HF_ILP_FP4_BACKEND", "PYTHONPATH")}
    env.update(HF_ILP_KERNEL_CACHE=str(tmp_path / "kernels"), HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    recipes = sorted(p.stem for p in (ROOT / "recipes").glob("*.py"))
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run(
        [str(python), "-c", USE_INSTALLED, str(venv), ",".join(recipes)],
        cwd=work, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    shipped = json.loads(result.stdout.strip().splitlines()[-1])
    assert shipped == {name: (ROOT / "recipes" / "configs" / f"{name}.yaml").read_text() for name in recipes}


def test_data_dir_gives_a_real_folder_from_a_zip_archive(tmp_path, monkeypatch):
    """Imported from a zip archive (zipimport), a data package's files are copied into a folder."""
    from hf_ilp.resources import data_dir

    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("zipped_card_templates/__init__.py", "")
        bundle.writestr("zipped_card_templates/card.md", "# {{ title }}\n")
    monkeypatch.syspath_prepend(str(archive))
    folder = data_dir("zipped_card_templates")
    assert folder.is_dir() and (folder / "card.md").read_text() == "# {{ title }}\n"


def test_data_dir_names_a_package_that_is_not_installed():
    from hf_ilp.resources import data_dir

    with pytest.raises(FileNotFoundError, match="'hf_ilp.no_such_data' is not installed"):
        data_dir("hf_ilp.no_such_data")
