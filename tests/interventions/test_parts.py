"""The pieces alone: knowledge sources, dynamic resampling, early stopping on validation loss."""

import copy

import pytest
import torch
from datasets import Dataset

from hf_ilp.interventions.forgetting import DynamicResamplingCallback, ResamplingSampler, global_shuffle
from hf_ilp.interventions.knowledge import BM25KnowledgeSource, EmbeddingKnowledgeSource
from hf_ilp.interventions._common import fresh_model
from hf_ilp.interventions.under_training import ValLossRiseStopping, targeted, upsample

from tests.interventions.conftest import make_rows, sft_args

DOCS = ["Paris is the capital of France.", "The Nile flows through Egypt and Sudan.",
        "Photosynthesis turns light into chemical energy in plants.", "Mount Kilimanjaro is in Tanzania."]


def test_bm25_source_finds_the_document_and_nothing_for_unrelated_text():
    src = BM25KnowledgeSource(DOCS)
    hits = src.retrieve(["capital of France?", "zzz qqq"], k=2)
    assert hits[0][0] == DOCS[0] and hits[1] == []
    with pytest.raises(ValueError, match="texts is empty"):
        BM25KnowledgeSource([])


def test_embedding_source_ranks_by_meaning():
    src = EmbeddingKnowledgeSource(DOCS)
    hits = src.retrieve(["Which river runs through Egypt?", "How do plants make energy from sunlight?"], k=1)
    assert hits == [[DOCS[1]], [DOCS[2]]]


def test_resampling_sampler_replays_boosted_subsets():
    subsets = [0] * 50 + [1] * 50
    s = ResamplingSampler(subsets, replay_share=0.5, seed=0)
    plain = list(s)
    assert sorted(plain) == list(range(100))
    s.boosted.add(0)
    boosted = list(s)
    share = sum(i < 50 for i in boosted) / len(boosted)
    assert len(boosted) == 100 and share == pytest.approx(0.75, abs=0.1)  # 0.5 replay + half of the rest


def _learn(model, tokenizer, rows, tmp_path, steps=40):
    from trl import SFTTrainer

    args = sft_args(tmp_path, max_steps=steps, per_device_train_batch_size=8, learning_rate=2e-2)
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer).train()
    return model


def test_dynamic_resampling_boosts_a_subset_whose_accuracy_dropped(tmp_path, tokenizer, tiny_model):
    from transformers import TrainerControl, TrainerState

    rows = [dict(r, source_stage=0) for r in make_rows(8)]
    probe = Dataset.from_list(rows)
    learned = _learn(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path)
    cb = DynamicResamplingCallback(probe, tokenizer, every_k_steps=1, threshold=0.05)

    class _T:
        args = sft_args(tmp_path)

    sampler = cb.sampler(_T, Dataset.from_list(rows + [dict(r, source_stage=1) for r in make_rows(8)]))
    state, control = TrainerState(max_steps=10), TrainerControl()
    cb.on_train_begin(_T.args, state, control)
    state.global_step = 1
    cb.on_step_end(_T.args, state, control, model=learned)
    assert cb.history[-1]["accuracy"]["0"] > 0.5 and sampler.boosted == set()
    state.global_step = 2
    cb.on_step_end(_T.args, state, control, model=tiny_model)  # an untrained model: accuracy collapses
    assert cb.history[-1]["accuracy"]["0"] < 0.2 and sampler.boosted == {0}
    state.global_step = 3
    cb.on_step_end(_T.args, state, control, model=learned)  # recovered
    assert sampler.boosted == set()


def test_global_shuffle_keeps_rows_and_the_former_stage():
    ds = Dataset.from_list(make_rows(12, stages=3))
    out = global_shuffle(ds, seed=1)
    assert sorted(out["id"]) == sorted(ds["id"]) and out["id"] != ds["id"]
    assert dict(zip(out["id"], out["source_stage"])) == dict(zip(ds["id"], ds["stage"]))
    assert "stage" in ds.column_names  # input unchanged


