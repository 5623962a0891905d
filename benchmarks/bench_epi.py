"""Benchmark: standard SFT vs static isolation vs EPI on the multi-task world.

Quality, two protocols on the same world and budget (the world's default `sft_config`):
- mixed: one SFT run on all tasks shuffled together (the usual multi-task SFT). Per-task exact
  match at the end, average, worst task, and forgetting = mean over tasks of (best accuracy seen
  at any epoch end - final accuracy).
- sequential: the tasks one after another (`hf_ilp.training.train_stages`, a fresh optimizer per
  stage, the same callback instance). Forgetting of earlier tasks = mean over all but the last
  task of (accuracy right after its own stage - final accuracy).
Cost: the median optimizer-step time of plain SFT and of EPI, measured in alternating short runs
in this process (the ratio is printed last), and the extra memory of EPI in bytes per trainable
parameter beyond the optimizer state: compact masks + cached indices + the per-step snapshot of the
isolated entries (and the transient per-tensor scores at a mask update, reported apart).

    nice -n 10 python benchmarks/bench_epi.py                  # small world, both protocols
    nice -n 10 python benchmarks/bench_epi.py --size tiny --protocols mixed --seeds 0 1
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from hf_ilp.isolation import EvolvingIsolationCallback, IsolationConfig
from hf_ilp.training import train_stages
from hf_ilp.world import build_multitask_world

MODES = ("standard", "static", "epi")


class _EvalAt(TrainerCallback):
    """Evaluates the world's tasks at each epoch end (mixed) or each stage end (sequential)."""

    def __init__(self, world, event):
        self.world, self.event, self.history = world, event, []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.event == "epoch":
            self.history.append(self.world.evaluate(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.event == "stage":
            self.history.append(self.world.evaluate(model))


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
    cbs = _callbacks(mode, iso)
    if protocol == "mixed":
        ev = _EvalAt(world, "epoch")
        SFTTrainer(model=model, args=args, train_dataset=world.train, processing_class=world.tokenizer,
                   callbacks=cbs + [ev]).train()
        final = ev.history[-1]
        forgetting = statistics.mean(max(h[t] for h in ev.history) - final[t] for t in world.tasks)
    else:
        ev = _EvalAt(world, "stage")
        train_stages(model, world.tokenizer, world.train, args, callbacks=cbs + [ev])
        final = ev.history[-1]
        earlier = world.tasks[:-1]
        forgetting = statistics.mean(ev.history[i][t] - final[t] for i, t in enumerate(earlier))
    return {"final": final, "average": statistics.mean(final.values()), "worst": min(final.values()),
            "forgetting": forgetting, "history": ev.history}


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
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--protocols", nargs="+", default=["mixed", "sequential"], choices=["mixed", "sequential"])
    ap.add_argument("--p", type=float, default=IsolationConfig.isolation_ratio)
    ap.add_argument("--k", type=int, default=IsolationConfig.isolation_interval)
    ap.add_argument("--importance", default=IsolationConfig.isolation_importance, choices=["grad_sq", "grad_weight", "magnitude"])
    ap.add_argument("--ema-beta", type=float, default=None, help="own EMA factor (default: reuse AdamW's exp_avg_sq)")
    ap.add_argument("--cost-rounds", type=int, default=3)
    ap.add_argument("--cost-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write all figures to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    world = build_multitask_world(a.size, seed=a.world_seed)
    iso = IsolationConfig(isolation_ratio=a.p, isolation_interval=a.k, isolation_importance=a.importance,
                          isolation_ema_beta=a.ema_beta)
    n_params = sum(p.numel() for p in world.load_base_model().parameters())
    print(f"multi-task world '{a.size}' (seed {a.world_seed}): tasks {world.tasks}, {len(world.train)} train / "
          f"{len(world.validation)} validation rows, {n_params} parameters; p={a.p}, K={a.k}, importance "
          f"{a.importance}, EMA {'own, beta ' + str(a.ema_beta) if a.ema_beta is not None else 'AdamW exp_avg_sq'}, seeds {a.seeds}", flush=True)
    results = {"size": a.size, "p": a.p, "K": a.k, "importance": a.importance, "ema_beta": a.ema_beta,
               "seeds": a.seeds, "quality": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for protocol in a.protocols:
            rows = {}
            for mode in MODES:
                runs = [run_quality(world, mode, protocol, iso, s, workdir) for s in a.seeds]
                rows[mode] = {
                    "final": {t: statistics.mean(r["final"][t] for r in runs) for t in world.tasks},
                    "average": statistics.mean(r["average"] for r in runs),
                    "worst": statistics.mean(r["worst"] for r in runs),
                    "forgetting": statistics.mean(r["forgetting"] for r in runs),
                    "runs": runs,
                }
                print(f"  {protocol:10s} {mode:8s} " + " ".join(f"{t} {rows[mode]['final'][t]:.3f}" for t in world.tasks)
                      + f" | avg {rows[mode]['average']:.3f} worst {rows[mode]['worst']:.3f} "
                      f"forgetting {rows[mode]['forgetting']:.3f}", flush=True)
            results["quality"][protocol] = rows
        times, memory = run_cost(world, iso, a.cost_rounds, a.cost_steps, workdir)
    med = {m: statistics.median(t) * 1000 for m, t in times.items()}
    results.update(step_ms=med, memory=memory, step_time_ratio=med["epi"] / med["standard"])

    print("\n| protocol | method | " + " | ".join(world.tasks) + " | average | worst | forgetting |")
    print("|---|---|" + "---|" * (len(world.tasks) + 3))
    for protocol, rows in results["quality"].items():
        for mode, r in rows.items():
            print(f"| {protocol} | {mode} | " + " | ".join(f"{r['final'][t]:.3f}" for t in world.tasks)
                  + f" | {r['average']:.3f} | {r['worst']:.3f} | {r['forgetting']:.3f} |")
    for protocol, rows in results["quality"].items():
        e, s, n = (rows[m]["average"] for m in ("epi", "static", "standard"))
        print(f"target ({protocol}): EPI avg >= static >= standard: {e:.3f} / {s:.3f} / {n:.3f} -> "
              f"{'met' if e >= s >= n else 'NOT met'}; EPI forgets less than standard: "
              f"{rows['epi']['forgetting']:.3f} vs {rows['standard']['forgetting']:.3f} -> "
              f"{'met' if rows['epi']['forgetting'] < rows['standard']['forgetting'] else 'NOT met'}")
    print(f"extra memory (EPI, beyond optimizer state): {memory['extra_bytes_per_param']:.3f} bytes/param "
          f"(masks+indices {memory['mask_and_index_bytes']} B, step snapshot {memory['snapshot_bytes']} B, "
          f"own EMA {memory['own_ema_bytes']} B, {memory['trainable_params']} params); target <= 1.2 -> "
          f"{'met' if memory['extra_bytes_per_param'] <= 1.2 else 'NOT met'}")
    print(f"median step: standard {med['standard']:.2f} ms, EPI {med['epi']:.2f} ms "
          f"({len(times['epi'])} steps each); target <= 1.10x -> "
          f"{'met' if results['step_time_ratio'] <= 1.10 else 'NOT met'}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=float))
    print(f"step-time ratio EPI / standard SFT: {results['step_time_ratio']:.3f}")


if __name__ == "__main__":
    main()
