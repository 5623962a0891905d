"""`CPIFTConfig`: `trl.SFTConfig` plus the settings of CPI-FT (fields prefixed `cpi_`).

`TrlParser` turns every field into a flag and a YAML key. The SFT fields (epochs, learning rate,
batch size, ...) apply to each stage of the pipelined SFT; the probe fine-tunes use the same
settings except `cpi_probe_epochs`.
"""

from dataclasses import dataclass, field

from trl import SFTConfig


@dataclass
class CPIFTConfig(SFTConfig):
    """Settings of Core Parameter Isolation Fine-Tuning (arXiv 2508.21741), defaults from the paper.

    Example:
        >>> args = CPIFTConfig(output_dir="out", cpi_core_share=0.01, cpi_jaccard_tau=0.1, cpi_slerp_t=0.5)
    """

    cpi_task_column: str = field(default="task", metadata={"help": "Dataset column naming each row's task."})
    cpi_core_share: float = field(
        default=0.01,
        metadata={"help": "p: share of all entries in a task's core region, the top entries by |theta_task - "
                  "theta_base| after its probe fine-tune (p = 1 percent is 0.01), in (0, 1)."},
    )
    cpi_jaccard_tau: float = field(
        default=0.1,
        metadata={"help": "tau: tasks whose cores overlap (Jaccard) at least this much share a group; groups are the "
                  "connected components, trained one after another, in [0, 1]."},
    )
    cpi_slerp_t: float = field(
        default=0.5,
        metadata={"help": "t: weight of the probe models against the base for non-core entries when fusing "
                  "(per-tensor SLERP), in [0, 1]."},
    )
    cpi_stage_mix: str = field(
        default="group",
        metadata={"help": "Rows of each pipelined SFT stage: 'group' (the tasks of that stage's group) or 'cumulative' "
                  "(the tasks of that group and of every earlier group: earlier tasks are rehearsed while their cores "
                  "stay frozen).", "choices": ["group", "cumulative"]},
    )
    cpi_probe_epochs: float | None = field(
        default=None, metadata={"help": "Epochs of each probe fine-tune (unset: num_train_epochs)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.cpi_core_share < 1.0:
            raise ValueError(f"cpi_core_share (p) must lie strictly between 0 and 1, got {self.cpi_core_share!r}")
        if not 0.0 <= self.cpi_jaccard_tau <= 1.0:
            raise ValueError(f"cpi_jaccard_tau must lie in [0, 1], got {self.cpi_jaccard_tau!r}")
        if not 0.0 <= self.cpi_slerp_t <= 1.0:
            raise ValueError(f"cpi_slerp_t must lie in [0, 1], got {self.cpi_slerp_t!r}")
        if self.cpi_stage_mix not in ("group", "cumulative"):
            raise ValueError(f"cpi_stage_mix must be 'group' or 'cumulative', got {self.cpi_stage_mix!r}")
        if self.cpi_probe_epochs is not None and self.cpi_probe_epochs <= 0:
            raise ValueError(f"cpi_probe_epochs must be > 0 or unset, got {self.cpi_probe_epochs!r}")
        if self.packing:
            raise ValueError("CPI-FT selects rows by task per stage; packing mixes rows, set packing=False")
