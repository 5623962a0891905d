"""End-to-end: each intervention on a tiny Llama, plain and LoRA; bad input leaves nothing behind."""

import json

import pytest
import torch
from datasets import Dataset

from hf_ilp.diagnosis.report import DiagnosisReport
from hf_ilp.interventions.apply import InterventionConfig, before_after, confirmation, intervene
from hf_ilp.interventions.knowledge import BM25KnowledgeSource, KnowledgeSource

from tests.interventions.conftest import make_rows, sft_args

CAUSE_ROWS = {
    "missing_knowledge": ["s1", "s2"],
    "knowledge_conflict": ["s3"],
    "data_inconsistency": ["dup"],
    "forgetting": ["s4", "s5"],
    "under_training": ["s6"],
}


def _train():
    rows = make_rows(24, stages=2)
    rows.append({"id": "dup", "prompt": "what is w7 ?", "completion": " w39", "stage": 1})
    return Dataset.from_list(rows)


def _report(ids, flags):
    cause_of = {i: c for c, xs in flags.items() for i in xs}
    return DiagnosisReport.from_rows([
        {"id": i, "learned": i not in cause_of, "cause": cause_of.get(i, ""), "confidence": 0.9,
         "runner_up": "", "runner_up_confidence": 0.0} for i in ids
    ])


CORPUS = [f"fact : the answer of w{k} is w{20 + k}" for k in range(20)] + ["fact : w1 w2 w3 what"] * 3


def _run(cause, tmp_path, tokenizer, model, peft_config=None, **kw):
    train = _train()
    report = _report(train["id"], CAUSE_ROWS)
    val = Dataset.from_list(make_rows(8))
    return intervene(cause, report, train, tmp_path / f"out-{cause}", base_model=model, model=model,
                     tokenizer=tokenizer, args=sft_args(tmp_path / "args"), eval_dataset=val,
                     knowledge_source=BM25KnowledgeSource(CORPUS), peft_config=peft_config,
                     config=InterventionConfig(extra_max_epochs=2, resample_every_k_steps=2), **kw)


# LoRA on a fresh base shares one code path (knowledge_conflict covers it by default); the others are slow
_CASES = [pytest.param(c, False, id=f"{c}-full") for c in CAUSE_ROWS] + [
    pytest.param(c, True, id=f"{c}-lora",
                 marks=[pytest.mark.slow] if c in ("missing_knowledge", "data_inconsistency", "forgetting") else [])
    for c in CAUSE_ROWS
]


@pytest.mark.parametrize("cause,lora", _CASES)
def test_each_intervention_writes_a_new_run(cause, lora, tmp_path, tokenizer, tiny_model):
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    train_before = _train().to_list()
    result = _run(cause, tmp_path, tokenizer, tiny_model, peft_config)
    # inputs untouched
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    assert _train().to_list() == train_before
    manifest = json.loads((result.path / "intervention.json").read_text())
    assert manifest["cause"] == cause and manifest["input_report"]["flagged"] == len(CAUSE_ROWS[cause])
    for rel in manifest["outputs"].values():
        assert (result.path / rel).exists()
    assert (result.model_path / ("adapter_config.json" if lora else "config.json")).is_file()
    assert manifest["inputs"]["peft"] is lora
    assert not list(result.path.parent.glob(".*tmp-*"))
    # the trained model moved away from the base
    trained = result.model.merge_and_unload() if lora else result.model
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items() if k in before)
    if cause in ("missing_knowledge", "knowledge_conflict"):
        corpus = Dataset.load_from_disk(str(result.path / "cpt_corpus"))
        share = corpus["origin"].count("general") / len(corpus)
        assert share == pytest.approx(0.8, abs=0.05)
        assert set(corpus.filter(lambda o: o == "retrieved", input_columns="origin")["query_id"]) <= set(CAUSE_ROWS[cause])
    if cause == "under_training":  # the robust stopping rule by default (see interventions.under_training)
        assert (manifest["config"]["extra_reference"], manifest["config"]["extra_patience"]) == ("start", 2)
        assert manifest["details"]["extra_epochs_kept"] == len(manifest["details"]["val_losses"]) - 1
    if cause == "forgetting":
        assert "stage" not in result.load_train_dataset().column_names
        assert manifest["details"]["resampling_history"] and manifest["details"]["replayed_draws"] >= 0


def _two_conflicts():
    """Training rows with two conflicting pairs: 'dup' against s7 (w27 / w39), 'dup2' against s8 (w28 / w38)."""
    rows = _train().to_list() + [{"id": "dup2", "prompt": "what is w8 ?", "completion": " w38", "stage": 1}]
    return Dataset.from_list(rows)


