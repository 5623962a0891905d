"""incomplete_learning: the exact learn-check of hf_ilp as an `evaluate` metric.

Greedy decoding reproduces a completion exactly if and only if, under teacher forcing, the argmax
at every supervised position (the completion's tokens, EOS included) equals the target token.
So the share of samples a model has learned follows from one teacher-forced pass, the same pass
the Trainer's evaluation loop already makes: pass the argmax ids as `predictions` and the labels
(`-100` where not supervised) as `references`.

Load it offline by path: `evaluate.load(hf_ilp.metrics.INCOMPLETE_LEARNING)`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of int): argmax token ids of a teacher-forced forward pass, one row
        per sample, aligned with the inputs (position t predicts token t+1 when `shift=True`).
        Positions padded by the evaluation loop may hold any value; they are ignored where the
        reference is `ignore_index`.
    references (list of list of int): the labels, `ignore_index` where a token is not supervised.
    shift (bool, default True): predictions come from a causal LM whose logits at position t
        predict token t+1 (transformers' convention; labels are not shifted). False when the
        predictions are already aligned with the references.
    ignore_index (int, default -100): the label of positions not supervised.
    return_per_sample (bool, default False): also return `exact`, one bool per sample.
Returns:
    learned_share: share of samples reproduced exactly (every supervised token is the argmax).
    n_learned, n_samples: the counts behind it.
    token_accuracy: share of supervised tokens that are the argmax.
    exact (only with return_per_sample): per-sample verdicts.
Examples:
    >>> metric = evaluate.load("path/to/incomplete_learning")
    >>> metric.compute(predictions=[[7, 9, 2, 0], [7, 8, 2, 0]], references=[[-100, 7, 9, 2], [-100, 7, 9, 2]])
    {'learned_share': 0.5, 'n_learned': 1, 'n_samples': 2, 'token_accuracy': 0.8333333333333334}
"""

_CITATION = """\
@misc{ilp2026,
  title = {Why Supervised Fine-Tuning Fails to Learn: A Systematic Study of Incomplete Learning in Large Language Models},
  year = {2026},
  eprint = {2604.10079},
  archivePrefix = {arXiv}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class IncompleteLearning(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, shift=True, ignore_index=-100, return_per_sample=False):
        exact, correct, supervised = [], 0, 0
        for i, (pred, ref) in enumerate(zip(predictions, references)):
            pred, ref = np.asarray(pred), np.asarray(ref)
            if shift:
                pred, ref = pred[:-1], ref[1:]
            n = min(len(pred), len(ref))
            if len(ref) > n and np.any(ref[n:] != ignore_index):
                raise ValueError(f"sample {i}: predictions ({len(pred)}) are shorter than the supervised references ({len(ref)})")
            pred, ref = pred[:n], ref[:n]
            mask = ref != ignore_index
            if not mask.any():
                raise ValueError(f"sample {i} has no supervised token (every reference is {ignore_index})")
            hits = pred[mask] == ref[mask]
            exact.append(bool(hits.all()))
            correct += int(hits.sum())
            supervised += int(mask.sum())
        n_samples = len(exact)
        result = {
            "learned_share": sum(exact) / n_samples if n_samples else float("nan"),
            "n_learned": int(sum(exact)),
            "n_samples": n_samples,
            "token_accuracy": correct / supervised if supervised else float("nan"),
        }
        if return_per_sample:
            result["exact"] = exact
        return result
