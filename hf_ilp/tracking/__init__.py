"""Per-sample learning dynamics (`LearnTracker`), their records, and the exact learn-check."""

from hf_ilp.tracking.learn_check import check_learned
from hf_ilp.tracking.records import SCHEMA_VERSION, load_records
from hf_ilp.tracking.tracker import LearnTracker, LearnTrackerConfig

__all__ = ["LearnTracker", "LearnTrackerConfig", "SCHEMA_VERSION", "check_learned", "load_records"]
