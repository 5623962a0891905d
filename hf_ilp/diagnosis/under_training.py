"""under_training: never learned, and the optimization had not finished with it.

Evidence (any of the three, for a sample never reproduced at any observation):
- `loss_drop`: its completion NLL was still falling at the end of its training, as a relative
  drop per observation over the last three distinct observation steps (unit-free, so one
  threshold, `falling_loss`, fits any loss scale and any observation schedule). With sequential
  stages only the observations made while the sample's own stage was trained count: later
  stages do not train it, so their drift says nothing about its optimization;
- `template_rarity`: its prompt's neighbourhood density ranks in the lowest
  `rare_template_quantile` of the dataset (few similar prompts to learn the pattern from);
- `length_ratio`: its completion is `long_target_ratio` times the dataset's median length or more.
A sample ever reproduced is not under-trained (it was learned, then lost: forgetting).
"""

from __future__ import annotations

import numpy as np

from hf_ilp.diagnosis.signals import score_above, score_below

_WINDOW = 3


def under_training_signal(records_rows, density_rank, length_ratio, config):
    """Score and evidence of "never learned, not done learning" for each record row.

    `density_rank`: per row, the share of the dataset's prompts with a lower neighbourhood density
    (0 = the rarest template); `length_ratio`: completion tokens / dataset median.
    """
    n = len(records_rows)
    drop = np.array([_loss_drop(row) for row in records_rows]) if n else np.zeros(0)
    never = np.array([not any(row["exact"]) for row in records_rows], dtype=bool)
    k = config.score_sharpness
    evidence_scores = np.stack([
        score_above(drop, config.falling_loss, k),
        score_below(np.asarray(density_rank, dtype=float) + 0.5 / max(n, 1), config.rare_template_quantile, k),
        score_above(length_ratio, config.long_target_ratio, k),
    ]) if n else np.zeros((3, 0))
    score = np.where(never, evidence_scores.max(axis=0), 0.0)
    evidence = {"loss_drop": drop, "template_rarity": 1.0 - np.asarray(density_rank, dtype=float),
                "length_ratio": np.asarray(length_ratio, dtype=float)}
    return score, evidence


def _loss_drop(row) -> float:
    """Relative NLL drop per observation over the last `_WINDOW` distinct steps (NaN if too few)."""
    steps = row.get("obs_step") or list(range(len(row["nll"])))
    stages = row.get("obs_stage") or [-1] * len(steps)
    own = row.get("stage", -1)
    keep = [k for k, s in enumerate(stages) if s == own] if own is not None and own >= 0 else []
    if len(keep) < 2:
        keep = range(len(steps))
    by_step = {}
    for k in keep:
        by_step[steps[k]] = row["nll"][k]
    nll = np.array([by_step[s] for s in sorted(by_step)], dtype=float)[-_WINDOW:]
    if len(nll) < 2 or not np.all(np.isfinite(nll)) or np.any(nll <= 0):
        return np.nan
    slope = np.polyfit(np.arange(len(nll)), np.log(nll), 1)[0]
    return float(-slope)
