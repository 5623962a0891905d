"""What ILP-World needs to calibrate its planted causes: greedy reproduction per row, the count of
unlearned rows per planted cause, and which member of each inconsistent pair the corpus backs.

`reproduced` is the greedy verdict of `hf_ilp.check_learned` (teacher-forced argmax, tokenized as
TRL's `SFTTrainer` does), so the world, the tracker and the recipe judge "learned" the same way.
"""

from hf_ilp.tracking import check_learned


def reproduced(model, tokenizer, dataset, batch_size: int = 64) -> list[bool]:
    """For each row of `dataset` (prompt-completion or `messages`), whether greedy decoding reproduces the completion."""
    return list(check_learned(model, tokenizer, dataset, batch_size=batch_size, progress=False)["exact"])


def unlearned_by_cause(dataset, reproduced_flags) -> dict:
    """Count, per `world_cause` ("" for normal samples), how many rows are not reproduced.

    Returns `{cause: {"unlearned": n, "total": m}}`. ILP-World's ground truth is read here only
    to calibrate the world and to summarize its demo; no diagnosis code calls this.
    """
    counts = {}
    for cause, ok in zip(dataset["world_cause"], reproduced_flags):
        entry = counts.setdefault(cause, {"unlearned": 0, "total": 0})
        entry["total"] += 1
        entry["unlearned"] += not ok
    return dict(sorted(counts.items()))


def inconsistent_members(world) -> dict[str, bool]:
    """For each `data_inconsistency` row of `world.train`, whether its answer is the one the corpus
    states (its prerequisite statement, as the row states it, is a corpus line): `{id: True}` for
    the right member of a pair, False for the wrong one. Ground truth, like `unlearned_by_cause`."""
    corpus = set(world.corpus["text"])
    return {
        row["id"]: probe["probe_prompts"][0] + probe["probe_completions"][0] in corpus
        for row, probe in zip(world.train, world.probes)
        if row["world_cause"] == "data_inconsistency"
    }
