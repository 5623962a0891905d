"""`hf_ilp.model_cards`: the Jinja templates of the model and dataset cards, shipped as package data.

A regular package (this file) rather than a bare folder, so that `pip install -e .` can import
it under its mapped name too; `hf_ilp.hub.cards` renders these files.
"""
