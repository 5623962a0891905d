"""Half-S FP4 pre-training from scratch: loss gap to high precision of FP4 `max` and `halfs`.

    nice -n 10 python benchmarks/fp4_pretrain.py                  # CPU defaults, seeds 0 1 2
    python benchmarks/fp4_pretrain.py --device cuda               # 21M-parameter Llama, 2,000 steps

Claim under test (Half-S, "Half-S: Halving the Scale for Near-Lossless 4-Bit LLM Training"):
its scaling brings FP4 training closer to high precision than max-scaling. Per seed, three arms
train the same initial `LlamaForCausalLM` on the same batches: fp32 (no FP4), FP4 `max` and FP4
`halfs`, each `convert_to_halfs_fp4_training(model, HalfSConfig(mode=arm, seed=seed))` with
every other field at its default (weights and input activations of the linears quantized with
`mode`, group 32, round to nearest even; output gradients with `grad_mode="max"` and stochastic
rounding; the first linear and the LM head in full precision). The arms run one after another.

Corpus: a first-order Markov language over the vocabulary, generated with a numpy Generator
from the seed (offline, no files). Unigram frequencies are Zipfian, p(rank r) ~ r^-1.1 (token id
= rank). Each token has 4 successors drawn from that Zipfian law with Dirichlet(1) weights; the
next token follows one of them with probability 0.7, else it is a fresh Zipfian draw. Rare burst
tokens (the 1% least frequent ids) repeat themselves with probability 0.9 once they occur, so
the rarest ids come in sudden runs. Since the source is known, the exact entropy of the
held-out tokens (`source_nll`) is printed as the floor no model can beat.

Optimizer: AdamW (betas 0.9/0.95, weight decay 0.1, gradients clipped at norm 1), linear
warm-up over the first 5% of steps, then cosine decay to 10% of `--lr`.

Metric: mean training loss over the last `--last` steps (default a tenth of the steps) and the
loss on held-out generated batches at the end, each model in its own precision; gap = arm -
fp32. Over seeds: mean, std and min..max of each gap, and per seed the share of max's gap that
halfs closes, (gap_max - gap_halfs) / gap_max. `run(args)` prints all of it and returns it.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from hf_ilp.fp4 import HalfSConfig, backends, convert_to_halfs_fp4_training

ARMS = ("fp32", "max", "halfs")
SCALES = {  # per device: steps, hidden, layers, vocab, seq, batch, lr
    "cuda": {"steps": 2000, "hidden": 512, "layers": 4, "vocab": 8192, "seq": 256, "batch": 16, "lr": 6e-4},
    "cpu": {"steps": 500, "hidden": 128, "layers": 2, "vocab": 2048, "seq": 64, "batch": 16, "lr": 2e-3},
}
EVAL_BATCHES = 16


@dataclass
class MarkovLanguage:
    """A first-order Markov source: next-token law = repeat (burst tokens only), a successor,
    or a fresh Zipfian draw."""

    unigram: np.ndarray  # (vocab,) Zipfian probabilities, id = rank
    successors: np.ndarray  # (vocab, k) successor ids
    weights: np.ndarray  # (vocab, k) successor probabilities, rows sum to 1
    burst: np.ndarray  # (vocab,) bool: tokens that repeat themselves
    follow: float  # probability of taking a successor
    repeat: float  # probability that a burst token repeats

    def next_token_prob(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """p(nxt | prev), elementwise."""
        succ = (self.weights[prev] * (self.successors[prev] == nxt[..., None])).sum(-1)
        p = self.follow * succ + (1 - self.follow) * self.unigram[nxt]
        rep = np.where(self.burst[prev], self.repeat, 0.0)
        return rep * (prev == nxt) + (1 - rep) * p


def make_language(vocab: int, seed: int, exponent: float = 1.1, k: int = 4, follow: float = 0.7,
                  burst_share: float = 0.01, repeat: float = 0.9) -> MarkovLanguage:
    """The seed's language: Zipfian unigrams with `exponent`, `k` Zipfian successors per token."""
    rng = np.random.default_rng([seed, 0])
    unigram = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
    unigram /= unigram.sum()
    successors = rng.choice(vocab, size=(vocab, k), p=unigram)
    weights = rng.dirichlet(np.ones(k), size=vocab)
    burst = np.zeros(vocab, dtype=bool)
    burst[vocab - max(1, int(burst_share * vocab)):] = True
    return MarkovLanguage(unigram, successors, weights, burst, follow, repeat)


