"""FP4Linear, the in-place conversion and the Trainer mixin, on a tiny Llama and real TRL."""

import math

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


def _train_steps(model, ids, steps=3, autocast=None):
    """A few AdamW steps of a causal LM, under `torch.autocast("cpu", dtype=autocast)` if given;
    returns the losses and the gradients of the last step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        losses.append(loss.item())
    return losses, grads


def _fp16_autocast_on_cpu() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float16
    except RuntimeError:
        return False


@pytest.mark.parametrize(
    ("weights", "autocast"),
    [
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, None),
        pytest.param(torch.float32, torch.float16, marks=pytest.mark.skipif(
            not _fp16_autocast_on_cpu(), reason="this torch has no float16 autocast on CPU")),
    ],
    ids=["fp32-weights-bf16-autocast", "bf16-weights", "fp32-weights-fp16-autocast"],
)
def test_trains_in_the_precisions_people_train_in(fp4_backends, weights, autocast):
    """Float32 master weights under bf16 / fp16 autocast (what Trainer(bf16=True) does) and bf16
    weights without autocast: forward and backward run, the GEMMs in the low precision, and
    every gradient comes back finite in its parameter's dtype."""
    model = _tiny_llama().to(weights)
    convert_to_halfs_fp4_training(model, HalfSConfig())
    fp4 = [m for m in model.modules() if isinstance(m, FP4Linear)]
    seen = []  # (input dtype, output dtype) of each FP4Linear call
    for m in fp4:
        m.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(4, len(WORDS) + 4, (4, 12), generator=torch.Generator().manual_seed(0))
    losses, grads = _train_steps(model, ids, autocast=autocast)
    low = autocast or weights
    assert all(math.isfinite(v) for v in losses)
    assert {o for _, o in seen} == {low}  # every FP4 GEMM ran in the low precision
    if autocast is not None:  # the linears after RMSNorm get float32 inputs (the case that failed)
        assert torch.float32 in {i for i, _ in seen}
    for name, p in model.named_parameters():
        assert grads[name].dtype == weights and torch.isfinite(grads[name]).all(), name
        assert not torch.equal(before[name], p.detach()), name  # every parameter trained
    layer = FP4Linear.from_linear(nn.Linear(64, 32).to(weights), HalfSConfig())  # with a bias
    x = torch.randn(4, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        y = layer(x.to(weights))
    y.float().sum().backward()
    assert y.dtype == low and layer.bias.grad.dtype == weights and layer.weight.grad.dtype == weights
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mode"):
        HalfSConfig(mode="nvfp4")
    with pytest.raises(ValueError, match="group_size"):
        HalfSConfig(group_size=-2)


class _FP4SFTTrainer(HalfSFP4TrainerMixin, SFTTrainer):
    pass


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-mixed-precision"])
def test_trainer_mixin_converts_before_prepare_and_trains(fp4_backends, tmp_path, bf16):
    tokenizer = build_word_tokenizer(WORDS)
    rows = [{"prompt": " ".join(WORDS[i : i + 4]), "completion": " " + " ".join(WORDS[i + 4 : i + 7])} for i in range(24)]
    model = _tiny_llama()
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=3e-3,
        logging_steps=1, report_to="none", bf16=bf16, use_cpu=True, gradient_checkpointing=False,
        save_strategy="no",
    )
    trainer = _FP4SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, fp4_config=HalfSConfig(mode="halfs"))
    converted = [m for m in trainer.model.modules() if isinstance(m, FP4Linear)]
    assert len(converted) == 13  # 2 layers x 7 linears, minus the first (q_proj); lm_head kept
    assert trainer.accelerator.mixed_precision == ("bf16" if bf16 else "no")
    out_dtypes = set()
    for m in converted:
        m.register_forward_hook(lambda mod, args, out: out_dtypes.add(out.dtype))
    before = converted[-1].weight.detach().clone()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, converted[-1].weight)
    assert converted[-1].weight.dtype == torch.float32  # master weights stay float32
    assert out_dtypes == {torch.bfloat16 if bf16 else torch.float32}  # the FP4 path ran, in bf16 if asked


def test_fp4_recipe_runs_in_bf16_mixed_precision(fp4_backends, tmp_path):
    """`recipes/fp4_sft.py --bf16 true` end to end on the CPU: a saved tiny Llama, a JSONL dataset."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    tokenizer = build_word_tokenizer(WORDS)
    _tiny_llama().save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = [{"prompt": " ".join(WORDS[i : i + 4]), "completion": " " + " ".join(WORDS[i + 4 : i + 7])} for i in range(16)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "fp4_sft.py"
    cmd = [sys.executable, str(recipe), "--model_name_or_path", str(tmp_path / "model"),
           "--dataset_name", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--bf16", "true",
           "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
           "--save_strategy", "no", "--disable_tqdm", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "fp4_summary.json").read_text())
    assert summary["fp4_linears"] == 13 and summary["global_step"] == 2 and math.isfinite(summary["train_loss"])
    args = torch.load(tmp_path / "out" / "final_model" / "training_args.bin", weights_only=False)
    assert args.bf16 and args.use_cpu  # the run trained in bf16 mixed precision on the CPU
