"""`hf_ilp.recipe_configs`: the recipes' default configs, shipped as package data.

A regular package (this file) rather than a bare folder, so that `pip install -e .` can import
it under its mapped name too; `hf_ilp.recipes.recipe_config(name)` gives a recipe its file.
"""
