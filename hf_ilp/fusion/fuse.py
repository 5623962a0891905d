"""CPI-FT fusion of saved models, streamed tensor by tensor.

Step 4 of CPI-FT ("Not All Parameters Are Created Equal: Smart Isolation Boosts Fine-Tuning
Performance", arXiv 2508.21741).

`fuse_checkpoints(base, {task: path, ...}, output_dir)` builds one model from a backbone (the
base model) and N task models:

1. Non-core entries: per-tensor SLERP from the backbone towards every task model, folded in the
   given task order with factors chosen so that the backbone keeps weight (1 - t) and each task
   t / N: acc = base; acc = slerp(acc, task_k, t_k) with t_k = (t/N) / ((1 - t) + k * t/N),
   k = 1..N. For one task this is exactly slerp(base, task, t); when every pair is nearly
   colinear (the lerp fallback) it is exactly (1 - t) * base + (t/N) * sum_k task_k, in any
   order. With real SLERP steps a different task order changes the result slightly (chained
   SLERP is not associative); the order is recorded in the card.
2. Core entries (`core_regions`, top p = 1% of |task - base|): each task's entries are
   transplanted from its own model, overwriting the SLERP value. An entry in the cores of
   several tasks takes the value of the task whose |task - base| is largest there (the task
   that needed that entry most); exact ties go to the earlier task.

The SLERP angle of a tensor is computed from the whole tensor (core entries included): the
core share is small, and one angle per tensor is what per-tensor SLERP means.

Memory: the mapped base and task tensors of the current tensor (`Checkpoint.view`, released
after it), one float accumulator of a tensor's size only when several tasks are folded, two
block buffers, the gathered core values of the current tensor (16 bytes per core entry) and
the cores (`CompactMask`, 4 bytes per core entry). Every input is checked before anything is
written (architecture, names, shapes, dtypes, shards, t, task names), and the output folder
appears only when complete (`hf_ilp.files.atomic_dir`). It holds
the shards in the base's layout, the index, the base's config/tokenizer files, the cores of
every task (`cpi_ft_cores/<task>.safetensors`), `cpi_ft.json` and a model card.
"""

import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from hf_ilp.files import atomic_dir, write_json_atomic
from hf_ilp.fusion.checkpoint import Checkpoint, ShardWriter
from hf_ilp.fusion.core import check_share, is_float, check_compatible, core_regions, group_tasks
from hf_ilp.fusion.merge_utils import block_len, block_ranges, check_t, combine_block, slerp_coefficients, work_dtype
from hf_ilp.isolation.masks import CompactMask, load_masks, save_masks

_TASK_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_INDEX = "model.safetensors.index.json"


@dataclass
class FusionResult:
    """What `fuse_checkpoints` did: tasks in fusion order, groups, overlaps, settings, output."""

    output_dir: str
    base: str
    tasks: dict = field(default_factory=dict)  # task -> source path
    groups: list = field(default_factory=list)
    overlaps: dict = field(default_factory=dict)
    core_entries: dict = field(default_factory=dict)  # task -> number of core entries
    shared_core_entries: int = 0  # entries in the cores of more than one task
    t: float = 0.5
    core_share: float = 0.01
    tau: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


def _schedule(t: float, n: int) -> list[float]:
    """Factors of the folded SLERP: backbone weight 1 - t, each of the n tasks t / n."""
    w = t / n
    return [w / ((1.0 - t) + k * w) for k in range(1, n + 1)]


