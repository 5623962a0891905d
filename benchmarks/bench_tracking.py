"""LearnTracker overhead and the speed of the exact learn-check, on ILP-World.

(a) The same SFTTrainer run on ILP-World with and without `LearnTracker`, alternated in one
    process (ABBA): median CPU time of this process between consecutive optimizer steps, ratio
    with / without per round, median over rounds (target <= 1.05); wall-time ratios are printed too.
(b) `check_learned` (greedy verdict and pass@5 in one call) against the ILP paper's protocol done
    with batched `model.generate` (one greedy and five sampled generations per row), on the whole
    ILP-World training set and on rows with 32-token completions: speed ratio generate / ours
    (targets >= 5x and >= 10x), greedy verdicts that differ (target 0), and the gap between the
    closed-form probability and the sampled frequency (target: within sampling error).

    nice -n 10 python benchmarks/bench_tracking.py            # ILP-World small
    nice -n 10 python benchmarks/bench_tracking.py --size tiny --rounds 2
"""

import argparse
import copy
import statistics
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import SFTTrainer

from hf_ilp import LearnTracker, check_learned
from hf_ilp.tracking.learn_check import tokenize_rows
from hf_ilp.training import bind_trainer
from hf_ilp.world import build_world


class _StepTimer(TrainerCallback):
    """Wall and CPU time at each step start. This process's CPU time is the figure: on a shared
    machine the wall time of a step mostly measures the other processes (1 torch thread here)."""

    def __init__(self):
        self.wall, self.cpu = [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())


def _train(world, model, tracker, out):
    timer = _StepTimer()
    args = world.sft_config(out, logging_steps=10**6, disable_tqdm=True, seed=0)
    callbacks = [timer] + ([tracker] if tracker is not None else [])
    start = time.perf_counter()
    bind_trainer(SFTTrainer(model=model, args=args, train_dataset=world.train, processing_class=world.tokenizer,
                            callbacks=callbacks)).train()
    total = time.perf_counter() - start
    return np.diff(timer.cpu)[2:], np.diff(timer.wall)[2:], total


def bench_overhead(world, rounds):
    """Alternate runs without / with the tracker (ABBA order against load drift); per round, the
    ratio of median step times; the median of those ratios is the figure."""
    base = world.load_base_model()
    ratios, wall_ratios, totals = [], [], []
    model = None
    for r in range(rounds):
        cpu, wall, total = {}, {}, {}
        for kind in (("without", "with") if r % 2 == 0 else ("with", "without")):
            model = copy.deepcopy(base)
            tracker = LearnTracker(dataset=world.train) if kind == "with" else None
            with tempfile.TemporaryDirectory() as out:
                steps_cpu, steps_wall, total[kind] = _train(world, model, tracker, out)
            cpu[kind], wall[kind] = float(np.median(steps_cpu)), float(np.median(steps_wall))
            print(f"  round {r} {kind:>7} tracker: median step {1e3 * cpu[kind]:.1f} ms CPU, "
                  f"{1e3 * wall[kind]:.1f} ms wall; run {total[kind]:.1f} s wall")
        ratios.append(cpu["with"] / cpu["without"])
        wall_ratios.append(wall["with"] / wall["without"])
        totals.append(total["with"] / total["without"])
    print(f"(a) per-round step-time ratios, CPU {[round(x, 3) for x in ratios]}, wall {[round(x, 3) for x in wall_ratios]} "
          f"(median {statistics.median(wall_ratios):.3f}); run-time ratio incl. the end-of-run learn-check, wall: "
          f"median {statistics.median(totals):.3f}")
    return model, statistics.median(ratios)


def _generate_protocol(model, tokenizer, rows, batch_size, num_samples, temperature):
    """The paper's protocol with batched `generate`: 1 greedy + `num_samples` sampled generations per row."""
    tok = tokenize_rows(rows, tokenizer)
    prompts = [ids[: tgt.index(1)] for ids, tgt in zip(tok.ids, tok.targets)]
    completions = [ids[tgt.index(1) :] for ids, tgt in zip(tok.ids, tok.targets)]
    order = np.argsort([-len(p) for p in prompts], kind="stable")
    greedy = np.zeros(len(rows), dtype=bool)
    sampled = np.zeros((len(rows), num_samples), dtype=bool)
    pad = tokenizer.pad_token_id
    for start in range(0, len(rows), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx])
        attn = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx])
        new = max(len(completions[i]) for i in idx)
        common = dict(input_ids=ids, attention_mask=attn, max_new_tokens=new, pad_token_id=pad,
                      eos_token_id=tokenizer.eos_token_id)
        with torch.no_grad():
            g = model.generate(**common, do_sample=False)[:, width:].tolist()
            s = model.generate(**common, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                               num_return_sequences=num_samples)[:, width:].tolist()
        for b, i in enumerate(idx):
            c = completions[i]
            greedy[i] = g[b][: len(c)] == c
            for k in range(num_samples):
                sampled[i, k] = s[b * num_samples + k][: len(c)] == c
    return greedy, sampled