def test_default_resolves_with_the_base_models_likelihood_and_buckets_the_rest(tmp_path, tokenizer, tiny_model,
                                                                                monkeypatch):
    """The default: the base model judges each group (likelihood_judge, margin from the config); what it
    rejects is dropped, the groups it cannot decide are bucketed."""
    import hf_ilp.interventions.inconsistency as inconsistency

    seen = {}

    def fake_likelihood_judge(model, tokenizer, margin):
        seen.update(model=model, margin=margin)
        return lambda prompt, completions: completions.index(" w27") if " w27" in completions else None

    monkeypatch.setattr(inconsistency, "likelihood_judge", fake_likelihood_judge)
    assert InterventionConfig().inconsistency_strategy == "resolve"
    train = _two_conflicts()
    report = _report(train["id"], {"data_inconsistency": ["dup", "dup2"]})
    res = intervene("data_inconsistency", report, train, tmp_path / "default", base_model=tiny_model,
                    tokenizer=tokenizer, args=sft_args(tmp_path / "a"))
    assert seen["model"] is tiny_model and seen["margin"] == InterventionConfig().inconsistency_margin
    details = res.manifest["details"]
    assert res.manifest["method"] == "resolve+bucket" and details["judge"].startswith("likelihood of the base model")
    assert details["dropped"] == ["dup"] and res.removed_ids == ["dup"]
    assert details["bucketed_groups"] == [["dup2", "s8"]] and details["undecided_groups"] == 1
    assert len(res.load_train_dataset()) == len(train) - 1


def test_other_judges_and_bucketing_only(tmp_path, tokenizer, tiny_model):
    train, report = _train(), _report(_train()["id"], CAUSE_ROWS)
    common = dict(base_model=tiny_model, tokenizer=tokenizer, args=sft_args(tmp_path / "a"))
    res = intervene("data_inconsistency", report, train, tmp_path / "resolved", judge=lambda p, c: c.index(" w27"),
                    **common)
    assert res.manifest["details"]["dropped"] == ["dup"]
    assert "dup" not in res.load_train_dataset()["id"] and len(res.load_train_dataset()) == len(train) - 1
    res = intervene("data_inconsistency", report, train, tmp_path / "majority", judge="majority", **common)
    assert res.manifest["details"]["judge"] == "majority" and res.manifest["details"]["dropped"] == []  # a 1-1 tie
    res = intervene("data_inconsistency", report, train, tmp_path / "bucketed",
                    config=InterventionConfig(inconsistency_strategy="bucket"), **common)
    assert res.manifest["method"] == "bucket" and "dropped" not in res.manifest["details"]
    assert res.manifest["details"]["bucketed_groups"] == [["dup", "s7"]] and len(res.load_train_dataset()) == len(train)
    with pytest.raises(ValueError, match="judge must be"):
        intervene("data_inconsistency", report, train, tmp_path / "bad", judge="oracle", **common)


class _Nothing(KnowledgeSource):
    texts = ["unrelated"]

    def retrieve(self, queries, k):
        return [[] for _ in queries]


def test_bad_input_is_refused_before_any_output(tmp_path, tokenizer, tiny_model):
    train = _train()
    args = sft_args(tmp_path / "a")
    common = dict(base_model=tiny_model, model=tiny_model, tokenizer=tokenizer, args=args)
    other = _report([f"x{i}" for i in range(5)], {"forgetting": ["x1"]})
    with pytest.raises(ValueError, match="does not describe train_dataset"):
        intervene("forgetting", other, train, tmp_path / "o1", **common)
    empty = _report(train["id"], {})
    with pytest.raises(ValueError, match="flags no sample as forgetting"):
        intervene("forgetting", empty, train, tmp_path / "o2", **common)
    report = _report(train["id"], CAUSE_ROWS)
    with pytest.raises(ValueError, match="returned no document"):
        intervene("missing_knowledge", report, train, tmp_path / "o3", knowledge_source=_Nothing(), **common)
    with pytest.raises(ValueError, match="eval_dataset"):
        intervene("under_training", report, train, tmp_path / "o4", **common)
    with pytest.raises(ValueError, match="extra_patience"):
        intervene("under_training", report, train, tmp_path / "o5", eval_dataset=train,
                  config=InterventionConfig(extra_patience=0), **common)
    for bad in (dict(inconsistency_strategy="vote"), dict(extra_reference="best"), dict(extra_on="some"),
                dict(extra_patience=True)):
        with pytest.raises(ValueError, match=rf"InterventionConfig\.{next(iter(bad))} must be"):
            InterventionConfig(**bad)  # refused when built, as TRL's configs refuse theirs
    changed = InterventionConfig()
    changed.extra_on = "some"
    with pytest.raises(ValueError, match=r"InterventionConfig\.extra_on must be"):  # and a config changed since
        intervene("forgetting", report, train, tmp_path / "o6", config=changed, **common)
    assert list(tmp_path.iterdir()) == []


