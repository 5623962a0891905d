"""CPI-FT benchmark: (a) quality on the multi-task world, (b) fusion speed and memory.

(a) `--part quality`: on `build_multitask_world(size, version=2)` for each of `--seeds` (world
    seed = training seed), the world's SFT budget per run: multi-task SFT (all tasks mixed, one
    run), sequential multi-stage SFT (one stage per task, `hf_ilp.training.train_stages`) and
    CPI-FT: the probes (each task fine-tuned alone from the base: also the reference of the seesaw
    measure), one fusion per core share (cores = top-p of |probe - base|, groups by Jaccard
    overlap >= 0.1, core transplant + SLERP t=0.5), then the pipelined SFT over the groups with
    the cores of earlier groups frozen, once per `--variants` CORE_SHARE:STAGE_MIX (stages on each
    group's rows, or cumulative: on the rows of that group and every earlier one). Each stage gets
    the optimizer steps of one probe (one task's budget), so CPI-FT's stages together take as many
    steps as multi-task SFT and its total, probes included, twice as many; multi-task SFT given
    that total is the matched-budget baseline. Prints per-task exact match, and over the seeds
    the average, the worst task and the seesaw measure (largest loss of any task against training
    it alone) as mean ± sd (min-max), and the optimizer steps. `--baselines epi.json` reuses
    multi-task and sequential SFT from `bench_epi.py --json` (the same runs: same world, seed and
    budget).

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
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_cpi_ft.py --part quality --baselines epi.json
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
    from hf_ilp.fusion.checkpoint import Checkpoint
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


def _variant(spec: str) -> tuple[float, str]:
    share, _, mix = spec.partition(":")
    if mix not in ("group", "cumulative"):
        raise argparse.ArgumentTypeError(f"a CPI-FT variant is CORE_SHARE:MIX with MIX 'group' or 'cumulative', got {spec!r}")
    return float(share), mix


def _steps(per_seed, method) -> str:
    """The method's optimizer steps: one number when every seed took as many, else min-max."""
    steps = [p["steps"][method] for p in per_seed]
    return str(steps[0]) if min(steps) == max(steps) else f"{min(steps)}-{max(steps)}"


def _baselines_from(path, seed):
    """Multi-task and sequential SFT of `bench_epi.py --json` for `seed` (the same world, seed and budget), or None."""
    if not path:
        return None
    saved = json.loads(Path(path).read_text())
    if seed not in saved["seeds"]:
        return None
    k = saved["seeds"].index(seed)
    q = saved["quality"]
    out = {}
    for protocol, method in (("mixed", "multi-task SFT"), ("sequential", "sequential SFT")):
        if "standard" in q.get(protocol, {}):
            run = q[protocol]["standard"]["runs"][k]
            out[method] = (run["final"], run["steps"])
    return out


