"""The exact learn-check: did the model learn a sample, judged in one forward pass.

Greedy decoding reproduces a completion exactly if and only if, under teacher forcing, the argmax
at every completion position (EOS included) is the target token. Sampling at temperature T
reproduces it with probability p = exp(sum_t log softmax(z_t / T)[y_t]), so at least one of N
samples does with probability 1 - (1 - p)^N. Both come out of one batched forward pass, with no
`generate` loop and no sampling noise.

Rows are tokenized exactly as TRL's `SFTTrainer` tokenizes them (so the verdict is about the
sequence the model was trained on):

- prompt-completion (`prompt`, `completion`): the completion gets the EOS token appended when it
  lacks it (non-conversational rows), and starts where the tokenized prompt and the tokenized
  prompt+completion diverge (`trl.data_utils.common_prefix_length`);
- conversational prompt-completion (lists of messages): prompt rendered with the generation
  prompt, prompt+completion rendered as one conversation;
- conversational `messages`: the last message must be the assistant's answer; it is the
  completion and the messages before it are the prompt;
- already tokenized (`input_ids` with `completion_mask` or `labels`): taken as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable
from tqdm.auto import tqdm
from trl.data_utils import common_prefix_length, is_conversational

from hf_ilp._rows import split_messages

__all__ = ["check_learned"]


@dataclass
class TokenizedRows:
    """Tokenized rows (`tokenize_rows`' result), what the learn-check, the tracker and the records share.

    Per row: `ids` (prompt + completion token ids, as the trainer sees them), `targets` (0/1 per
    position, 1 = a completion token to reproduce), `names` (the row's `id`), `stages` (its
    `stage`, 0 without one) and `hashes` (`row_hash(ids)`, how the tracker recognizes it in a batch).
    """

    ids: list[list[int]]
    targets: list[list[int]]
    names: list[str]
    stages: list[int]
    hashes: list[str]

    def n_targets(self) -> np.ndarray:
        """Completion tokens to reproduce per row (the first position never is one)."""
        return np.array([sum(t[1:]) for t in self.targets], dtype=np.int64)


def row_hash(ids) -> str:
    """Stable 16-hex-digit hash of a row's token ids: how the tracker recognizes a row in a batch."""
    return hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).hexdigest()


def _render(tokenizer, value, chat_template, tools=None, chat_template_kwargs=None, **kwargs) -> list[int]:
    if isinstance(value, list):
        out = tokenizer.apply_chat_template(
            value,
            tokenize=True,
            return_dict=True,
            chat_template=chat_template,
            tools=tools,
            **(chat_template_kwargs or {}),
            **kwargs,
        )
        return list(out["input_ids"])
    return list(tokenizer(text=value)["input_ids"])


def _tokenize_example(example: dict, tokenizer, chat_template=None) -> tuple[list[int], list[int]]:
    if "input_ids" in example:
        ids = list(example["input_ids"])
        if example.get("completion_mask") is not None:
            targets = [int(bool(m)) for m in example["completion_mask"]]
        elif example.get("labels") is not None:
            targets = [int(label != -100) for label in example["labels"]]
        else:
            targets = [1] * len(ids)
        return ids, targets
    if "prompt" not in example and "messages" in example:
        prompt, completion = split_messages(example["messages"])
        example = {**example, "prompt": prompt, "completion": completion}
    if "prompt" not in example or "completion" not in example:
        raise ValueError(
            "check_learned needs rows with `prompt` and `completion`, conversational `messages`, or "
            f"`input_ids` with `completion_mask`/`labels`; got columns {sorted(example)}"
        )
    extra = {"tools": example.get("tools"), "chat_template_kwargs": example.get("chat_template_kwargs")}
    if is_conversational(example):
        prompt_ids = _render(tokenizer, example["prompt"], chat_template, add_generation_prompt=True, **extra)
        full_ids = _render(tokenizer, example["prompt"] + example["completion"], chat_template, **extra)
    else:
        completion = example["completion"]
        if tokenizer.eos_token and not completion.endswith(tokenizer.eos_token):
            completion = completion + tokenizer.eos_token
        prompt_ids = _render(tokenizer, example["prompt"], chat_template)
        full_ids = _render(tokenizer, example["prompt"] + completion, chat_template)
    start = common_prefix_length(prompt_ids, full_ids)
    return full_ids, [0] * start + [1] * (len(full_ids) - start)