def _buffer(scratch: dict, key: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat buffer of `numel` elements, reused across tensors (grown when a larger one comes)."""
    buf = scratch.get(key)
    if buf is None or buf.dtype != dtype or buf.numel() < numel:
        buf = scratch[key] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def _winners(picked) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sorted core indices of one tensor, their transplanted values, and how many were contested.

    `picked` holds (indices, values, |delta|) per task with core entries here, in task order; an
    index claimed by several tasks goes to the largest |delta|, exact ties to the earlier task.
    """
    if len(picked) == 1:
        return picked[0][0], picked[0][1], 0
    i_all = torch.cat([p[0] for p in picked])
    v_all = torch.cat([p[1] for p in picked])
    d_all = torch.cat([p[2] for p in picked])
    # largest |delta| first, then stable by index: the first row of each index wins
    order = torch.sort(d_all, descending=True, stable=True).indices
    order = order[torch.sort(i_all[order], stable=True).indices]
    i_sorted = i_all[order]
    first = torch.ones_like(i_sorted, dtype=torch.bool)
    first[1:] = i_sorted[1:] != i_sorted[:-1]
    return i_sorted[first], v_all[order][first], int(i_sorted.numel() - first.sum())


@torch.no_grad()
def _fuse_tensor(name, base, tasks, factors, cores, writer, scratch) -> int:
    """Write the fused tensor `name` to `writer`; return how many of its entries several tasks
    claimed as core.

    Per task: one blocked pass for the SLERP coefficients, then (all but the last task) one
    blocked pass folding it into a float accumulator. The last task's pass emits the output block
    by block, with the core entries patched in, straight to the shard: the fused tensor never
    exists whole, and with one task no tensor-sized buffer is needed at all.
    """
    e = base.entries[name]
    cur = base.view(name).reshape(-1)
    if not is_float(e):
        writer.write(name, cur.reshape(e.shape))
        return 0
    dtype, n = cur.dtype, cur.numel()
    work = work_dtype(dtype)
    idx = []
    for task in tasks:
        m = cores[task].get(name)
        idx.append(m.indices() if m is not None and m.count else None)
    contested = sum(i is not None for i in idx) > 1  # only then are the base values needed
    before = [cur[i].to(work) if contested and i is not None else None for i in idx]
    picked = []  # (indices, values, |delta|) per task with core entries here
    for k, (src, factor, i, b0) in enumerate(zip(tasks.values(), factors, idx, before)):
        y = src.view(name).reshape(-1)
        ca, cb = slerp_coefficients(cur, y, factor, work=work)
        if i is not None:  # gathered once the pass above has mapped y's pages in order
            v = y[i].to(work)
            picked.append((i, v, (v - b0).abs() if contested else None))
        if k == len(tasks) - 1:
            break
        acc = _buffer(scratch, "acc", n, work)
        for start, stop in block_ranges(n):
            combine_block(acc[start:stop], cur[start:stop], y[start:stop], ca, cb)
        cur = acc  # the base's (or the previous task's) mapping is released here
    core_idx, core_val, shared = _winners(picked) if picked else (torch.empty(0, dtype=torch.long), None, 0)
    blocks = block_ranges(n)
    bounds = torch.searchsorted(core_idx, torch.tensor([start for start, _ in blocks] + [n])).tolist()
    local = core_idx - torch.repeat_interleave(torch.tensor([start for start, _ in blocks]), torch.tensor(bounds).diff())
    out = _buffer(scratch, "out", block_len(n), work)
    cast = _buffer(scratch, "cast", block_len(n), dtype) if dtype != work else None  # e.g. bfloat16 output
    for j, (start, stop) in enumerate(blocks):
        o = combine_block(out[: stop - start], cur[start:stop], y[start:stop], ca, cb)
        lo, hi = bounds[j], bounds[j + 1]
        if hi > lo:
            o[local[lo:hi]] = core_val[lo:hi]
        writer.write_part(o if cast is None else cast[: stop - start].copy_(o))
    writer.end_tensor(name)
    return shared


def _check_tasks(tasks: Mapping) -> None:
    if not tasks:
        raise ValueError("fusion needs at least one task model; pass {task_name: model_folder}")
    for name in tasks:
        if not _TASK_NAME.match(str(name)):
            raise ValueError(f"task name {name!r} must use only letters, digits, '.', '_' and '-' (it names files)")


def _card(result: FusionResult, base_config: dict) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        library_name="transformers",
        tags=["hf_ilp", "cpi-ft", "merge", "slerp"],
        hf_ilp={"cpi_ft": {k: v for k, v in result.to_dict().items() if k != "output_dir"}},
    )
    rows = "\n".join(
        f"| {i + 1} | {task} | `{path}` | {result.core_entries[task]} |"
        for i, (task, path) in enumerate(result.tasks.items())
    )
    groups = "; ".join("{" + ", ".join(g) + "}" for g in result.groups)
    overlaps = ", ".join(f"{k.replace('|', ' / ')}: {v:.3f}" for k, v in result.overlaps.items()) or "(one task)"
    arch = ", ".join(base_config.get("architectures") or [base_config.get("model_type", "unknown")])
    return f"""---
{data.to_yaml()}
---

# CPI-FT fused model

Made with `hf_ilp` (CPI-FT fusion, "Not All Parameters Are Created Equal: Smart Isolation Boosts
Fine-Tuning Performance", arXiv 2508.21741). Architecture: {arch}.

- Backbone: `{result.base}`
- Non-core entries: per-tensor SLERP from the backbone towards the task models in the order
  below, backbone weight {1 - result.t:.3f}, each task {result.t / len(result.tasks):.3f}
  (t = {result.t}).
- Core entries: the top {100 * result.core_share:g}% of |task - backbone| of each task,
  transplanted from that task's model; {result.shared_core_entries} entries were claimed by
  several tasks and took the value of the task that changed them most.
- Task groups (Jaccard overlap of cores >= {result.tau}): {groups}. Overlaps: {overlaps}.

| order | task | model | core entries |
| --- | --- | --- | --- |
{rows}

The cores are in `cpi_ft_cores/<task>.safetensors` (`hf_ilp.isolation.masks.load_masks`).
"""


