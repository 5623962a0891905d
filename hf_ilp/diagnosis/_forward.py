"""Teacher-forced statistics of a base model (and optionally the fine-tuned one) on completions.

One batched forward pass per model and batch gives, per sample, everything the base-knowledge
signals need (METHODS 1.1: greedy reproduction under teacher forcing is an argmax check):
- `gm_p`: geometric mean probability of the completion's tokens (length-normalized knowledge);
- `p_seq`: probability of the whole completion (sampling at T=1 reproduces it with this chance);
- `exact`: greedy decoding reproduces the completion;
- `min_p`: the smallest probability among the completion's tokens (for a reproduced completion,
  how firmly the model holds its least certain step);
- `alt_prob`: at the first completion position where the greedy token is not the target, the
  probability of that greedy token (0 when greedy reproduces the target): how firmly the model
  prefers another answer;
- `alt_token`: that greedy token's id (NaN when greedy reproduces the target);
- with a second model: `jsd`, the mean Jensen-Shannon divergence (bits) between the two
  next-token distributions over the completion, and `follows_alt`: whether, at the first
  model's divergence point, the second model still gives the first model's alternative more
  probability than the target token (0 when the first model reproduces the target).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch
from tqdm.auto import tqdm


@torch.no_grad()
def teacher_forced_stats(model, sequences, batch_size=16, pad_id=0, other=None, desc="forward", progress=True):
    """Per-sample statistics of `model` (and `other`, compared with it) on (prompt_ids, completion_ids)."""
    n = len(sequences)
    out = {k: np.full(n, np.nan) for k in ("gm_p", "p_seq", "exact", "min_p", "alt_prob", "alt_token")}
    if other is not None:
        out.update({k: np.full(n, np.nan) for k in ("jsd", "other_gm_p", "follows_alt")})
    if n == 0:
        return out
    models = [m for m in (model, other) if m is not None]
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    order = sorted(range(n), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    try:
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[start:start + batch_size]
            batch = [sequences[i] for i in idx]
            logp = _completion_log_probs(model, batch, pad_id)
            logq = _completion_log_probs(other, batch, pad_id) if other is not None else None
            offset = 0
            for row, (i, (_, completion)) in enumerate(zip(idx, batch)):
                k = len(completion)
                target = torch.tensor(completion, device=logp.device)
                lp = logp[offset:offset + k]
                gold = lp.gather(1, target[:, None])[:, 0]
                top_p, top = lp.max(dim=1)
                wrong = (top != target).nonzero()
                out["gm_p"][i] = math.exp(gold.mean().item())
                out["p_seq"][i] = math.exp(gold.sum().item())
                out["exact"][i] = float(len(wrong) == 0)
                out["min_p"][i] = math.exp(gold.min().item())
                div = int(wrong[0, 0]) if len(wrong) else None
                out["alt_prob"][i] = math.exp(top_p[div].item()) if div is not None else 0.0
                if div is not None:
                    out["alt_token"][i] = int(top[div])
                if logq is not None:
                    lq = logq[offset:offset + k].to(lp.device)
                    out["jsd"][i] = _jsd_bits(lp, lq).mean().item()
                    out["other_gm_p"][i] = math.exp(lq.gather(1, target[:, None])[:, 0].mean().item())
                    out["follows_alt"][i] = float(div is not None and bool(lq[div, top[div]] > lq[div, target[div]]))
                offset += k
    finally:
        for m, flag in zip(models, was_training):
            m.train(flag)
    return out


@torch.no_grad()
def next_token_choice(model, prompts, batch_size=16, pad_id=0):
    """The model's greedy next token after each prompt (token ids) and its probability: (ids, probs)."""
    ids, probs = np.zeros(len(prompts), dtype=np.int64), np.zeros(len(prompts))
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(prompts), batch_size):
            idx = order[start:start + batch_size]
            # a one-token placeholder completion: its log-prob row is the distribution after the prompt
            logp = _completion_log_probs(model, [(prompts[i], [pad_id]) for i in idx], pad_id)
            top_p, top = logp.max(dim=1)
            ids[idx], probs[idx] = top.cpu().numpy(), top_p.exp().cpu().numpy()
    finally:
        model.train(was_training)
    return ids, probs


def _completion_log_probs(model, batch, pad_id):
    """Log-softmax rows predicting each completion token, concatenated over the batch (float32).

    Rows are left-padded with explicit position ids (so every row sees the positions it has
    alone), and only the last positions' logits are computed when the model accepts
    `logits_to_keep`: memory grows with the longest completion, not with prompt x vocabulary.
    """
    device = next(model.parameters()).device
    width = max(len(p) + len(c) for p, c in batch)
    keep = max(len(c) for _, c in batch) + 1
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for b, (prompt, completion) in enumerate(batch):
        seq = list(prompt) + list(completion)
        input_ids[b, width - len(seq):] = torch.tensor(seq)
        attention[b, width - len(seq):] = 1
    position_ids = (attention.cumsum(1) - 1).clamp(min=0)
    kwargs = {"logits_to_keep": keep} if _accepts(model, "logits_to_keep") else {}
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                   position_ids=position_ids.to(device), **kwargs).logits
    logits = logits[:, -keep:]
    rows, cols = [], []
    for b, (_, completion) in enumerate(batch):
        rows += [b] * len(completion)
        cols += range(keep - 1 - len(completion), keep - 1)  # logits at t predict token t + 1
    picked = logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    return torch.log_softmax(picked.float(), dim=-1)


def _accepts(model, name):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(inner.forward).parameters


def _jsd_bits(logp, logq):
    """Jensen-Shannon divergence in bits between rows of two log-probability matrices."""
    logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - math.log(2.0)
    kl_pm = (logp.exp() * (logp - logm)).sum(-1)
    kl_qm = (logq.exp() * (logq - logm)).sum(-1)
    return (0.5 * (kl_pm + kl_qm) / math.log(2.0)).clamp(0.0, 1.0)
