"""Parameter isolation: compact masks, update masking, and Evolving Parameter Isolation (EPI)."""

from hf_ilp.isolation.masks import CompactMask, UpdateMasker, load_masks, mask_churn, save_masks, select_top_p

__all__ = ["CompactMask", "UpdateMasker", "load_masks", "mask_churn", "save_masks", "select_top_p"]
