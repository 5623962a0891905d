"""FP4Linear, the in-place conversion and the Trainer mixin, on a tiny Llama and real TRL."""

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

from hf_ilp.fp4 import FP4Linear, HalfSConfig, HalfSFP4TrainerMixin, convert_to_halfs_fp4_training
from hf_ilp.world import build_word_tokenizer, tiny_llama_config

WORDS = [f"w{i}" for i in range(40)]


def _tiny_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=len(WORDS) + 4, hidden_size=64, num_attention_heads=4))


def test_conversion_is_in_place_and_skips_first_last_and_head(fp4_backends):
    model = _tiny_llama()
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    convert_to_halfs_fp4_training(model, HalfSConfig())
    kinds = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert kinds["model.layers.0.self_attn.q_proj"] is nn.Linear  # first linear
    assert kinds["lm_head"] is nn.Linear  # last linear and LM head
    assert sum(k is FP4Linear for k in kinds.values()) == len(kinds) - 2
    assert all(p is params[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == keys
    # an optimizer built before the conversion still trains the converted layers
    before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    ids = torch.randint(4, len(WORDS) + 4, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.model.layers[1].mlp.down_proj.weight)
    convert_to_halfs_fp4_training(model, HalfSConfig())  # idempotent
    assert sum(isinstance(m, FP4Linear) for m in model.modules()) == len(kinds) - 2


def test_module_filter_fn_decides(fp4_backends):
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 8))
    convert_to_halfs_fp4_training(model, HalfSConfig(), module_filter_fn=lambda m, name: name == "0")
    assert [type(m).__name__ for m in model] == ["FP4Linear", "ReLU", "Linear", "Linear"]


def test_fp4_linear_tracks_full_precision(fp4_backends):
    torch.manual_seed(0)
    ref = nn.Linear(128, 64)
    x = torch.randn(8, 16, 128, requires_grad=True)
    g = torch.randn(8, 16, 64)
    ref(x).backward(g)
    gx, gw, gb = x.grad.clone(), ref.weight.grad.clone(), ref.bias.grad.clone()

    def cos(a, b):
        return nn.functional.cosine_similarity(a.reshape(-1), b.reshape(-1), dim=0).item()

    for mode in ("halfs", "max"):
        layer = FP4Linear.from_linear(ref, HalfSConfig(mode=mode))
        ref.zero_grad()
        x.grad = None
        y = layer(x)
        y.backward(g)
        assert cos(y, ref(x)) > 0.98
        assert cos(x.grad, gx) > 0.95 and cos(ref.weight.grad, gw) > 0.95
        assert torch.allclose(ref.bias.grad, gb)  # bias gradient is not quantized
    off = HalfSConfig(quantize_weights=False, quantize_activations=False, quantize_gradients=False)
    layer = FP4Linear.from_linear(ref, off)
    ref.zero_grad()
    x.grad = None
    layer(x).backward(g)
    assert torch.allclose(x.grad, gx, atol=1e-5) and torch.allclose(ref.weight.grad, gw, atol=1e-4)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mode"):
        HalfSConfig(mode="nvfp4")
    with pytest.raises(ValueError, match="group_size"):
        HalfSConfig(group_size=-2)


class _FP4SFTTrainer(HalfSFP4TrainerMixin, SFTTrainer):
    pass


def test_trainer_mixin_converts_before_prepare_and_trains(fp4_backends, tmp_path):
    tokenizer = build_word_tokenizer(WORDS)
    rows = [{"prompt": " ".join(WORDS[i : i + 4]), "completion": " " + " ".join(WORDS[i + 4 : i + 7])} for i in range(24)]
    model = _tiny_llama()
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=3e-3,
        logging_steps=1, report_to="none", bf16=False, gradient_checkpointing=False, save_strategy="no",
    )
    trainer = _FP4SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, fp4_config=HalfSConfig(mode="halfs"))
    converted = [m for m in trainer.model.modules() if isinstance(m, FP4Linear)]
    assert len(converted) == 13  # 2 layers x 7 linears, minus the first (q_proj); lm_head kept
    before = converted[-1].weight.detach().clone()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, converted[-1].weight)
    assert sum(m._calls for m in converted) > 0  # the FP4 path really ran
