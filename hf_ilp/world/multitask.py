"""The multi-task world: small tasks that compete for a tiny model's parameters, offline.

Version 2 (the default) has four genuinely different skills, each behind its own instruction::

    prompt: "partner ka mo ti ="   completion: " lu fe zo"            relation lookup: each symbol's
                                                                      partner in the world's fixed relation
    prompt: "reverse ka mo ti ="   completion: " ti mo ka"            list transformation
    prompt: "add 3 : 8 5 9 ="      completion: " 1 8 2"               arithmetic: add k to each digit mod 10
    prompt: "format ka mo ti ="    completion: " ( ka , mo , ti )"    formatting

The base is a tiny `LlamaForCausalLM` pre-trained here on untagged copies (``ka mo ti = ka mo ti``),
symbol lists, digit runs (``3 4 5 6``) and key-value lists: it knows the symbols, the digits'
order and how to attend back to its input, but none of the tasks (0.0 on each).

Measured on the small world with its default `sft_config` (30 epochs, lr 3e-3, batch 16; seeds
0, 1 and 2): every task trained alone reaches 1.0 exact match on held-out inputs; trained one
after another, every earlier task falls from 1.0 to 0.0 (forgetting 1.0 on each seed); all four
mixed for the optimizer steps of one task alone leave `add` at 0.02-0.13 (a loss of 0.88-0.98
against training it alone: the seesaw at equal steps), and mixed with the same epochs (four
times the steps, each task's rows seen as often as alone) `add` still stays at 0.14 and 0.19
on seeds 0 and 2 while the other three reach 1.0 (on seed 1 all four reach 1.0).
`benchmarks/bench_epi.py` prints these checks for every seed it runs. The tiny version-2 world
(12 symbols, 128 rows a task) is for tests and is not calibrated.

Version 1 (``version=1``) keeps the earlier design for its tests: every task reads the same input
format and writes a list, so the tasks conflict rather than compete::

    prompt: "copy ka mo ti ="     completion: " ka mo ti"
    prompt: "reverse ka mo ti ="  completion: " ti mo ka"
    prompt: "shift ka mo ti ="    completion: " mo ti lu"   (each symbol's successor in a fixed cycle)
    prompt: "swap ka mo ti ="     completion: " mo ka ti"   (small size only)

Measured on the version-1 tiny world (seed 0, 12 epochs, lr 3e-3): each task alone is learned to
1.0; trained one after another, every earlier task falls to 0.0; all three shuffled together
reach 1.0 each. The version-1 small world adds `swap` and lists of four; `reverse` is not learned
there even alone.

    >>> world = build_multitask_world("small", seed=0)
    >>> world.tasks
    ['partner', 'reverse', 'add', 'format']
    >>> world.evaluate(world.load_base_model())     # exact greedy reproduction per task
    {'add': 0.0, 'format': 0.0, 'partner': 0.0, 'reverse': 0.0}

``train``/``validation`` have columns ``id``, ``prompt``, ``completion``, ``task`` and ``stage``
(the task's position in ``tasks``; ``hf_ilp.training.train_stages`` trains the tasks one after
another by it, a plain ``SFTTrainer`` mixes them). Validation prompts never occur in train.
Everything is deterministic by ``seed`` and cached on disk under ``$HF_ILP_CACHE`` (default
``~/.cache/hf_ilp``) with ILP-World's guarantees: one folder per version, size, seed, layout
(``VERSION``) and hash of the size's settings, built under a file lock by the main process first,
moved into place when complete, and checked against the SHA-256 of every file in its
``meta.json`` (a corrupt entry is rebuilt).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from hf_ilp.files import atomic_dir, write_json_atomic
from hf_ilp.world._cache import build_or_load, checksums, spec_hash, verified_meta, writable_cache_dir

VERSION = 2

_SIZES = {
    # tiny: builds in a few seconds, for tests; small: a couple of minutes, for benchmarks.
    "tiny": dict(
        tasks=("copy", "reverse", "shift"), n_symbols=16, length=3, train_per_task=96, val_per_task=32,
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, pretrain_texts=800, pretrain_epochs=6,
    ),
    "small": dict(
        tasks=("copy", "reverse", "shift", "swap"), n_symbols=24, length=4, train_per_task=256, val_per_task=64,
        hidden_size=128, num_hidden_layers=3, num_attention_heads=4, pretrain_texts=4000, pretrain_epochs=6,
    ),
}

# Version 2: four different skills, each behind its own instruction (see the module docstring).
_SIZES_V2 = {
    "tiny": dict(
        tasks=("partner", "reverse", "add", "format"), n_symbols=12, length=3, train_per_task=128, val_per_task=32,
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, pretrain_texts=1200, pretrain_epochs=6,
    ),
    "small": dict(
        tasks=("partner", "reverse", "add", "format"), n_symbols=16, length=3, train_per_task=1024, val_per_task=64,
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, pretrain_texts=3000, pretrain_epochs=6, epochs=30,
    ),
}
_DIGITS = [str(d) for d in range(10)]
_PUNCT = [":", "(", ",", ")"]

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def _spec(size: str, version: int) -> dict:
    """The settings of the world `version` of `size`."""
    return (_SIZES if version == 1 else _SIZES_V2)[size]


def _apply(task: str, xs: list[str], succ: dict[str, str]) -> list[str]:
    if task == "copy":
        return list(xs)
    if task == "reverse":
        return xs[::-1]
    if task == "shift":
        return [succ[x] for x in xs]
    if task == "swap":
        return [xs[1], xs[0], *xs[2:]]
    raise ValueError(f"unknown task {task!r}")


@dataclass
class MultiTaskWorld:
    """A built multi-task world on disk (see the module docstring)."""

    path: Path
    size: str
    seed: int
    version: int = 1

    def __post_init__(self):
        from datasets import load_from_disk
        from transformers import AutoTokenizer

        self.path = Path(self.path)
        meta = verified_meta(self.path, "meta.json")
        self.version = int(meta.get("design", self.version))  # what the folder holds wins over the argument
        self.tasks: list[str] = meta["tasks"]
        self.base_model_path = self.path / "base_model"
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_model_path)
        self.train = load_from_disk(str(self.path / "train"))
        self.validation = load_from_disk(str(self.path / "validation"))

    def load_base_model(self):
        """A fresh copy of the pre-trained base (`LlamaForCausalLM`, float32)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.base_model_path)

    def sft_config(self, output_dir, **overrides):
        """The default SFT budget for this world as a `trl.SFTConfig` (CPU-friendly, no reporting)."""
        import torch
        from trl import SFTConfig

        from hf_ilp.training import no_activation_checkpointing

        spec = _spec(self.size, self.version)
        kwargs = dict(
            output_dir=str(output_dir), num_train_epochs=spec.get("epochs", 12), per_device_train_batch_size=16,
            learning_rate=spec.get("learning_rate", 3e-3),
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, logging_steps=10, save_strategy="no",
            report_to="none", seed=self.seed, max_length=32, bf16=False,
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True, **no_activation_checkpointing(),
        )
        kwargs.update(overrides)
        return SFTConfig(**kwargs)

    def evaluate(self, model, split: str = "validation", batch_size: int = 128) -> dict[str, float]:
        """Share of rows per task whose completion the model reproduces exactly under greedy decoding."""
        data = {"validation": self.validation, "train": self.train}.get(split)
        if data is None:
            raise ValueError(f"split must be 'validation' or 'train', got {split!r}")
        return exact_match_by_task(model, self.tokenizer, data, batch_size=batch_size)