def sample_tokens(lang: MarkovLanguage, rows: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` independent sequences of `length` tokens (int64), the first token Zipfian."""
    vocab = len(lang.unigram)
    out = np.empty((rows, length), dtype=np.int64)
    out[:, 0] = rng.choice(vocab, size=rows, p=lang.unigram)
    cum = np.cumsum(lang.weights, axis=1)
    for t in range(1, length):
        prev = out[:, t - 1]
        u = rng.random((3, rows))
        pick = np.minimum((u[1][:, None] > cum[prev]).sum(1), cum.shape[1] - 1)
        nxt = np.where(u[0] < lang.follow, lang.successors[prev, pick],
                       rng.choice(vocab, size=rows, p=lang.unigram))
        out[:, t] = np.where(lang.burst[prev] & (u[2] < lang.repeat), prev, nxt)
    return out


def source_nll(lang: MarkovLanguage, tokens: np.ndarray) -> float:
    """Mean -log p(x_t | x_{t-1}) over positions 1.. under the true source: the loss floor."""
    return float(-np.log(lang.next_token_prob(tokens[:, :-1], tokens[:, 1:])).mean())


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; scale flags left unset take the defaults of `--device`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (sets the scale defaults below)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    for name, kind in (("steps", int), ("hidden", int), ("layers", int), ("vocab", int),
                       ("seq", int), ("batch", int), ("lr", float)):
        parser.add_argument(f"--{name}", type=kind, default=None,
                            help=f"default: cpu {SCALES['cpu'][name]}, cuda {SCALES['cuda'][name]}")
    parser.add_argument("--last", type=int, default=None, help="steps averaged for the train loss (default steps/10)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of `args` with the unset scale flags taken from the device's defaults."""
    args = copy.copy(args)
    for name, value in SCALES["cuda" if str(args.device).startswith("cuda") else "cpu"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.last is None:
        args.last = max(1, args.steps // 10)
    return args


def llama_config(args: argparse.Namespace):
    """The `LlamaConfig` of the scale in `args`: heads of 64 dims, MLP ~8/3 x hidden, untied head."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64), num_key_value_heads=max(1, args.hidden // 64),
        intermediate_size=32 * math.ceil(args.hidden * 8 / 3 / 32), max_position_embeddings=args.seq,
        tie_word_embeddings=False,
    )


def _lr_lambda(steps: int):
    warmup = max(1, steps // 20)

    def lam(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return lam


def train_arm(arm: str, init_model, batches: torch.Tensor, eval_batches: torch.Tensor, seed: int,
              args: argparse.Namespace) -> dict:
    """Train a copy of `init_model` in precision `arm` on `batches` (steps, batch, seq)."""
    model = copy.deepcopy(init_model).to(args.device)
    if arm != "fp32":
        convert_to_halfs_fp4_training(model, HalfSConfig(mode=arm, seed=seed))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(args.steps))
    model.train()
    losses = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        x = batches[step].to(args.device)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.detach())
    losses = torch.stack(losses).float().cpu().tolist()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        ev = [model(input_ids=x.to(args.device), labels=x.to(args.device)).loss.item() for x in eval_batches]
    return {"train": statistics.fmean(losses[-args.last:]), "eval": statistics.fmean(ev),
            "losses": losses, "seconds": seconds}


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    """Three arms from the same init on the same generated batches; prints the seed's line."""
    from transformers import LlamaForCausalLM

    lang = make_language(args.vocab, seed)
    train = sample_tokens(lang, args.steps * args.batch, args.seq, np.random.default_rng([seed, 1]))
    held = sample_tokens(lang, EVAL_BATCHES * args.batch, args.seq, np.random.default_rng([seed, 2]))
    batches = torch.from_numpy(train).view(args.steps, args.batch, args.seq)
    eval_batches = torch.from_numpy(held).view(EVAL_BATCHES, args.batch, args.seq)
    torch.manual_seed(seed)
    init_model = LlamaForCausalLM(llama_config(args))
    arms = {arm: train_arm(arm, init_model, batches, eval_batches, seed, args) for arm in ARMS}
    res = {"seed": seed, "arms": arms, "source_nll": source_nll(lang, held),
           "params": sum(p.numel() for p in init_model.parameters())}
    for metric in ("train", "eval"):
        res[f"{metric}_gap"] = {a: arms[a][metric] - arms["fp32"][metric] for a in ("max", "halfs")}
    gap = res["train_gap"]
    res["closed"] = (gap["max"] - gap["halfs"]) / gap["max"] if gap["max"] > 0 else float("nan")
    print(f"seed {seed}: train loss (last {args.last}) fp32 {arms['fp32']['train']:.4f}  "
          f"max {arms['max']['train']:.4f} ({gap['max']:+.4f})  halfs {arms['halfs']['train']:.4f} "
          f"({gap['halfs']:+.4f})  closed {_share(res['closed'])} | eval fp32 {arms['fp32']['eval']:.4f}  "
          f"max {res['eval_gap']['max']:+.4f}  halfs {res['eval_gap']['halfs']:+.4f}  "
          f"(source entropy {res['source_nll']:.4f}) | "
          + " ".join(f"{a} {arms[a]['seconds']:.0f}s" for a in ARMS), flush=True)
    return res


def _spread(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"mean {statistics.fmean(values):+.4f}  std {std:.4f}  min..max {min(values):+.4f}..{max(values):+.4f}"


def _share(value: float) -> str:
    return "n/a (max gap <= 0)" if math.isnan(value) else f"{value:+.0%}"


def run(args: argparse.Namespace) -> dict:
    """Run every seed, print the per-seed lines, the spreads over seeds and the verdict."""
    args = resolve_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"\n== FP4 pre-training from scratch: Llama hidden {args.hidden}, layers {args.layers}, vocab "
          f"{args.vocab}, seq {args.seq}, batch {args.batch}, {args.steps} steps, AdamW lr {args.lr:g} cosine; "
          f"arms {', '.join(ARMS)}; {args.device}, {torch.get_num_threads()} threads, kernels {backends()} ==",
          flush=True)
    seeds = [run_seed(seed, args) for seed in args.seeds]
    print(f"parameters {seeds[0]['params'] / 1e6:.2f}M; gap = arm - fp32; closed = (gap_max - gap_halfs) / gap_max")
    summary = {}
    for metric in ("train", "eval"):
        for arm in ("max", "halfs"):
            values = [s[f"{metric}_gap"][arm] for s in seeds]
            summary[f"{metric}_gap_{arm}"] = values
            print(f"{metric} gap {arm:<5} over {len(seeds)} seeds: {_spread(values)}")
    closed = [s["closed"] for s in seeds if not math.isnan(s["closed"])]
    print("share of max's train gap closed by halfs: " + "  ".join(f"seed {s['seed']} {_share(s['closed'])}" for s in seeds)
          + f"  (mean {_share(statistics.fmean(closed) if closed else math.nan)})")
    wins = {m: sum(abs(s[f"{m}_gap"]["halfs"]) < abs(s[f"{m}_gap"]["max"]) for s in seeds) for m in ("train", "eval")}
    print(f"eval: halfs closer to high precision than max on {wins['eval']} of {len(seeds)} seeds")
    print(f"halfs closer to high precision than max on {wins['train']} of {len(seeds)} seeds; mean gap max "
          f"{statistics.fmean(summary['train_gap_max']):+.4f}, halfs {statistics.fmean(summary['train_gap_halfs']):+.4f}",
          flush=True)
    return {"args": vars(args), "seeds": seeds, "summary": summary, "wins": wins}


def main() -> None:
    run(make_parser().parse_args())


if __name__ == "__main__":
    main()
