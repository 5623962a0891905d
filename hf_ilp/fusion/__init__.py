"""CPI-FT: core parameter isolation with SLERP fusion ("Not All Parameters Are Created
Equal: Smart Isolation Boosts Fine-Tuning Performance", arXiv 2508.21741).

Stages, each usable alone: `train_probes` (one SFT per task) -> `core_regions` (top-p% of
|theta_task - theta_base|) -> `group_tasks` (Jaccard >= tau, connected components) ->
`fuse_checkpoints` (core transplant + per-tensor `slerp`, streamed) -> `CPIFTTrainer`
(pipelined SFT over the groups with earlier groups' cores frozen).

Why this room is `fusion` and not `isolation`: what CPI-FT adds to training is fusing task models
(core regions, grouping, SLERP over saved checkpoints, `hf-ilp fuse`); its isolation, freezing
the cores of earlier groups, is `hf_ilp.isolation`'s `UpdateMasker`, shared with EPI. Looking for
CPI-FT: `from hf_ilp.fusion import run_cpi_ft` (also `hf_ilp.run_cpi_ft`).
"""

from hf_ilp._lazy import lazy_exports

_EXPORTS = {
    "slerp": "hf_ilp.fusion.merge_utils",
    "core_regions": "hf_ilp.fusion.core",
    "core_overlap": "hf_ilp.fusion.core",
    "group_tasks": "hf_ilp.fusion.core",
    "fuse_checkpoints": "hf_ilp.fusion.fuse",
    "FusionResult": "hf_ilp.fusion.fuse",
    "load_cores": "hf_ilp.fusion.fuse",
    "CPIFTConfig": "hf_ilp.fusion.config",
    "CPIFTTrainer": "hf_ilp.fusion.trainer",
    "train_probes": "hf_ilp.fusion.trainer",
    "run_cpi_ft": "hf_ilp.fusion.trainer",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
