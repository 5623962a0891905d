"""Parameter isolation: compact masks, update masking, and Evolving Parameter Isolation (EPI)."""

from hf_ilp._lazy import lazy_exports

_EXPORTS = {
    "EvolvingIsolationCallback": "hf_ilp.isolation.callback",
    "IsolationConfig": "hf_ilp.isolation.config",
    "importance_scores": "hf_ilp.isolation.importance",
    "CompactMask": "hf_ilp.isolation.masks",
    "UpdateMasker": "hf_ilp.isolation.masks",
    "load_masks": "hf_ilp.isolation.masks",
    "mask_churn": "hf_ilp.isolation.masks",
    "save_masks": "hf_ilp.isolation.masks",
    "select_top_p": "hf_ilp.isolation.masks",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
