"""The Diagnoser end to end on data the world did not make: verdicts, report, CLI, bad input."""

import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_ilp import CAUSES, DiagnosisReport, Diagnoser, DiagnoserConfig, diagnose
from hf_ilp.tracking.records import save_records
from hf_ilp.world.tokenizer import build_word_tokenizer

from diagnosis_rows import ENTITIES, EXPECTED, VALUES, WORDS, base_table, bigram_llama, finetuned_table, make_records

LEXICAL = DiagnoserConfig(encoder="lexical", progress=False)
LEARNED = {f"known{i}" for i in range(4)}


def _verdicts(report):
    return {r["id"]: r["cause"] for r in report.samples if not r["learned"]}


def test_hand_built_rows_without_stage(fact_world, fact_records, tmp_path):
    train = Dataset.from_list(fact_world["rows"])
    report = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], train, fact_records,
                      config=LEXICAL)
    assert _verdicts(report) == EXPECTED
    s = report.summary
    assert s["n_samples"] == 14 and s["n_unlearned"] == 10
    assert s["counts"] == {"missing_knowledge": 3, "knowledge_conflict": 2, "data_inconsistency": 2,
                           "forgetting": 1, "under_training": 1, "unexplained": 1}
    assert s["unexplained_share"] == pytest.approx(1 / 10)
    assert any("no 'stage' column" in n and "observation points only" in n for n in s["notes"])
    assert s["settings"]["precedence"][0] == "forgetting" and s["settings"]["encoder"] is None
    rows = {r["id"]: r for r in report.samples}
    # the runner-up and its evidence: dupB also contradicts what the base knows; forgot10 was never known
    assert rows["dupB"]["runner_up"] == "knowledge_conflict" and rows["dupB"]["runner_up_confidence"] > 0.9
    assert rows["forgot10"]["runner_up"] == "missing_knowledge"
    # a confident guess that fine-tuning dropped is no belief: missing knowledge, not a conflict
    assert rows["guess11"]["base_alt_prob"] == pytest.approx(0.8, abs=1e-3) and rows["guess11"]["ft_follows_base"] == 0.0
    assert rows["dupA"]["dup_neighbor"] == "dupB" and rows["conflict4"]["base_alt_prob"] == pytest.approx(0.9, abs=1e-3)
    assert rows["known0"]["cause"] == "" and np.isnan(rows["known0"]["score_missing_knowledge"])
    # the report folder round-trips and carries both figures
    out = report.save(tmp_path / "diagnosis")
    assert {p.name for p in (out / "plots").iterdir()} == {"cartography.png", "causes.png"}
    loaded = DiagnosisReport.load(out)
    assert loaded.counts == report.counts and len(loaded) == 14
    assert loaded.samples["cause"] == report.samples["cause"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timings"]["total_s"] > 0


def test_the_report_shows_each_sample_as_text(fact_world, fact_records):
    """What a reader needs beside the numbers: the texts, what each model says where it leaves the
    target, the near-duplicate's text and the learning curve (every value set by the bigram tables)."""
    train = Dataset.from_list(fact_world["rows"])
    report = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], train, fact_records,
                      config=LEXICAL)
    assert report.summary["ids"] == "dataset" and report.summary["schema_version"] == 2
    rows = {r["id"]: r for r in report.samples}
    assert [rows[r["id"]]["row"] for r in fact_world["rows"]] == list(range(len(fact_world["rows"])))
    assert all(rows[r["id"]]["prompt"] == r["prompt"] and rows[r["id"]]["completion"] == r["completion"]
               for r in fact_world["rows"])
    # conflict4 is taught v7; both models still say v4 there, then follow the v4 -> v5 -> ... chain
    c4 = rows["conflict4"]
    assert c4["ft_diverges_at"] == 0 and c4["ft_expected"].split() == ["v7"]
    assert c4["ft_says"].split()[:3] == ["v4", "v5", "v6"] and c4["base_says"].split()[:2] == ["v4", "v5"]
    # dupA's answer v6 is reproduced, but not its stop: the model goes on with the chain
    a = rows["dupA"]
    assert a["ft_diverges_at"] == 1 and a["ft_expected"] == "</s>" and a["ft_says"].split()[0] == "v0"
    assert (rows["dupB"]["dup_prompt"], rows["dupB"]["dup_completion"]) == ("what is the colour of e6", " v6")
    assert rows["dupB"]["ft_says"].split()[0] == "v6"
    f = rows["forgot10"]
    assert f["curve_step"] == [10, 20, 30, 30] and f["curve_exact"] == [False, True, True, False]
    assert f["curve_p_gold"] == pytest.approx([math.exp(-x) for x in (2.0, 0.4, 0.5, 1.5)])
    # learned rows carry their texts and curve, and no model continuation
    assert rows["known0"]["ft_says"] == "" and rows["known0"]["curve_exact"] == [False, True, True, True]
    # a dataset without ids is shown by row; the text evidence can be switched off
    anonymous = train.remove_columns("id")
    hashes = _hashes(anonymous, fact_world["tokenizer"])
    records = fact_records.map(lambda r, i: {"id": hashes[i]}, with_indices=True)  # the tracker's ids for such rows
    plain = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], anonymous, records,
                     config=DiagnoserConfig(encoder="lexical", progress=False, continuation_tokens=0))
    assert plain.summary["ids"] == "content_hash" and plain.samples["row"] == list(range(len(train)))
    assert "ft_says" not in plain.samples.column_names and plain.counts == report.counts
    # the texts are read for the most confident samples of each cause only, when asked to
    capped = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], train, fact_records,
                      config=DiagnoserConfig(encoder="lexical", progress=False, continuation_per_cause=1))
    said = [r for r in capped.samples if r["ft_says"]]
    assert sorted(r["cause"] for r in said) == sorted(c for c in CAUSES + ("unexplained",) if capped.counts[c])
    for r in said:  # the one read is the most confident of its cause, and reads as before
        assert r["confidence"] == max(x["confidence"] for x in capped.samples if x["cause"] == r["cause"])
        assert r["ft_says"] == rows[r["id"]]["ft_says"]
    assert any("continuation_per_cause" in n for n in capped.summary["notes"])


