"""Core regions and task grouping of CPI-FT (steps 2-3 of "Not All Parameters Are
Created Equal: Smart Isolation Boosts Fine-Tuning Performance", arXiv 2508.21741).

- `core_regions(base, task, share)`: the task's core region C = the global top `share` (p = 1%
  by default) of entries by |theta_task - theta_base| over all floating-point tensors. Computed
  in one streaming pass over memory-mapped windows (16 MiB) in 2 MiB blocks: |delta| of a
  block is compared with a floor, and only the entries above it are kept as candidates (value +
  index, 12 bytes); whenever more than 2k are held they are cut to the k largest, whose minimum
  becomes the new floor. The pass starts from a floor estimated on a 1% sample, so that about
  1.25 k candidates come in at all; if fewer than k exceeded it, the pass is repeated from 0, so
  the result is exact either way. Memory is two windows plus at most 2k + one block of
  candidates whatever the model size (no whole-tensor |delta| or bool mask).
  Exactly k = round(share * N) entries are chosen (ties at the k-th value broken arbitrarily);
  entries that did not change at all are never core, so a task that moved fewer than k entries
  gets a smaller core.
- `core_overlap(a, b)`: Jaccard |A n B| / |A u B| of two core regions (0 when both are empty).
- `group_tasks(cores, tau)`: tasks linked when their overlap >= tau (0.1); groups are the
  connected components, ordered by their first task in the given task order (the paper leaves
  the order open), tasks inside a group in the given order.

`base` and `task` may be saved model folders (mapped window by window) or in-memory models /
state dicts. Cores are `dict[name, CompactMask]` (hf_ilp.isolation.masks), the same masks the
CPI-FT trainer freezes.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from hf_ilp.fusion.checkpoint import open_source
from hf_ilp.fusion.merge_utils import block_len, block_ranges
from hf_ilp.isolation.masks import CompactMask


def check_share(share: float) -> float:
    """The core share as a float, or a ValueError that names it when it is not in (0, 1)."""
    if not (isinstance(share, (int, float)) and 0.0 < share < 1.0):
        raise ValueError(f"core share must lie strictly between 0 and 1 (p = 1% is 0.01), got {share!r}")
    return float(share)


def check_compatible(base, others: Mapping[str, object]) -> None:
    """Raise if any source differs from `base` in architecture, tensor names, shapes or dtypes."""
    arch = (base.config.get("model_type"), base.config.get("architectures"))
    for label, src in others.items():
        if src.config and base.config and (src.config.get("model_type"), src.config.get("architectures")) != arch:
            raise ValueError(
                f"model {label!r} ({src.path}) is a {src.config.get('model_type')} {src.config.get('architectures')}, "
                f"the base ({base.path}) a {arch[0]} {arch[1]}; fuse models of one architecture"
            )
        missing, extra = sorted(set(base.entries) - set(src.entries)), sorted(set(src.entries) - set(base.entries))
        if missing or extra:
            raise ValueError(f"model {label!r} ({src.path}) lacks tensors {missing[:5]} / has extra tensors {extra[:5]} compared with the base")
        for name, e in base.entries.items():
            o = src.entries[name]
            if o.shape != e.shape:
                raise ValueError(f"model {label!r}: tensor {name!r} has shape {o.shape}, the base {e.shape}; shapes must match")
            if o.dtype != e.dtype:
                raise ValueError(f"model {label!r}: tensor {name!r} is {o.dtype}, the base {e.dtype}; save both in one dtype")


def is_float(entry) -> bool:
    """Whether a safetensors header entry holds floating-point values (F16/F32/F64, BF16, F8...)."""
    return entry.dtype.startswith(("F", "BF"))


_WINDOW = 1 << 22  # entries of a tensor mapped at a time by `core_regions` (16 MiB of float32)


class _TopK:
    """Running top k of a stream of non-negative score blocks, in a buffer of 2k + one block.

    `floor` is a lower bound of the final k-th largest score: 0 at first (only positive scores
    qualify) unless an estimate is given (then the caller checks that k scores exceeded it), then
    the k-th largest of the candidates at each cut. Cutting the buffer to exactly
    its k largest (`np.argpartition`, ties at the k-th value broken arbitrarily) once more than
    2k are held keeps every entry that can still be among the k largest; about
    k * (1 + ln(N / k)) of N scores in random order ever enter the buffer.
    """

    def __init__(self, k: int, block: int, floor: float = 0.0):
        self.k, self.floor, self.held = k, floor, 0
        self.vals = np.empty(2 * k + block if k else 0, dtype=np.float32)
        self.idx = np.empty(self.vals.size, dtype=np.int64)
        self._mask = np.empty(block, dtype=bool)

    def add(self, scores: np.ndarray, offset: int) -> None:
        """Offer one block of scores whose first entry has global index `offset`."""
        if not self.k:
            return
        above = self._mask[: scores.size]
        np.greater(scores, self.floor, out=above)
        i = np.flatnonzero(above)
        h = self.held
        np.take(scores, i, out=self.vals[h : h + i.size])
        np.add(i, offset, out=self.idx[h : h + i.size])
        self.held += i.size
        if self.held > 2 * self.k:
            self._cut()

    def _cut(self) -> None:
        h, k = self.held, self.k
        keep = np.argpartition(self.vals[:h], h - k)[h - k :]
        self.vals[:k], self.idx[:k] = self.vals[keep], self.idx[keep]
        self.held, self.floor = k, float(self.vals[:k].min())

    def indices(self) -> np.ndarray:
        """Sorted global indices of the k largest scores (all positive ones when fewer)."""
        if self.held > self.k:
            self._cut()
        return np.sort(self.idx[: self.held])


def _abs_delta(task: torch.Tensor, base: torch.Tensor, scratch: torch.Tensor) -> np.ndarray:
    """|task - base| of one block in float32, written into `scratch` (two blocks of float32)."""
    n = task.numel()
    d = scratch[0, :n]
    if task.dtype == base.dtype == torch.float32:
        torch.sub(task, base, out=d)
    else:
        d.copy_(task).sub_(scratch[1, :n].copy_(base))
    return d.abs_().numpy()


_RUN = 1024  # entries per sampled run when estimating the floor (4 KiB of float32: about one page)
_SAMPLE_SHARE = 0.01  # share of each tensor's runs sampled
_MARGIN = 1.25  # the estimated floor leaves about this many times k entries above it


def _estimated_floor(base, task, names, k: int, total: int) -> float:
    """A floor that about `_MARGIN` * k entries of |task - base| exceed, from a sample.

    Each run of `_RUN` consecutive entries of every tensor is sampled with probability
    `_SAMPLE_SHARE` (about 1% of the pages are touched); 0.0 when the sample is too small to
    tell. Starting from it instead of 0, about 1.25 k entries enter the candidate buffer instead
    of k * (1 + ln(N / k)) (5.6 k at p = 1%), and no cut is needed at all.
    """
    gen = torch.Generator().manual_seed(0)
    parts = []
    for name in names:
        n = base.entries[name].numel
        full = n // _RUN
        pick = (torch.rand(full + 1, generator=gen) < _SAMPLE_SHARE).nonzero().squeeze(1)
        if not pick.numel():
            continue
        x, y = base.view(name).reshape(-1), task.view(name).reshape(-1)
        rows = pick[pick < full]
        if rows.numel():
            parts.append((y[: full * _RUN].view(full, _RUN)[rows].float() - x[: full * _RUN].view(full, _RUN)[rows].float()).abs_().reshape(-1))
        if pick[-1] == full and n > full * _RUN:
            parts.append((y[full * _RUN :].float() - x[full * _RUN :].float()).abs_())
        del x, y
    sample = torch.cat(parts) if parts else torch.empty(0)
    rank = int(_MARGIN * k * sample.numel() / total)  # the rank-th largest of the sample
    if rank < 64 or rank >= sample.numel():
        return 0.0
    return float(torch.kthvalue(sample, sample.numel() - rank + 1).values)


def _scan(base, task, names, k: int, floor: float) -> _TopK:
    """One pass over every tensor pair: the top k of |task - base| above `floor`."""
    block = block_len(max((base.entries[n].numel for n in names), default=1))
    top = _TopK(k, block, floor)
    scratch = torch.empty(2, block)
    offset = 0
    for name in names:
        n = base.entries[name].numel
        for w0 in range(0, n if k else 0, _WINDOW):  # windows mapped one at a time: RSS stays small
            x, y = base.view(name, w0, min(w0 + _WINDOW, n)), task.view(name, w0, min(w0 + _WINDOW, n))
            for start, stop in block_ranges(x.numel()):
                top.add(_abs_delta(y[start:stop], x[start:stop], scratch), offset + w0 + start)
            del x, y  # releases the mappings
        offset += n
    return top


@torch.no_grad()
def core_regions(base, task, share: float = 0.01) -> dict[str, CompactMask]:
    """Core region of `task`: top `share` of entries by |task - base|, globally over all tensors."""
    share = check_share(share)
    base, task = open_source(base), open_source(task)
    check_compatible(base, {"task": task})
    names = [n for n, e in base.entries.items() if is_float(e)]
    total = sum(base.entries[n].numel for n in names)
    k = round(share * total)
    floor = _estimated_floor(base, task, names, k, total) if k else 0.0
    top = _scan(base, task, names, k, floor)
    if floor > 0.0 and top.held < k:  # fewer than k entries above the estimate: it was too high
        top = _scan(base, task, names, k, 0.0)
    j = torch.from_numpy(top.indices())
    out, offset = {}, 0
    for name in names:
        n = base.entries[name].numel
        a, b = torch.searchsorted(j, torch.tensor([offset, offset + n])).tolist()
        out[name] = CompactMask.from_indices(j[a:b] - offset, base.entries[name].shape)
        offset += n
    return out


def core_overlap(a: Mapping[str, CompactMask], b: Mapping[str, CompactMask]) -> float:
    """Jaccard overlap |A n B| / |A u B| of two core regions."""
    inter = 0
    size_a = sum(m.count for m in a.values())
    size_b = sum(m.count for m in b.values())
    for name, ma in a.items():
        mb = b.get(name)
        if mb is not None and ma.count and mb.count:
            inter += int(torch.isin(ma.indices(), mb.indices()).sum())
    union = size_a + size_b - inter
    return inter / union if union else 0.0


def group_tasks(cores: Mapping[str, Mapping[str, CompactMask]], tau: float = 0.1):
    """Groups of tasks (connected components of overlap >= tau) and the pairwise overlaps.

    Returns `(groups, overlaps)`: `groups` a list of task-name lists, `overlaps` a dict
    `"a|b" -> Jaccard` for every pair in the given order.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"grouping threshold tau must lie in [0, 1], got {tau!r}")
    tasks: Sequence[str] = list(cores)
    parent = {t: t for t in tasks}

    def root(t):
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    overlaps = {}
    for i, a in enumerate(tasks):
        for b in tasks[i + 1 :]:
            j = core_overlap(cores[a], cores[b])
            overlaps[f"{a}|{b}"] = j
            if j >= tau:
                ra, rb = root(a), root(b)
                if ra != rb:
                    parent[max(ra, rb, key=tasks.index)] = min(ra, rb, key=tasks.index)
    groups: dict[str, list[str]] = {}
    for t in tasks:
        groups.setdefault(root(t), []).append(t)
    return list(groups.values()), overlaps
