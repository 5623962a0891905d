"""ILP-World: a small offline world in which the five causes of incomplete learning are planted.

Public names are imported lazily (like `hf_ilp` itself) so that `hf-ilp --help` stays fast.
"""

from importlib import import_module

_EXPORTS = {
    "build_word_tokenizer": "hf_ilp.world.tokenizer",
    "tiny_llama_config": "hf_ilp.world.model",
    "pretrain": "hf_ilp.world.model",
    "build_world": "hf_ilp.world.build",
    "World": "hf_ilp.world.build",
    "reproduced": "hf_ilp.world.evaluate",
    "build_multitask_world": "hf_ilp.world.multitask",
    "MultiTaskWorld": "hf_ilp.world.multitask",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_ilp.world' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
