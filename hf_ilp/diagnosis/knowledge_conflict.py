"""knowledge_conflict: the base model confidently prefers a different answer.

The score is the paper's first criterion, measured on the completion: the base answers otherwise
with confidence (`base_alt_prob`, its probability for its own choice at the first token where it
leaves the target, at least the calibrated belief bar, see `missing_knowledge`; read on the
sample's prerequisite probes when it has some), and that answer is a belief, not a guess: the fine-tuned model still
prefers it (`ft_follows_base`; see `missing_knowledge` for why a guess does not count).

The paper's second criterion, JSD(P_base, P_sft) > 0.3, is reported as evidence (`jsd_base_ft`,
the mean Jensen-Shannon divergence in bits between the base and fine-tuned next-token
distributions over the completion) but does not gate the verdict: for an *unlearned* sample the
fine-tuned greedy token is by definition still not the target, which caps how far it can have
moved from a confident base. A base at 0.9 on its own answer against a fine-tuned model split
0.5 / 0.4 between that answer and the target gives only about 0.2 bits (0.23 in this package's
tests), so a 0.3 gate would reject most of the conflicts that SFT failed to overturn. The
comparison of the two models that decides is `ft_follows_base`: did the prior survive?
"""

from __future__ import annotations

import numpy as np

from hf_ilp.diagnosis.missing_knowledge import belief_score
from hf_ilp.diagnosis.signals import score_below


def knowledge_conflict_signal(base, config, probes=None, belief_bar=None, known_elsewhere=None):
    """Score (n,) and evidence columns of "the base confidently knows something else".

    `known_elsewhere` (see `missing_knowledge_signal`): where the base gives the target itself once
    the sample is read outside its own frame, the other answer it gives in that frame is how it
    continues an unfamiliar format, not a belief that contradicts the target: no conflict."""
    score = belief_score(base, config, probes, belief_bar)
    if known_elsewhere is not None:
        elsewhere = np.asarray(known_elsewhere, dtype=float)
        unknown = np.where(np.isnan(elsewhere), 1.0, score_below(elsewhere, config.unknown_prob, config.score_sharpness))
        score = np.minimum(score, unknown)
    evidence = {"jsd_base_ft": base["jsd"], "ft_gold_prob": base["other_gm_p"], "ft_follows_base": base["follows_alt"]}
    return score, evidence