def bench_learn_check(name, model, tokenizer, rows, repeats, batch_size=32, num_samples=5, temperature=1.0):
    ours, theirs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        verdict = check_learned(model, tokenizer, rows, batch_size=batch_size, num_samples=num_samples,
                                temperature=temperature, progress=False)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        greedy, sampled = _generate_protocol(model, tokenizer, rows, batch_size, num_samples, temperature)
        theirs.append(time.perf_counter() - start)
    exact = np.array(verdict["exact"])
    p = np.array(verdict["p_sample"])
    freq = sampled.mean()
    sd = np.sqrt((p * (1 - p)).sum()) / (len(p) * np.sqrt(num_samples))
    ratio = np.median(theirs) / np.median(ours)
    print(f"(b) {name}: {len(rows)} rows, learn-check {np.median(ours):.2f} s, generate protocol {np.median(theirs):.2f} s")
    print(f"    greedy verdicts that differ: {int((exact != greedy).sum())} (exact: {int(exact.sum())} rows)")
    print(f"    closed-form p {p.mean():.4f} vs sampled frequency {freq:.4f}: gap {freq - p.mean():+.4f} "
          f"({(freq - p.mean()) / max(sd, 1e-12):+.2f} sd); pass@{num_samples} closed-form "
          f"{np.mean(verdict['pass_at_n']):.4f} vs sampled {sampled.any(1).mean():.4f}")
    return ratio


def long_rows(world, model, n=64, length=32, epochs=20, seed=0):
    """Rows with `length`-token completions (EOS included) and a model fine-tuned on them.

    Each completion repeats one random vocabulary word (a pattern a small model picks up, so that
    decoding really runs for about 32 tokens); a copy of `model` is fine-tuned on the rows.
    """
    rng = np.random.default_rng(seed)
    vocab = sorted(w for w in world.tokenizer.get_vocab() if w not in world.tokenizer.all_special_tokens)  # a fixed order
    prompts = world.train.select(range(min(n, len(world.train))))["prompt"]
    rows = []
    for k, prompt in enumerate(prompts):
        word = vocab[int(rng.integers(len(vocab)))]
        rows.append({"id": f"long-{k}", "prompt": prompt, "completion": " " + " ".join([word] * (length - 1))})
    data = Dataset.from_list(rows)
    model = copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as out:
        args = world.sft_config(out, num_train_epochs=epochs, learning_rate=3e-3, disable_tqdm=True, logging_steps=10**6)
        SFTTrainer(model=model, args=args, train_dataset=data, processing_class=world.tokenizer).train()
    return data, model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--rounds", type=int, default=6, help="alternated with/without training runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each learn-check protocol")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = build_world(args.size)
    print(f"ILP-World {args.size}: {len(world.train)} training rows; torch threads {args.threads}")
    model, overhead = bench_overhead(world, args.rounds)
    model.eval()
    short = bench_learn_check("ILP-World training set", model, world.tokenizer, world.train, args.repeats)
    lrows, lmodel = long_rows(world, world.load_base_model())
    n_tok = tokenize_rows(lrows, world.tokenizer).n_targets()
    assert (n_tok == 32).all(), f"long rows must have 32 completion tokens, got {sorted(set(n_tok.tolist()))}"
    long = bench_learn_check("32-token completions", lmodel, world.tokenizer, lrows, args.repeats)
    print(f"learn-check speed-up vs generate protocol: {short:.1f}x (target >= 5x) on the training set, "
          f"{long:.1f}x (target >= 10x) on 32-token rows")
    print(f"tracking overhead (median CPU time per step with / without LearnTracker, target <= 1.05): {overhead:.3f}")


if __name__ == "__main__":
    main()
