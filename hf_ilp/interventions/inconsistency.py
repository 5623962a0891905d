"""data_inconsistency: resolve conflicting near-duplicates where a judge can tell, bucket the rest.

The paper's intervention for inconsistent SFT data: drop the wrong member of a conflicting group
when one can tell which it is; when both may be right, put the members in separate buckets so
that no mini-batch holds two of them (grouping beat deletion in the paper: +2.2 vs +1.5).
`intervene("data_inconsistency", ...)` does both by default: the base model judges each group
(`likelihood_judge`: the answer it finds clearly more likely is kept, the others dropped), and
the groups it cannot decide (no answer ahead by the margin, as when both are right) are
bucketed. `InterventionConfig(inconsistency_strategy="bucket")` buckets every group and drops
nothing; `judge="majority"` or a callable of yours replaces the base model as judge.

- `conflict_groups(report, dataset)`: the groups of rows (ids) that conflict, built around the
  samples the report attributes to `data_inconsistency`.
- `resolve_conflicts(dataset, groups, judge="majority")`: a new dataset without the rejected
  members, and the groups left undecided (to bucket).
- `ConflictBucketSampler` / `conflict_buckets(groups)`: a sampler whose consecutive chunks of
  `batch_size` rows (one optimizer step) never hold two members of a group; use it with any
  Trainer through `TrainSamplerMixin`.
- `likelihood_judge(model, tokenizer, margin=0.5)`: a judge that keeps the completion a reference
  model (for example the pre-trained base) finds clearly most likely, undecided below the margin.

    groups = conflict_groups(report, train)
    train, dropped, undecided = resolve_conflicts(train, groups, judge=likelihood_judge(base, tok))
    trainer = TrainSamplerSFTTrainer(model=base, args=args, train_dataset=train,
                                     train_sampler=conflict_buckets(undecided))
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Callable, Sequence

import numpy as np
import torch

from hf_ilp._rows import as_text, split_messages
from hf_ilp.interventions._common import flagged_ids, fresh_model, prompt_text
from hf_ilp.interventions.base import Intervention, sft, with_peft
from hf_ilp.interventions.sampling import optimizer_batch_size

#: Report evidence columns naming a sample's conflicting partner(s): the Diagnoser's
#: `dup_neighbor` (one id), or a user's `conflict_ids` (a list of ids).
PARTNER_COLUMNS = ("dup_neighbor", "conflict_ids")


def _normalize(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def conflict_groups(report, dataset) -> list[list[str]]:
    """Groups of sample ids that conflict, each with at least one `data_inconsistency` sample.

    A flagged sample's group is every row whose prompt is the same after lower-casing and keeping
    only word characters, joined with the partners the report names in an evidence column
    (`dup_neighbor`, the Diagnoser's near-duplicate, or `conflict_ids`). Groups
    that share a member are merged. Groups of one row are dropped (nothing to separate).
    """
    flagged = flagged_ids(report, "data_inconsistency")
    ids = [str(i) for i in dataset["id"]]
    by_prompt = defaultdict(set)
    prompt_of = {}
    for i, row_id in enumerate(ids):
        key = _normalize(prompt_text(dataset[i]))
        by_prompt[key].add(row_id)
        prompt_of[row_id] = key
    partners = {}
    cols = [c for c in PARTNER_COLUMNS if c in report.samples.column_names]
    if cols:
        for row in report.samples.select_columns(["id", *cols]):
            found = set()
            for c in cols:
                value = row[c]
                found |= {str(v) for v in ([value] if isinstance(value, str) else value or []) if v != ""}
            partners[str(row["id"])] = found
    # union-find over ids
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    known = set(ids)
    for row_id in flagged:
        members = set(by_prompt[prompt_of[row_id]]) | (partners.get(row_id, set()) & known)
        for m in members:
            parent[find(m)] = find(row_id)
    groups = defaultdict(list)
    for row_id in ids:
        if row_id in parent:
            groups[find(row_id)].append(row_id)
    return [sorted(set(g)) for g in groups.values() if len(set(g)) > 1]


def _completion_text(row) -> str:
    return as_text(row["completion"] if "completion" in row else split_messages(row["messages"])[1])


def resolve_conflicts(dataset, groups: Sequence[Sequence[str]], judge: str | Callable = "majority"):
    """Drop the members a judge rejects. Returns `(new_dataset, dropped_ids, undecided_groups)`.

    `judge="majority"` keeps the completion most members of a group give (a tie decides
    nothing). A callable `judge(prompt, completions) -> int | None` returns the index of the
    correct completion among the group's distinct completions, or None when it cannot tell.
    Undecided groups keep all their members; bucket them with `conflict_buckets`.
    """
    if not (judge == "majority" or callable(judge)):
        raise ValueError(f"judge must be 'majority' or a callable (prompt, completions) -> index|None, got {judge!r}")
    index = {str(r): i for i, r in enumerate(dataset["id"])}
    dropped, undecided = set(), []
    for group in groups:
        rows = [dataset[index[g]] for g in group]
        texts = [_completion_text(r) for r in rows]
        distinct = sorted(set(texts))
        if len(distinct) < 2:
            continue
        if judge == "majority":
            (top, n_top), *rest = Counter(texts).most_common()
            keep = top if n_top > rest[0][1] else None
        else:
            pick = judge(prompt_text(rows[0]), distinct)
            if pick is not None and not (isinstance(pick, int) and 0 <= pick < len(distinct)):
                raise ValueError(f"judge returned {pick!r}; expected None or an index in [0, {len(distinct)})")
            keep = None if pick is None else distinct[pick]
        if keep is None:
            undecided.append(list(group))
        else:
            dropped.update(g for g, t in zip(group, texts) if t != keep)
    new = dataset.filter(lambda i: str(i) not in dropped, input_columns="id")
    return new, sorted(dropped), undecided


def likelihood_judge(model, tokenizer, margin: float = 0.5) -> Callable:
    """Judge by a reference model: keep the completion with the highest mean token log-probability
    if it beats the runner-up by `margin` nats (0.5: about 1.6 times as likely per token);
    otherwise undecided (None).

    With the pre-trained base as reference, this sides with what pre-training taught, the
    paper's "authoritative knowledge" for a conflict; two answers it knows equally well (both
    right) stay undecided. The model is read in eval mode and left in the mode it was in.
    """

    @torch.no_grad()
    def judge(prompt: str, completions: list[str]):
        was_training = model.training
        model.eval()
        try:
            return _pick(prompt, completions)
        finally:
            model.train(was_training)

    def _pick(prompt: str, completions: list[str]):
        scores = []
        for c in completions:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            full = tokenizer(prompt + c, add_special_tokens=False)["input_ids"]
            n = len(p)
            ids = torch.tensor([full], device=model.device)
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            target = ids[0, 1:]
            tok = logp.gather(-1, target[:, None])[:, 0][max(n - 1, 0):]
            scores.append(tok.mean().item() if len(tok) else -math.inf)
        order = np.argsort(scores)[::-1]
        if len(scores) > 1 and scores[order[0]] - scores[order[1]] < margin:
            return None
        return int(order[0])

    return judge


class ConflictBucketSampler(torch.utils.data.Sampler):
    """Random order of row positions in which every chunk of `batch_size` consecutive rows holds at
    most one member of each group (the chunk is one optimizer step: per-device batch x
    accumulation x processes, the default of `conflict_buckets`).

    Members are spread over distinct chunks largest group first, each time into the chunks with
    the most room left; the other rows fill what remains. Reshuffled each epoch (`set_epoch`,
    called by the Trainer), identical on every process for a given seed and epoch.
    """

    def __init__(self, num_rows: int, groups: Sequence[Sequence[int]], batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_rows, self.batch_size, self.seed, self.epoch = num_rows, batch_size, seed, 0
        self.groups = [sorted(set(int(i) for i in g)) for g in groups if len(set(g)) > 1]
        seen = set()
        for g in self.groups:
            bad = [i for i in g if not 0 <= i < num_rows]
            if bad:
                raise ValueError(f"group {g} has positions {bad} outside the dataset's {num_rows} rows")
            if seen & set(g):
                raise ValueError(f"row positions {sorted(seen & set(g))} appear in more than one group; merge the groups")
            seen |= set(g)
        n_chunks = math.ceil(num_rows / batch_size) if num_rows else 0
        largest = max((len(g) for g in self.groups), default=0)
        if largest > n_chunks:
            raise ValueError(
                f"a conflicting group has {largest} members but {num_rows} rows in batches of {batch_size} "
                f"make only {n_chunks} batches; lower the batch size or resolve the group"
            )

    @classmethod
    def from_ids(cls, row_ids: Sequence, id_groups: Sequence[Sequence[str]], batch_size: int, seed: int = 0):
        """Build from sample ids: every row whose id is in a group (repeats included) joins it."""
        positions = defaultdict(list)
        for pos, row_id in enumerate(row_ids):
            positions[str(row_id)].append(pos)
        groups = [[p for i in g for p in positions.get(str(i), [])] for g in id_groups]
        return cls(len(row_ids), groups, batch_size, seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self):
        return iter(self.order())

    def order(self) -> list[int]:
        """This epoch's row order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n, b = self.num_rows, self.batch_size
        n_chunks = math.ceil(n / b)
        room = np.full(n_chunks, b)
        if n_chunks:
            room[-1] = n - (n_chunks - 1) * b
        chunks = [[] for _ in range(n_chunks)]
        groups = [self.groups[i] for i in rng.permutation(len(self.groups))]
        groups.sort(key=len, reverse=True)
        for g in groups:
            tie = rng.random(n_chunks)
            ranked = np.lexsort((tie, -room))  # most room first, random among equals
            targets = [c for c in ranked[: len(g)] if room[c] > 0]
            if len(targets) < len(g):
                raise ValueError(
                    f"cannot place a conflicting group of {len(g)} rows into distinct batches of {b}; "
                    "lower the batch size or resolve some groups"
                )
            for row, c in zip(rng.permutation(g), targets):
                chunks[c].append(int(row))
                room[c] -= 1
        grouped = {i for g in self.groups for i in g}
        free = [i for i in rng.permutation(n).tolist() if i not in grouped]
        for c in range(n_chunks):
            take, free = free[: room[c]], free[room[c]:]
            chunks[c].extend(take)
        full = [chunks[c] for c in rng.permutation(n_chunks - 1)] if n_chunks else []
        out = []
        for chunk in full + chunks[-1:]:
            out.extend(int(i) for i in rng.permutation(chunk))
        return out