def exact_match_by_task(model, tokenizer, dataset, batch_size: int = 128) -> dict[str, float]:
    """Greedy exact reproduction of `completion` given `prompt`, averaged per `task` value."""
    import torch

    rows = list(zip(dataset["prompt"], dataset["completion"], dataset["task"]))
    hits: dict[str, list[int]] = {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            prompts = [tokenizer(p)["input_ids"] for p, _, _ in batch]
            golds = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for _, c, _ in batch]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
            mask = (torch.arange(width, device=device)[None, :] >= torch.tensor([width - len(p) for p in prompts], device=device)[:, None]).long()
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max(map(len, golds)), do_sample=False,
                pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
            )[:, width:].tolist()
            for gen, gold, (_, _, task) in zip(out, golds, batch):
                hits.setdefault(task, []).append(int(gen[: len(gold)] == gold))
    model.train(was_training)
    return {task: sum(h) / len(h) for task, h in sorted(hits.items())}


def _rows_and_corpus(size: str, seed: int):
    """The world's data, deterministic by (size, seed): split rows, pre-training texts, tasks, symbols."""
    spec = _SIZES[size]
    rng = random.Random(seed)
    symbols = rng.sample(_SYLLABLES, spec["n_symbols"])
    cycle = symbols[:]
    rng.shuffle(cycle)
    succ = {a: cycle[(i + 1) % len(cycle)] for i, a in enumerate(cycle)}
    tasks = list(spec["tasks"])
    length = spec["length"]

    # disjoint symbol lists for train and validation (no input repeats across splits)
    need = len(tasks) * (spec["train_per_task"] + spec["val_per_task"])
    lists: set[tuple[str, ...]] = set()
    while len(lists) < need:
        lists.add(tuple(rng.sample(symbols, length)))
    pool = sorted(lists)
    rng.shuffle(pool)
    rows = {"train": [], "validation": []}
    for t_i, task in enumerate(tasks):
        for split, n in (("train", spec["train_per_task"]), ("validation", spec["val_per_task"])):
            for k in range(n):
                xs = list(pool.pop())
                rows[split].append(
                    {"id": f"{task}-{split[:3]}-{k}", "prompt": f"{task} {' '.join(xs)} =",
                     "completion": " " + " ".join(_apply(task, xs, succ)), "task": task, "stage": t_i}
                )
    for split in rows:
        rng.shuffle(rows[split])

    # pre-training corpus: untagged copies and plain symbol lists, none of the tasks themselves
    corpus = []
    for i in range(spec["pretrain_texts"]):
        xs = [rng.choice(symbols) for _ in range(length if i % 2 == 0 else rng.randint(2, 2 * length))]
        corpus.append(" ".join(xs) + " = " + " ".join(xs) if i % 2 == 0 else " ".join(xs))
    return rows, corpus, tasks, symbols


