"""`LearnTrackerConfig`: the settings of `LearnTracker`, a dataclass whose fields carry `help`
metadata, so a recipe's `TrlParser` turns them into flags and YAML keys."""

from dataclasses import dataclass, field


@dataclass
class LearnTrackerConfig:
    """Settings of `LearnTracker` (a dataclass, so `TrlParser` turns them into flags and YAML keys)."""

    observe_epochs: bool = field(
        default=True, metadata={"help": "Record an observation at each epoch end, from that epoch's training passes."}
    )
    every_n_steps: int = field(
        default=0, metadata={"help": "Also record an observation every N optimizer steps (0: never)."}
    )
    num_samples: int = field(
        default=5, metadata={"help": "N of pass@N in the end-of-run learn-check (final_pass_at_n)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of pass@N."})
    batch_size: int = field(default=32, metadata={"help": "Batch size of the end-of-run learn-check."})
    slope_window: int = field(
        default=3, metadata={"help": "Number of last observations the per-sample loss slope is fitted on."}
    )
    records_dir: str | None = field(
        default=None, metadata={"help": "Where to write the records (default: <output_dir>/hf_ilp_records)."}
    )
    log_samples: int = field(
        default=200,
        metadata={"help": "Unlearned samples sent as a table to the report_to loggers at the end of training; 0 sends none."},
    )

    def __post_init__(self):
        if self.every_n_steps < 0 or self.num_samples < 1 or self.batch_size < 1 or self.slope_window < 2:
            raise ValueError(
                "LearnTrackerConfig: every_n_steps must be >= 0, num_samples and batch_size >= 1, slope_window >= 2; "
                f"got {self.every_n_steps}, {self.num_samples}, {self.batch_size}, {self.slope_window}"
            )
        if self.temperature <= 0:
            raise ValueError(f"LearnTrackerConfig: temperature must be > 0, got {self.temperature}")
        if self.log_samples < 0:
            raise ValueError(f"LearnTrackerConfig: log_samples must be >= 0, got {self.log_samples}")
