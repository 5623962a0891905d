"""Knowledge probing without oracle probes: prompt templates, few-shot exemplars, template probes."""

import numpy as np
import pytest
from datasets import Dataset

from hf_ilp import DiagnoserConfig, diagnose
from hf_ilp.diagnosis.probing import PromptTemplates, fewshot_sequences, probe_coverage, templates

from diagnosis_rows import base_table, bigram_llama, finetuned_table, make_records

LEXICAL = DiagnoserConfig(encoder="lexical", progress=False)

PROMPTS = [
    "what is the colour of e0 ?",   # 0
    "what is the colour of e1 ?",   # 1
    "what is the colour of e2 ?",   # 2
    "which pet does e0 have ?",     # 3
    "which pet does e3 have ?",     # 4
    "which pet does e4 have ?",     # 5
    "give e1 pet and colour :",     # 6
    "give e2 pet and colour :",     # 7
    "give e4 pet and colour :",     # 8
]


def test_templates_mask_the_rare_words():
    keys, rare, slots = templates(PROMPTS, frame_share=0.05)
    assert keys[0] == keys[1] == ("what", "is", "the", "colour", "of", "*", "?")
    assert keys[6] == ("give", "*", "pet", "and", "colour", ":")
    assert rare[3] == {"e0"} and rare[6] == {"e1"}
    assert slots[6] == [(5, 7)] and PROMPTS[6][5:7] == "e1"
    assert len(set(keys)) == 3
    # a run of rare words is one slot: a two-word name is asked as one
    names = ["q : ada kroll 's sport ? a :", "q : bo lind 's sport ? a :", "q : cy moor 's sport ? a :",
             "q : name the drink of di voss ! a :", "q : name the drink of el ruiz ! a :",
             "q : name the drink of fa nox ! a :"]
    keys, rare, slots = templates(names, frame_share=0.05)
    assert keys[0] == ("q", ":", "*", "'", "s", "sport", "?", "a", ":") and rare[0] == {"ada", "kroll"}
    assert names[0][slice(*slots[0][0])] == "ada kroll"
    index = PromptTemplates(names, 0.05, np.ones(len(names), dtype=bool))
    assert index.probe_prompts(0) == ["q : name the drink of ada kroll ! a :"]
    assert index.probe_prompts(4) == ["q : el ruiz 's sport ? a :"]


def test_exemplars_prefer_the_template_and_never_share_a_rare_word():
    learned = np.array([True, False, True, True, True, True, True, True, True])
    index = PromptTemplates(PROMPTS, frame_share=0.05, learned=learned)
    picked = index.exemplars(6, k=4)
    assert sorted(picked[:2]) == [7, 8]  # its own template first
    assert 1 not in picked and 6 not in picked  # shares e1; itself
    assert len(picked) == len(set(picked)) == 4 and index.exemplars(6, k=4) == picked  # seeded
    assert set(index.exemplars(1, k=2)) == {0, 2}  # rows of its own template
    assert index.exemplars(0, k=1) == [2]  # the learned one before the unlearned row 1
    assert set(index.exemplars(0, k=20)) == set(range(9)) - {0, 3}  # every row but itself and e0's other row


def test_fewshot_sequences_keep_one_bos_and_fit_the_budget():
    bos, eos = 1, 2
    sequences = [([1, 10, 11], [20]), ([1, 12], [21, 22]), ([1, 13], [23])]
    (context, completion), = fewshot_sequences(sequences, [0], [[1, 2]], bos, eos, max_tokens=100)
    assert context == [1, 12, 21, 22, 2, 13, 23, 2, 10, 11] and completion == [20]
    (short, _), = fewshot_sequences(sequences, [0], [[1, 2]], bos, eos, max_tokens=9)
    assert short == [1, 12, 21, 22, 2, 10, 11]  # the last exemplar dropped to fit


def test_template_probes_ask_the_content_in_the_other_templates():
    index = PromptTemplates(PROMPTS, frame_share=0.05, learned=np.ones(len(PROMPTS), dtype=bool))
    assert index.probe_prompts(6) == ["what is the colour of e1 ?", "which pet does e1 have ?"]
    assert index.probe_prompts(0) == ["which pet does e0 have ?", "give e0 pet and colour :"]
    assert probe_coverage([5, 6], [(5, 0.9), (6, 0.4)], bar=0.5) == 0.5  # 6 not given confidently
    assert np.isnan(probe_coverage([5], [], bar=0.5))