def conflict_buckets(groups: Sequence[Sequence[str]], batch_size: int | None = None) -> Callable:
    """A `train_sampler` factory for `TrainSamplerMixin`: `ConflictBucketSampler` over the
    trainer's dataset, keyed by its `id` column; `batch_size` defaults to one optimizer step."""

    def factory(trainer, dataset):
        if "id" not in dataset.column_names:
            raise ValueError("conflict buckets key rows by their 'id' column, which the training dataset lacks")
        size = batch_size or optimizer_batch_size(trainer.args)
        return ConflictBucketSampler.from_ids(dataset["id"], groups, size, seed=trainer.args.seed)

    return factory


class InconsistencyIntervention(Intervention):
    """data_inconsistency: resolve where the judge can tell (`resolve_conflicts`), bucket the rest
    (`conflict_buckets`), then SFT again from the base; `inconsistency_strategy="bucket"` buckets all."""

    causes = ("data_inconsistency",)

    def check(self, inputs):
        groups = conflict_groups(inputs.report, inputs.train)
        if not groups:
            raise ValueError(
                f"the {len(inputs.flagged)} data_inconsistency samples have no conflicting partner in train_dataset "
                "(same prompt, or ids in a 'conflict_ids' report column); nothing to resolve or bucket")
        return groups

    def run(self, inputs, prepared, tmp, run_args):
        import functools

        from hf_ilp.interventions.sampling import TrainSamplerSFTTrainer

        cfg, groups = inputs.config, prepared
        train, details = inputs.train, {"groups": len(groups), "group_members": sum(map(len, groups))}
        method = "bucket"
        if cfg.inconsistency_strategy == "resolve":
            judge = inputs.judge
            if judge is None:  # the base model's likelihood (its object as given, or loaded from its path)
                base = inputs.base_model
                if isinstance(base, (str, bytes)) or hasattr(base, "__fspath__"):
                    base = fresh_model(base).to(inputs.args.device)
                judge = likelihood_judge(base, inputs.tokenizer, margin=cfg.inconsistency_margin)
                details["judge"] = f"likelihood of the base model, margin {cfg.inconsistency_margin}"
            else:
                details["judge"] = judge if isinstance(judge, str) else getattr(judge, "__name__", type(judge).__name__)
            train, dropped, groups = resolve_conflicts(train, groups, judge=judge)
            details.update(dropped=dropped, undecided_groups=len(groups))
            method = "resolve+bucket"
        model = with_peft(fresh_model(inputs.base_model), inputs.peft_config)
        trainer_cls = functools.partial(TrainSamplerSFTTrainer, train_sampler=conflict_buckets(groups))
        trainer = sft(model, inputs.tokenizer, train, run_args, inputs.callbacks, trainer_cls)
        details["bucketed_groups"] = groups
        return method, details, train, trainer
