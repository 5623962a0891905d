"""Benchmark: standard SFT vs static isolation vs EPI on the multi-task world (version 2), 3 seeds.

For every seed s (world seed = training seed = s) the world's own properties come first: each
task trained alone (the reference of the seesaw measure) and all tasks mixed for the steps of one
task alone (the seesaw at equal steps). Then quality, two protocols on the same world and budget
(the world's default `sft_config`):
- mixed: one SFT run on all tasks shuffled together (the usual multi-task SFT). Per-task exact
  match at the end, average, worst task, and forgetting = mean over tasks of (best accuracy seen
  at any epoch end - final accuracy).
- sequential: the tasks one after another (`hf_ilp.training.train_stages`, a fresh optimizer per
  stage, the same callback instance). Forgetting of earlier tasks = mean over all but the last
  task of (accuracy right after its own stage - final accuracy).
Every method also reports its optimizer steps and its seesaw measure: the largest loss of any task
against training that task alone. Figures are "mean ± sd (min-max)" over the seeds.
Cost: the median optimizer-step time of plain SFT and of EPI, measured in alternating short runs
in this process (the ratio is printed last), and the extra memory of EPI in bytes per trainable
parameter beyond the optimizer state: compact masks + cached indices + the per-step snapshot of the
isolated entries (and the transient per-tensor scores at a mask update, reported apart).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_epi.py       # small world, both protocols, seeds 0 1 2
    python benchmarks/bench_epi.py --protocols sequential --modes epi --p 0.01 --no-alone   # one sensitivity row
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _multitask import EvalAt, StepCount, mixed_at_steps, shortfall, spread, train_alone
from transformers import TrainerCallback
from trl import SFTTrainer

from hf_ilp.isolation import EvolvingIsolationCallback, IsolationConfig
from hf_ilp.training import train_stages
from hf_ilp.world import build_multitask_world

MODES = ("standard", "static", "epi")


class _StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def _callbacks(mode, iso):
    return [] if mode == "standard" else [EvolvingIsolationCallback(iso, isolation="epi" if mode == "epi" else "static")]


def run_quality(world, mode, protocol, iso, seed, workdir):
    torch.manual_seed(seed)
    model = world.load_base_model()
    args = world.sft_config(Path(workdir) / f"{protocol}-{mode}", seed=seed, logging_steps=10_000)
    counter = StepCount()
    cbs = _callbacks(mode, iso) + [counter]
    if protocol == "mixed":
        ev = EvalAt(world, "epoch")
        SFTTrainer(model=model, args=args, train_dataset=world.train.remove_columns("stage"),
                   processing_class=world.tokenizer, callbacks=cbs + [ev]).train()
        final = ev.history[-1]
        forgetting = statistics.mean(max(h[t] for h in ev.history) - final[t] for t in world.tasks)
    else:
        ev = EvalAt(world, "stage")
        train_stages(model, world.tokenizer, world.train, args, callbacks=cbs + [ev])
        final = ev.history[-1]
        earlier = world.tasks[:-1]
        forgetting = statistics.mean(ev.history[i][t] - final[t] for i, t in enumerate(earlier))
    return {"final": final, "average": statistics.mean(final.values()), "worst": min(final.values()),
            "forgetting": forgetting, "steps": counter.steps, "history": ev.history}


def run_cost(world, iso, rounds, steps, workdir):
    """Alternate plain SFT and EPI runs of `steps` optimizer steps; per-step times and EPI's memory."""
    times = {"standard": [], "epi": []}
    memory = None
    for r in range(rounds):
        for mode in ("standard", "epi"):
            model = world.load_base_model()
            timer = _StepTimer()
            cbs = _callbacks(mode, IsolationConfig(**{**vars(iso), "isolation_interval": min(iso.isolation_interval, steps // 2)}))
            args = world.sft_config(Path(workdir) / f"cost-{mode}", max_steps=steps, logging_steps=10_000, seed=r)
            SFTTrainer(model=model, args=args, train_dataset=world.train, processing_class=world.tokenizer,
                       callbacks=cbs + [timer]).train()
            times[mode] += timer.times[2:]  # drop warm-up steps
            if cbs and memory is None:
                epi = cbs[0]
                n = sum(p.numel() for p in model.parameters() if p.requires_grad)
                isolated = sum(m.count for m in epi.masks.values())
                itemsize = next(model.parameters()).element_size()
                kept = epi._masker.nbytes
                snapshot = isolated * itemsize
                ema = sum(t.numel() * 4 for t in epi._ema.values()) if epi._ema else 0
                memory = {"trainable_params": n, "isolated": isolated, "mask_and_index_bytes": kept,
                          "snapshot_bytes": snapshot, "own_ema_bytes": ema,
                          "extra_bytes_per_param": (kept + snapshot + ema) / n,
                          "transient_scores_bytes_per_param_at_update": 4.0}
    return times, memory


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--version", type=int, default=2, choices=[1, 2], help="multi-task world version")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="world seed = training seed")
    ap.add_argument("--protocols", nargs="+", default=["mixed", "sequential"], choices=["mixed", "sequential"])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--no-alone", action="store_true", help="skip the per-task reference runs (no seesaw measure)")
    ap.add_argument("--p", type=float, default=IsolationConfig.isolation_ratio)
    ap.add_argument("--k", type=int, default=IsolationConfig.isolation_interval)
    ap.add_argument("--importance", default=IsolationConfig.isolation_importance, choices=["grad_sq", "grad_weight", "magnitude"])
    ap.add_argument("--ema-beta", type=float, default=None, help="own EMA factor (default: reuse AdamW's exp_avg_sq)")
    ap.add_argument("--cost-rounds", type=int, default=5, help="0: no step-time measurement")
    ap.add_argument("--cost-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write all figures to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    iso = IsolationConfig(isolation_ratio=a.p, isolation_interval=a.k, isolation_importance=a.importance,
                          isolation_ema_beta=a.ema_beta)
    results = {"size": a.size, "version": a.version, "p": a.p, "K": a.k, "importance": a.importance,
               "ema_beta": a.ema_beta, "seeds": a.seeds, "world": {}, "quality": {}}
    runs = {(protocol, mode): [] for protocol in a.protocols for mode in a.modes}
    tasks = None
    with tempfile.TemporaryDirectory() as workdir:
        for seed in a.seeds:
            world = build_multitask_world(a.size, seed=seed, version=a.version)
            tasks = world.tasks
            n_params = sum(p.numel() for p in world.load_base_model().parameters())
            print(f"multi-task world v{a.version} '{a.size}' (seed {seed}): tasks {world.tasks}, {len(world.train)} train / "
                  f"{len(world.validation)} validation rows, {n_params} parameters; p={a.p}, K={a.k}, importance "
                  f"{a.importance}, EMA {'own, beta ' + str(a.ema_beta) if a.ema_beta is not None else 'AdamW exp_avg_sq'}",
                  flush=True)
            alone = None
            if not a.no_alone:
                alone, alone_steps = train_alone(world, seed, workdir)
                equal = mixed_at_steps(world, seed, workdir, alone_steps)
                results["world"][seed] = {"alone": alone, "alone_steps": alone_steps, "mixed_at_equal_steps": equal,
                                          "seesaw_at_equal_steps": shortfall(alone, equal)}
                print(f"  alone ({alone_steps} steps each): {alone}; all mixed for {alone_steps} steps: {equal}", flush=True)
            for protocol in a.protocols:
                for mode in a.modes:
                    r = run_quality(world, mode, protocol, iso, seed, workdir)
                    r["seesaw"] = shortfall(alone, r["final"]) if alone else None
                    runs[protocol, mode].append(r)
                    print(f"  {protocol:10s} {mode:8s} " + " ".join(f"{t} {r['final'][t]:.3f}" for t in world.tasks)
                          + f" | avg {r['average']:.3f} worst {r['worst']:.3f} forgetting {r['forgetting']:.3f}"
                          + (f" seesaw {r['seesaw']:.3f}" if alone else "") + f" steps {r['steps']}", flush=True)
        times, memory = run_cost(world, iso, a.cost_rounds, a.cost_steps, workdir) if a.cost_rounds else (None, None)

    for (protocol, mode), rs in runs.items():
        results["quality"].setdefault(protocol, {})[mode] = {
            "average": statistics.mean(r["average"] for r in rs), "worst": statistics.mean(r["worst"] for r in rs),
            "forgetting": statistics.mean(r["forgetting"] for r in rs), "runs": rs,
        }
    n = len(a.seeds)
    if results["world"]:
        w = results["world"].values()
        print(f"\nworld check over {n} seeds: task alone {spread(min(x['alone'].values()) for x in w)} (worst task; "
              f"target >= 0.9); seesaw at equal steps {spread(x['seesaw_at_equal_steps'] for x in w)} (target >= 0.10); "
              f"sequential forgetting of standard SFT: "
              + (spread(r["forgetting"] for r in runs["sequential", "standard"]) + " (target >= 0.30)"
                 if ("sequential", "standard") in runs else "not run"))
    cols = ["average", "worst", "forgetting"] + (["seesaw"] if results["world"] else [])
    print("\n| protocol | method | " + " | ".join(tasks) + " | " + " | ".join(cols) + " | steps |")
    print("|---|---|" + "---|" * (len(tasks) + len(cols) + 1))
    for (protocol, mode), rs in runs.items():
        print(f"| {protocol} | {mode} | " + " | ".join(f"{statistics.mean(r['final'][t] for r in rs):.3f}" for t in tasks)
              + " | " + " | ".join(spread(r[c] for r in rs) for c in cols) + f" | {rs[0]['steps']} |")
    print(f"(mean over {n} seeds; average/worst/forgetting/seesaw as mean ± sd (min-max))")
    for protocol in a.protocols:
        if not all((protocol, m) in runs for m in MODES):
            continue
        mean = {m: statistics.mean(r["average"] for r in runs[protocol, m]) for m in MODES}
        forg = {m: statistics.mean(r["forgetting"] for r in runs[protocol, m]) for m in MODES}
        wins = sum(e["average"] >= s["average"] >= d["average"]
                   for e, s, d in zip(runs[protocol, "epi"], runs[protocol, "static"], runs[protocol, "standard"]))
        print(f"target ({protocol}): EPI avg >= static >= standard: {mean['epi']:.3f} / {mean['static']:.3f} / "
              f"{mean['standard']:.3f} -> {'met' if mean['epi'] >= mean['static'] >= mean['standard'] else 'NOT met'} "
              f"(order holds on {wins}/{n} seeds); EPI forgets less than standard: {forg['epi']:.3f} vs "
              f"{forg['standard']:.3f} -> {'met' if forg['epi'] < forg['standard'] else 'NOT met'}")
    if a.json:
        Path(a.json).write_text(json.dumps({**results, "step_ms": None if times is None else
                                            {m: statistics.median(t) * 1000 for m, t in times.items()}, "memory": memory},
                                           indent=2, default=float))
    if times is None:
        return
    med = {m: statistics.median(t) * 1000 for m, t in times.items()}
    ratio = med["epi"] / med["standard"]
    print(f"extra memory (EPI, beyond optimizer state): {memory['extra_bytes_per_param']:.3f} bytes/param "
          f"(masks+indices {memory['mask_and_index_bytes']} B, step snapshot {memory['snapshot_bytes']} B, "
          f"own EMA {memory['own_ema_bytes']} B, {memory['trainable_params']} params); target <= 1.2 -> "
          f"{'met' if memory['extra_bytes_per_param'] <= 1.2 else 'NOT met'}")
    print(f"median step: standard {med['standard']:.2f} ms, EPI {med['epi']:.2f} ms "
          f"({len(times['epi'])} steps each, {a.cost_rounds} interleaved rounds); target <= 1.10x -> "
          f"{'met' if ratio <= 1.10 else 'NOT met'}")
    print(f"step-time ratio EPI / standard SFT: {ratio:.3f}")


if __name__ == "__main__":
    main()