def load_cores(model_dir) -> dict[str, dict[str, CompactMask]]:
    """The per-task cores saved beside a fused model, in fusion order."""
    model_dir = Path(model_dir)
    meta = model_dir / "cpi_ft.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{model_dir} has no cpi_ft.json; is it the output of fuse_checkpoints?")
    import json

    tasks = json.loads(meta.read_text())["tasks"]
    return {t: load_masks(model_dir / "cpi_ft_cores" / f"{t}.safetensors") for t in tasks}


def fuse_checkpoints(
    base,
    tasks: Mapping[str, object],
    output_dir,
    *,
    t: float = 0.5,
    core_share: float = 0.01,
    tau: float = 0.1,
    cores: Mapping[str, Mapping[str, CompactMask]] | None = None,
    overwrite: bool = True,
) -> FusionResult:
    """Fuse task models into the base by CPI-FT (core transplant + SLERP); see the module docstring.

    Args:
        base: the backbone and reference for deltas: a `save_pretrained` folder (safetensors).
        tasks: `{task_name: folder}` in fusion order (the probe fine-tune of each task).
        output_dir: where the fused model goes (written elsewhere first, moved in when complete).
        t: weight of the task models against the backbone for non-core entries, in [0, 1].
        core_share: share of entries in each task's core (p = 1% is 0.01).
        tau: Jaccard overlap at which two tasks are grouped (reported; grouping does not change
            the fused weights, it orders the pipelined SFT that follows).
        cores: precomputed `{task: core_regions(...)}`; computed here when omitted.
    """
    t = check_t(t)
    core_share = check_share(core_share)
    _check_tasks(tasks)
    base_ck = Checkpoint(base)
    srcs = {name: Checkpoint(path) for name, path in tasks.items()}
    try:
        check_compatible(base_ck, srcs)
        if cores is None:
            cores = {name: core_regions(base_ck, src, core_share) for name, src in srcs.items()}
        else:
            lacking = [name for name in srcs if name not in cores]
            if lacking:
                raise ValueError(f"cores given for tasks {sorted(cores)[:5]} but not for {lacking}; pass {{task: cores}} for every task or none")
            cores = {name: cores[name] for name in srcs}
            for task, masks in cores.items():
                for n, m in masks.items():
                    e = base_ck.entries.get(n)
                    if e is None or tuple(m.shape) != e.shape:
                        raise ValueError(f"cores of task {task!r}: mask {n!r} {tuple(m.shape)} fits no tensor of the base")
        groups, overlaps = group_tasks(cores, tau)
        result = FusionResult(
            output_dir=str(output_dir),
            base=str(base),
            tasks={k: str(v) for k, v in tasks.items()},
            groups=groups,
            overlaps=overlaps,
            core_entries={k: sum(m.count for m in c.values()) for k, c in cores.items()},
            t=t,
            core_share=core_share,
            tau=tau,
        )
        factors = _schedule(t, len(srcs))
        scratch = {}  # buffers reused across tensors: two blocks, plus one tensor when fusing several tasks
        with atomic_dir(output_dir, overwrite=overwrite) as tmp:
            for shard in base_ck.shards:
                names = [n for n, e in base_ck.entries.items() if e.shard == shard]
                writer = ShardWriter(
                    tmp / shard,
                    [(n, base_ck.entries[n].dtype, base_ck.entries[n].shape, base_ck.entries[n].end - base_ck.entries[n].begin) for n in names],
                )
                try:
                    for n in names:
                        result.shared_core_entries += _fuse_tensor(n, base_ck, srcs, factors, cores, writer, scratch)
                except BaseException:
                    writer.abort()
                    raise
                writer.close()
            for f in Path(base).iterdir():
                if f.is_file() and f.name not in base_ck.shards and f.name not in (_INDEX, "README.md"):
                    shutil.copy2(f, tmp / f.name)
            if base_ck.index is not None:
                write_json_atomic(tmp / _INDEX, base_ck.index)
            (tmp / "cpi_ft_cores").mkdir()
            for task, masks in cores.items():
                save_masks(masks, tmp / "cpi_ft_cores" / f"{task}.safetensors")
            write_json_atomic(tmp / "cpi_ft.json", result.to_dict())
            (tmp / "README.md").write_text(_card(result, base_ck.config))
        return result
    finally:
        base_ck.close()
        for s in srcs.values():
            s.close()


__all__ = ["FusionResult", "fuse_checkpoints", "load_cores"]
