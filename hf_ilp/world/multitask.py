"""The multi-task world: small tasks that interfere with each other (the seesaw), offline.

Every task reads the same input format, a task word then a short list of made-up symbols then
``=``, and writes a list of symbols; the tasks differ only in the mapping, so they compete for the
same parameters::

    prompt: "copy ka mo ti ="     completion: " ka mo ti"
    prompt: "reverse ka mo ti ="  completion: " ti mo ka"
    prompt: "shift ka mo ti ="    completion: " mo ti lu"   (each symbol's successor in a fixed cycle)
    prompt: "swap ka mo ti ="     completion: " mo ka ti"   (small size only)

Training on one task pulls the shared weights towards its mapping and away from the others'
(sequentially: the later task overwrites the earlier; mixed: the tasks trade accuracy), which is
what parameter isolation (EPI, CPI-FT) is meant to reduce. The base is a tiny `LlamaForCausalLM`
pre-trained here on an untagged copy format (``ka mo ti = ka mo ti``) and on plain symbol lists,
so it knows the symbols and how to attend back to them, but none of the tasks.

    >>> world = build_multitask_world("tiny", seed=0)
    >>> world.tasks
    ['copy', 'reverse', 'shift']
    >>> model = world.load_base_model()
    >>> world.evaluate(model)              # exact greedy reproduction per task
    {'copy': 0.3, 'reverse': 0.0, 'shift': 0.0}

Measured on the tiny world (seed 0, the default `sft_config`: 12 epochs, lr 3e-3): each task alone
is learned to 1.0 on validation; trained one after another, every earlier task falls to 0.0 by
the end (complete forgetting); all three shuffled together reach 1.0 each. The small world (seed 0, same budget) adds `swap` and
lists of four: `copy` and `shift` are learned (1.0), `swap` alone reaches 0.61, `reverse` is not
learned even alone (0.0), and mixed training leaves `reverse` and `swap` near 0.02-0.05, so its
mixed scores measure difficulty as much as interference; sequentially, every earlier task is
forgotten (1.0 -> 0.0) as in the tiny world.

``train``/``validation`` have columns ``id``, ``prompt``, ``completion``, ``task`` and ``stage``
(the task's position in ``tasks``; ``hf_ilp.training.train_stages`` trains the tasks one after
another by it, a plain ``SFTTrainer`` mixes them). Validation inputs never occur in train.
Everything is deterministic by ``seed`` and cached on disk under ``$HF_ILP_CACHE`` (default
``~/.cache/hf_ilp``) keyed by size, seed and ``VERSION``.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from hf_ilp._io import atomic_dir, main_process_first

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

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


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


def _default_cache() -> Path:
    return Path(os.environ.get("HF_ILP_CACHE", Path.home() / ".cache" / "hf_ilp"))


@dataclass
class MultiTaskWorld:
    """A built multi-task world on disk (see the module docstring)."""

    path: Path
    size: str
    seed: int

    def __post_init__(self):
        from datasets import load_from_disk
        from transformers import AutoTokenizer

        self.path = Path(self.path)
        meta = json.loads((self.path / "meta.json").read_text())
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

        kwargs = dict(
            output_dir=str(output_dir), num_train_epochs=12, per_device_train_batch_size=16, learning_rate=3e-3,
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


def _build(path: Path, size: str, seed: int) -> None:
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM

    from hf_ilp.world.model import pretrain, tiny_llama_config
    from hf_ilp.world.tokenizer import build_word_tokenizer

    spec = _SIZES[size]
    rows, corpus, tasks, symbols = _rows_and_corpus(size, seed)
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
    meta = {"version": VERSION, "size": size, "seed": seed, "tasks": tasks, "symbols": symbols,
            "pretrain_loss": losses, "n_parameters": sum(p.numel() for p in model.parameters())}
    (path / "meta.json").write_text(json.dumps(meta, indent=2))


def build_multitask_world(size: str = "tiny", seed: int = 0, cache_dir=None, rebuild: bool = False) -> MultiTaskWorld:
    """Build (or load from the cache) the multi-task world of `size` ('tiny' or 'small') for `seed`."""
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    path = Path(cache_dir or _default_cache()) / f"multitask-{size}-seed{seed}-v{VERSION}"
    with main_process_first() as is_main:  # rank 0 builds, the other ranks of a launch load
        if (rebuild and is_main) or not (path / "meta.json").exists():
            with atomic_dir(path) as tmp:
                _build(tmp, size, seed)
    return MultiTaskWorld(path=path, size=size, seed=seed)
