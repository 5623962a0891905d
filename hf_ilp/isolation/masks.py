"""Compact isolation masks, top-p selection and update masking shared by EPI and CPI-FT.

Parameter isolation protects a small share of a model's entries from being changed by further
training. Three pieces, each usable alone:

``CompactMask``
    A boolean mask over one tensor, stored compactly: packed bits (1 bit per entry, uint8) or,
    when the selected share is below 1/32, sorted int32 flat indices (4 bytes per selected entry),
    whichever is smaller. The full bool tensor only ever exists transiently, one tensor at a time.
    ``CompactMask.from_bool(t)``, ``CompactMask.from_indices(idx, shape)``, ``.to_bool()``,
    ``.indices()`` (int64 flat indices), ``.count``, ``.share``, ``.nbytes``, ``.shape``.

``select_top_p(scores, p, scope="global") -> dict[str, CompactMask]``
    Marks the top share ``p`` in (0, 1) of entries by score. ``scope="global"`` ranks all entries
    of all tensors together (the k-th largest score is bracketed from a strided sample and
    resolved by exact counts, so no concatenated copy of all scores is made; entries tied with the
    threshold are all selected);
    ``scope="per_layer"`` selects exactly ``round(p * numel)`` entries in every tensor.
    ``scores`` maps parameter names to score tensors shaped like the parameters.

``UpdateMasker(params, optimizer=None, zero_state=("exp_avg",))``
    Makes masked entries not move AT ALL under any torch optimizer, AdamW with weight decay
    included: ``snapshot()`` before ``optimizer.step()`` copies just the masked entries (a sparse
    snapshot: ``share * itemsize`` bytes per entry), ``restore()`` after the step writes them back
    bit for bit and zeroes the named optimizer-state entries (``exp_avg``: the momentum that
    would otherwise kick an entry when it is released). ``exp_avg_sq`` is kept by default
    because it is EPI's importance estimate (an EMA of squared gradients) and only scales
    updates; pass ``zero_state=("exp_avg", "exp_avg_sq")`` to clear both. Zeroing the gradient
    instead would not freeze an entry: Adam's momentum and decoupled weight decay still move it.
    ``set_masks(masks)`` swaps masks between steps (released entries train again); it caches the
    masks' int64 flat indices (8 bytes per masked entry) so that each step costs one gather and one
    scatter per masked tensor. ``nbytes`` is what the masker keeps between steps.

    In a ``TrainerCallback``: ``on_pre_optimizer_step -> masker.snapshot()`` and
    ``on_optimizer_step -> masker.restore()`` (both events bracket ``optimizer.step()`` in
    ``transformers.Trainer``). In a trainer subclass or a plain loop, call them around the step::

        masker = UpdateMasker(dict(model.named_parameters()), optimizer)
        masker.set_masks(select_top_p({n: p.abs() for n, p in model.named_parameters()}, 0.01))
        loss.backward(); masker.snapshot(); optimizer.step(); masker.restore()

Helpers: ``mask_churn(old, new)`` (share of the newly isolated entries that were not isolated
before), ``save_masks(masks, path)`` / ``load_masks(path)`` (one safetensors file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import torch

__all__ = [
    "CompactMask",
    "UpdateMasker",
    "load_masks",
    "mask_churn",
    "save_masks",
    "select_top_p",
]

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)
_BAND_LIMIT = 1 << 16  # global top-p: resolve the threshold exactly once this few entries remain
_SAMPLE = 1 << 16  # global top-p: entries sampled to bracket the threshold


def _pack_bits(flat: torch.Tensor) -> torch.Tensor:
    x = flat.to(torch.uint8)
    pad = (-x.numel()) % 8
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=x.device)
    return (x.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(1) >> shifts) & 1).view(-1)[:numel].bool()


class CompactMask:
    """A boolean mask over one tensor, stored as packed bits or int32 indices (the smaller)."""

    __slots__ = ("shape", "kind", "data", "count")

    def __init__(self, shape, kind: str, data: torch.Tensor, count: int):
        if kind not in ("bits", "indices"):
            raise ValueError(f"CompactMask kind must be 'bits' or 'indices', got {kind!r}")
        self.shape = torch.Size(shape)
        self.kind = kind
        self.data = data
        self.count = int(count)

    @classmethod
    def from_bool(cls, mask: torch.Tensor) -> CompactMask:
        """Compress a bool tensor (kept only as long as the caller keeps it)."""
        flat = mask.reshape(-1).bool()
        count = int(flat.sum())
        if count * 32 < flat.numel():
            idx = flat.nonzero().squeeze(1).to(torch.int32)
            return cls(mask.shape, "indices", idx, count)
        return cls(mask.shape, "bits", _pack_bits(flat), count)

    @classmethod
    def from_indices(cls, indices: torch.Tensor, shape) -> CompactMask:
        """Build from flat indices into a tensor of ``shape`` (duplicates are merged)."""
        shape = torch.Size(shape)
        numel = shape.numel()
        idx = torch.unique(indices.reshape(-1).long())
        if idx.numel() and (idx[0] < 0 or idx[-1] >= numel):
            raise IndexError(f"mask indices must lie in [0, {numel}) for shape {tuple(shape)}")
        if idx.numel() * 32 < numel:
            return cls(shape, "indices", idx.to(torch.int32), idx.numel())
        flat = torch.zeros(numel, dtype=torch.bool, device=idx.device)
        flat[idx] = True
        return cls(shape, "bits", _pack_bits(flat), idx.numel())

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def share(self) -> float:
        return self.count / max(self.numel, 1)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def to_bool(self) -> torch.Tensor:
        """The full bool tensor (transient: do not keep it around)."""
        if self.kind == "bits":
            return _unpack_bits(self.data, self.numel).view(self.shape)
        flat = torch.zeros(self.numel, dtype=torch.bool, device=self.data.device)
        flat[self.data.long()] = True
        return flat.view(self.shape)

    def indices(self) -> torch.Tensor:
        """Sorted int64 flat indices of the selected entries."""
        if self.kind == "indices":
            return self.data.long()
        return _unpack_bits(self.data, self.numel).nonzero().squeeze(1)

    def to(self, device) -> CompactMask:
        return CompactMask(self.shape, self.kind, self.data.to(device), self.count)

    def __eq__(self, other) -> bool:
        if not isinstance(other, CompactMask):
            return NotImplemented
        return (
            self.shape == other.shape
            and self.count == other.count
            and torch.equal(self.indices().cpu(), other.indices().cpu())
        )

    def __repr__(self) -> str:
        return f"CompactMask(shape={tuple(self.shape)}, count={self.count}, kind={self.kind!r}, nbytes={self.nbytes})"


def _check_p(p: float) -> None:
    if not (isinstance(p, (int, float)) and 0.0 < p < 1.0):
        raise ValueError(f"isolation share p must lie strictly between 0 and 1, got {p!r}")


def _count_at_least(scores: Sequence[torch.Tensor], t: float) -> int:
    return sum(int((s >= t).sum()) for s in scores)


def _kth_largest(scores: Sequence[torch.Tensor], k: int) -> float:
    """The k-th largest value over several tensors without concatenating them.

    A strided sample of about 64k entries brackets the answer (checked by exact counts), the
    bracket is narrowed by bisection while it holds many entries, and the few entries left in it
    are ranked exactly: typically three passes over the scores.
    """
    total = sum(s.numel() for s in scores)
    lo = min(float(s.min()) for s in scores)
    top = max(float(s.max()) for s in scores)
    hi = float(torch.nextafter(torch.tensor(top, dtype=torch.float64), torch.tensor(float("inf"), dtype=torch.float64)))
    stride = max(1, total // _SAMPLE)
    sample = torch.cat([s[::stride].float().cpu() for s in scores]).sort().values
    n = sample.numel()
    q = 1.0 - k / total
    margin = 4.0 * (q * (1.0 - q) / n) ** 0.5 + 2.0 / n
    guess_lo = float(sample[max(int((q - margin) * n), 0)])
    guess_hi = float(sample[min(int((q + margin) * n) + 1, n - 1)])
    if lo < guess_lo and _count_at_least(scores, guess_lo) >= k:
        lo = guess_lo
    if guess_hi < hi and _count_at_least(scores, guess_hi) < k:
        hi = guess_hi
    # invariant: count(>= lo) >= k > count(>= hi)
    while True:
        band = sum(int(((s >= lo) & (s < hi)).sum()) for s in scores)
        mid = (lo + hi) / 2
        if band <= _BAND_LIMIT or mid <= lo or mid >= hi:
            break
        if _count_at_least(scores, mid) >= k:
            lo = mid
        else:
            hi = mid
    above = _count_at_least(scores, hi)
    vals = torch.cat([s[(s >= lo) & (s < hi)].double().cpu() for s in scores])
    return float(torch.topk(vals, k - above).values[-1])


def select_top_p(scores: Mapping[str, torch.Tensor], p: float, scope: str = "global") -> dict[str, CompactMask]:
    """Masks of the top share ``p`` of entries by score, globally or per tensor (``per_layer``)."""
    _check_p(p)
    if scope not in ("global", "per_layer"):
        raise ValueError(f"scope must be 'global' or 'per_layer', got {scope!r}")
    if not scores:
        raise ValueError("select_top_p needs at least one score tensor, got none")
    with torch.no_grad():
        flat = {n: s.detach().reshape(-1).float() for n, s in scores.items()}
        if scope == "per_layer":
            out = {}
            for n, s in flat.items():
                k = round(p * s.numel())
                idx = torch.topk(s, k, sorted=False).indices if k else s.new_zeros(0, dtype=torch.long)
                out[n] = CompactMask.from_indices(idx, scores[n].shape)
            return out
        total = sum(s.numel() for s in flat.values())
        k = round(p * total)
        if k == 0:
            return {n: CompactMask.from_indices(s.new_zeros(0, dtype=torch.long), scores[n].shape) for n, s in flat.items()}
        t = _kth_largest(list(flat.values()), k)
        return {n: CompactMask.from_bool((s >= t).view(scores[n].shape)) for n, s in flat.items()}


def mask_churn(old: Mapping[str, CompactMask], new: Mapping[str, CompactMask]) -> float:
    """Share of the entries isolated in ``new`` that were not isolated in ``old`` (0 = no change)."""
    added = 0
    total = 0
    for name, m in new.items():
        total += m.count
        prev = old.get(name)
        if prev is None:
            added += m.count
        elif m.count:
            added += int((m.to_bool() & ~prev.to(m.data.device).to_bool()).sum())
    return added / total if total else 0.0


class UpdateMasker:
    """Keeps masked entries bit-for-bit unchanged across optimizer steps (see module docstring)."""

    def __init__(
        self,
        params: Mapping[str, torch.nn.Parameter],
        optimizer: torch.optim.Optimizer | None = None,
        zero_state: Sequence[str] = ("exp_avg",),
    ):
        self.params = dict(params)
        self.optimizer = optimizer
        self.zero_state = tuple(zero_state)
        self.masks: dict[str, CompactMask] = {}
        self._index: dict[str, torch.Tensor] = {}
        self._snapshot: dict[str, torch.Tensor] = {}

    def set_masks(self, masks: Mapping[str, CompactMask]) -> None:
        """Use ``masks`` from the next step on; names must be keys of ``params``, shapes must match."""
        for name, m in masks.items():
            p = self.params.get(name)
            if p is None:
                raise KeyError(f"mask for {name!r} but no such parameter; known: {sorted(self.params)[:5]}...")
            if m.shape != p.shape:
                raise ValueError(f"mask for {name!r} has shape {tuple(m.shape)}, parameter has {tuple(p.shape)}")
        self.masks = {n: m.to(self.params[n].device) for n, m in masks.items() if m.count}
        self._index = {n: m.indices() for n, m in self.masks.items()}
        self._snapshot = {}

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the masked entries (call right before ``optimizer.step()``)."""
        self._snapshot = {n: self.params[n].detach().view(-1)[idx] for n, idx in self._index.items()}

    @torch.no_grad()
    def restore(self) -> None:
        """Write the snapshot back and zero the masked optimizer state (right after the step)."""
        for name, vals in self._snapshot.items():
            p = self.params[name]
            idx = self._index[name]
            p.detach().view(-1).index_copy_(0, idx, vals)
            if self.optimizer is None or not self.zero_state:
                continue
            state = self.optimizer.state.get(p)
            if not state:
                continue
            for key in self.zero_state:
                buf = state.get(key)
                if torch.is_tensor(buf) and buf.shape == p.shape:
                    buf.view(-1).index_fill_(0, idx, 0)
        self._snapshot = {}

    @property
    def nbytes(self) -> int:
        """Bytes held between steps: the compact masks plus their cached int64 indices.

        During a step the snapshot adds ``itemsize`` bytes per masked entry.
        """
        return sum(m.nbytes + self._index[n].numel() * 8 for n, m in self.masks.items())


def save_masks(masks: Mapping[str, CompactMask], path) -> None:
    """Write masks to one safetensors file (compact data as tensors; shape/kind as metadata)."""
    from safetensors.torch import save_file

    tensors = {n: m.data.detach().cpu().contiguous() for n, m in masks.items()}
    meta = {n: json.dumps({"shape": list(m.shape), "kind": m.kind, "count": m.count}) for n, m in masks.items()}
    save_file(tensors, str(path), metadata=meta)


def load_masks(path, device="cpu") -> dict[str, CompactMask]:
    """Read masks written by ``save_masks``."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = f.metadata() or {}
        for name in f.keys():
            info = json.loads(meta[name])
            out[name] = CompactMask(info["shape"], info["kind"], f.get_tensor(name), info["count"])
    return out