def bench_quality(root: Path, size: str, version: int, seeds, variants, matched_budget: bool, baselines_json=None) -> None:
    import statistics

    from _multitask import StepCount, shortfall, spread
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from hf_ilp.fusion import CPIFTConfig, CPIFTTrainer, fuse_checkpoints, load_cores, train_probes
    from hf_ilp.training import train_stages
    from hf_ilp.world import build_multitask_world

    per_seed = []
    for seed in seeds:
        world = build_multitask_world(size, seed=seed, version=version)
        tok, mixed = world.tokenizer, world.train.remove_columns("stage")
        seed_root = root / f"seed{seed}"
        print(f"multi-task world v{version} {size} (seed {seed}): tasks {world.tasks}, {len(world.train)} train rows", flush=True)
        results, steps = {}, {}

        def sft_args(out, **kw):
            return world.sft_config(seed_root / out, seed=seed, logging_steps=10_000, **kw)

        reused = _baselines_from(baselines_json, seed) or {}
        for method, (final, n) in reused.items():
            results[method], steps[method] = final, n
            print(f"  {method}: {final} ({n} steps, from {baselines_json})", flush=True)
        if "multi-task SFT" not in results:
            counter = StepCount()
            trainer = SFTTrainer(model=world.load_base_model(), args=sft_args("multitask"), train_dataset=mixed,
                                 processing_class=tok, callbacks=[counter])
            trainer.train()
            results["multi-task SFT"], steps["multi-task SFT"] = world.evaluate(trainer.model), counter.steps
        if "sequential SFT" not in results:
            counter = StepCount()
            trainer = train_stages(world.load_base_model(), tok, world.train, sft_args("sequential"), callbacks=[counter])
            results["sequential SFT"], steps["sequential SFT"] = world.evaluate(trainer.model), counter.steps

        # probes: each task alone from the base (also the reference of the seesaw measure)
        base_args = sft_args("cpi")
        kwargs = {f.name: getattr(base_args, f.name) for f in base_args.__dataclass_fields__.values() if f.init}
        probe_counter = StepCount()
        t0 = time.perf_counter()
        probes = train_probes(world.base_model_path, mixed, CPIFTConfig(**kwargs), tok, tasks=world.tasks, callbacks=[probe_counter])
        alone = {t: world.evaluate(AutoModelForCausalLM.from_pretrained(path))[t] for t, path in probes.items()}
        stage_steps = probe_counter.steps // len(world.tasks)  # one task's budget
        print(f"  probes (each task alone, {stage_steps} steps each) in {time.perf_counter() - t0:.0f} s: {alone}", flush=True)

        fused = {}
        for share, mix in variants:
            method = f"CPI-FT p={share:g} {mix}"
            if share not in fused:
                fused_dir = seed_root / f"fused-{share:g}"
                fusion = fuse_checkpoints(world.base_model_path, probes, fused_dir, core_share=share)
                fused[share] = (fused_dir, fusion)
                print(f"  fusion p={share:g}: groups {fusion.groups}, overlaps "
                      f"{ {k: round(v, 3) for k, v in fusion.overlaps.items()} }; fused model "
                      f"{world.evaluate(AutoModelForCausalLM.from_pretrained(fused_dir))}", flush=True)
            fused_dir, fusion = fused[share]
            counter = StepCount()
            t0 = time.perf_counter()
            cpi_args = CPIFTConfig(**{**kwargs, "output_dir": str(seed_root / f"cpi-{share:g}-{mix}"), "cpi_stage_mix": mix,
                                      "cpi_core_share": share, "max_steps": stage_steps})
            trainer = CPIFTTrainer(model=AutoModelForCausalLM.from_pretrained(fused_dir), args=cpi_args, train_dataset=mixed,
                                   processing_class=tok, groups=fusion.groups, cores=load_cores(fused_dir), callbacks=[counter])
            trainer.train()
            results[method], steps[method] = world.evaluate(trainer.model), counter.steps + probe_counter.steps
            print(f"  {method} in {time.perf_counter() - t0:.0f} s: {results[method]}", flush=True)

        if matched_budget:  # multi-task SFT given the optimizer steps of CPI-FT (probes included)
            n = max(steps[m] for m in results if m.startswith("CPI-FT"))
            counter = StepCount()
            trainer = SFTTrainer(model=world.load_base_model(), args=sft_args("multitask-matched", max_steps=n),
                                 train_dataset=mixed, processing_class=tok, callbacks=[counter])
            trainer.train()
            matched = "multi-task SFT, CPI-FT's steps"
            results[matched], steps[matched] = world.evaluate(trainer.model), counter.steps
            print(f"  multi-task SFT with {n} steps: {results[matched]}", flush=True)
        per_seed.append({"seed": seed, "tasks": world.tasks, "alone": alone, "results": results, "steps": steps})

    tasks = per_seed[0]["tasks"]
    methods = list(per_seed[0]["results"])

    def stat(method, fn):
        return [fn(p["results"][method], p["alone"]) for p in per_seed]

    def avg(acc, _):
        return statistics.mean(acc[t] for t in tasks)

    def worst(acc, _):
        return min(acc[t] for t in tasks)

    def seesaw(acc, alone):
        return shortfall(alone, acc)

    print("\n| method | " + " | ".join(tasks) + " | average | worst | seesaw | steps |")
    print("|---|" + "---|" * (len(tasks) + 4))
    for m in methods:
        print(f"| {m} | " + " | ".join(f"{statistics.mean(p['results'][m][t] for p in per_seed):.3f}" for t in tasks)
              + f" | {spread(stat(m, avg))} | {spread(stat(m, worst))} | {spread(stat(m, seesaw))} | {_steps(per_seed, m)} |")
    print(f"(mean over seeds {list(seeds)}; average/worst/seesaw as mean ± sd (min-max); seesaw = largest loss of any task "
          f"against training it alone; steps = optimizer steps, CPI-FT's probes included)")
    baselines = ["multi-task SFT", "sequential SFT"]
    best = max(baselines, key=lambda m: statistics.mean(stat(m, avg)))
    best_avg = statistics.mean(stat(best, avg))
    best_seesaw = statistics.mean(stat(best, seesaw))
    for m in methods:
        if not m.startswith("CPI-FT"):
            continue
        a, sw = statistics.mean(stat(m, avg)), statistics.mean(stat(m, seesaw))
        wins = sum(x >= y + 0.02 for x, y in zip(stat(m, avg), stat(best, avg)))
        print(f"target: {m} average >= best baseline ({best}) + 0.02: {a:.3f} vs {best_avg:.3f} -> "
              f"{'met' if a >= best_avg + 0.02 else 'NOT met'} (on {wins}/{len(per_seed)} seeds); smaller seesaw: "
              f"{sw:.3f} vs {best_seesaw:.3f} -> {'met' if sw < best_seesaw else 'NOT met'}")
    matched = "multi-task SFT, CPI-FT's steps"
    if matched in methods:
        for m in methods:
            if m.startswith("CPI-FT"):
                print(f"{m} average {statistics.mean(stat(m, avg)):.3f} vs multi-task SFT given CPI-FT's steps "
                      f"{statistics.mean(stat(matched, avg)):.3f}")
    top = max((m for m in methods if m.startswith("CPI-FT")), key=lambda m: statistics.mean(stat(m, avg)))
    print(f"best CPI-FT variant average / best baseline average: {statistics.mean(stat(top, avg)) / best_avg:.3f} ({top})")


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "quality", "all"], default="all")
    parser.add_argument("--dir", default=None, help="working folder (default: a temporary one on /dev/shm, removed at the end)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per variant (speed)")
    parser.add_argument("--size", default="small", help="multi-task world size (quality)")
    parser.add_argument("--version", type=int, default=2, choices=[1, 2], help="multi-task world version (quality)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="world seed = training seed (quality)")
    parser.add_argument("--variants", type=_variant, nargs="+", default=[_variant(v) for v in ("0.01:group", "0.01:cumulative", "0.05:cumulative")],
                        help="CPI-FT settings CORE_SHARE:STAGE_MIX to compare (probes shared; one fusion per core share)")
    parser.add_argument("--no-matched-budget", action="store_true",
                        help="skip multi-task SFT run for as many optimizer steps as CPI-FT (probes included)")
    parser.add_argument("--baselines", default=None,
                        help="reuse multi-task and sequential SFT from `bench_epi.py --json` (same world, seeds and budget)")
    args = parser.parse_args(argv)
    # tmpfs when there is one: the disk's write-back throttling would otherwise decide the times
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_cpi_ft-", dir=shm))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.part in ("quality", "all"):
            bench_quality(root / "quality", args.size, args.version, args.seeds, args.variants, not args.no_matched_budget,
                          args.baselines)
        if args.part in ("speed", "all"):
            bench_speed(root / "speed", args.repeats)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