def _hashes(train, tokenizer):
    from hf_ilp.tracking.learn_check import tokenize_rows

    return list(tokenize_rows(train, tokenizer).names)


def test_belief_bar_is_calibrated_on_what_the_base_knows(fact_world, fact_records):
    """A guess held at 0.7 that survives fine-tuning reads as a belief against a fixed bar of 0.5, but
    not against the base's own knowledge (held at 0.9 on the rows it reproduces); firm conflicts stay."""
    tokenizer = fact_world["tokenizer"]
    base = {**base_table(), "e4": {"v4": 0.97}, "e5": {"v5": 0.97}, "e11": {"v5": 0.7}}
    tuned = {**finetuned_table(), "e11": {"v5": 0.5, "v2": 0.4}}  # the guess survives fine-tuning
    base_model, model = bigram_llama(tokenizer, base), bigram_llama(tokenizer, tuned)
    train = Dataset.from_list(fact_world["rows"])

    def run(**overrides):
        config = DiagnoserConfig(encoder="lexical", progress=False, plots=False, **overrides)
        return diagnose(model, base_model, tokenizer, train, fact_records, config=config)

    fixed = run(calibration_rows=0)
    assert _verdicts(fixed)["guess11"] == "knowledge_conflict" and fixed.summary["settings"]["belief_bar"] == 0.5
    assert fixed.summary["settings"]["belief_bar_calibrated"] is False
    calibrated = run(min_known_rows=3, known_confidence_quantile=0.5)
    # the base reproduces known0-3, known3b and dupA at 0.9 and long7 (least firm step 0.6): median 0.9
    assert calibrated.summary["settings"]["belief_bar"] == pytest.approx(0.9, abs=1e-3)
    assert calibrated.summary["settings"]["belief_bar_calibrated"] is True
    assert any(n.startswith("belief bar 0.9") and "7 of 14" in n for n in calibrated.summary["notes"])
    verdicts = _verdicts(calibrated)
    assert verdicts["guess11"] == "missing_knowledge"
    assert verdicts["conflict4"] == verdicts["conflict5"] == "knowledge_conflict"
    # too few known rows: the floor, and the summary says why
    floor = run(min_known_rows=50)
    assert floor.summary["settings"]["belief_bar"] == 0.5 and any("fewer than min_known_rows=50" in n
                                                                  for n in floor.summary["notes"])


def test_stages_give_left_side_forgetting(fact_world):
    rows = [{**r, "stage": 0 if r["id"] == "forgot10" else 1} for r in fact_world["rows"]]
    records = make_records(rows, learned=LEARNED, forgotten={"forgot10"}, falling={"long7"},
                           stage_of={r["id"]: r["stage"] for r in rows})
    report = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], Dataset.from_list(rows),
                      records, config=LEXICAL)
    row = {r["id"]: r for r in report.samples}["forgot10"]
    assert row["cause"] == "forgetting" and row["confidence"] == pytest.approx(0.9) and row["forgot_stage"] == 0
    assert not any("observation points only" in n for n in report.summary["notes"])


