"""knowledge_conflict: the base model confidently prefers a different answer.

The score is the paper's first criterion, measured on the completion: the base answers otherwise
with confidence (`base_alt_prob`, its probability for its own choice at the first token where it
leaves the target, at least `confident_alternative_prob`; read on the sample's prerequisite
probes when it has some, see `missing_knowledge`).

The paper's second criterion, JSD(P_base, P_sft) > 0.3, is reported as evidence (`jsd_base_ft`,
the mean Jensen-Shannon divergence in bits between the base and fine-tuned next-token
distributions over the completion) but does not gate the verdict: for an *unlearned* sample the
fine-tuned greedy token is by definition still not the target, which caps how far it can have
moved from a confident base. A base at 0.9 on its own answer against a fine-tuned model split
0.5 / 0.4 between that answer and the target gives only about 0.2 bits (0.23 in this package's
tests), so a 0.3 gate would reject most of the conflicts that SFT failed to overturn. `ft_follows_base` says
whether the fine-tuned model still prefers the base's answer where the base left the target.
"""

from __future__ import annotations

from hf_ilp.diagnosis.missing_knowledge import knowledge
from hf_ilp.diagnosis.signals import score_above


def knowledge_conflict_signal(base, config, probes=None):
    """Score (n,) and evidence columns of "the base confidently knows something else"."""
    _, alt = knowledge(base, probes)
    score = score_above(alt, config.confident_alternative_prob, config.score_sharpness)
    evidence = {"jsd_base_ft": base["jsd"], "ft_gold_prob": base["other_gm_p"], "ft_follows_base": base["follows_alt"]}
    return score, evidence
