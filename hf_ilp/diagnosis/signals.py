"""Turning a measured quantity into a cause score in [0, 1], one rule for every signal.

`score_above(x, t)` is sigmoid(sharpness * ln(x / t)): exactly 0.5 at the threshold, symmetric in
ratio (twice the threshold scores like half of it, mirrored), and free of units, so one
`score_sharpness` serves probabilities, divergences, similarities' distances, slopes and length
ratios alike. Combining conditions: all must hold -> the minimum; any may hold -> the maximum.
NaN (signal not computed) scores 0.
"""

from __future__ import annotations

import numpy as np

_TINY = 1e-9


def score_above(x, threshold: float, sharpness: float) -> np.ndarray:
    """Score of "x exceeds threshold": 0.5 at x == threshold, -> 1 above, -> 0 below."""
    x = np.asarray(x, dtype=float)
    z = sharpness * (np.log(np.maximum(x, _TINY)) - np.log(threshold))
    out = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
    return np.where(np.isnan(x), 0.0, out)


def score_odds_above(p, threshold: float, sharpness: float) -> np.ndarray:
    """`score_above` on the odds p / (1 - p): for probabilities near 1, where 0.99 and 0.9 differ by
    a factor of 11 in odds but only 10% in ratio."""
    p = np.asarray(p, dtype=float)
    odds = np.where(np.isnan(p), np.nan, p / np.maximum(1.0 - p, _TINY))
    return score_above(odds, threshold / (1.0 - threshold), sharpness)


def score_below(x, threshold: float, sharpness: float) -> np.ndarray:
    """Score of "x stays under threshold" (the mirror of `score_above`)."""
    x = np.asarray(x, dtype=float)
    return np.where(np.isnan(x), 0.0, 1.0 - score_above(np.where(np.isnan(x), 1.0, x), threshold, sharpness))


def score_close(similarity, threshold: float, sharpness: float) -> np.ndarray:
    """Score of "similarity reaches threshold", on the distance 1 - similarity (similarities near 1)."""
    s = np.asarray(similarity, dtype=float)
    return np.where(np.isnan(s), 0.0, score_below(1.0 - np.where(np.isnan(s), 0.0, s), 1.0 - threshold, sharpness))
