"""Fixtures for the tracking tests: a word tokenizer, hand-made prompt-completion rows, tiny Llamas.

Everything is built locally in a few seconds: rows ask for an attribute of a made-up item, with
one-word answers (short rows) or 6-word answers (long rows), so that a briefly trained model has
learned some rows and not others.
"""

import random

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForCausalLM

from hf_ilp.world.model import pretrain, tiny_llama_config
from hf_ilp.world.tokenizer import build_word_tokenizer

ITEMS = [f"item{i}" for i in range(24)]
RELATIONS = ["color", "shape", "size"]
VALUES = [f"val{i}" for i in range(12)]


def make_rows(n_items=24, long_answers=4, seed=0, stages=False):
    """Prompt-completion rows with ids; `stages=True` adds a `stage` column (0 then 1)."""
    rng = random.Random(seed)
    rows = []
    for item in ITEMS[:n_items]:
        for rel in RELATIONS[:2]:
            k = 1 if len(rows) % 8 else long_answers
            answer = " ".join(rng.choice(VALUES) for _ in range(k))
            rows.append({"id": f"{item}-{rel}", "prompt": f"what is the {rel} of {item} ?", "completion": f" {answer}"})
    if stages:
        for i, row in enumerate(rows):
            row["stage"] = int(i >= len(rows) // 2)
    return Dataset.from_list(rows)


@pytest.fixture(scope="session")
def word_tokenizer():
    words = ["what", "is", "the", "of", "?"] + ITEMS + RELATIONS + VALUES
    return build_word_tokenizer(words)


def tiny_model(tokenizer, seed=0, hidden_size=32):
    torch.manual_seed(seed)
    config = tiny_llama_config(len(tokenizer), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def make_model(word_tokenizer):
    """`make_model(seed=0, hidden_size=32)`: a fresh random tiny Llama for the word tokenizer."""
    return lambda seed=0, hidden_size=32: tiny_model(word_tokenizer, seed, hidden_size)


@pytest.fixture(scope="session")
def rows():
    return make_rows()


@pytest.fixture(scope="session")
def half_trained(word_tokenizer, rows):
    """A tiny Llama trained briefly on the rows: some reproduced exactly, some not."""
    model = tiny_model(word_tokenizer, seed=1, hidden_size=48)
    texts = [r["prompt"] + r["completion"] for r in rows]  # pretrain appends EOS
    pretrain(model, word_tokenizer, texts, epochs=40, learning_rate=1e-2, batch_size=8, warmup_steps=10, seed=0)
    model.eval()
    return model


def sft_args(output_dir, **overrides):
    """A small CPU SFTConfig for tests (no bf16, no gradient checkpointing, no reporting)."""
    from trl import SFTConfig

    kwargs = dict(
        output_dir=str(output_dir), num_train_epochs=2, per_device_train_batch_size=16, learning_rate=1e-2,
        bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=0, data_seed=0,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)
