"""Core regions and task grouping of CPI-FT (METHODS.md section 2, steps 2-3).

- `core_regions(base, task, share)`: the task's core region C = the global top `share` (p = 1%
  by default) of entries by |theta_task - theta_base| over all floating-point tensors. Computed
  in one streaming pass: each tensor pair is read, its |delta| is compared with the running
  k-th largest value, and only candidates (at most k values + k indices) are kept, so memory is
  two tensors plus 12 bytes per core entry whatever the model size. Exactly k = round(share * N)
  entries are chosen (ties at the k-th value are broken by `torch.topk`); entries that did not
  change at all are never core, so a task that moved fewer than k entries gets a smaller core.
- `core_overlap(a, b)`: Jaccard |A n B| / |A u B| of two core regions (0 when both are empty).
- `group_tasks(cores, tau)`: tasks linked when their overlap >= tau (0.1); groups are the
  connected components, ordered by their first task in the given task order (the paper leaves
  the order open), tasks inside a group in the given order.

`base` and `task` may be saved model folders (read tensor by tensor) or in-memory models /
state dicts. Cores are `dict[name, CompactMask]` (hf_ilp.isolation.masks), the same masks the
CPI-FT trainer freezes.
"""

from collections.abc import Mapping, Sequence

import torch

from hf_ilp.fusion._checkpoint import open_source
from hf_ilp.isolation.masks import CompactMask


def _scratch(buffers: dict, key: str, nbytes: int) -> torch.Tensor:
    """A reusable uint8 buffer of at least `nbytes` (grown when a larger tensor comes)."""
    buf = buffers.get(key)
    if buf is None or buf.numel() < nbytes:
        buf = buffers[key] = torch.empty(nbytes, dtype=torch.uint8)
    return buf


def _check_share(share: float) -> float:
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


def _is_float(entry) -> bool:
    return entry.dtype.startswith(("F", "BF"))


_SAMPLE = 1 << 16  # entries sampled to estimate a tensor's cut when it alone offers too many candidates


def _candidates(d: torch.Tensor, floor: float, k: int, gen: torch.Generator):
    """Indices of entries of `d` above `floor` that may be among the global top k.

    At most k entries of one tensor can be in the global top k, and they are its largest: any cut
    that leaves at least min(k, #above floor) entries keeps them all. A quantile of a random
    sample gives such a cut cheaply; if it leaves too few, the exact fallback is `floor`.
    """
    keep = d > floor
    if int(keep.sum()) > 2 * k:
        sample = d[torch.randint(d.numel(), (_SAMPLE,), generator=gen)]
        cut = float(torch.quantile(sample, 1.0 - 1.25 * k / d.numel()))
        if cut > floor:
            tighter = d > cut
            if int(tighter.sum()) >= k:
                keep = tighter
    return keep.nonzero().squeeze(1)


@torch.no_grad()
def core_regions(base, task, share: float = 0.01) -> dict[str, CompactMask]:
    """Core region of `task`: top `share` of entries by |task - base|, globally over all tensors."""
    share = _check_share(share)
    base, task = open_source(base), open_source(task)
    check_compatible(base, {"task": task})
    names = [n for n, e in base.entries.items() if _is_float(e)]
    total = sum(base.entries[n].numel for n in names)
    k = round(share * total)
    gen = torch.Generator().manual_seed(0)
    buffers = {}  # read scratch reused across tensors (no fresh pages per tensor)
    vals, idx = [torch.empty(0)], [torch.empty(0, dtype=torch.long)]
    held, floor = 0, 0.0  # floor: a lower bound of the global k-th largest |delta| (0: changed at all)
    offsets, offset = {}, 0
    for name in names:
        offsets[name] = offset
        if k:
            nbytes = base.entries[name].end - base.entries[name].begin
            d = task.read(name, out=_scratch(buffers, "task", nbytes)).reshape(-1).float()
            d.sub_(base.read(name, out=_scratch(buffers, "base", nbytes)).reshape(-1).float()).abs_()
            i = _candidates(d, floor, k, gen)
            vals.append(d[i])
            idx.append(i + offset)
            held += i.numel()
            del d
            if held > 2 * k:  # prune to the k largest so far; their minimum is the new floor
                v, j = torch.cat(vals), torch.cat(idx)
                v, keep = torch.topk(v, k, sorted=False)
                vals, idx, held, floor = [v], [j[keep]], k, float(v.min())
        offset += base.entries[name].numel
    v, j = torch.cat(vals), torch.cat(idx)
    if v.numel() > k:
        j = j[torch.topk(v, k, sorted=False).indices]
    j, _ = torch.sort(j)
    out = {}
    for name in names:
        lo, n = offsets[name], base.entries[name].numel
        a, b = torch.searchsorted(j, torch.tensor([lo, lo + n])).tolist()
        out[name] = CompactMask.from_indices(j[a:b] - lo, base.entries[name].shape)
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
