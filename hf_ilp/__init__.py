"""hf_ilp: find what a fine-tuned model failed to learn, why, and fix it.

Public names are imported lazily so that `import hf_ilp` stays cheap and one optional part
(the FP4 extension, the sentence encoder) never slows down or breaks another.
"""

from hf_ilp._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # diagnosis contracts
    "CAUSES": "hf_ilp.diagnosis.report",
    "DiagnosisReport": "hf_ilp.diagnosis.report",
    # diagnosis: one cause per unlearned sample, with evidence
    "Diagnoser": "hf_ilp.diagnosis.diagnoser",
    "DiagnoserConfig": "hf_ilp.diagnosis.config",
    "diagnose": "hf_ilp.diagnosis.diagnoser",
    # tracking: per-sample learning records and the exact learn-check
    "LearnTracker": "hf_ilp.tracking",
    "LearnTrackerConfig": "hf_ilp.tracking",
    "check_learned": "hf_ilp.tracking",
    "load_records": "hf_ilp.tracking",
    # Hub: cards, push, report loading
    "load_report": "hf_ilp.hub",
    "prepare_push": "hf_ilp.hub",
    "push_run": "hf_ilp.hub",
    "HubPushError": "hf_ilp.hub",
    "DiagnosisCardMixin": "hf_ilp.hub",
    # parameter isolation: EPI callback and the shared masks
    "EvolvingIsolationCallback": "hf_ilp.isolation.callback",
    "IsolationConfig": "hf_ilp.isolation.config",
    "UpdateMasker": "hf_ilp.isolation.masks",
    "CompactMask": "hf_ilp.isolation.masks",
    "select_top_p": "hf_ilp.isolation.masks",
    # ILP-World and the sequential fine-tuning protocol
    "build_world": "hf_ilp.world.build",
    "World": "hf_ilp.world.build",
    "train_stages": "hf_ilp.training",
    # multi-task world
    "build_multitask_world": "hf_ilp.world.multitask",
    # CPI-FT (fusion)
    "slerp": "hf_ilp.fusion.merge_utils",
    "core_regions": "hf_ilp.fusion.core",
    "group_tasks": "hf_ilp.fusion.core",
    "fuse_checkpoints": "hf_ilp.fusion.fuse",
    "load_cores": "hf_ilp.fusion.fuse",
    "CPIFTConfig": "hf_ilp.fusion.config",
    "CPIFTTrainer": "hf_ilp.fusion.trainer",
    "train_probes": "hf_ilp.fusion.trainer",
    "run_cpi_ft": "hf_ilp.fusion.trainer",
    # Half-S FP4 training
    "HalfSConfig": "hf_ilp.fp4",
    "FP4Linear": "hf_ilp.fp4",
    "convert_to_halfs_fp4_training": "hf_ilp.fp4",
    "HalfSFP4TrainerMixin": "hf_ilp.fp4",
    "quantize_fp4": "hf_ilp.fp4",
    # interventions: one mitigation per cause
    "intervene": "hf_ilp.interventions",
    "InterventionConfig": "hf_ilp.interventions",
    "InterventionResult": "hf_ilp.interventions",
    "KnowledgeSource": "hf_ilp.interventions",
    "BM25KnowledgeSource": "hf_ilp.interventions",
    "EmbeddingKnowledgeSource": "hf_ilp.interventions",
    "ConflictBucketSampler": "hf_ilp.interventions",
    "DynamicResamplingCallback": "hf_ilp.interventions",
    "ValLossRiseStopping": "hf_ilp.interventions",
    "TrainSamplerMixin": "hf_ilp.interventions",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, extra=["__version__"])