def _task_v2(task: str, rng: random.Random, symbols: list[str], partner: dict[str, str], length: int) -> tuple[str, str]:
    """One (prompt, completion) of a version-2 task, drawn with `rng`."""
    if task == "partner":  # relation lookup: each symbol's partner in a fixed relation of the world
        xs = rng.sample(symbols, length)
        return f"partner {' '.join(xs)} =", " " + " ".join(partner[x] for x in xs)
    if task == "reverse":  # list transformation
        xs = rng.sample(symbols, length)
        return f"reverse {' '.join(xs)} =", " " + " ".join(xs[::-1])
    if task == "add":  # arithmetic composition: add k to every digit, modulo 10
        k = rng.randint(1, 9)
        ds = [rng.choice(_DIGITS) for _ in range(length)]
        return f"add {k} : {' '.join(ds)} =", " " + " ".join(str((int(d) + k) % 10) for d in ds)
    if task == "format":  # formatting: the list as a parenthesized, comma-separated tuple
        xs = rng.sample(symbols, length)
        return f"format {' '.join(xs)} =", " ( " + " , ".join(xs) + " )"
    raise ValueError(f"unknown task {task!r}")


def _rows_and_corpus_v2(size: str, seed: int):
    """Version 2's data, deterministic by (size, seed): split rows, pre-training texts, tasks, vocabulary."""
    spec = _SIZES_V2[size]
    rng = random.Random(seed)
    symbols = rng.sample(_SYLLABLES, spec["n_symbols"])
    shuffled = rng.sample(symbols, len(symbols))
    partner = {a: shuffled[(i + 1) % len(shuffled)] for i, a in enumerate(shuffled)}  # no symbol is its own
    tasks, length = list(spec["tasks"]), spec["length"]
    rows = {"train": [], "validation": []}
    for t_i, task in enumerate(tasks):
        seen: dict[str, str] = {}
        while len(seen) < spec["train_per_task"] + spec["val_per_task"]:
            prompt, completion = _task_v2(task, rng, symbols, partner, length)
            seen.setdefault(prompt, completion)
        prompts = sorted(seen)
        rng.shuffle(prompts)
        for split, chunk in (("train", prompts[: spec["train_per_task"]]), ("validation", prompts[spec["train_per_task"] :])):
            rows[split] += [{"id": f"{task}-{split[:3]}-{k}", "prompt": p, "completion": seen[p], "task": task, "stage": t_i}
                            for k, p in enumerate(chunk)]
    for split in rows:
        rng.shuffle(rows[split])

    # pre-training: untagged copies, symbol lists, digit runs and key-value lists; none of the tasks
    corpus = []
    for i in range(spec["pretrain_texts"]):
        kind = i % 4
        if kind == 0:
            xs = rng.sample(symbols, length)
            corpus.append(" ".join(xs) + " = " + " ".join(xs))
        elif kind == 1:
            corpus.append(" ".join(rng.choice(symbols) for _ in range(rng.randint(2, 2 * length))))
        elif kind == 2:
            start = rng.randrange(10)
            corpus.append(" ".join(str((start + j) % 10) for j in range(rng.randint(3, 8))))
        else:
            corpus.append(" ".join(f"{k} {rng.choice(_DIGITS)}" for k in rng.sample(symbols, length)))
    return rows, corpus, tasks, symbols + _DIGITS + _PUNCT