def test_val_loss_rise_stops_and_restores_the_last_good_weights(tmp_path, tokenizer, tiny_model):
    from trl import SFTTrainer

    train = Dataset.from_list(make_rows(16))
    # validation asks the same questions, answered with words that are never an answer in training:
    # fitting the training set raises its loss
    val = Dataset.from_list([dict(r, completion=f" w{k}") for k, r in enumerate(make_rows(16))])
    start = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    stop = ValLossRiseStopping(delta=0.01)
    args = sft_args(tmp_path, num_train_epochs=4, eval_strategy="epoch", learning_rate=2e-2)
    trainer = SFTTrainer(model=tiny_model, args=args, train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer, callbacks=[stop])
    trainer.evaluate()
    trainer.train()
    assert stop.stopped_at_epoch is not None and stop.stopped_at_epoch < 4
    assert trainer.state.epoch < 4
    # the weights are back to those of the last accepted evaluation, whose loss they reproduce
    assert trainer.evaluate()["eval_loss"] == pytest.approx(stop.losses[-1], rel=1e-5)
    if len(stop.losses) == 1:  # the first extra epoch was refused: the starting weights
        assert all(torch.equal(start[k], v) for k, v in tiny_model.state_dict().items())


def _feed(stop, losses, max_steps=None):
    """Feed `stop` one evaluation per loss: the first before training (the starting model), then one per
    epoch; each evaluation sees a model whose single weight is the evaluation's index. Returns the
    weight left after the run, and the evaluations seen before the run stopped."""
    from transformers import TrainerControl, TrainerState

    model = torch.nn.Linear(1, 1, bias=False)
    n_epochs = len(losses) - 1
    state = TrainerState(max_steps=0, global_step=0)
    control = TrainerControl()
    seen = 0
    for k, loss in enumerate(losses):
        if k:  # an epoch of training
            state.max_steps, state.global_step, state.epoch = max_steps or n_epochs, k, float(k)
        with torch.no_grad():
            model.weight.fill_(float(k))
        stop.on_evaluate(None, state, control, metrics={"eval_loss": loss}, model=model)
        seen += 1
        if control.should_training_stop:
            break
    stop.on_train_end(None, state, control, model=model)
    return model.weight.item(), seen


def test_val_loss_rule_default_is_the_papers_epoch_over_epoch_test():
    """patience=1, reference='previous': the first rise of more than delta over the previous accepted
    evaluation stops the run and puts back that evaluation's weights."""
    stop = ValLossRiseStopping(delta=0.01)
    weight, seen = _feed(stop, [1.0, 0.9, 0.905, 0.92, 0.5])
    assert seen == 4 and weight == 2.0
    assert stop.losses == [1.0, 0.9, 0.905] and stop.rejected == [0.92]
    assert stop.stopped_at_epoch == 3.0 and stop.rejected_loss == 0.92


def test_val_loss_patience_lets_one_bad_epoch_pass():
    """patience=2: one rejected evaluation followed by an accepted one does not stop; two in a row do,
    and the weights of the last accepted evaluation come back."""
    stop = ValLossRiseStopping(delta=0.01, patience=2)
    weight, seen = _feed(stop, [1.0, 0.9, 0.95, 0.905, 0.95, 0.96, 0.1])
    # 0.95 rejected (> 0.9 + 0.01), 0.905 accepted (the count starts again), 0.95 and 0.96 rejected in a row
    assert seen == 6 and weight == 3.0
    assert stop.losses == [1.0, 0.9, 0.905] and stop.rejected == [0.95, 0.95, 0.96]
    assert stop.stopped_at_epoch == 5.0 and stop.rejected_loss == 0.96


