"""missing_knowledge: the base model does not know the answer (SliCK "Unknown").

Evidence, from one teacher-forced pass of the base model over the completion (and over the
sample's prerequisite probes when the user supplies them):
- `base_gold_prob`: geometric mean probability of the target's tokens;
- `base_alt_prob`: probability of the base's own choice where it first leaves the target;
- `probe_gold_prob` / `probe_alt_prob`: the same, averaged over the sample's probes.
The base knows what a sample needs if it gives the target, or its probes, a fair probability;
it does not know it when both stay under `unknown_prob` and it holds no belief of its own there.
A belief is an alternative the base holds as firmly as it holds what it demonstrably knows
(`belief_bar`: see `DiagnoserConfig.known_confidence_quantile`; never below
`confident_alternative_prob`), scored on the odds, where a guess at 0.8 and knowledge at 0.99 lie
far apart. When too few rows are known to calibrate the bar, the fixed bar is used and the
alternative must also survive fine-tuning. Survival:
the fine-tuned model, trained on this very target, still gives the base's answer more
probability than the target where the base left it (`ft_follows_base`). The comparison is
between those two answers only, so drift of the fine-tuned model towards third answers (later
stages, other samples) does not hide a prior that still beats the target. It is read on the target even when probes are given,
because the target is where fine-tuning pushed: the probes' format is not trained, so a guess
persists there whatever it is. Stored knowledge
resists the SFT that contradicts it (that is the conflict, and why the sample stays unlearned);
a confident guess about something the base never learned (a small model's default answer) is
dropped by the same SFT, so it counts as missing knowledge, not as a conflict.

Probes sharpen the verdict. A prompt in the SFT format is something the base may never have
seen: its answer there mixes what it knows with how it reads an unfamiliar format (a base model
often continues a new format confidently with something else). Probes ask the prerequisite
facts the way knowledge is stored, so when a sample has probes its alternative answer is read
on them only: a base that answers the prerequisites but not the SFT phrasing neither lacks nor
contradicts the knowledge (the failure lies elsewhere, e.g. under-training of a long format).
"""

from __future__ import annotations

import numpy as np

from hf_ilp.diagnosis.signals import score_below, score_odds_above


def knowledge(base, probes=None):
    """Per sample: how well the base knows it (max over target and probes), how firmly it prefers
    another answer (on the probes when the sample has some, else on the target), and whether
    fine-tuning on the target kept the base's preference there."""
    known = np.asarray(base["gm_p"], dtype=float)
    alt = np.asarray(base["alt_prob"], dtype=float)
    follows = np.asarray(base["follows_alt"], dtype=float)
    if probes is not None:
        has = ~np.isnan(probes["gm_p"])
        known = np.fmax(known, probes["gm_p"])
        alt = np.where(has, probes["alt_prob"], alt)
    return known, alt, follows


def belief_score(base, config, probes=None, belief_bar=None):
    """Score of "the base holds another answer that survived fine-tuning" (the conflict evidence).

    `belief_bar`: the calibrated bar (how firmly the base holds what it knows). An alternative
    held that firmly is a belief whatever fine-tuning did to it. Without a calibrated bar the fixed
    `config.confident_alternative_prob` is used, and the alternative must also have survived
    fine-tuning (`ft_follows_base`), which is what tells a small model's firm guess from a belief.
    """
    _, alt, follows = knowledge(base, probes)
    if belief_bar is None:  # uncalibrated: a fixed bar cannot tell a firm guess from knowledge, survival does
        return np.minimum(score_odds_above(alt, config.confident_alternative_prob, config.score_sharpness),
                          np.nan_to_num(follows))
    return score_odds_above(alt, belief_bar, config.score_sharpness)


def missing_knowledge_signal(base, config, probes=None, belief_bar=None, known_elsewhere=None):
    """Score (n,) and evidence columns of "the base model does not know it". `known_elsewhere`: how
    well the base knows the target when it is read outside the sample's own frame (after few-shot
    exemplars, or its content asked in the dataset's other templates: `hf_ilp.diagnosis.probing`).
    It only ever adds knowledge: a frame the base never saw does not make a known fact unknown."""
    known, _, _ = knowledge(base, probes)
    if known_elsewhere is not None:
        known = np.fmax(known, known_elsewhere)
    score = np.minimum(score_below(known, config.unknown_prob, config.score_sharpness),
                       1.0 - belief_score(base, config, probes, belief_bar))
    evidence = {"base_gold_prob": base["gm_p"], "base_alt_prob": base["alt_prob"],
                "base_exact": base["exact"], "base_seq_prob": base["p_seq"]}
    return score, evidence
