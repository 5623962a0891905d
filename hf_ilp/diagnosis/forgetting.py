"""forgetting: the sample was learned at an earlier observation point and lost by the end.

Direct observation from the LearnTracker records, no threshold: the greedy-reproduction verdict
(`exact`) was true at some observation before the final one and false at the final one.
- With sequential stages (the records' `obs_stage` takes several values), a sample of an earlier
  stage that was reproduced while its own or a later, non-final stage was trained, and lost by
  the end, shows the paper's left-side forgetting (cause 4): score 0.9 or more (`forgot_stage`:
  the last stage during which it was still reproduced).
- Otherwise (one stage, or a dataset without a `stage` column) it is judged across observation
  points only: score 0.5 + 0.5 x the share of observations since it was first learned at which it
  was still reproduced (a sample reproduced once and never again scores just above 0.5, one held
  until the very end scores near 1).
"""

from __future__ import annotations

import numpy as np


def forgetting_signal(records_rows):
    """Score and evidence of "learned earlier, lost at the end" for each record row."""
    n = len(records_rows)
    score = np.zeros(n)
    evidence = {"learned_obs_share": np.full(n, np.nan), "first_learned_step": np.full(n, np.nan),
                "forgetting_events": np.full(n, np.nan), "forgot_stage": np.full(n, np.nan)}
    for r, row in enumerate(records_rows):
        exact = [bool(x) for x in row["exact"]]
        evidence["first_learned_step"][r] = row.get("first_learned_step", np.nan)
        evidence["forgetting_events"][r] = row.get("forgetting_events", np.nan)
        earlier = exact[:-1]
        if not any(earlier) or (exact and exact[-1]):
            continue
        first = earlier.index(True)
        share = float(np.mean(earlier[first:]))
        evidence["learned_obs_share"][r] = share
        score[r] = 0.5 + 0.5 * share
        stages = list(row.get("obs_stage") or [])
        own = row.get("stage", -1)
        if len(set(stages)) > 1 and len(stages) == len(exact) and 0 <= own < stages[-1]:
            learned_stages = [s for s, e in zip(stages[:-1], earlier) if e and own <= s < stages[-1]]
            if learned_stages:
                evidence["forgot_stage"][r] = max(learned_stages)
                score[r] = max(score[r], 0.9)
    return score, evidence


def has_stages(records_rows) -> bool:
    """True when the observations span several training stages."""
    return any(len(set(row.get("obs_stage") or [])) > 1 for row in records_rows)
