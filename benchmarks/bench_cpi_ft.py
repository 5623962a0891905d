"""CPI-FT benchmark: (a) quality on the multi-task world, (b) fusion speed and memory.

(a) `--part quality`: on `build_multitask_world(size)`, the same SFT budget per method:
    multi-task SFT (all tasks mixed, one run), sequential multi-stage SFT (one stage per task,
    `hf_ilp.training.train_stages`) and CPI-FT (`run_cpi_ft`: probes, cores, groups, fusion,
    pipelined SFT), once per `--stage-mix` (stages on each group's rows, or cumulative: on the rows
    of that group and every earlier one; the probes and the fused model are shared). Prints
    per-task exact-match accuracy, the average, the worst task and the optimizer steps; with
    `--matched-budget` also multi-task SFT run for as many steps as the costliest CPI-FT run.

(b) `--part speed`: two saved random Llama models of ~110M parameters (float32, 4 shards). In one
    process, interleaved, `--repeats` times, medians:
      copy      plain copy of the shards (the floor: read + write, no math)
      mergekit  mergekit's `slerp` on every tensor flattened to (1, N), read with safetensors'
                `safe_open`, each shard collected and written with `save_file`
      hf_ilp    `fuse_checkpoints` with the cores given (SLERP + core transplant: the fusion step)
      hf_ilp+cores  `fuse_checkpoints` computing the cores too (the whole `hf-ilp fuse`)
    Peak RSS: each variant runs once more in its own fresh subprocess, which reports its peak
    resident set (`VmHWM` in /proc/self/status; unlike getrusage's ru_maxrss it starts afresh at
    exec) minus its RSS right before the work (after the imports and loading the cores): the
    memory the work itself needed, set against 3x the largest tensor plus the masks. Both come
    from the kernel, so file pages mapped by mmap (safe_open) count too.

    Files live on /dev/shm (tmpfs) by default: on a shared disk, write-back throttling of the
    dirty pages made single runs of either side vary 5x. Run with OMP_NUM_THREADS=1 on a
    loaded machine (threads that wait for each other dominate otherwise).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_cpi_ft.py --part speed
    nice -n 10 python benchmarks/bench_cpi_ft.py --part quality --size small
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

_T = 0.5


# ----------------------------------------------------------------------------- (b) fusion speed


def _make_models(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Two random Llama models (~110M parameters each, float32) in 4 safetensors shards."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=12, tie_word_embeddings=True,
    )
    with torch.device("meta"):
        shapes = {n: t.shape for n, t in LlamaForCausalLM(config).state_dict().items() if n != "lm_head.weight"}
    total = sum(s.numel() for s in shapes.values())
    paths = []
    for k, name in enumerate(("model_a", "model_b")):
        path = root / name
        paths.append(path)
        if (path / "model.safetensors.index.json").exists():
            continue
        path.mkdir(parents=True, exist_ok=True)
        config.architectures = ["LlamaForCausalLM"]
        config.save_pretrained(path)
        g = torch.Generator().manual_seed(seed + k)
        names = list(shapes)
        per_shard = total / 4
        shards, cur, size = [], [], 0
        for n in names:
            cur.append(n)
            size += shapes[n].numel()
            if size >= per_shard * (len(shards) + 1) and len(shards) < 3:
                shards.append(cur)
                cur = []
        shards.append(cur)
        weight_map = {}
        for i, group in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: 0.02 * torch.randn(shapes[n], generator=g) for n in group}, str(path / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in group})
        index = {"metadata": {"total_size": total * 4}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths[0], paths[1]


def _copy(a: Path, b: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(a, out)


def _mergekit(a: Path, b: Path, out: Path) -> None:
    from mergekit.merge_methods.slerp import slerp as mk_slerp
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    index = json.loads((a / "model.safetensors.index.json").read_text())
    t = torch.tensor(_T)
    for shard in dict.fromkeys(index["weight_map"].values()):
        merged = {}
        with safe_open(str(a / shard), "pt") as fa, safe_open(str(b / shard), "pt") as fb:
            for name in fa.keys():
                x, y = fa.get_tensor(name), fb.get_tensor(name)
                merged[name] = mk_slerp(t, x.reshape(1, -1), y.reshape(1, -1)).reshape(x.shape)
                del x, y
        save_file(merged, str(out / shard), metadata={"format": "pt"})
        del merged
    shutil.copy2(a / "model.safetensors.index.json", out)
    shutil.copy2(a / "config.json", out)


def _hf_ilp(a: Path, b: Path, out: Path, cores=None) -> None:
    from hf_ilp.fusion import fuse_checkpoints

    fuse_checkpoints(a, {"b": b}, out, t=_T, core_share=0.01, cores=cores)


def _child(variant: str, a: str, b: str, out: str, cores_file: str) -> None:
    """Run one variant in this (fresh) process; print its peak RSS above the pre-work RSS."""
    import hf_ilp.fusion.fuse  # noqa: F401  (imports are part of the baseline, not of the work)
    import mergekit.merge_methods.slerp  # noqa: F401
    from hf_ilp.isolation.masks import load_masks

    cores = {"b": load_masks(cores_file)} if variant == "hf_ilp" else None
    before = _status_kib("VmRSS")
    fn = {"copy": _copy, "mergekit": _mergekit, "hf_ilp": lambda x, y, o: _hf_ilp(x, y, o, cores), "hf_ilp+cores": _hf_ilp}[variant]
    fn(Path(a), Path(b), Path(out))
    print(json.dumps({"before": before, "peak": _status_kib("VmHWM")}))


def _status_kib(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes (VmHWM: peak RSS since exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def bench_speed(root: Path, repeats: int) -> None:
    from hf_ilp.fusion import core_regions
    from hf_ilp.fusion._checkpoint import Checkpoint
    from hf_ilp.isolation.masks import save_masks

    a, b = _make_models(root)
    ck = Checkpoint(a)
    largest = max((e.end - e.begin) for e in ck.entries.values())
    n_params = sum(e.numel for e in ck.entries.values())
    model_bytes = sum((a / s).stat().st_size for s in ck.shards)
    ck.close()
    print(f"models: {n_params / 1e6:.1f}M parameters, float32, {len(ck.shards)} shards, {model_bytes / 2**20:.0f} MiB each; "
          f"largest tensor {largest / 2**20:.1f} MiB")
    t0 = time.perf_counter()
    cores = core_regions(a, b, 0.01)
    print(f"core_regions (top 1% of |b - a|, streamed): {time.perf_counter() - t0:.2f} s")
    cores_file = root / "cores_b.safetensors"
    save_masks(cores, cores_file)
    mask_bytes = sum(m.nbytes for m in cores.values())

    variants = {
        "copy": lambda o: _copy(a, b, o),
        "mergekit": lambda o: _mergekit(a, b, o),
        "hf_ilp": lambda o: _hf_ilp(a, b, o, {"b": cores}),
        "hf_ilp+cores": lambda o: _hf_ilp(a, b, o),
    }
    times = {k: [] for k in variants}
    for name, fn in variants.items():  # warm-up: page cache, allocator, lazy imports
        fn(root / f"out-{name}")
    for _ in range(repeats):
        for name, fn in variants.items():
            out = root / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            fn(out)
            times[name].append(time.perf_counter() - t0)

    # the fused tensors agree with mergekit's per-tensor SLERP outside the core entries
    from safetensors import safe_open

    worst = 0.0
    for shard in ck.shards:
        with safe_open(str(root / "out-mergekit" / shard), "pt") as fm, safe_open(str(root / "out-hf_ilp" / shard), "pt") as fh:
            for n in fm.keys():
                x, y = fm.get_tensor(n).reshape(-1), fh.get_tensor(n).reshape(-1).clone()
                idx = cores[n].indices()
                y[idx] = x[idx]
                worst = max(worst, ((x - y).norm() / x.norm()).item())
    print(f"hf_ilp vs mergekit outside the core entries: max relative difference per tensor {worst:.2e}")

    rss = {}
    for name in variants:
        out = root / f"rss-{name}"
        res = subprocess.run(
            [sys.executable, __file__, "--child", name, str(a), str(b), str(out), str(cores_file)],
            capture_output=True, text=True, check=True,
        )
        rss[name] = json.loads(res.stdout.strip().splitlines()[-1])
        shutil.rmtree(out, ignore_errors=True)

    print()
    print(f"{'variant':<14} {'median s':>9} {'min s':>7} {'x copy':>7} {'peak RSS MiB':>13} {'work RSS MiB':>13}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in variants:
        r = rss[name]
        print(f"{name:<14} {med[name]:>9.3f} {min(times[name]):>7.3f} {med[name] / med['copy']:>7.2f} "
              f"{r['peak'] / 2**20:>13.0f} {(r['peak'] - r['before']) / 2**20:>13.0f}")
    budget = 3 * largest + mask_bytes
    for name in ("hf_ilp", "hf_ilp+cores"):
        work = rss[name]["peak"] - rss[name]["before"]
        print(f"{name}: work RSS {work / 2**20:.0f} MiB vs 3 x largest tensor + masks = {budget / 2**20:.0f} MiB "
              f"-> {'within' if work <= budget else 'OVER'} target")
    print(f"mergekit: work RSS {(rss['mergekit']['peak'] - rss['mergekit']['before']) / 2**20:.0f} MiB")
    print(f"speed-up of the full hf-ilp fuse (cores computed too) over mergekit: {med['mergekit'] / med['hf_ilp+cores']:.2f}x")
    print(f"speed-up of the fusion step (SLERP + transplant) over mergekit per-tensor slerp: {med['mergekit'] / med['hf_ilp']:.2f}x (target >= 1.5x)")


# ----------------------------------------------------------------------------- (a) quality


def bench_quality(root: Path, size: str, seed: int, epochs: float, probe_epochs: float, stage_mixes=("group",),
                  matched_budget: bool = False) -> None:
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTTrainer

    from hf_ilp.fusion import CPIFTConfig, CPIFTTrainer, load_cores, run_cpi_ft
    from hf_ilp.training import train_stages
    from hf_ilp.world import build_multitask_world

    world = build_multitask_world(size, seed=seed)
    tok = world.tokenizer
    epochs = epochs or world.sft_config("unused").num_train_epochs
    probe_epochs = probe_epochs or epochs
    print(f"multi-task world {size} (seed {seed}): tasks {world.tasks}, {len(world.train)} train rows; "
          f"{epochs} epochs per method stage, probes {probe_epochs} epochs")
    results = {}

    def sft_args(out, **kw):
        return world.sft_config(root / out, num_train_epochs=epochs, **kw)

    steps = {}  # optimizer steps per method (probes included for CPI-FT), counted by a callback

    class _Steps(TrainerCallback):
        def __init__(self, method):
            self.method = method

        def on_step_end(self, args, state, control, **kwargs):
            key = "CPI-FT probes" if Path(args.output_dir).name.startswith("probe-") else self.method
            steps[key] = steps.get(key, 0) + 1

    t0 = time.perf_counter()
    mixed = world.train.remove_columns("stage")
    trainer = SFTTrainer(model=world.load_base_model(), args=sft_args("multitask"), train_dataset=mixed, processing_class=tok,
                         callbacks=[_Steps("multi-task SFT")])
    trainer.train()
    results["multi-task SFT"] = world.evaluate(trainer.model)
    print(f"multi-task SFT done in {time.perf_counter() - t0:.0f} s: {results['multi-task SFT']}")

    t0 = time.perf_counter()
    trainer = train_stages(world.load_base_model(), tok, world.train, sft_args("sequential"), callbacks=[_Steps("sequential SFT")])
    results["sequential SFT"] = world.evaluate(trainer.model)
    print(f"sequential SFT done in {time.perf_counter() - t0:.0f} s: {results['sequential SFT']}")

    base_args = sft_args("unused")
    kwargs = {f.name: getattr(base_args, f.name) for f in base_args.__dataclass_fields__.values() if f.init}
    cpi_methods = []
    for mix in stage_mixes:
        t0 = time.perf_counter()
        method = "CPI-FT" if mix == "group" else f"CPI-FT {mix}"
        cpi_args = CPIFTConfig(**{**kwargs, "output_dir": str(root / f"cpi_ft-{mix}"), "cpi_probe_epochs": probe_epochs, "cpi_stage_mix": mix})
        if not cpi_methods:  # probes and fusion once; further stage mixes start from the same fused model
            trainer, fusion = run_cpi_ft(world.base_model_path, mixed, cpi_args, tok, tasks=world.tasks, callbacks=[_Steps(method)])
            fused_dir = root / f"cpi_ft-{mix}" / "fused"
            print(f"CPI-FT probes and fusion: groups {fusion.groups}, overlaps { {k: round(v, 3) for k, v in fusion.overlaps.items()} }")
            fused = AutoModelForCausalLM.from_pretrained(fused_dir)
            print(f"(fused model before the pipelined SFT: {world.evaluate(fused)})")
        else:
            trainer = CPIFTTrainer(model=AutoModelForCausalLM.from_pretrained(fused_dir), args=cpi_args, train_dataset=mixed,
                                   processing_class=tok, groups=fusion.groups, cores=load_cores(fused_dir), callbacks=[_Steps(method)])
            trainer.train()
        results[method] = world.evaluate(trainer.model)
        cpi_methods.append(method)
        print(f"{method} (stages on the {mix} mix) done in {time.perf_counter() - t0:.0f} s: {results[method]}")

    matched = None
    if matched_budget:  # multi-task SFT given as many optimizer steps as the costliest CPI-FT run
        most = max(cpi_methods, key=lambda m: steps[m] + steps.get("CPI-FT probes", 0))
        matched = "multi-task matched"
        t0 = time.perf_counter()
        trainer = SFTTrainer(model=world.load_base_model(), args=sft_args("multitask-matched", max_steps=steps[most] + steps.get("CPI-FT probes", 0)),
                             train_dataset=mixed, processing_class=tok, callbacks=[_Steps(matched)])
        trainer.train()
        results[matched] = world.evaluate(trainer.model)
        print(f"multi-task SFT with the steps of {most} done in {time.perf_counter() - t0:.0f} s: {results[matched]}")

    print()
    print(f"{'method':<18} " + " ".join(f"{t:>8}" for t in world.tasks) + f" {'average':>8} {'worst':>8} {'steps':>6}")
    summary = {}
    for method, acc in results.items():
        vals = [acc[t] for t in world.tasks]
        summary[method] = (sum(vals) / len(vals), min(vals))
        n_steps = steps.get(method, 0) + (steps.get("CPI-FT probes", 0) if method in cpi_methods else 0)
        print(f"{method:<18} " + " ".join(f"{acc[t]:>8.3f}" for t in world.tasks)
              + f" {summary[method][0]:>8.3f} {summary[method][1]:>8.3f} {n_steps:>6}")
    print("(steps: optimizer steps of the method, CPI-FT's probes included)")
    baselines = [k for k in summary if k not in cpi_methods and k != matched]
    best_avg = max(summary[k][0] for k in baselines)
    worst_base = min(summary[k][1] for k in baselines)
    for method in cpi_methods:
        avg, worst = summary[method]
        print(f"{method} average {avg:.3f} vs best baseline {best_avg:.3f} ({'met' if avg >= best_avg else 'NOT met'}); "
              f"worst task {worst:.3f} vs baselines' worst {worst_base:.3f} ({'met' if worst >= worst_base else 'NOT met'})")
    if matched:
        for method in cpi_methods:
            print(f"{method} average {summary[method][0]:.3f} vs multi-task SFT with {steps[matched]} steps {summary[matched][0]:.3f} "
                  f"({'above' if summary[method][0] >= summary[matched][0] else 'below'})")
    for method in cpi_methods:
        print(f"{method} average / best baseline average: {summary[method][0] / best_avg if best_avg else float('nan'):.3f}")


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "quality", "all"], default="all")
    parser.add_argument("--dir", default=None, help="working folder (default: a temporary one on /dev/shm, removed at the end)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per variant (speed)")
    parser.add_argument("--size", default="small", help="multi-task world size (quality)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=None, help="epochs of each SFT run / stage (default: the world's budget)")
    parser.add_argument("--probe-epochs", type=float, default=None, help="epochs of each CPI-FT probe (default: --epochs)")
    parser.add_argument("--stage-mix", nargs="+", choices=["group", "cumulative"], default=["group", "cumulative"],
                        help="CPI-FT stage mixes to compare (probes and fusion are shared)")
    parser.add_argument("--matched-budget", action="store_true",
                        help="also run multi-task SFT for as many optimizer steps as the costliest CPI-FT run (probes included)")
    args = parser.parse_args(argv)
    # tmpfs when there is one: the disk's write-back throttling would otherwise decide the times
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_cpi_ft-", dir=shm))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.part in ("quality", "all"):
            bench_quality(root / "quality", args.size, args.seed, args.epochs, args.probe_epochs, args.stage_mix, args.matched_budget)
        if args.part in ("speed", "all"):
            bench_speed(root / "speed", args.repeats)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
