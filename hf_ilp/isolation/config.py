"""Settings of parameter isolation (EPI and its static baseline) as one dataclass.

The fields carry `metadata={"help": ...}` and an `isolation_` prefix, so a recipe's config can
inherit them next to `trl.SFTConfig` and `TrlParser` turns them into flags and YAML keys.
"""

from dataclasses import dataclass, field

ISOLATION_MODES = ("epi", "static", "none")
IMPORTANCE_KINDS = ("grad_sq", "grad_weight", "magnitude")


@dataclass
class IsolationConfig:
    """What to isolate, how often, and by which importance estimate.

    Defaults: p = 0.05 of the trainable entries, recomputed every K = 20 optimizer steps, importance
    = EMA of squared gradients read from AdamW's `exp_avg_sq` (its factor is the optimizer's beta2,
    0.999 by default; nothing extra is stored), normalized within each tensor, ranked globally.
    The paper (arXiv 2604.14010) does not publish its values; these are ours, chosen so that a short
    fine-tuning run still sees several mask updates.
    """

    isolation: str = field(
        default="epi",
        metadata={"help": "'epi': recompute the mask every K steps (Evolving Parameter Isolation); 'static': compute "
                  "it once at step K and keep it; 'none': no isolation.", "choices": list(ISOLATION_MODES)},
    )
    isolation_ratio: float = field(
        default=0.05,
        metadata={"help": "p: share of trainable entries isolated at a time (they do not move at all), in (0, 1)."},
    )
    isolation_interval: int = field(
        default=20, metadata={"help": "K: optimizer steps between mask updates (static: the step of its only mask), >= 1."}
    )
    isolation_importance: str = field(
        default="grad_sq",
        metadata={"help": "Importance: 'grad_sq' (EMA of squared gradients), 'grad_weight' (|g * w| at the update "
                  "step) or 'magnitude' (|w|); always normalized by the mean within each tensor.",
                  "choices": list(IMPORTANCE_KINDS)},
    )
    isolation_ema_beta: float | None = field(
        default=None,
        metadata={"help": "EMA factor of the squared gradients for 'grad_sq'. Unset: reuse the optimizer's exp_avg_sq "
                  "(AdamW: factor beta2, no extra memory). A value in [0, 1): keep an own fp32 EMA (4 bytes per "
                  "trainable parameter), needed for optimizers without exp_avg_sq."},
    )
    isolation_scope: str = field(
        default="global",
        metadata={"help": "'global': top-p over all entries after per-tensor normalization; 'per_layer': exactly "
                  "top-p within every tensor.", "choices": ["global", "per_layer"]},
    )

    def __post_init__(self):
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {self.isolation!r}")
        if not (isinstance(self.isolation_ratio, (int, float)) and 0.0 < self.isolation_ratio < 1.0):
            raise ValueError(f"isolation_ratio (p) must lie strictly between 0 and 1, got {self.isolation_ratio!r}")
        if not isinstance(self.isolation_interval, int) or self.isolation_interval < 1:
            raise ValueError(f"isolation_interval (K) must be an integer >= 1, got {self.isolation_interval!r}")
        if self.isolation_importance not in IMPORTANCE_KINDS:
            raise ValueError(f"isolation_importance must be one of {IMPORTANCE_KINDS}, got {self.isolation_importance!r}")
        if self.isolation_ema_beta is not None and not 0.0 <= self.isolation_ema_beta < 1.0:
            raise ValueError(f"isolation_ema_beta must lie in [0, 1) or be unset, got {self.isolation_ema_beta!r}")
        if self.isolation_scope not in ("global", "per_layer"):
            raise ValueError(f"isolation_scope must be 'global' or 'per_layer', got {self.isolation_scope!r}")
