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
    from hf_ilp.recipes import parse_recipe_args

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


DEMO_WORLD_RECIPES = {"diagnose_sft": "ilp_world_size", "fp4_sft": "ilp_world_size",
                      "epi_sft": "multitask_world_size", "cpi_ft": "multitask_world_size"}


@pytest.mark.parametrize("name", sorted(DEMO_WORLD_RECIPES))
def test_old_world_size_flag_still_works_and_warns(name, tmp_path):
    """`--world_size` (a demo world's size, easily read as the number of processes) was renamed;
    the old flag and the old YAML key still set the new field, with a FutureWarning."""
    from hf_ilp.recipes import parse_recipe_args

    recipe = _load(Path(__file__).parents[1] / "recipes" / f"{name}.py")
    new = DEMO_WORLD_RECIPES[name]
    out = ["--output_dir", str(tmp_path / "out")]
    with pytest.warns(FutureWarning, match=f"flag --world_size is deprecated.*--{new}"):
        script_args = parse_recipe_args(recipe.make_parser(), None, argv=[*out, "--world_size", "small"])[0]
    assert getattr(script_args, new) == "small"
    old_yaml = tmp_path / "old.yaml"
    old_yaml.write_text("world_size: small\n")
    with pytest.warns(FutureWarning, match=f"config key world_size is deprecated.*--{new}"):
        script_args = parse_recipe_args(recipe.make_parser(), None, argv=["--config", str(old_yaml), *out])[0]
    assert getattr(script_args, new) == "small"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        script_args = parse_recipe_args(recipe.make_parser(), None, argv=[*out, f"--{new}", "small"])[0]
    assert getattr(script_args, new) == "small"


def test_recipe_helpers_moved_to_hf_ilp_recipes_and_old_names_warn():
    import hf_ilp.recipes as recipes
    import hf_ilp.training as training

    for name in ("parse_recipe_args", "recipe_config", "load_model_and_tokenizer", "prefixed_arguments", "USER_RUN_FLAGS"):
        with pytest.warns(DeprecationWarning, match=f"hf_ilp.training.{name} moved to hf_ilp.recipes.{name}"):
            assert getattr(training, name) is getattr(recipes, name)
    with pytest.raises(AttributeError):
        training.no_such_name


def test_recipe_logger_prints_once_per_run_with_the_recipe_prefix(capfd):
    from hf_ilp.recipes import recipe_logger

    log = recipe_logger("epi_sft")
    log.info("hello %s", "world")
    log.debug("not shown")
    assert capfd.readouterr().out == "[epi_sft] hello world\n"