def test_conversational_messages_match_prompt_completion(fact_world, fact_records):
    tokenizer = build_word_tokenizer(WORDS + ENTITIES + VALUES)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    convo = Dataset.from_list([
        {"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]},
                                     {"role": "assistant", "content": r["completion"].strip()}]}
        for r in fact_world["rows"]
    ])
    report = diagnose(fact_world["model"], fact_world["base"], tokenizer, convo, fact_records, config=LEXICAL)
    assert _verdicts(report) == EXPECTED


def test_probes_sharpen_the_base_knowledge_verdict(fact_world, fact_records):
    """missing8's prerequisite, asked the way the base knows it, is known: no longer missing knowledge."""
    train = Dataset.from_list(fact_world["rows"])
    probes = Dataset.from_list([
        {"id": "missing8", "probe_prompts": ["what is the colour of e3"], "probe_completions": [" v3"]},
        {"id": "missing9", "probe_prompts": ["what is the colour of e9"], "probe_completions": [" v1"]},
        # the base answers conflict4's probe: its confident other answer in the SFT phrasing is not knowledge
        {"id": "conflict4", "probe_prompts": ["what is the colour of e0"], "probe_completions": [" v0"]},
    ])
    report = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], train, fact_records,
                      probes=probes, config=LEXICAL)
    rows = {r["id"]: r for r in report.samples}
    assert rows["missing8"]["probe_gold_prob"] == pytest.approx(0.9, abs=1e-3)
    assert rows["missing8"]["cause"] != "missing_knowledge"
    assert rows["missing9"]["cause"] == "missing_knowledge" and rows["missing9"]["probe_gold_prob"] < 0.2
    assert rows["conflict4"]["cause"] != "knowledge_conflict" and rows["conflict4"]["base_alt_prob"] > 0.8
    assert rows["conflict5"]["cause"] == "knowledge_conflict"  # no probe: judged on the target
    assert np.isnan(rows["conflict5"]["probe_gold_prob"])
    assert any("probes read for 3 of 10" in n for n in report.summary["notes"])


def test_learned_verdict_from_check_learned_when_records_lack_it(fact_world, fact_records):
    train = Dataset.from_list(fact_world["rows"])
    records = fact_records.remove_columns("final_exact")
    report = Diagnoser(LEXICAL).diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], train,
                                         records)
    learned = {r["id"] for r in report.samples if r["learned"]}
    assert learned == {"known0", "long7"}  # the rows whose completion and EOS are all the argmax
    assert any("check_learned" in n for n in report.summary["notes"])


def test_everything_learned_gives_an_empty_valid_report(fact_world, tmp_path):
    rows = fact_world["rows"]
    records = make_records(rows, learned={r["id"] for r in rows})
    report = diagnose(fact_world["model"], fact_world["base"], fact_world["tokenizer"], Dataset.from_list(rows),
                      records, config=LEXICAL)
    assert report.summary["n_unlearned"] == 0 and report.summary["unexplained_share"] == 0.0
    assert set(report.samples["cause"]) == {""} and all(report.counts[c] == 0 for c in CAUSES)
    assert DiagnosisReport.load(report.save(tmp_path / "r")).summary["n_unlearned"] == 0


def test_bad_input_is_refused_clearly(fact_world, fact_records):
    tok, base, model = fact_world["tokenizer"], fact_world["base"], fact_world["model"]
    train = Dataset.from_list(fact_world["rows"])
    bigger = build_word_tokenizer(WORDS + ENTITIES + VALUES + ["extra"])
    with pytest.raises(ValueError, match="different vocabularies"):
        diagnose(model, bigram_llama(bigger, base_table()), tok, train, fact_records, config=LEXICAL)
    shuffled = build_word_tokenizer(list(reversed(WORDS + ENTITIES + VALUES)))
    with pytest.raises(ValueError, match="map tokens to ids differently"):
        diagnose(model, base, tok, train, fact_records, config=LEXICAL, base_tokenizer=shuffled)
    with pytest.raises(ValueError, match="records do not match the dataset: 1 of 14"):
        diagnose(model, base, tok, train, fact_records.select(range(13)), config=LEXICAL)
    with pytest.raises(ValueError, match=r"records lack columns \['exact', 'nll'\]"):
        diagnose(model, base, tok, train, fact_records.select_columns(["id"]), config=LEXICAL)
    with pytest.raises(ValueError, match="expected 'prompt' and 'completion'"):
        diagnose(model, base, tok, train.rename_column("completion", "answer"), fact_records, config=LEXICAL)
    with pytest.raises(ValueError, match="must lie strictly between 0 and 1"):
        DiagnoserConfig(unknown_prob=1.5)


