"""Every recipe answers `--help` and parses its default YAML config, as a new user would first try.

The YAML's keys themselves are checked in tests/hub/test_hub_recipe_configs.py."""

import importlib.util
import sys
from pathlib import Path

import pytest

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.py"))


def _load(path):
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_help_and_default_config(path, tmp_path):
    from hf_ilp.training import parse_recipe_args

    recipe = _load(path)
    help_text = recipe.make_parser().format_help()
    assert "--output_dir" in help_text and "--model_name_or_path" in help_text
    config = path.parent / "configs" / f"{path.stem}.yaml"
    assert config.is_file(), f"{path.name} has no default config {config}"
    script_args, training_args, model_args, *more = parse_recipe_args(
        recipe.make_parser(), config, argv=["--output_dir", str(tmp_path / "out")]
    )
    assert training_args.output_dir == str(tmp_path / "out")  # the command line wins over the YAML
    assert training_args.bf16 is False and training_args.use_cpu is True  # no accelerator here
