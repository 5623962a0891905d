"""A tiny Llama and the plain PyTorch loop that pre-trains it on a synthetic corpus.

The base models of ILP-World and the multi-task world are real `LlamaForCausalLM`s built from a
config (nothing is downloaded) and pre-trained here, so that everything that loads a Hub model
(`AutoModelForCausalLM.from_pretrained`, TRL, PEFT) loads them unchanged. Pre-training is a bare
torch loop rather than a `Trainer`: on 2 CPU cores it is several times faster, and pre-training is
not what hf_ilp studies.

    >>> config = tiny_llama_config(len(tokenizer), hidden_size=64, num_hidden_layers=2)
    >>> model = LlamaForCausalLM(config)
    >>> losses = pretrain(model, tokenizer, ["zorb color blue", ...], epochs=10)
"""

import math
import random

import torch
from transformers import LlamaConfig, get_cosine_schedule_with_warmup


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 64,
    pad_token_id: int = 0,
    bos_token_id: int = 2,
    eos_token_id: int = 3,
) -> LlamaConfig:
    """A small `LlamaConfig` (tied embeddings, eager-friendly sizes) for a word-level vocabulary.

    The special-token ids default to those of `build_word_tokenizer` (`<pad>`=0, `<s>`=2,
    `</s>`=3). `intermediate_size` defaults to about 8/3 of `hidden_size`, as in Llama.
    """
    if vocab_size <= max(pad_token_id, bos_token_id, eos_token_id):
        raise ValueError(f"tiny_llama_config: vocab_size={vocab_size} is too small for the special-token ids")
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"tiny_llama_config: hidden_size={hidden_size} must be a multiple of num_attention_heads={num_attention_heads}"
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        intermediate_size=intermediate_size or 8 * hidden_size // 3,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


def pretrain(
    model,
    tokenizer,
    texts,
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    warmup_steps: int = 50,
    weight_decay: float = 0.0,
    seed: int = 0,
    num_threads: int | None = 1,
    progress=None,
) -> list[float]:
    """Causal-LM pre-training of `model` on `texts` (each gets BOS and EOS); returns the mean loss per epoch.

    AdamW with linear warm-up then cosine decay to zero over all `epochs`; texts are reshuffled
    every epoch with `seed`. It runs on `num_threads` CPU threads (None: torch's setting): a
    model this small gains little from more, one thread gives the same weights on every machine,
    and on a shared CPU oversubscribed threads were 30x slower than one (measured on 2 busy cores).
    `progress`, if given, is called as `progress(epoch, loss)` after each epoch.
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _pretrain(model, tokenizer, texts, epochs, batch_size, learning_rate, warmup_steps, weight_decay, seed, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _pretrain(model, tokenizer, texts, epochs, batch_size, learning_rate, warmup_steps, weight_decay, seed, progress):
    texts = list(texts)
    if not texts:
        raise ValueError("pretrain: `texts` is empty")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"pretrain: epochs ({epochs}) and batch_size ({batch_size}) must be >= 1")
    eos = tokenizer.eos_token_id
    encoded = [ids + [eos] for ids in tokenizer(texts)["input_ids"]]
    if max(map(len, encoded)) > model.config.max_position_embeddings:
        raise ValueError(
            f"pretrain: the longest text has {max(map(len, encoded))} tokens, more than the model's "
            f"max_position_embeddings={model.config.max_position_embeddings}"
        )
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(warmup_steps, steps_per_epoch * epochs // 2), steps_per_epoch * epochs)
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id
    model.train()
    history = []
    for epoch in range(epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[start : start + batch_size]]
            width = max(map(len, batch))
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in batch])
            attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch])
            labels = input_ids.masked_fill(attention_mask == 0, -100)
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item() * len(batch)
            count += len(batch)
        history.append(total / count)
        if progress is not None:
            progress(epoch, history[-1])
    model.eval()
    return history