def test_val_loss_reference_start_bounds_the_total_rise():
    """reference='start': every evaluation is compared with the first one. A slow drift that never rises
    by delta from one epoch to the next is stopped once it has risen by delta in all; a rise that stays
    within delta of the start never stops."""
    drift = [0.50, 0.505, 0.509, 0.513, 0.517, 0.521]
    previous = ValLossRiseStopping(delta=0.01, patience=1, reference="previous")
    assert _feed(previous, drift) == (5.0, 6) and previous.stopped_at_epoch is None  # never a step of 0.01
    start = ValLossRiseStopping(delta=0.01, patience=1, reference="start")
    assert _feed(start, drift) == (2.0, 4)  # 0.513 > 0.50 + 0.01
    # after a fall, the reference is still the start: a rise above the lowest loss is allowed
    start = ValLossRiseStopping(delta=0.01, patience=2, reference="start")
    weight, seen = _feed(start, [0.5, 0.3, 0.45, 0.505, 0.509, 0.52, 0.53])
    assert (weight, seen) == (4.0, 7) and start.rejected == [0.52, 0.53] and start.losses == [0.5, 0.3, 0.45, 0.505, 0.509]


def test_val_loss_rejected_last_epoch_is_undone_even_without_patience_left():
    """A run that ends on a rejected evaluation, fewer than `patience` in a row, ends on the weights
    of the last accepted one, at that evaluation (the last step) or else at the end of training."""
    stop = ValLossRiseStopping(delta=0.01, patience=3)
    assert _feed(stop, [1.0, 0.9, 0.8, 0.95]) == (2.0, 4)
    assert stop.stopped_at_epoch == 3.0 and stop.rejected_loss == 0.95
    stop = ValLossRiseStopping(delta=0.01, patience=3)  # evaluations that never reach the last step
    assert _feed(stop, [1.0, 0.9, 0.8, 0.95], max_steps=100) == (2.0, 4)
    assert stop.stopped_at_epoch == 3.0
    with pytest.raises(ValueError, match="patience"):
        ValLossRiseStopping(patience=0)
    with pytest.raises(ValueError, match="reference"):
        ValLossRiseStopping(reference="best")


def test_upsample_repeats_only_the_flagged():
    ds = Dataset.from_list(make_rows(6))
    out = upsample(ds, ["s1", "s4"], 3)
    assert len(out) == 10 and out["id"].count("s1") == 3 and out["id"].count("s0") == 1 and len(ds) == 6


def test_targeted_extra_epochs_hold_copies_of_the_flagged_and_a_replay_sample():
    ds = Dataset.from_list(make_rows(20))
    out = targeted(ds, ["s1", "s4"], factor=3, replay_ratio=1.0, seed=0)
    ids = out["id"]
    assert ids.count("s1") == ids.count("s4") == 3 and len(ids) == 12
    replay = [i for i in ids if i not in ("s1", "s4")]
    assert len(set(replay)) == 6  # six distinct other rows, once each
    assert targeted(ds, ["s1"], factor=2, replay_ratio=100.0)["id"].count("s0") == 1  # capped at the others
    with pytest.raises(ValueError, match="none of the flagged ids"):
        targeted(ds, ["nope"], factor=2)


def test_fresh_copy_of_a_trained_model_answers_with_its_own_weights(tmp_path, tokenizer, tiny_model):
    """SFTTrainer leaves a per-instance forward whose closure calls the original model: a plain deep
    copy would train its own weights but answer with the original's."""
    rows = make_rows(8)
    model = _learn(tiny_model, tokenizer, rows, tmp_path, steps=2)
    clone = fresh_model(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(0.5)
    ids = torch.tensor([tokenizer(rows[0]["prompt"]).input_ids])
    with torch.no_grad():
        ours = clone(input_ids=ids).logits
        original = model(input_ids=ids).logits
        rebuilt = type(clone)(clone.config)
        rebuilt.load_state_dict(clone.state_dict())
        expected = rebuilt.eval()(input_ids=ids).logits
    assert not torch.allclose(ours, original)
    assert torch.allclose(ours, expected, atol=1e-5)