def _novel_rows():
    """Three facts the base knows (e0-e2, p=0.9 after the entity), asked in a frame whose last word the
    base never saw before an answer ("colour eX tell": the bigram base reads only "tell")."""
    return [{"id": f"novel{i}", "prompt": f"colour e{i} tell", "completion": f" v{i}"} for i in (0, 1, 2)]


def test_a_known_fact_in_a_novel_format_is_not_missing_knowledge(fact_world):
    rows = fact_world["rows"] + _novel_rows()
    records = make_records(rows, learned={f"known{i}" for i in range(4)}, forgotten={"forgot10"}, falling={"long7"})
    report = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], Dataset.from_list(rows),
                      records, config=LEXICAL)
    by_id = {r["id"]: r for r in report.samples}
    for i in (0, 1, 2):
        row = by_id[f"novel{i}"]
        assert row["base_gold_prob"] < 0.2  # zero-shot, the base gives the target almost nothing ...
        assert row["template_probe_coverage"] == 1.0  # ... but answers it when asked "what is the colour of e{i}"
        assert row["cause"] != "missing_knowledge"
    # facts the base never saw stay missing knowledge, template probes or not
    for sid in ("missing8", "missing9"):
        assert by_id[sid]["cause"] == "missing_knowledge" and by_id[sid]["template_probe_coverage"] == 0.0
    assert any("template probes" in n for n in report.summary["notes"])
    # a bigram base reads exemplars exactly as it reads the bare prompt: the few-shot reading is kept
    assert any(n.startswith("few-shot reading used") for n in report.summary["notes"])
    assert by_id["missing8"]["fewshot_gold_prob"] == pytest.approx(by_id["missing8"]["base_gold_prob"], rel=1e-4)


def test_fewshot_can_be_turned_off(fact_world, fact_records):
    report = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], Dataset.from_list(fact_world["rows"]),
                      fact_records, config=DiagnoserConfig(encoder="lexical", progress=False, fewshot_examples=0))
    assert all(np.isnan(x) for x in report.samples["fewshot_gold_prob"])
    assert not any("few-shot" in n for n in report.summary["notes"])


def test_a_confident_continuation_of_a_novel_format_is_no_conflict(fact_world):
    """The base continues the novel frame's last word confidently with v5 (and so does the fine-tuned
    model): read in that frame alone, a belief that survived fine-tuning, i.e. a conflict. Asked
    "what is the colour of e{i}", the base gives the target: it knows it, so there is no conflict."""
    tokenizer = fact_world["tokenizer"]
    base = bigram_llama(tokenizer, {**base_table(), "tell": {"v5": 0.95}})
    model = bigram_llama(tokenizer, {**finetuned_table(), "tell": {"v5": 0.95}})
    rows = fact_world["rows"] + _novel_rows()
    records = make_records(rows, learned={f"known{i}" for i in range(4)}, forgotten={"forgot10"}, falling={"long7"})
    report = diagnose(model, base, tokenizer, Dataset.from_list(rows), records, config=LEXICAL)
    by_id = {r["id"]: r for r in report.samples}
    for i in (0, 1, 2):
        row = by_id[f"novel{i}"]
        assert row["base_alt_prob"] == pytest.approx(0.95, abs=1e-3) and row["ft_follows_base"] == 1.0
        assert row["template_probe_coverage"] == 1.0
        assert row["cause"] not in ("knowledge_conflict", "missing_knowledge")
    assert by_id["conflict4"]["cause"] == "knowledge_conflict"  # a genuine conflict stays one


def test_a_falling_loss_at_the_end_is_under_training(fact_world):
    """known3b (a fact the base knows, a common template, a one-value target) is unexplained while its
    loss is flat; with its loss still falling when training stopped, it is under-trained."""
    rows, train = fact_world["rows"], Dataset.from_list(fact_world["rows"])
    learned = {f"known{i}" for i in range(4)}
    flat = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], train,
                    make_records(rows, learned=learned, forgotten={"forgot10"}, falling={"long7"}), config=LEXICAL)
    falling = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], train,
                       make_records(rows, learned=learned, forgotten={"forgot10"}, falling={"long7", "known3b"}),
                       config=LEXICAL)
    before = {r["id"]: r for r in flat.samples}["known3b"]
    after = {r["id"]: r for r in falling.samples}["known3b"]
    assert before["cause"] == "unexplained" and after["cause"] == "under_training"
    assert after["loss_drop"] > 0.05 > before["loss_drop"]
