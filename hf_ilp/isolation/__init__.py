"""Parameter isolation: compact masks, update masking, and Evolving Parameter Isolation (EPI)."""

from hf_ilp.isolation.callback import EvolvingIsolationCallback
from hf_ilp.isolation.config import IsolationConfig
from hf_ilp.isolation.importance import importance_scores
from hf_ilp.isolation.masks import CompactMask, UpdateMasker, load_masks, mask_churn, save_masks, select_top_p

__all__ = [
    "CompactMask",
    "EvolvingIsolationCallback",
    "IsolationConfig",
    "UpdateMasker",
    "importance_scores",
    "load_masks",
    "mask_churn",
    "save_masks",
    "select_top_p",
]
