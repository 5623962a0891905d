"""Teacher-forced statistics of a base model (and optionally the fine-tuned one) on completions.

One batched forward pass per model and batch gives, per sample, everything the base-knowledge
signals need (greedy reproduction under teacher forcing is an argmax check: `hf_ilp.check_learned`):
- `gm_p`: geometric mean probability of the completion's tokens (length-normalized knowledge);
- `p_seq`: probability of the whole completion (sampling at T=1 reproduces it with this chance);
- `exact`: greedy decoding reproduces the completion;
- `min_p`: the smallest probability among the completion's tokens (for a reproduced completion,
  how firmly the model holds its least certain step);
- `alt_prob`: at the first completion position where the greedy token is not the target, the
  probability of that greedy token (0 when greedy reproduces the target): how firmly the model
  prefers another answer;
- `alt_token`: that greedy token's id (NaN when greedy reproduces the target);
- `diverges_at`: that position, counted in completion tokens (NaN when greedy reproduces the target);
- with a second model: `jsd`, the mean Jensen-Shannon divergence (bits) between the two
  next-token distributions over the completion, and `follows_alt`: whether, at the first
  model's divergence point, the second model still gives the first model's alternative more
  probability than the target token (0 when the first model reproduces the target), and
  `other_diverges_at`: where the second model's own greedy token first leaves the target.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_ilp.tracking.learn_check import LOGITS_CHUNK_ELEMENTS, last_logits_reader, position_chunks

_ACROSS_PROCESSES = contextvars.ContextVar("hf_ilp_across_processes", default=False)


@contextlib.contextmanager
def across_processes():
    """Inside this block the forwards split their batches evenly over the processes of a distributed
    run (`accelerate launch`, `torchrun`) and every process gets the gathered results. Every process
    must then run the same calls (as the diagnosis does: its inputs are the same on every process);
    outside a distributed run this changes nothing."""
    token = _ACROSS_PROCESSES.set(True)
    try:
        yield
    finally:
        _ACROSS_PROCESSES.reset(token)


def _my_batches(batches: list) -> tuple[list, bool]:
    """(this process's share of `batches`, whether results must be gathered): equal counts per
    process (the last batch repeated where needed), since FSDP / ZeRO-3 forwards are collective."""
    if not _ACROSS_PROCESSES.get() or not batches:
        return batches, False
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return batches, False
    with state.split_between_processes(batches, apply_padding=True) as mine:
        return list(mine), True


def _gathered(out: dict, done: list[int]) -> dict:
    """`out` with the rows `done` by every process filled in (`_my_batches`'s split)."""
    from accelerate.utils import gather_object

    idx = np.asarray(done, dtype=np.int64)
    for part_idx, part in gather_object([(idx, {k: v[idx] for k, v in out.items()})]):
        for k, v in part.items():
            out[k][part_idx] = v
    return out


#: Logits per model read at once: a quarter of the learn-check's chunk, since comparing two models
#: (log-softmax of each, their mixture for the JSD) keeps about eight such arrays alive.
CHUNK_ELEMENTS = LOGITS_CHUNK_ELEMENTS // 4


@torch.no_grad()
def teacher_forced_stats(model, sequences, batch_size=16, pad_id=0, other=None, desc="forward", progress=True,
                         chunk_elements=CHUNK_ELEMENTS):
    """Per-sample statistics of `model` (and `other`, compared with it) on (prompt_ids, completion_ids).

    Memory holds one chunk of at most `chunk_elements` logits per model (`_token_reads`), never a
    whole batch's completion x vocabulary."""
    n = len(sequences)
    out = {k: np.full(n, np.nan) for k in ("gm_p", "p_seq", "exact", "min_p", "alt_prob", "alt_token", "diverges_at")}
    if other is not None:
        out.update({k: np.full(n, np.nan) for k in ("jsd", "other_gm_p", "follows_alt", "other_diverges_at")})
    if n == 0:
        return out
    models = [m for m in (model, other) if m is not None]
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    order = sorted(range(n), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    batches, split = _my_batches([order[start:start + batch_size] for start in range(0, n, batch_size)])
    try:
        for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
            batch = [sequences[i] for i in idx]
            reads = _token_reads(model, batch, pad_id, other, chunk_elements)
            offset = 0
            for i, (_, completion) in zip(idx, batch):
                k = len(completion)
                r = {key: value[offset:offset + k] for key, value in reads.items()}
                offset += k
                target = torch.tensor(completion, device=r["gold"].device)
                gold = r["gold"]
                wrong = (r["top"] != target).nonzero()
                out["gm_p"][i] = math.exp(gold.mean().item())
                out["p_seq"][i] = math.exp(gold.sum().item())
                out["exact"][i] = float(len(wrong) == 0)
                out["min_p"][i] = math.exp(gold.min().item())
                div = int(wrong[0, 0]) if len(wrong) else None
                out["alt_prob"][i] = math.exp(r["top_p"][div].item()) if div is not None else 0.0
                if div is not None:
                    out["alt_token"][i] = int(r["top"][div])
                    out["diverges_at"][i] = div
                if other is not None:
                    other_wrong = (r["other_top"] != target).nonzero()
                    if len(other_wrong):
                        out["other_diverges_at"][i] = int(other_wrong[0, 0])
                    out["jsd"][i] = r["jsd"].mean().item()
                    out["other_gm_p"][i] = math.exp(r["other_gold"].mean().item())
                    out["follows_alt"][i] = float(div is not None and bool(r["other_at_top"][div] > r["other_gold"][div]))
    finally:
        for m, flag in zip(models, was_training):
            m.train(flag)
    return _gathered(out, [i for idx in batches for i in idx]) if split else out


@torch.no_grad()
def next_token_choice(model, prompts, batch_size=16, pad_id=0):
    """The model's greedy next token after each prompt (token ids) and its probability: (ids, probs)."""
    ids, probs = np.zeros(len(prompts), dtype=np.int64), np.zeros(len(prompts))
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        batches, split = _my_batches([order[start:start + batch_size] for start in range(0, len(prompts), batch_size)])
        for idx in batches:
            # a one-token placeholder completion: its position reads the distribution after the prompt
            reads = _token_reads(model, [(prompts[i], [pad_id]) for i in idx], pad_id)
            ids[idx], probs[idx] = reads["top"].cpu().numpy(), reads["top_p"].exp().cpu().numpy()
    finally:
        model.train(was_training)
    if split:
        done = _gathered({"ids": ids, "probs": probs}, [i for idx in batches for i in idx])
        ids, probs = done["ids"], done["probs"]
    return ids, probs


@torch.no_grad()
def greedy_continuations(model, prefixes, max_new_tokens, batch_size=16, pad_id=0, eos_id=None) -> list[list[int]]:
    """What `model` says after each prefix (token ids): its greedy continuation, at most `max_new_tokens`
    tokens, ending at its first EOS (kept, so a reader sees where it stops). Batches are left-padded
    like the teacher-forced reads and split over processes inside `across_processes()`."""
    n = len(prefixes)
    out = np.empty(n, dtype=object)
    for i in range(n):
        out[i] = []
    if n == 0 or max_new_tokens <= 0:
        return [list(x) for x in out]
    target = model.peft_model if isinstance(model, AdaptersDisabled) else model
    was_training = target.training
    target.eval()
    order = sorted(range(n), key=lambda i: len(prefixes[i]))
    batches, split = _my_batches([order[start:start + batch_size] for start in range(0, n, batch_size)])
    try:
        for idx in batches:
            width = max(len(prefixes[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for b, i in enumerate(idx):
                input_ids[b, width - len(prefixes[i]):] = torch.tensor(prefixes[i])
                attention[b, width - len(prefixes[i]):] = 1
            device = next(target.parameters()).device
            with _reading(model):
                generated = target.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), max_new_tokens=max_new_tokens,
                    do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos_id,
                )
            for b, i in enumerate(idx):
                tokens = generated[b, width:].tolist()
                if eos_id is not None and eos_id in tokens:
                    tokens = tokens[:tokens.index(eos_id) + 1]
                out[i] = tokens
    finally:
        target.train(was_training)
    if split:
        out = _gathered({"tokens": out}, [i for idx in batches for i in idx])["tokens"]
    return [list(x) for x in out]


def _token_reads(model, batch, pad_id, other=None, chunk_elements=CHUNK_ELEMENTS):
    """Per completion token of `batch`, concatenated row after row (float32 log-probabilities):
    `gold` (of the target), `top_p` / `top` (the greedy token and its log-probability) and, with
    `other`, `other_gold`, `other_at_top` (its log-probability of `model`'s greedy token),
    `other_top` (its own greedy token) and `jsd` (bits, between the two next-token distributions).

    Rows are left-padded with explicit position ids (so every row sees the positions it has
    alone). Each model's decoder runs once and its LM head reads the completion positions in
    chunks (`hf_ilp.tracking.learn_check.last_logits_reader`); a model whose head cannot be split is
    read from its own logits of the last positions (`logits_to_keep` where accepted)."""
    width = max(len(p) + len(c) for p, c in batch)
    keep = max(len(c) for _, c in batch) + 1
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for b, (prompt, completion) in enumerate(batch):
        seq = list(prompt) + list(completion)
        input_ids[b, width - len(seq):] = torch.tensor(seq)
        attention[b, width - len(seq):] = 1
    position_ids = (attention.cumsum(1) - 1).clamp(min=0)
    readers = [last_logits_reader(m, keep, lambda m=m: _reading(m), **_on_device(m, input_ids, attention, position_ids))
               for m in (model, other) if m is not None]
    logits_of, vocab = [read for read, _ in readers], readers[0][1]
    device = next(model.parameters()).device
    targets = input_ids[:, width - keep + 1:].to(device)  # the token each of the first keep - 1 window positions predicts
    names = ("gold", "top_p", "top") + (("other_gold", "other_at_top", "other_top", "jsd") if other is not None else ())
    window = {name: torch.zeros((len(batch), keep - 1), dtype=torch.long if name in ("top", "other_top") else torch.float32,
                                device=device) for name in names}
    for sl in position_chunks(len(batch), keep - 1, vocab, chunk_elements):
        logp = torch.log_softmax(logits_of[0](sl), dim=-1)
        tgt = targets[:, sl].unsqueeze(-1)
        window["gold"][:, sl] = logp.gather(-1, tgt).squeeze(-1)
        window["top_p"][:, sl], window["top"][:, sl] = logp.max(dim=-1)
        if other is not None:
            logq = torch.log_softmax(logits_of[1](sl), dim=-1).to(device)
            window["other_gold"][:, sl] = logq.gather(-1, tgt).squeeze(-1)
            window["other_at_top"][:, sl] = logq.gather(-1, window["top"][:, sl].unsqueeze(-1)).squeeze(-1)
            window["other_top"][:, sl] = logq.argmax(dim=-1)
            window["jsd"][:, sl] = _jsd_bits(logp, logq)
            del logq
        del logp
    rows, cols = [], []
    for b, (_, completion) in enumerate(batch):
        rows += [b] * len(completion)
        cols += range(keep - 1 - len(completion), keep - 1)
    rows, cols = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    return {name: value[rows, cols] for name, value in window.items()}


class AdaptersDisabled:
    """The base model inside a PEFT model: the PEFT model read with its adapters disabled
    (`disable_adapter()`), so a diagnosis of a LoRA run needs no second copy of the base in memory.
    Everything else (parameters, config, embeddings) is the PEFT model's."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def __getattr__(self, name):
        return getattr(self.peft_model, name)

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)


def _reading(model):
    """The context in which `model`'s modules compute what `model` means (adapters off for a base view)."""
    return model.peft_model.disable_adapter() if isinstance(model, AdaptersDisabled) else contextlib.nullcontext()


def _on_device(model, input_ids, attention, position_ids):
    device = next(model.parameters()).device
    return dict(input_ids=input_ids.to(device), attention_mask=attention.to(device), position_ids=position_ids.to(device))


def _jsd_bits(logp, logq):
    """Jensen-Shannon divergence in bits between rows of two log-probability matrices."""
    logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - math.log(2.0)
    kl_pm = (logp.exp() * (logp - logm)).sum(-1)
    kl_qm = (logq.exp() * (logq - logm)).sum(-1)
    return (0.5 * (kl_pm + kl_qm) / math.log(2.0)).clamp(0.0, 1.0)