def test_crash_halfway_leaves_no_partial_output(tmp_path, tokenizer, tiny_model):
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        _run("forgetting", tmp_path, tokenizer, tiny_model, callbacks=[Boom()])
    assert not (tmp_path / "out-forgetting").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out-forgetting")]


def test_before_after_table():
    ids = [f"s{i}" for i in range(6)]
    before = _report(ids, {"forgetting": ["s1", "s2"], "under_training": ["s3"]})
    after = _report(ids, {"under_training": ["s3", "s4"]})
    table = {r["cause"]: r for r in before_after(before, after)}
    assert table["forgetting"] == {"cause": "forgetting", "before": 2, "after": 0, "change": -2}
    assert table["total"]["before"] == 3 and table["total"]["after"] == 2


def test_confirmation_counts_each_flagged_sample():
    ids = [f"s{i}" for i in range(8)]
    before = _report(ids, {"forgetting": ["s1", "s2", "s3", "s4"], "under_training": ["s5"]})
    after = _report(ids, {"forgetting": ["s2"], "unexplained": ["s3"], "under_training": ["s5", "s6"]})
    found = confirmation(before, after, "forgetting", removed=["s4", "s7"])
    assert (found["flagged"], found["fixed"], found["unfixed"], found["removed"]) == (4, 1, 2, 1)
    assert found["fixed_share"] == pytest.approx(1 / 3)
    assert found["still"] == {"forgetting": 1, "unexplained": 1}
    assert (found["fixed_ids"], found["unfixed_ids"], found["removed_ids"]) == (["s1"], ["s2", "s3"], ["s4"])
    nothing_left = confirmation(before, after, "under_training", removed=["s5"])
    assert nothing_left["removed"] == 1 and nothing_left["fixed_share"] != nothing_left["fixed_share"]  # NaN
    with pytest.raises(ValueError, match="lacks 1 of the samples flagged"):
        confirmation(before, _report(ids[:4], {}), "under_training")
    with pytest.raises(ValueError, match="unknown cause"):
        confirmation(before, after, "forgeting")


def test_intervene_and_rediagnose_saves_a_new_report_naming_the_intervention(tmp_path, tokenizer, tiny_model):
    from hf_ilp.interventions import format_before_after, intervene_and_rediagnose

    train = _train()
    report = _report(train["id"], CAUSE_ROWS)
    with pytest.raises(ValueError, match="unknown cause"):
        intervene_and_rediagnose(["forgeting"], report, train, tmp_path / "x", base_model=tiny_model,
                                 tokenizer=tokenizer, args=sft_args(tmp_path / "a"))
    out = intervene_and_rediagnose(["forgetting"], report, train, tmp_path / "iv", base_model=tiny_model,
                                   tokenizer=tokenizer, args=sft_args(tmp_path / "a"),
                                   config=InterventionConfig(resample_every_k_steps=2))
    result, after = out["forgetting"]
    saved = DiagnosisReport.load(result.path / "report")
    assert saved.summary["intervention"]["cause"] == "forgetting" and len(saved) == len(train)
    table = format_before_after(report, out)
    assert "after forgetting" in table and table.splitlines()[2].startswith("missing_knowledge")
    found = saved.summary["intervention"]["confirmation"]
    assert found["flagged"] == 2 and found["fixed"] + found["unfixed"] == 2 and "fixed_ids" not in found
    assert found["fixed"] == sum(learned for i, learned in zip(saved.samples["id"], saved.samples["learned"])
                                 if i in CAUSE_ROWS["forgetting"])
    assert table.splitlines()[-1].split() == ["fixed", "/", "flagged", f"{found['fixed']}/2", f"({found['fixed_share']:.0%})"]


def test_every_cause_has_one_intervention_object():
    """Each cause's fix is one `Intervention` (check, then run), found by cause; under_training alone
    continues the fine-tuned model."""
    from hf_ilp.diagnosis.report import CAUSES
    from hf_ilp.interventions import Intervention
    from hf_ilp.interventions.apply import CONTINUATIONS, _interventions

    found = _interventions()
    assert set(found) == set(CAUSES)
    assert all(isinstance(i, Intervention) and cause in i.causes for cause, i in found.items())
    assert found["missing_knowledge"] is found["knowledge_conflict"]
    assert CONTINUATIONS == ("under_training",)
