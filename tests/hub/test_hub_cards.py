"""Model cards: TRL's card kept and amended, metadata round trip, clear errors on bad metadata."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def sft_trainer_cls():
    from trl import SFTTrainer

    from hf_ilp.hub import DiagnosisCardMixin

    class DiagnosedSFTTrainer(DiagnosisCardMixin, SFTTrainer):
        pass

    return DiagnosedSFTTrainer


def _trainer(cls, out, base_model_dir=None):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig

    from hf_ilp.world.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(["a", "b", "c"])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    if base_model_dir is not None:
        model.config._name_or_path = str(base_model_dir)  # as after from_pretrained(local folder)
    data = Dataset.from_list([{"prompt": "a b", "completion": " c"}] * 2)
    args = SFTConfig(output_dir=str(out), bf16=False, gradient_checkpointing=False, report_to="none", max_steps=1)
    return cls(model=model, args=args, train_dataset=data, processing_class=tok)


def test_trl_card_is_kept_and_amended_idempotently(sft_trainer_cls, make_report, tmp_path):
    from huggingface_hub import ModelCard

    from hf_ilp.hub import amend_model_card

    out = tmp_path / "out"
    trainer = _trainer(sft_trainer_cls, out, base_model_dir=tmp_path / "gone" / "base")  # a path that no longer exists
    trainer.create_model_card(model_name="tiny-sft", dataset_name="ilp-world")
    trl_card = ModelCard.load(out / "README.md")
    assert "trl" in trl_card.data.tags and "sft" in trl_card.data.tags

    report = make_report()
    for _ in range(2):  # amending twice gives the same card
        amend_model_card(out, report, model_repo_id="me/tiny-sft", dataset_repo_id="me/tiny-sft-ilp-diagnosis", trained_on="ilp-world")
    card = ModelCard.load(out / "README.md")
    assert set(trl_card.data.tags) <= set(card.data.tags) and {"hf_ilp", "incomplete-learning"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local path is never published as base_model
    assert card.data.datasets == trl_card.data.datasets == "ilp-world"
    for kept in ("# Model Card for tiny-sft", "It has been trained using [TRL]", "## Quick start", "## Training procedure"):
        assert kept in trl_card.text and kept in card.text  # TRL's text is still there
    assert "fine-tuned version of `base`" in card.text  # the local base model folder, by name only
    assert card.text.count("## Incomplete learning diagnosis") == 1
    assert card.text.count("<!-- hf_ilp:diagnosis:begin -->") == 1
    results = [r.metric_type for r in card.data.eval_results]
    assert len(results) == len(set(results)) == 7  # learned share + 6 cause counts, not duplicated
    meta = card.data.to_dict()
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "hf_ilp/learned_share"
    assert meta["hf_ilp"]["diagnosis_dataset"] == "me/tiny-sft-ilp-diagnosis"
    assert meta["hf_ilp"]["trained_on"] == "ilp-world"
    # a table per cause with its examples, most confident first
    assert "### `unexplained`: examples (6 in all)" in card.text
    assert "| sample | prompt | completion | the model | evidence | confidence | runner-up |" in card.text
    assert "| u50 | What is the value of u50? | value-u50 | says “other-u50” where the target continues “value-u50” " \
           "| no cause reaches its threshold | 0.750 | under_training |" in card.text
    assert str(tmp_path) not in (out / "README.md").read_text()


def test_mixin_amends_the_card_trainer_push_to_hub_writes(sft_trainer_cls, make_report, tmp_path):
    """Trainer.push_to_hub calls create_model_card after the callbacks: the mixin amends it there."""
    import hf_ilp

    out = tmp_path / "out"
    trainer = _trainer(sft_trainer_cls, out)
    trainer.hf_ilp_report = make_report()
    trainer.create_model_card(model_name="tiny")
    loaded = hf_ilp.load_report(out, samples=True)
    assert loaded.counts == trainer.hf_ilp_report.counts
    assert (out / "hf_ilp_report" / "plots" / "counts.png").is_file()


def test_card_metadata_round_trip_and_scrubbing(make_report):
    from hf_ilp.hub import from_card_metadata, to_card_metadata

    report = make_report(settings={"encoder": "/home/someone/models/minilm", "hub_token": "hf_" + "a" * 30, "note": "token hf_" + "b" * 30,
                                   "max_new_tokens": 8, "nested": {"api_key": "k", "kept": 1}})
    meta = to_card_metadata(report, dataset_repo_id="me/ds")
    settings = meta["settings"]
    assert settings == {"encoder": "minilm", "note": "token <redacted>", "max_new_tokens": 8, "nested": {"kept": 1}}
    back = from_card_metadata({"hf_ilp": meta}, source="test card")
    assert back.counts == report.counts and back.samples is None
    assert back.summary["learned_share"] == pytest.approx(report.summary["learned_share"])


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda m: m.pop("hf_ilp"), "'hf_ilp' is missing"),
        (lambda m: m.update(hf_ilp=[1, 2]), "'hf_ilp' must be a mapping"),
        (lambda m: m["hf_ilp"].pop("schema_version"), "'hf_ilp.schema_version' is missing"),
        (lambda m: m["hf_ilp"].update(schema_version="one"), "'hf_ilp.schema_version' must be a positive integer"),
        (lambda m: m["hf_ilp"].update(schema_version=99), "'hf_ilp.schema_version' is 99, newer"),
        (lambda m: m["hf_ilp"]["counts"].pop("forgetting"), "'hf_ilp.counts.forgetting' is missing"),
        (lambda m: m["hf_ilp"]["counts"].update(forgetting=-1), "'hf_ilp.counts.forgetting' must be a non-negative integer"),
        (lambda m: m["hf_ilp"]["counts"].update(boredom=2), "unknown causes ['boredom']"),
        (lambda m: m["hf_ilp"].update(counts="many"), "'hf_ilp.counts' must be a mapping"),
        (lambda m: m["hf_ilp"].pop("n_samples"), "'hf_ilp.n_samples' is missing"),
    ],
)
def test_bad_card_metadata_names_the_field(make_report, tmp_path, edit, field):
    import yaml

    import hf_ilp
    from hf_ilp.hub import CardMetadataError, to_card_metadata

    meta = {"license": "apache-2.0", "hf_ilp": to_card_metadata(make_report())}
    edit(meta)
    (tmp_path / "README.md").write_text(f"---\n{yaml.safe_dump(meta)}---\n# model\n")
    with pytest.raises(CardMetadataError) as err:
        hf_ilp.load_report(tmp_path)
    assert field in str(err.value) and "README.md" in str(err.value)


def test_unreadable_yaml_and_older_schema(make_report, tmp_path, monkeypatch):
    import yaml

    import hf_ilp
    import hf_ilp.diagnosis.report as report_module
    from hf_ilp.hub import CardMetadataError, to_card_metadata

    (tmp_path / "README.md").write_text("---\nhf_ilp: [unclosed\n---\n# model\n")
    with pytest.raises(CardMetadataError, match="metadata cannot be read"):
        hf_ilp.load_report(tmp_path)

    report = make_report()
    (tmp_path / "README.md").write_text(f"---\n{yaml.safe_dump({'hf_ilp': to_card_metadata(report)})}---\n")
    monkeypatch.setattr(report_module, "SCHEMA_VERSION", report_module.SCHEMA_VERSION + 1)  # this hf_ilp is newer than the card
    assert hf_ilp.load_report(tmp_path).counts == report.counts


def test_load_report_rejects_what_is_not_a_report(tmp_path):
    import hf_ilp

    with pytest.raises(FileNotFoundError, match="neither a report folder"):
        hf_ilp.load_report(tmp_path)
    with pytest.raises(ValueError, match="repo_type must be"):
        hf_ilp.load_report("someone/model", repo_type="space")


def test_examples_show_the_training_text_when_the_report_has_only_ids(tmp_path):
    from datasets import Dataset

    from hf_ilp.diagnosis.report import DiagnosisReport
    from hf_ilp.hub import amend_model_card

    rows = [{"id": "q1", "learned": False, "cause": "knowledge_conflict", "confidence": 0.9, "runner_up": "", "runner_up_confidence": 0.0},
            {"id": "q2", "learned": False, "cause": "forgetting", "confidence": 0.8, "runner_up": "", "runner_up_confidence": 0.0},
            {"id": "q3", "learned": True, "cause": "", "confidence": 0.0, "runner_up": "", "runner_up_confidence": 0.0}]
    report = DiagnosisReport.from_rows(rows)
    train = Dataset.from_list([
        {"id": "q1", "messages": [{"role": "user", "content": "Capital of Zorb?"}, {"role": "assistant", "content": "Plim | Plam"}]},
        {"id": "q2", "messages": [{"role": "user", "content": "Who wrote Q?"}, {"role": "assistant", "content": "Ann"}]},
        {"id": "q3", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
    ])
    text = amend_model_card(tmp_path, report, train_dataset=train).read_text()
    assert "| q1 | Capital of Zorb? | Plim \\| Plam | 0.900 |" in text
    assert "| q2 | Who wrote Q? | Ann | 0.800 |" in text
    assert "| sample | confidence | runner-up |" in amend_model_card(tmp_path / "no_text", report).read_text()  # ids only
