"""Every recipe has a YAML in recipes/configs whose keys, and whose commented Hub variant's keys, are its flags."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py"))


def _recipe_options(name: str) -> set:
    spec = importlib.util.spec_from_file_location(f"_recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        parser = module.make_parser()
    finally:
        sys.modules.pop(spec.name, None)
    return {s.lstrip("-") for action in parser._actions for s in action.option_strings}


def _hub_variant(text: str) -> dict:
    """The commented block after '# Hub variant', uncommented: `# key: value` and `#   - item` lines."""
    block = text.split("# Hub variant", 1)[1].splitlines()[1:]
    lines = [line[2:] for line in block if re.match(r"^# ([a-z0-9_]+:( .*)?|  +- .*)$", line)]
    return yaml.safe_load("\n".join(lines)) or {}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_config_and_its_hub_variant_name_only_real_flags(name):
    config = ROOT / "recipes" / "configs" / f"{name}.yaml"
    assert config.is_file(), f"recipes/{name}.py has no recipes/configs/{name}.yaml"
    text = config.read_text()
    options = _recipe_options(name)
    defaults = yaml.safe_load(text)
    assert not sorted(set(defaults) - options), f"{config.name}: keys that are not flags of the recipe"
    assert "# Hub variant" in text, f"{config.name} has no commented Hub variant"
    variant = _hub_variant(text)
    assert "model_name_or_path" in variant and ({"dataset_name", "task_datasets"} & set(variant)), variant
    assert not sorted(set(variant) - options), f"{config.name}: Hub-variant keys that are not flags of the recipe"
