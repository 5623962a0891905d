"""Diagnosis inputs: the training rows as (prompt, completion) pairs, their ids, and checks.

Accepts TRL's prompt-completion format (`prompt`, `completion`, strings or conversational
message lists) and the conversational format (`messages`, whose last assistant turn is the
completion). Tokenization follows SFTTrainer: the prompt alone and prompt + completion are
tokenized, and the completion starts where the two first differ. Diagnosis judges the content
of a completion, so no EOS is appended (the base model never saw the SFT format's stop).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass
class Samples:
    """The dataset as seen by the signals: one entry per row, in dataset order."""

    ids: list[str]
    prompts: list[str]  # plain text (what the sentence encoder reads)
    completions: list[str]
    stages: list[int]  # -1 when the data has no `stage` column
    has_stage: bool
    raw: list  # what `tokenize` needs: (prompt, completion) strings or message lists


def read_samples(dataset) -> Samples:
    """Read ids, texts and stages from a `datasets.Dataset` (or a list of dicts)."""
    columns = dataset.column_names if hasattr(dataset, "column_names") else (list(dataset[0]) if len(dataset) else [])
    if "messages" not in columns and not {"prompt", "completion"} <= set(columns):
        raise ValueError(
            f"dataset has columns {columns}; expected 'prompt' and 'completion' (prompt-completion format) "
            "or 'messages' (conversational format)"
        )
    ids, prompts, completions, stages, raw = [], [], [], [], []
    has_stage = "stage" in columns
    for i, row in enumerate(dataset):
        if "prompt" in row and "completion" in row and row["prompt"] is not None:
            prompt, completion = row["prompt"], row["completion"]
        else:
            prompt, completion = _split_messages(row["messages"], i)
        raw.append((prompt, completion))
        prompts.append(_text(prompt))
        completions.append(_text(completion))
        ids.append(str(row["id"]) if row.get("id") is not None else content_id(prompt, completion))
        stages.append(int(row["stage"]) if has_stage and row["stage"] is not None else -1)
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for x in ids:
            if x in seen:
                dup = x
                break
            seen.add(x)
        raise ValueError(f"dataset ids must be unique; {dup!r} occurs more than once (fix the 'id' column)")
    return Samples(ids, prompts, completions, stages, has_stage, raw)


def content_id(prompt, completion) -> str:
    """Stable id of a row without an `id` column: a hash of its prompt and completion."""
    blob = json.dumps([prompt, completion], sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def tokenize(tokenizer, pairs) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, completion_ids) per pair, split where SFTTrainer splits them."""
    out = []
    for i, (prompt, completion) in enumerate(pairs):
        if isinstance(prompt, str):
            prompt_ids = tokenizer(prompt)["input_ids"]
            full_ids = tokenizer(prompt + completion)["input_ids"]
        else:
            if getattr(tokenizer, "chat_template", None) is None:
                raise ValueError(
                    f"row {i} is conversational but the tokenizer has no chat template; set "
                    "tokenizer.chat_template or use the prompt-completion format"
                )
            prompt_ids = _ids(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
            full_ids = _ids(tokenizer.apply_chat_template(prompt + completion, tokenize=True))
        start = 0
        while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
            start += 1
        if start == 0 or start >= len(full_ids):
            raise ValueError(f"row {i}: the completion tokenizes to nothing after the prompt (prompt={_text(prompt)!r})")
        out.append((list(full_ids[:start]), list(full_ids[start:])))
    return out


def check_models(model, base_model, tokenizer, base_tokenizer=None) -> None:
    """Refuse a base and a fine-tuned model that do not share one vocabulary."""
    n_ft = model.get_input_embeddings().num_embeddings
    n_base = base_model.get_input_embeddings().num_embeddings
    v_ft = getattr(model.config, "vocab_size", n_ft)
    v_base = getattr(base_model.config, "vocab_size", n_base)
    if (n_ft, v_ft) != (n_base, v_base):
        raise ValueError(
            f"base_model and model have different vocabularies (base: {v_base} tokens / {n_base} embeddings, "
            f"fine-tuned: {v_ft} / {n_ft}); the diagnosis compares their predictions token by token, so the "
            "base must be the model the fine-tuned one started from, with the same tokenizer"
        )
    if len(tokenizer) > n_ft:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the models only {n_ft} embeddings; pass the tokenizer "
            "the model was fine-tuned with"
        )
    if base_tokenizer is not None and base_tokenizer.get_vocab() != tokenizer.get_vocab():
        diff = set(base_tokenizer.get_vocab().items()) ^ set(tokenizer.get_vocab().items())
        example = sorted(diff, key=str)[:3]
        raise ValueError(
            f"base_tokenizer and tokenizer map tokens to ids differently ({len(diff)} differing entries, e.g. "
            f"{example}); the base and fine-tuned models must share one tokenizer"
        )


def _split_messages(messages, i):
    if not messages:
        raise ValueError(f"row {i}: 'messages' is empty")
    last = max((k for k, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        raise ValueError(f"row {i}: 'messages' needs an assistant turn after at least one other turn")
    return list(messages[:last]), [messages[last]]


def _text(x) -> str:
    if isinstance(x, str):
        return x
    return "\n".join(str(m.get("content", "")) for m in x)


def _ids(x):
    if isinstance(x, dict) or hasattr(x, "keys"):
        x = x["input_ids"]
    return list(x)
