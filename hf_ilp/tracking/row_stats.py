"""Per-row statistics of one training forward: the tensor math behind `LearnTracker`.

Pure functions of a batch and the model's output (no trainer, no callback state), so they can be
tested on tensors alone. TRL's `SFTTrainer` runs its fused LM head in training: the output holds
per-token `log_probs`, `is_top1` and `label_mask` instead of logits. A plain `transformers.Trainer`
forward returns the logits, read here a chunk of scored positions at a time.

A row is recognized by the hash of its real tokens (`learn_check.row_hash`), so no `id` column has
to survive the trainer's column pruning; its completion mask comes from the tracked rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hf_ilp.tracking.learn_check import position_chunks, row_hash

# columns of `row_statistics`: log-prob sum over scored completion tokens, scored tokens, top-1
# tokens among them, completion tokens the trainer's labels leave out
STATISTICS = ("log_prob_sum", "scored", "top1", "uncovered")


def match_rows(input_ids: np.ndarray, attention_mask: np.ndarray | None, index: dict, targets: list) -> tuple:
    """Find each row of a batch among the tracked rows.

    Args:
        input_ids: the batch's token ids, `(batch, width)`, right or left padded.
        attention_mask: its attention mask, or None (no padding).
        index: tracked rows by token hash (`row_hash` of the real tokens) -> their positions.
        targets: per tracked row, a boolean array over its tokens, True on the completion.

    Returns:
        `(completion_mask, matched, unmatched)`: the `(batch, width - 1)` mask of the completion
        tokens predicted at each position; `(batch row, tracked positions)` for each row found;
        how many non-empty rows were not found.
    """
    attn = np.ones(input_ids.shape, dtype=bool) if attention_mask is None else attention_mask.astype(bool)
    n_batch, width = input_ids.shape
    lengths = attn.sum(1)
    offsets = attn.argmax(1)  # first real token (right or left padding)
    completion_mask = np.zeros((n_batch, width - 1), dtype=bool)
    matched, unmatched = [], 0
    for b in range(n_batch):
        off, length = int(offsets[b]), int(lengths[b])
        if length == 0:
            continue
        idx = index.get(row_hash(input_ids[b, off : off + length]))
        if idx is None:
            unmatched += 1
            continue
        completion_mask[b, off : off + length - 1] = targets[idx[0]][1:]
        matched.append((b, idx))
    return completion_mask, matched, unmatched


@torch.no_grad()
def row_statistics(output, input_ids: torch.Tensor, completion_mask: torch.Tensor, labels=None, *, fused: bool) -> np.ndarray:
    """Per batch row, the `STATISTICS` over its completion tokens, as a `(batch, 4)` float64 array.

    Args:
        output: the model's output: with `fused=True` TRL's fused-head output (`log_probs`,
            `is_top1`, `label_mask`, each `(batch, width - 1)`), else one with `logits`.
        input_ids: the batch's token ids.
        completion_mask: `(batch, width - 1)` bool, the positions that predict a completion token.
        labels: the trainer's labels (needed without the fused head: which tokens the loss covers).
        fused: whether `output` is the fused head's.
    """
    if fused and torch.equal(output.label_mask.detach().bool(), completion_mask):
        # the usual SFT case: the loss covers exactly the completions and the fused head's
        # per-token outputs are zero elsewhere, so row sums are the statistics
        n_batch = input_ids.shape[0]
        return torch.stack(
            [
                output.log_probs.detach().double().sum(1),
                output.label_mask.detach().double().sum(1),
                output.is_top1.detach().double().sum(1),
                torch.zeros(n_batch, dtype=torch.float64, device=input_ids.device),
            ],
            dim=1,
        ).cpu().numpy()
    if fused:
        lp = output.log_probs.detach()[completion_mask].double()
        top1 = output.is_top1.detach()[completion_mask].bool()
        covered = output.label_mask.detach()[completion_mask].bool()
    else:
        if labels is None:
            raise ValueError("row_statistics: without the fused head, the trainer's `labels` are needed")
        lp, top1 = _gold_log_probs(output.logits.detach(), input_ids, completion_mask)
        covered = (labels[:, 1:] != -100)[completion_mask]
    return _row_sums(completion_mask, lp, top1, covered)


def _gold_log_probs(logits, input_ids, completion_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob and top-1 flag of each masked position's next token, a chunk of positions at a time
    (no float32 copy of all the logits)."""
    rows, cols = completion_mask.nonzero(as_tuple=True)
    gold = input_ids[:, 1:][completion_mask]
    lp = torch.empty(len(gold), dtype=torch.float64, device=completion_mask.device)
    top1 = torch.empty(len(gold), dtype=torch.bool, device=completion_mask.device)
    for sl in position_chunks(1, len(gold), logits.shape[-1]):
        chunk = logits[rows[sl], cols[sl]].float()
        lp[sl] = torch.log_softmax(chunk, -1).gather(-1, gold[sl, None]).squeeze(-1).double()
        top1[sl] = chunk.argmax(-1) == gold[sl]
    return lp, top1


def _row_sums(completion_mask, lp, top1, covered) -> np.ndarray:
    n_batch = completion_mask.shape[0]
    row_of = torch.arange(n_batch, device=completion_mask.device)[:, None].expand_as(completion_mask)[completion_mask]
    zeros = torch.zeros(n_batch, dtype=torch.float64, device=completion_mask.device)
    return torch.stack(
        [
            zeros.index_add(0, row_of, lp * covered),
            zeros.index_add(0, row_of, covered.double()),
            zeros.index_add(0, row_of, (top1 & covered).double()),
            zeros.index_add(0, row_of, (~covered).double()),
        ],
        dim=1,
    ).cpu().numpy()


def observation(stats) -> tuple[float, float, bool, float] | None:
    """One row's `(nll, token accuracy, exact, p_gold)` from its `row_statistics`, or None when
    none of its tokens was scored. `exact` needs every completion token top-1 and covered."""
    lp_sum, count, n_top1, n_uncovered = (float(v) for v in stats)
    if count == 0:
        return None
    return -lp_sum / count, n_top1 / count, bool(n_top1 == count and n_uncovered == 0), math.exp(lp_sum)
