"""EvolvingIsolationCallback in real TRL training: bitwise freezing, evolution, logs, resume, errors."""

import json

import pytest
import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from hf_ilp import EvolvingIsolationCallback, IsolationConfig
from hf_ilp.isolation.callback import MASKS_FILE
from hf_ilp.isolation.masks import load_masks


class _FreezeCheck(TrainerCallback):
    """Runs after the isolation callback: records isolated values before each step, compares after."""

    def __init__(self, epi):
        self.epi = epi
        self.checked = 0
        self.moved_elsewhere = 0
        self.released_moved = 0
        self._prev_masks = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        self.before = {n: params[n].detach().clone() for n in self.epi.masks}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        for n, m in self.epi.masks.items():
            sel = m.to_bool()
            now = params[n].detach()
            assert torch.equal(now[sel], self.before[n][sel]), f"isolated entries of {n} moved at step {state.global_step}"
            self.moved_elsewhere += int((now[~sel] != self.before[n][~sel]).sum())
            prev = self._prev_masks.get(n)
            if prev is not None:
                released = prev.to_bool() & ~sel
                self.released_moved += int((now[released] != self.before[n][released]).sum())
            self.checked += 1
        self._prev_masks = dict(self.epi.masks)


def _args(world, tmp_path, **kw):
    base = dict(max_steps=12, per_device_train_batch_size=8, weight_decay=0.1, logging_steps=4, disable_tqdm=True)
    base.update(kw)
    return world.sft_config(tmp_path / "out", **base)


def test_epi_freezes_isolated_entries_bitwise_and_evolves(mt_world, few_rows, tmp_path):
    epi = EvolvingIsolationCallback(IsolationConfig(isolation_ratio=0.1, isolation_interval=3))
    check = _FreezeCheck(epi)
    model = mt_world.load_base_model()
    trainer = SFTTrainer(model=model, args=_args(mt_world, tmp_path), train_dataset=few_rows,
                         processing_class=mt_world.tokenizer, callbacks=[epi, check])
    trainer.train()
    assert [h["step"] for h in epi.history] == [3, 6, 9]
    assert check.checked > 0 and check.moved_elsewhere > 0
    assert check.released_moved > 0  # released entries train again
    assert epi.history[0]["churn"] == 1.0 and 0.0 < epi.history[-1]["churn"] < 1.0
    n_trainable = sum(p.numel() for p in model.parameters())
    assert epi.isolated_share() == pytest.approx(0.1, abs=2 / n_trainable + 1e-6)
    logged = [h for h in trainer.state.log_history if "isolation/churn" in h]
    assert [h["step"] for h in logged] == [4, 8, 12]  # each logging step after a mask update
    assert logged[0]["isolation/churn"] == 1.0 and "isolation/share/layer_0" in logged[-1]
    # compact: at most one bit per trainable entry plus the int32 index alternative
    assert sum(m.nbytes for m in epi.masks.values()) <= n_trainable / 8 + 64 * len(epi.masks)


def test_static_mask_is_computed_once(mt_world, few_rows, tmp_path):
    static = EvolvingIsolationCallback(isolation="static", isolation_ratio=0.05, isolation_interval=4)
    model = mt_world.load_base_model()
    SFTTrainer(model=model, args=_args(mt_world, tmp_path), train_dataset=few_rows,
               processing_class=mt_world.tokenizer, callbacks=[static]).train()
    assert [h["step"] for h in static.history] == [4]


