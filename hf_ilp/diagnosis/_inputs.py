"""Diagnosis inputs: the training rows as (prompt, completion) token ids, their ids, and checks.

Rows are tokenized by the tracker's own code (`hf_ilp.tracking.learn_check.tokenize_rows`, which
follows SFTTrainer: prompt-completion or conversational rows, the completion starting where the
tokenized prompt and prompt + completion first differ), so sample ids of rows without an `id`
column are the records' ids. Diagnosis judges the content of a completion, so the EOS token that
TRL appends to a plain-text completion is left out of what the signals read (the base model never
saw the SFT format's stop); a chat template's end-of-turn tokens stay.
"""

from __future__ import annotations

from dataclasses import dataclass

from hf_ilp._rows import as_text, split_messages


@dataclass
class Samples:
    """The dataset as seen by the signals: one entry per row, in dataset order."""

    ids: list[str]
    prompts: list[str]  # plain text (what the sentence encoder reads)
    completions: list[str]
    stages: list[int]  # -1 when the data has no `stage` column
    has_stage: bool
    sequences: list[tuple[list[int], list[int]]]  # (prompt_ids, completion_ids), EOS of plain text left out
    shown: list[tuple[str, str]]  # (prompt, completion) as a reader sees them: a conversation's turns after their role
    ids_given: bool  # the dataset has an `id` column (else ids are the rows' content hashes)


def read_samples(dataset, tokenizer) -> Samples:
    """Read ids, texts, stages and token ids from a `datasets.Dataset` of training rows."""
    columns = list(getattr(dataset, "column_names", None) or [])
    if "messages" not in columns and not {"prompt", "completion"} <= set(columns):
        raise ValueError(
            f"dataset has columns {columns}; expected 'prompt' and 'completion' (prompt-completion format) "
            "or 'messages' (conversational format)"
        )
    prompts, completions, shown = [], [], []
    plain = []
    for i, row in enumerate(dataset):
        if row.get("prompt") is not None:
            prompt, completion = row["prompt"], row["completion"]
        else:
            prompt, completion = split_messages(row["messages"], where=f"row {i}: 'messages'")
        prompts.append(as_text(prompt))
        completions.append(as_text(completion))
        shown.append((as_text(prompt, roles=True), as_text(completion)))
        plain.append(isinstance(completion, str))
    rows = _tokenize_rows(dataset, tokenizer)
    ids = list(rows.names)
    if len(set(ids)) != len(ids):
        seen = set()
        dup = next(x for x in ids if x in seen or seen.add(x))
        raise ValueError(f"dataset ids must be unique; {dup!r} occurs more than once (fix the 'id' column, or "
                         "drop exact duplicate rows, which share a content hash)")
    sequences = [_split(r, t, i, tokenizer.eos_token_id if p else None, ids[i])
                 for i, (r, t, p) in enumerate(zip(rows.ids, rows.targets, plain))]
    return Samples(ids, prompts, completions, list(rows.stages), "stage" in columns, sequences, shown, "id" in columns)


def tokenize_pairs(tokenizer, prompts, completions) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, completion_ids) of plain-text pairs (probes), tokenized like the training rows."""
    from datasets import Dataset

    if not prompts:
        return []
    rows = _tokenize_rows(Dataset.from_dict({"prompt": list(prompts), "completion": list(completions)}), tokenizer)
    return [_split(r, t, i, tokenizer.eos_token_id, f"probe {prompts[i]!r}")
            for i, (r, t) in enumerate(zip(rows.ids, rows.targets))]


def _tokenize_rows(dataset, tokenizer):
    from hf_ilp.tracking.learn_check import tokenize_rows

    return tokenize_rows(dataset, tokenizer)


def _split(ids, targets, i, eos_id, name):
    start = next((k for k, t in enumerate(targets) if t), None)
    end = len(ids) - 1 if eos_id is not None and len(ids) > 1 and ids[-1] == eos_id else len(ids)
    if start is None or start >= end:
        raise ValueError(f"row {i} ({name}): the completion has no token to diagnose after the prompt")
    return list(ids[:start]), list(ids[start:end])


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


