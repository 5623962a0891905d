"""`evaluate` metric modules shipped with hf_ilp, loadable offline by path.

Example:
    >>> import evaluate
    >>> from hf_ilp.metrics import INCOMPLETE_LEARNING, argmax_logits
    >>> metric = evaluate.load(INCOMPLETE_LEARNING)
    >>> def compute_metrics(p):
    ...     return metric.compute(predictions=p.predictions, references=p.label_ids)
    >>> trainer = SFTTrainer(..., compute_metrics=compute_metrics,
    ...                      preprocess_logits_for_metrics=argmax_logits)
"""

from hf_ilp.resources import data_dir

#: Folder of the `incomplete_learning` metric: pass it to `evaluate.load`.
INCOMPLETE_LEARNING = str(data_dir("hf_ilp.metrics.incomplete_learning"))


def argmax_logits(logits, labels):
    """`preprocess_logits_for_metrics` for the metric: keep the argmax token ids, not the logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)
