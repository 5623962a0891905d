"""Per-sample learning dynamics (`LearnTracker`), their records, and the exact learn-check."""

from hf_ilp._lazy import lazy_exports

_EXPORTS = {
    "LearnTrackerConfig": "hf_ilp.tracking.config",
    "check_learned": "hf_ilp.tracking.learn_check",
    "SCHEMA_VERSION": "hf_ilp.tracking.records",
    "load_records": "hf_ilp.tracking.records",
    "log_records": "hf_ilp.tracking.loggers",
    "LearnTracker": "hf_ilp.tracking.tracker",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
