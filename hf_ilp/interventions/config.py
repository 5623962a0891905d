"""`InterventionConfig`: the settings of the five interventions, a dataclass whose fields carry
`help` metadata, so a recipe's `TrlParser` turns them into flags and YAML keys."""

from dataclasses import dataclass, field


@dataclass
class InterventionConfig:
    """Settings of the five interventions (paper values where the paper gives one)."""

    knowledge_docs_per_sample: int = field(default=3, metadata={"help": "Documents retrieved per flagged sample."})
    knowledge_general_share: float = field(
        default=0.8, metadata={"help": "Share of general text in the continued pre-training mix (paper: 0.8)."})
    knowledge_repeats: int = field(
        default=1, metadata={"help": "Times each retrieved document appears in the mix (small models need more)."})
    cpt_epochs: float = field(default=1.0, metadata={"help": "Epochs of continued pre-training over the mix."})
    cpt_batch_size: int | None = field(
        default=None, metadata={"help": "Per-device batch size of continued pre-training (default: the SFT one)."})
    cpt_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of continued pre-training (default: the SFT learning rate)."})
    inconsistency_strategy: str = field(
        default="resolve", metadata={"help": "'resolve' (the paper's procedure): drop the member the judge rejects and "
                                             "keep the members of the groups it cannot decide in separate mini-batches; "
                                             "'bucket': drop nothing, keep every group's members in separate mini-batches."})
    inconsistency_margin: float = field(
        default=0.5, metadata={"help": "The default judge (the base model's likelihood) decides a group when its "
                                       "preferred answer beats the runner-up by this many nats of mean token "
                                       "log-probability; below it the group is undecided and bucketed."})
    resample_every_k_steps: int | None = field(
        default=None, metadata={"help": "Dynamic resampling period in steps (paper: 500; default: 20 checks per run)."})
    resample_threshold: float = field(
        default=0.05, metadata={"help": "Relative accuracy drop that triggers resampling (paper: 0.05)."})
    resample_replay_share: float = field(
        default=0.25, metadata={"help": "Share of draws taken from the subsets being resampled."})
    resample_probe_per_subset: int = field(
        default=32, metadata={"help": "Training rows per subset held as the accuracy probe."})
    extra_max_epochs: int = field(default=5, metadata={"help": "Most extra epochs for under-training."})
    extra_delta: float = field(
        default=0.01, metadata={"help": "An extra epoch is rejected when its val loss exceeds the reference's + delta "
                                        "(paper: 0.01)."})
    extra_reference: str = field(
        default="start", metadata={"help": "The val loss an extra epoch is compared with: 'start' (the fine-tuned "
                                           "model's, before any extra epoch) or 'previous' (the last accepted epoch's, "
                                           "the paper's val loss(e) > val loss(e-1) + delta)."})
    extra_patience: int = field(
        default=2, metadata={"help": "Rejected epochs in a row that stop the extra epochs (the last accepted "
                                     "weights are restored); 1: the first rejection stops, as in the paper."})
    extra_on: str = field(
        default="flagged", metadata={"help": "What the extra epochs train on: 'flagged' (the under-trained samples, "
                                            "upsample_factor copies each, plus extra_replay_ratio replayed other rows "
                                            "per copy) or 'all' (the whole training set, flagged rows upsampled)."})
    extra_replay_ratio: float = field(
        default=0.0, metadata={"help": "With extra_on='flagged': replayed other rows per flagged copy (a seeded "
                                       "sample, one fixed set reshuffled each epoch); 0: the flagged samples only, "
                                       "the validation loss guarding the rest."})
    upsample_factor: int = field(
        default=4, metadata={"help": "Copies of each under-trained sample in every extra epoch (1: none)."})

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Refuse a setting no intervention can use, naming it (run again by `intervene`, for a config changed since)."""
        choices = {"inconsistency_strategy": ("bucket", "resolve"), "extra_reference": ("start", "previous"),
                   "extra_on": ("flagged", "all")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"InterventionConfig.{name} must be {' or '.join(map(repr, allowed))}, "
                                 f"got {getattr(self, name)!r}")
        if isinstance(self.extra_patience, bool) or not isinstance(self.extra_patience, int) or self.extra_patience < 1:
            raise ValueError(f"InterventionConfig.extra_patience must be an integer >= 1, got {self.extra_patience!r}")
