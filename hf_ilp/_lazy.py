"""Lazy public names for hf_ilp's packages: `import hf_ilp` stays cheap, and one optional part
(the FP4 extension, the sentence encoder, torch itself) never slows down or breaks another."""

import sys
from importlib import import_module


def lazy_exports(package: str, exports: dict, extra=()):
    """Return `(__getattr__, __dir__, __all__)` for `package`, whose names in `exports`
    (public name -> defining module) are imported on first use and then cached on the package."""
    names = sorted(exports) + list(extra)

    def __getattr__(name):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return names

    return __getattr__, __dir__, names