def test_cli_on_saved_folders(fact_world, fact_records, tmp_path, capsys):
    from hf_ilp.cli import main

    tok = fact_world["tokenizer"]
    for name in ("model", "base"):
        fact_world[name].save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    Dataset.from_list(fact_world["rows"]).to_json(tmp_path / "train.jsonl")
    save_records(tmp_path / "records", fact_records, meta={})
    code = main(["diagnose", "--model", str(tmp_path / "model"), "--base", str(tmp_path / "base"),
                 "--dataset", str(tmp_path / "train.jsonl"), "--records", str(tmp_path / "records"),
                 "--output", str(tmp_path / "report"), "--encoder", "lexical", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "knowledge_conflict" in printed and "report written to" in printed
    assert _verdicts(DiagnosisReport.load(tmp_path / "report")) == EXPECTED


def test_cli_the_trl_way(fact_world, fact_records, tmp_path, capsys):
    """snake_case flags, a --config YAML that the command line overrides, --dtype, a folder of JSONL
    files, and a saved LoRA adapter diagnosed without --base_model (its base with adapters off)."""
    import yaml
    from peft import LoraConfig, get_peft_model

    from hf_ilp.cli import main

    tok = fact_world["tokenizer"]
    fact_world["base"].save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")  # adapter_config.json names the base folder
    tok.save_pretrained(tmp_path / "adapter")
    (tmp_path / "data").mkdir()
    Dataset.from_list(fact_world["rows"]).to_json(tmp_path / "data" / "train.jsonl")
    save_records(tmp_path / "records", fact_records, meta={})
    config = {"model": str(tmp_path / "adapter"), "dataset": str(tmp_path / "data"), "records": str(tmp_path / "records"),
              "output": str(tmp_path / "wrong"), "encoder": "lexical", "progress": False, "min_score": 0.5}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    code = main(["diagnose", "--config", str(tmp_path / "run.yaml"), "--output_dir", str(tmp_path / "report"),
                 "--dtype", "float32", "--duplicate_similarity", "0.9"])
    assert code == 0 and not (tmp_path / "wrong").exists()  # the command line won over the YAML
    report = DiagnosisReport.load(tmp_path / "report")
    assert any("adapters disabled" in n for n in report.summary["notes"])
    assert report.summary["settings"]["encoder"] is None and report.summary["settings"]["duplicate_similarity"] == 0.9
    with pytest.raises(SystemExit, match="--records, --output required"):
        main(["diagnose", "--model", str(tmp_path / "base"), "--dataset", str(tmp_path / "data")])
    (tmp_path / "bad.yaml").write_text("modle: x\n")
    with pytest.raises(SystemExit, match="unknown key 'modle'"):
        main(["diagnose", "--config", str(tmp_path / "bad.yaml")])


def test_a_peft_model_is_diagnosed_against_its_own_base(fact_world, fact_records):
    """With `base_model=None`, a LoRA model's base is read through `disable_adapter()`: the same
    report as with a separate copy of the base."""
    import copy

    from peft import LoraConfig, get_peft_model

    base = fact_world["base"]
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False))
    train = Dataset.from_list(fact_world["rows"])
    with_copy = diagnose(lora, base, fact_world["tokenizer"], train, fact_records, config=LEXICAL)
    inside = diagnose(lora, None, fact_world["tokenizer"], train, fact_records, config=LEXICAL)
    assert any("adapters disabled" in n for n in inside.summary["notes"])
    assert inside.samples["cause"] == with_copy.samples["cause"]
    for column in ("base_gold_prob", "base_alt_prob", "jsd_base_ft", "ft_gold_prob"):
        np.testing.assert_allclose(inside.samples[column], with_copy.samples[column], rtol=1e-5, equal_nan=True)
    assert not np.allclose(inside.samples["base_gold_prob"], inside.samples["ft_gold_prob"], equal_nan=True)  # the adapters matter
    with pytest.raises(ValueError, match="base_model is None"):
        diagnose(base, None, fact_world["tokenizer"], train, fact_records, config=LEXICAL)
