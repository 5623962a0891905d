"""forgetting: the sample was learned at an earlier observation point and lost by the end.

Direct observation from the LearnTracker records: the greedy-reproduction verdict (`exact`) was
true at some observation before the final one and false at the final one. Only observations made
once the sample's own stage had begun count: a sample of a later stage that the model already
reproduced before training on it (knowledge the base had) was never learned by fine-tuning.
- With sequential stages (the records' `obs_stage` takes several values), a sample of an earlier
  stage that was reproduced while its own or a later, non-final stage was trained, and lost by
  the end, shows the paper's left-side forgetting (cause 4): score 0.9 or more (`forgot_stage`:
  the last stage during which it was still reproduced).
- Otherwise (a sample of the last stage, one stage, or a dataset without a `stage` column) it is
  judged across observation points only, and a flicker is not learning: the evidence is the
  share of the observations from the first one that reproduced it to the final one (included)
  that still reproduced it (`learned_obs_share`), scored against `forgetting_min_share`. A sample
  held over most of the run and lost at the end was forgotten; one reproduced once among many
  misses was never stably learned (under-training or another cause explains it better).
"""

from __future__ import annotations

import numpy as np

from hf_ilp.diagnosis.signals import score_above


def forgetting_signal(records_rows, config):
    """Score and evidence of "learned earlier, lost at the end" for each record row."""
    n = len(records_rows)
    score = np.zeros(n)
    evidence = {"learned_obs_share": np.full(n, np.nan), "first_learned_step": np.full(n, np.nan),
                "forgetting_events": np.full(n, np.nan), "forgot_stage": np.full(n, np.nan)}
    for r, row in enumerate(records_rows):
        evidence["first_learned_step"][r] = row.get("first_learned_step", np.nan)
        evidence["forgetting_events"][r] = row.get("forgetting_events", np.nan)
        exact = [bool(x) for x in row["exact"]]
        stages = list(row.get("obs_stage") or [])
        own = row.get("stage", -1)
        staged = len(stages) == len(exact) and own is not None and own >= 0
        if staged:  # observations made once the sample's own stage had begun
            kept = [(s, e) for s, e in zip(stages, exact) if s >= own]
            stages, exact = [s for s, _ in kept], [e for _, e in kept]
        earlier = exact[:-1]
        if not any(earlier) or exact[-1]:
            continue
        share = float(np.mean(exact[earlier.index(True):]))
        evidence["learned_obs_share"][r] = share
        score[r] = score_above(share, config.forgetting_min_share, config.score_sharpness)
        if staged and len(set(stages)) > 1 and own < stages[-1]:
            learned_stages = [s for s, e in zip(stages[:-1], earlier) if e and s < stages[-1]]
            if learned_stages:
                evidence["forgot_stage"][r] = max(learned_stages)
                score[r] = max(score[r], 0.9)
    return score, evidence


def has_stages(records_rows) -> bool:
    """True when the observations span several training stages."""
    return any(len(set(row.get("obs_stage") or [])) > 1 for row in records_rows)