@pytest.mark.parametrize("kind,beta", [("grad_weight", None), ("magnitude", None), ("grad_sq", 0.9)])
def test_importance_alternatives(mt_world, few_rows, tmp_path, kind, beta):
    epi = EvolvingIsolationCallback(isolation_ratio=0.05, isolation_interval=4, isolation_importance=kind,
                                    isolation_ema_beta=beta, isolation_scope="per_layer")
    check = _FreezeCheck(epi)
    model = mt_world.load_base_model()
    SFTTrainer(model=model, args=_args(mt_world, tmp_path, max_steps=9), train_dataset=few_rows,
               processing_class=mt_world.tokenizer, callbacks=[epi, check]).train()
    assert len(epi.history) == 2 and check.checked > 0
    for name, p in model.named_parameters():
        assert epi.masks[name].count == round(0.05 * p.numel())
    if kind == "magnitude":  # the largest |w| of each tensor is isolated
        w = dict(model.named_parameters())["model.layers.0.mlp.up_proj.weight"].detach()
        sel = epi.masks["model.layers.0.mlp.up_proj.weight"].to_bool()
        assert w.abs()[sel].min() >= w.abs()[~sel].max() * 0.9


def test_lora_parameters_are_isolated(mt_world, few_rows, tmp_path):
    from peft import LoraConfig

    epi = EvolvingIsolationCallback(isolation_ratio=0.1, isolation_interval=3)
    check = _FreezeCheck(epi)
    trainer = SFTTrainer(model=mt_world.load_base_model(), args=_args(mt_world, tmp_path, max_steps=8),
                         train_dataset=few_rows, processing_class=mt_world.tokenizer, callbacks=[epi, check],
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    assert epi.masks and all("lora_" in n for n in epi.masks)
    assert check.checked > 0


def test_masks_saved_in_checkpoints_and_restored_on_resume(mt_world, few_rows, tmp_path):
    kw = dict(max_steps=10, save_strategy="steps", save_steps=5, logging_steps=5)
    full = EvolvingIsolationCallback(isolation_ratio=0.1, isolation_interval=2)
    model = mt_world.load_base_model()
    SFTTrainer(model=model, args=_args(mt_world, tmp_path, **kw), train_dataset=few_rows,
               processing_class=mt_world.tokenizer, callbacks=[full]).train()
    ckpt = tmp_path / "out" / "checkpoint-5"
    saved = load_masks(ckpt / MASKS_FILE)
    assert [h["step"] for h in json.loads((ckpt / "isolation_state.json").read_text())["history"]] == [2, 4]

    resumed = EvolvingIsolationCallback(isolation_ratio=0.1, isolation_interval=2)
    model2 = mt_world.load_base_model()
    trainer = SFTTrainer(model=model2, args=_args(mt_world, tmp_path, **kw), train_dataset=few_rows,
                         processing_class=mt_world.tokenizer, callbacks=[resumed])
    seen = {}

    class _AtBegin(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen.update(resumed.masks)

    trainer.add_callback(_AtBegin())
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert seen and all(seen[n] == saved[n] for n in saved)
    assert resumed.history == full.history
    assert all(resumed.masks[n] == full.masks[n] for n in full.masks)
    for (n, a), b in zip(model.named_parameters(), model2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("kw,match", [
    (dict(isolation_ratio=0.0), "between 0 and 1"), (dict(isolation_ratio=1.0), "between 0 and 1"),
    (dict(isolation_ratio=1.5), "between 0 and 1"), (dict(isolation_interval=0), "K"),
    (dict(isolation_importance="fisher"), "isolation_importance"), (dict(isolation="none"), "no callback"),
])
def test_bad_settings_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        EvolvingIsolationCallback(**kw)


def test_no_trainable_parameters_is_an_error(mt_world, few_rows, tmp_path):
    model = mt_world.load_base_model()
    trainer = SFTTrainer(model=model, args=_args(mt_world, tmp_path, max_steps=2), train_dataset=few_rows,
                         processing_class=mt_world.tokenizer, callbacks=[EvolvingIsolationCallback()])
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        trainer.train()


def test_optimizer_without_per_parameter_state_is_an_error(mt_world, few_rows, tmp_path):
    model = mt_world.load_base_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SFTTrainer(model=model, args=_args(mt_world, tmp_path, max_steps=2), train_dataset=few_rows,
                         processing_class=mt_world.tokenizer, optimizers=(sgd, None),
                         callbacks=[EvolvingIsolationCallback(isolation_interval=1)])
    with pytest.raises(TypeError, match="per-parameter state"):
        trainer.train()
