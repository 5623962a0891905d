"""The GPU parts of `bench_fp4.py --device cuda`: kernel speed against the copy ceiling and
torchao, and one training step of a 0.27B Llama in bf16 against FP4 max / halfs.

Times are medians of CUDA-event timings after a warm-up, every contender in one process on the
same tensors; each part ends with its ratio lines and target verdicts.
"""

from __future__ import annotations

import copy
import statistics

import torch

from hf_ilp.fp4 import HalfSConfig, backends, convert_to_halfs_fp4_training, quantize_fp4
from hf_ilp.fp4.reference import fp4_quantize_reference

GROUPS = {"block16": 16, "block32": 32, "row": -1}


def cuda_time(fn, reps: int) -> float:
    """Median seconds of `fn` over `reps` calls, timed with CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def part_kernels(reps: int) -> None:
    """Every mode x group on a 1 GiB float32 tensor (the whole-tensor group on 64 MiB), bf16 inputs,
    the pure-PyTorch reference and torchao's MXFP4 / NVFP4 quantizers, eager and compiled."""
    print(f"\n== (c) CUDA kernel speed, {torch.cuda.get_device_name()}; backend {backends()['cuda']} ==")
    x = torch.randn(16384, 16384, device="cuda")  # 1 GiB of float32
    nbytes = 2 * x.numel() * x.element_size()  # read + write, like clone
    copy_t = cuda_time(lambda: x.clone(), reps)
    print(f"copy (clone): {copy_t * 1e3:.3f} ms, {nbytes / copy_t / 1e9:.0f} GB/s (read+write)")
    print(f"{'mode':<6} {'group':<8} {'ms':>8} {'GB/s':>7} {'share of copy':>13}")
    share = {}
    for mode in ("max", "half", "halfs", "mse"):
        for gname, group in GROUPS.items():
            t = cuda_time(lambda: quantize_fp4(x, mode, group), reps)
            share[mode, gname] = copy_t / t
            print(f"{mode:<6} {gname:<8} {t * 1e3:8.3f} {nbytes / t / 1e9:7.0f} {copy_t / t:13.3f}", flush=True)
    x64 = torch.randn(4096, 4096, device="cuda")  # 64 MiB: one group for the whole tensor
    copy64 = cuda_time(lambda: x64.clone(), reps)
    for mode in ("max", "halfs"):
        t = cuda_time(lambda: quantize_fp4(x64, mode, 0), reps)
        print(f"{mode:<6} {'tensor':<8} {t * 1e3:8.3f} {2 * x64.numel() * 4 / t / 1e9:7.0f} {copy64 / t:13.3f}  (64 MiB)")

    xb = x.bfloat16()
    copy_b = cuda_time(lambda: xb.clone(), reps)
    print(f"bf16 in and out: copy {copy_b * 1e3:.3f} ms")
    for mode in ("max", "halfs"):
        for gname in ("block16", "block32"):
            t = cuda_time(lambda: quantize_fp4(xb, mode, GROUPS[gname]), reps)
            print(f"{mode:<6} {gname:<8} {t * 1e3:8.3f} {'':>7} {copy_b / t:13.3f}  (bf16)")

    for mode in ("max", "halfs"):
        ref = cuda_time(lambda: fp4_quantize_reference(x64, mode, 32), max(3, reps // 3))
        ours = cuda_time(lambda: quantize_fp4(x64, mode, 32), reps)
        print(f"reference (pure PyTorch on the GPU), 64 MiB, {mode} block 32: {ref * 1e3:.2f} ms, "
              f"kernel {ours * 1e3:.3f} ms ({ref / ours:.1f}x faster)")

    faster = _torchao(x, xb, reps)
    fast_modes = [share[m, g] >= 0.5 for m in ("max", "half") for g in ("block16", "block32")]
    search_modes = [share[m, g] >= 0.25 for m in ("halfs", "mse") for g in ("block16", "block32")]
    print(f"target: max and half at blocks 16/32 >= 0.5 of copy -> "
          f"{min(share[m, g] for m in ('max', 'half') for g in ('block16', 'block32')):.2f} {_verdict(all(fast_modes))}")
    print(f"target: halfs and mse at blocks 16/32 >= 0.25 of copy -> "
          f"{min(share[m, g] for m in ('halfs', 'mse') for g in ('block16', 'block32')):.2f} {_verdict(all(search_modes))}")
    if faster is not None:
        print(f"target: faster than torchao's compiled to_mx / to_nvfp4 at the same block -> {_verdict(faster)}")


def _torchao(x, xb, reps: int):
    """torchao's MXFP4 (block 32) and NVFP4 (block 16) quantizers, eager and compiled, against ours
    (halfs, the slower of our modes); None where torchao is missing."""
    try:
        from torchao.prototype.mx_formats.mx_tensor import to_mx
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    except ImportError as exc:
        print(f"torchao not available ({exc}): its rows are left out")
        return None
    fp4 = torch.float4_e2m1fn_x2

    def mx(t):
        return to_mx(t, fp4, 32)

    def nv(t):
        return NVFP4Tensor.to_nvfp4(t, 16, per_tensor_scale=per_tensor_amax_to_scale(t.abs().max()))

    ok = True
    for name, fn, block in (("to_mx", mx, 32), ("to_nvfp4", nv, 16)):
        compiled = torch.compile(fn)
        for tensor, label in ((x, "fp32"), (xb, "bf16")):
            eager_t = cuda_time(lambda: fn(tensor), reps)
            comp_t = cuda_time(lambda: compiled(tensor), reps)
            ours = {m: cuda_time(lambda: quantize_fp4(tensor, m, block), reps) for m in ("max", "halfs")}
            ok &= ours["halfs"] < comp_t
            print(f"torchao {name} (block {block}), {label} in: eager {eager_t * 1e3:.3f} ms, compiled {comp_t * 1e3:.3f} ms; "
                  f"ours max {ours['max'] * 1e3:.3f} ms, halfs {ours['halfs'] * 1e3:.3f} ms "
                  f"(compiled / ours halfs {comp_t / ours['halfs']:.2f}x)", flush=True)
    return ok


def part_step(reps: int) -> None:
    """One training step (forward, backward, AdamW) of a 0.27B Llama (hidden 1024, 16 layers, vocab
    32,000, sequence 1,024, batch 8): bf16 weights, then fp32 master weights under bf16 autocast;
    each plain and with `convert_to_halfs_fp4_training` in max and halfs mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    print("\n== (t) one training step of a 0.27B Llama (hidden 1024, 16 layers, vocab 32,000, seq 1,024, batch 8) ==")
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024)
    torch.manual_seed(0)
    init = LlamaForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (8, 1024), device="cuda")
    for setting, dtype, autocast in (("bf16 weights", torch.bfloat16, False), ("fp32 weights, bf16 autocast", torch.float32, True)):
        times = {}
        for arm in ("bf16", "max", "halfs"):
            model = copy.deepcopy(init).to("cuda", dtype)
            if arm != "bf16":
                convert_to_halfs_fp4_training(model, HalfSConfig(mode=arm))
            times[arm] = _step_time(model, ids, autocast, reps)
            del model
            torch.cuda.empty_cache()
        print(f"{setting}: step bf16 {times['bf16'] * 1e3:.0f} ms, fp4-max {times['max'] * 1e3:.0f} ms "
              f"({times['max'] / times['bf16']:.2f}x), fp4-halfs {times['halfs'] * 1e3:.0f} ms "
              f"({times['halfs'] / times['bf16']:.2f}x)", flush=True)
        print(f"target ({setting}): fp4-max <= 1.3x bf16 -> {_verdict(times['max'] <= 1.3 * times['bf16'])}; "
              f"fp4-halfs <= 1.5x bf16 -> {_verdict(times['halfs'] <= 1.5 * times['bf16'])}")


def _step_time(model, ids, autocast: bool, reps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return cuda_time(step, reps)