def _build(path: Path, size: str, seed: int, version: int = 1) -> None:
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM

    from hf_ilp.world.model import pretrain, tiny_llama_config
    from hf_ilp.world.tokenizer import build_word_tokenizer

    spec = _spec(size, version)
    rows, corpus, tasks, symbols = (_rows_and_corpus if version == 1 else _rows_and_corpus_v2)(size, seed)
    for split, split_rows in rows.items():
        Dataset.from_list(split_rows).save_to_disk(str(path / split))

    tokenizer = build_word_tokenizer([*tasks, "=", *symbols])
    torch.manual_seed(seed)
    config = tiny_llama_config(
        len(tokenizer), hidden_size=spec["hidden_size"], num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"], max_position_embeddings=32,
    )
    model = LlamaForCausalLM(config)
    losses = pretrain(model, tokenizer, corpus, epochs=spec["pretrain_epochs"], batch_size=32, seed=seed)
    model.save_pretrained(path / "base_model")
    tokenizer.save_pretrained(path / "base_model")
    meta = {"version": VERSION, "design": version, "size": size, "seed": seed, "spec": spec, "tasks": tasks,
            "symbols": symbols, "pretrain_loss": losses, "n_parameters": sum(p.numel() for p in model.parameters())}
    meta["files"] = checksums(path, "meta.json")
    write_json_atomic(path / "meta.json", meta)


def build_multitask_world(
    size: str = "tiny", seed: int = 0, cache_dir=None, rebuild: bool = False, version: int = 2
) -> MultiTaskWorld:
    """Build (or load from the cache) the multi-task world `version` (1 or 2) of `size` ('tiny' or 'small') for `seed`."""
    if version not in (1, 2):
        raise ValueError(f"version must be 1 (one input format, conflicting mappings) or 2 (four skills), got {version!r}")
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    root = writable_cache_dir(cache_dir, "multi-task world")
    spec = _spec(size, version)
    key = f"multitask{'' if version == 1 else version}-v{VERSION}-{spec_hash(spec)}-{size}-seed{seed}"

    def build(path):
        with atomic_dir(path) as tmp:
            _build(tmp, size, seed, version)

    return build_or_load(root, key, build, lambda path: MultiTaskWorld(path=path, size=size, seed=seed, version=version),
                         rebuild=rebuild, what="multi-task world")
