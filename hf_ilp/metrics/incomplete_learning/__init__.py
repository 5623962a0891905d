"""The `incomplete_learning` evaluate metric (see incomplete_learning.py)."""
