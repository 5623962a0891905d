"""ILP-World: a small offline world in which the five causes of incomplete learning are planted.

Public names are imported lazily (like `hf_ilp` itself) so that `hf-ilp --help` stays fast.
"""

from hf_ilp._lazy import lazy_exports

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

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