def column_lists(dataset, names) -> dict[str, list]:
    """Whole columns as Python lists, read through Arrow in one go (much faster than row iteration)."""
    if not names:
        return {}
    if isinstance(dataset, Dataset):
        return dataset.select_columns(list(names)).to_dict()
    rows = list(dataset)
    return {n: [r[n] for r in rows] for n in names}


def _tokenize_plain_pairs(dataset, tokenizer):
    """Batched fast path for non-conversational prompt-completion rows (same result as row by row)."""
    eos = tokenizer.eos_token or ""
    cols = column_lists(dataset, ["prompt", "completion"])
    prompts = cols["prompt"]
    completions = [c if c.endswith(eos) else c + eos for c in cols["completion"]]
    prompt_ids = tokenizer(prompts)["input_ids"]
    full_ids = tokenizer([p + c for p, c in zip(prompts, completions)])["input_ids"]
    for p_ids, f_ids in zip(prompt_ids, full_ids):
        start = common_prefix_length(p_ids, f_ids)
        yield list(f_ids), [0] * start + [1] * (len(f_ids) - start)


def tokenize_rows(dataset, tokenizer, max_length=None, truncation_mode="keep_start", chat_template=None) -> TokenizedRows:
    """Tokenize `dataset` like TRL's SFTTrainer; names come from an `id` column, else the row hash."""
    if truncation_mode not in ("keep_start", "keep_end"):
        raise ValueError(f"truncation_mode must be 'keep_start' or 'keep_end', got {truncation_mode!r}")
    columns = getattr(dataset, "column_names", None) or []
    plain_pairs = (
        isinstance(dataset, Dataset)
        and len(dataset) > 0
        and {"prompt", "completion"} <= set(columns)
        and "input_ids" not in columns
        and chat_template is None
        and not is_conversational(dataset[0])
    )
    pairs = (
        _tokenize_plain_pairs(dataset, tokenizer)
        if plain_pairs
        else (_tokenize_example(example, tokenizer, chat_template) for example in dataset)
    )
    ids, targets = [], []
    for row_ids, row_targets in pairs:
        if max_length is not None and len(row_ids) > max_length:
            sl = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
            row_ids, row_targets = row_ids[sl], row_targets[sl]
        row_targets = [0] + row_targets[1:]  # the first token is never predicted
        ids.append(row_ids)
        targets.append(row_targets)
    hashes = [row_hash(r) for r in ids]
    extra = column_lists(dataset, [c for c in ("id", "stage") if c in columns])
    names = [str(x) for x in extra["id"]] if "id" in extra else list(hashes)
    stages = [int(s) for s in extra["stage"]] if "stage" in extra else [-1] * len(ids)
    return TokenizedRows(ids, targets, names, stages, hashes)


