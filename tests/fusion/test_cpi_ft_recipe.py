"""recipes/cpi_ft.py end to end on the multi-task world (slow: probes, fusion and stages train)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "cpi_ft.py"


@pytest.mark.slow
def test_recipe_runs_on_the_multitask_world(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("cpi_ft_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, recipe)  # dataclasses look the module up
    spec.loader.exec_module(recipe)
    config = RECIPE.parent / "configs" / "cpi_ft.yaml"
    script_args, training_args, model_args = recipe.make_parser().parse_args_and_config(
        ["--config", str(config), "--output_dir", str(tmp_path / "out"), "--max_steps", "3",
         "--bf16", "false", "--gradient_checkpointing", "false", "--disable_tqdm", "true"]
    )
    summary = recipe.main(script_args, training_args, model_args)
    assert set(summary["accuracy"]) == {"partner", "reverse", "add", "format"}
    saved = json.loads((tmp_path / "out" / "cpi_ft_summary.json").read_text())
    assert saved["groups"] == summary["groups"]
    assert (tmp_path / "out" / "final_model" / "config.json").exists()
    assert "cpi_ft" in (tmp_path / "out" / "fused" / "README.md").read_text()
