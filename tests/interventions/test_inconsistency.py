import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings, strategies as st

from hf_ilp.diagnosis.report import DiagnosisReport
from hf_ilp.interventions.inconsistency import (
    ConflictBucketSampler, conflict_buckets, conflict_groups, likelihood_judge, resolve_conflicts,
)
from hf_ilp.interventions.sampling import TrainSamplerSFTTrainer

from tests.interventions.conftest import make_rows, sft_args


@st.composite
def _layout(draw):
    batch = draw(st.integers(1, 8))
    n = draw(st.integers(1, 80))
    n_chunks_full = n // batch
    perm = draw(st.permutations(range(n)))
    groups, pos = [], 0
    while n_chunks_full >= 2 and pos < n and draw(st.booleans()):
        size = draw(st.integers(2, n_chunks_full))
        if pos + size > n:
            break
        groups.append(list(perm[pos:pos + size]))
        pos += size
    return n, batch, groups, draw(st.integers(0, 3))


@settings(max_examples=300, deadline=None)
@given(_layout())
def test_no_batch_holds_two_members_of_a_group(layout):
    n, batch, groups, epoch = layout
    sampler = ConflictBucketSampler(n, groups, batch, seed=7)
    sampler.set_epoch(epoch)
    order = list(sampler)
    assert sorted(order) == list(range(n))  # a permutation: every row once per epoch
    group_of = {i: k for k, g in enumerate(groups) for i in g}
    for start in range(0, n, batch):
        members = [group_of[i] for i in order[start:start + batch] if i in group_of]
        assert len(members) == len(set(members))


def test_sampler_reshuffles_per_epoch_and_is_deterministic():
    s = ConflictBucketSampler(40, [[0, 1, 2], [3, 4]], 4, seed=1)
    a = s.order()
    s.set_epoch(1)
    b = s.order()
    assert a != b and sorted(a) == sorted(b)
    s.set_epoch(0)
    assert s.order() == a


def test_infeasible_group_is_refused_clearly():
    with pytest.raises(ValueError, match="3 members .* only 2 batches"):
        ConflictBucketSampler(8, [[0, 1, 2]], 4)


def _report(rows, flagged):
    return DiagnosisReport.from_rows([
        {"id": r["id"], "learned": r["id"] not in flagged, "cause": "data_inconsistency" if r["id"] in flagged else "",
         "confidence": 1.0, "runner_up": "", "runner_up_confidence": 0.0}
        for r in rows
    ])


def _conflicting_rows():
    rows = make_rows(12)
    rows.append({"id": "dup1", "prompt": "what is w3 ?", "completion": " w39"})  # conflicts with s3
    rows.append({"id": "dup2", "prompt": "What is  w3?", "completion": " w23"})  # same prompt, agrees with s3
    rows.append({"id": "dup3", "prompt": "what is w5 ?", "completion": " w38"})  # conflicts with s5 (a tie)
    return rows


def test_groups_and_majority_resolution():
    rows = _conflicting_rows()
    ds = Dataset.from_list(rows)
    report = _report(rows, {"dup1", "dup3"})
    groups = conflict_groups(report, ds)
    assert sorted(map(sorted, groups)) == [["dup1", "dup2", "s3"], ["dup3", "s5"]]
    new, dropped, undecided = resolve_conflicts(ds, groups)
    assert dropped == ["dup1"]  # two members say w23, one says w39
    assert undecided == [["dup3", "s5"]]  # 1 vs 1: undecided, left to bucketing
    assert len(new) == len(ds) - 1 and "dup1" not in new["id"] and len(ds) == len(rows)  # input untouched


def test_custom_judge():
    rows = _conflicting_rows()
    ds = Dataset.from_list(rows)
    groups = conflict_groups(_report(rows, {"dup3"}), ds)
    new, dropped, undecided = resolve_conflicts(ds, groups, judge=lambda prompt, comps: comps.index(" w38"))
    assert dropped == ["s5"] and undecided == []
    with pytest.raises(ValueError, match="judge returned 5"):
        resolve_conflicts(ds, groups, judge=lambda p, c: 5)


class _FixedLM(torch.nn.Module):
    """A language model whose next-token distribution is the same at every position: `logp`."""

    def __init__(self, logp):
        super().__init__()
        self.logp = logp
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.modes = []

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids):
        self.modes.append(self.training)
        return SimpleNamespace(logits=self.logp.expand(*input_ids.shape, -1).clone())


def test_likelihood_judge_decides_only_beyond_the_margin(tokenizer):
    """Mean token log-probability: the answer ahead by more than `margin` nats is kept; closer than
    that (as for two answers a base knows alike) the group is undecided."""
    vocab = tokenizer.get_vocab()
    a, b = vocab["w27"], vocab["w39"]

    def model_with(gap):
        logits = torch.zeros(len(vocab))
        logits[a], logits[b] = 5.0 + gap, 5.0
        return _FixedLM(torch.log_softmax(logits, -1))

    clear, close = model_with(0.6), model_with(0.4)
    assert likelihood_judge(clear, tokenizer, margin=0.5)("what is w7 ?", [" w39", " w27"]) == 1
    assert likelihood_judge(close, tokenizer, margin=0.5)("what is w7 ?", [" w39", " w27"]) is None
    assert likelihood_judge(close, tokenizer, margin=0.3)("what is w7 ?", [" w27", " w39"]) == 0
    # read in eval mode, handed back in the mode it came in
    clear.train()
    likelihood_judge(clear, tokenizer)("what is w7 ?", [" w39", " w27"])
    assert clear.modes[-1] is False and clear.training


def test_bucketed_sft_trainer_never_batches_a_group(tmp_path, tokenizer, tiny_model):
    """A real SFTTrainer run: the rows of every step's batch come from the bucket sampler."""
    rows = _conflicting_rows()
    ds = Dataset.from_list(rows)
    groups = [["dup1", "dup2", "s3"], ["dup3", "s5"]]
    args = sft_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, num_train_epochs=2)
    trainer = TrainSamplerSFTTrainer(model=tiny_model, args=args, train_dataset=ds, processing_class=tokenizer,
                                     train_sampler=conflict_buckets(groups))
    seen = []
    real = trainer.get_train_dataloader

    def record():
        dl = real()
        sampler = dl.batch_sampler.sampler
        seen.append((sampler, sampler.batch_size))
        return dl

    trainer.get_train_dataloader = record
    trainer.train()
    sampler, size = seen[0]
    assert isinstance(sampler, ConflictBucketSampler) and size == 4
    ids = trainer.train_dataset["id"]
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = [ids[i] for i in sampler.order()]
        for start in range(0, len(order), size):
            chunk = set(order[start:start + size])
            assert all(len(chunk & set(g)) <= 1 for g in groups)
    assert trainer.state.global_step == 2 * math.ceil(len(ds) / 4)


def test_groups_follow_the_diagnosers_near_duplicate_evidence():
    rows = make_rows(6) + [{"id": "para", "prompt": "the answer of w2 is what ?", "completion": " w30"}]
    ds = Dataset.from_list(rows)
    report_rows = [
        {"id": r["id"], "learned": r["id"] != "para", "cause": "data_inconsistency" if r["id"] == "para" else "",
         "confidence": 1.0, "runner_up": "", "runner_up_confidence": 0.0,
         "dup_neighbor": "s2" if r["id"] == "para" else ""}
        for r in rows
    ]
    assert conflict_groups(DiagnosisReport.from_rows(report_rows), ds) == [["para", "s2"]]