def _accepts(model, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


#: Logit entries (batch x positions x vocabulary) scored at once: 2^26 float32 values are 256 MiB,
#: so a check holds one such chunk and its log-softmax, whatever the vocabulary and completion length.
LOGITS_CHUNK_ELEMENTS = 2**26
#: Config fields of heads that transform the logits after `lm_head` (soft-capping, scaling): such
#: models are scored from their own `logits`, not chunk by chunk from the hidden states.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def decoder_and_head(model):
    """(decoder, lm_head) when the model's logits are exactly `lm_head(decoder(...).last_hidden_state)`,
    else None (the model's own forward is used)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    get_decoder, head = getattr(base, "get_decoder", None), base.get_output_embeddings()
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def last_logits_reader(model, keep: int, reading=contextlib.nullcontext, **inputs):
    """(read, vocab) for the logits of `model` on `inputs` at its last `keep` positions: `read(sl)`
    gives those at slice `sl` of that window, in float32. Where the head allows it
    (`decoder_and_head`), the decoder runs once here and each read applies the LM head to its slice
    only, so memory holds one chunk of logits; otherwise the model's own logits of the window are
    computed (`logits_to_keep` where accepted). `reading`: the context the modules run in (adapters
    off, for a base model read through its PEFT model)."""
    split = decoder_and_head(model)
    if split is not None:
        decoder, head = split
        with reading():
            hidden = decoder(use_cache=False, **inputs).last_hidden_state[:, -keep:]

        def read(sl):
            with reading():
                return head(hidden[:, sl]).float()

        return read, getattr(getattr(head, "weight", None), "shape", (model.config.vocab_size,))[0]
    if _accepts(model, "logits_to_keep"):
        inputs = {**inputs, "logits_to_keep": keep}
    with reading():
        logits = model(use_cache=False, **inputs).logits[:, -keep:]
    return (lambda sl: logits[:, sl].float()), logits.shape[-1]


def position_chunks(batch: int, positions: int, vocab: int, budget: int = LOGITS_CHUNK_ELEMENTS) -> list[slice]:
    """Slices of `positions` such that `batch` x slice x `vocab` logits stay within `budget`."""
    step = max(1, budget // max(batch * vocab, 1))
    return [slice(c, min(c + step, positions)) for c in range(0, positions, step)]


@torch.no_grad()
def score_rows(
    model, rows: TokenizedRows, indices, batch_size=32, num_samples=5, temperature=1.0, progress=True, desc="learn-check",
    chunk_elements: int = LOGITS_CHUNK_ELEMENTS,
) -> dict[str, np.ndarray]:
    """Teacher-forced scores of `rows[indices]` (each with at least one target) in batched forward passes.

    Rows are sorted by length and left-padded. The completion positions are scored in chunks of at
    most `chunk_elements` logits (`last_logits_reader`), so memory holds one chunk of
    `[batch, positions, vocab]`, never the whole completion's, where the model's head allows it.
    """
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    out = {
        "nll": np.full(n, np.nan),
        "token_acc": np.full(n, np.nan),
        "exact": np.zeros(n, dtype=bool),
        "p_gold": np.full(n, np.nan),
        "p_sample": np.full(n, np.nan),
    }
    if n == 0:
        out["pass_at_n"] = np.zeros(0)
        return out
    device = next(model.parameters()).device
    lengths = np.array([len(rows.ids[i]) for i in indices])
    order = np.argsort(-lengths, kind="stable")
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
            pos = order[start : start + batch_size]
            batch = [int(indices[p]) for p in pos]
            width = max(len(rows.ids[i]) for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            tmask = np.zeros((len(batch), width), dtype=bool)
            attn = np.zeros((len(batch), width), dtype=np.int64)
            first_target = width
            for b, i in enumerate(batch):
                row, tgt = rows.ids[i], rows.targets[i]
                off = width - len(row)
                ids[b, off:] = row
                tmask[b, off:] = tgt
                attn[b, off:] = 1
                first_target = min(first_target, off + tgt.index(1))
            ids, tmask, attn = torch.from_numpy(ids), torch.from_numpy(tmask), torch.from_numpy(attn)
            keep = width - first_target + 1  # logits at positions first_target-1 .. width-1
            kwargs = {}
            if not bool(attn.all()):  # left padding: mask it and count positions from the first real token
                kwargs = {"attention_mask": attn.to(device), "position_ids": (attn.cumsum(-1) - 1).clamp(min=0).to(device)}
            target_ids = ids[:, width - keep + 1 :].to(device)
            mask = tmask[:, width - keep + 1 :].to(device)
            logits_of, vocab = last_logits_reader(model, keep, input_ids=ids.to(device), **kwargs)
            lp_sum = torch.zeros(len(batch), dtype=torch.float64, device=device)
            lpt_sum = torch.zeros(len(batch), dtype=torch.float64, device=device)
            correct = torch.zeros(len(batch), dtype=torch.long, device=device)
            exact = torch.ones(len(batch), dtype=torch.bool, device=device)
            for sl in position_chunks(len(batch), keep - 1, vocab, chunk_elements):  # the last position predicts nothing
                logits, tgt, m = logits_of(sl), target_ids[:, sl], mask[:, sl]
                lp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1).masked_fill(~m, 0.0)
                lp_sum += lp.double().sum(-1)
                if temperature != 1.0:
                    lpt = torch.log_softmax(logits / temperature, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                    lpt_sum += lpt.masked_fill(~m, 0.0).double().sum(-1)
                top1 = logits.argmax(-1) == tgt
                correct += (top1 & m).sum(-1)
                exact &= (top1 | ~m).all(-1)
                del logits, lp
            if temperature == 1.0:
                lpt_sum = lp_sum
            count = mask.sum(-1).double()
            out["nll"][pos] = (-lp_sum / count).cpu().numpy()
            out["token_acc"][pos] = (correct / count).cpu().numpy()
            out["exact"][pos] = exact.cpu().numpy()
            out["p_gold"][pos] = lp_sum.exp().cpu().numpy()
            out["p_sample"][pos] = lpt_sum.exp().cpu().numpy()
    finally:
        model.train(was_training)
    out["pass_at_n"] = pass_at_n(out["p_sample"], num_samples)
    return out


def pass_at_n(p, n: int) -> np.ndarray:
    """1 - (1 - p)^n, computed stably for tiny p."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.expm1(n * np.log1p(-np.clip(p, 0.0, 1.0)))


def check_learned(
    model,
    tokenizer,
    dataset,
    batch_size: int = 32,
    num_samples: int = 5,
    temperature: float = 1.0,
    max_length: int | None = None,
    chat_template: str | None = None,
    progress: bool = True,
) -> Dataset:
    """Exact learn-check of every row of `dataset`, one forward pass per row.

    Returns a `Dataset` with one row per input row: `id` (the `id` column, else a hash of the
    tokens), `exact` (greedy decoding reproduces the completion, EOS included), `p_gold`
    (probability of the whole completion at temperature 1), `p_sample` (probability that one
    sample at `temperature` reproduces it), `pass_at_n` (at least one of `num_samples` samples at
    `temperature` does: 1 - (1 - p_sample)^N), `nll` (mean completion-token NLL), `token_acc`
    (share of completion tokens that are the argmax) and `n_completion_tokens`.

    Example:
        >>> from hf_ilp import check_learned
        >>> verdict = check_learned(model, tokenizer, dataset)  # prompt-completion or messages rows
        >>> verdict.filter(lambda r: not r["exact"])["id"]  # what greedy decoding fails to reproduce
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use the `exact` column for greedy decoding), got {temperature}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rows = tokenize_rows(dataset, tokenizer, max_length=max_length, chat_template=chat_template)
    n_targets = rows.n_targets()
    empty = [rows.names[i] for i in np.flatnonzero(n_targets == 0)]
    if empty:
        raise ValueError(
            f"{len(empty)} row(s) have no completion token to check (empty completion, or truncated away by "
            f"max_length={max_length}): {empty[:10]}{' ...' if len(empty) > 10 else ''}. Remove them or raise max_length."
        )
    scores = score_rows(
        model, rows, range(len(rows.ids)), batch_size, num_samples, temperature, progress=progress
    )
    # a random fingerprint: hashing every value (what `from_dict` does) would cost as much as a forward
    table = InMemoryTable.from_pydict(
        {
            "id": rows.names,
            "exact": scores["exact"].tolist(),
            "p_gold": scores["p_gold"].tolist(),
            "p_sample": scores["p_sample"].tolist(),
            "pass_at_n": scores["pass_at_n"].tolist(),
            "nll": scores["nll"].tolist(),
            "token_acc": scores["token_acc"].tolist(),
            "n_completion_tokens": n_targets.tolist(),
        }
    )
    return Dataset(table, fingerprint=generate_random_fingerprint())
