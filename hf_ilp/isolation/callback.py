"""Evolving Parameter Isolation (EPI) as a `TrainerCallback`, and its static baseline.

Paper: "Parameter Importance is Not Static: Evolving Parameter Isolation for SFT" (arXiv 2604.14010).
Every K optimizer steps the callback ranks trainable entries by an online importance estimate
(EMA of squared gradients, normalized within each tensor), isolates the top share p, and from
then on those entries do not move at all (restored bit for bit after each optimizer step, their
momentum zeroed: `UpdateMasker`). Entries that stop being important are released and train again.
The static baseline (`isolation="static"`) computes the mask once, at step K, and keeps it.
"""

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import torch
from transformers import TrainerCallback

from hf_ilp.isolation.config import IsolationConfig
from hf_ilp.isolation.importance import importance_scores
from hf_ilp.isolation.masks import CompactMask, UpdateMasker, load_masks, mask_churn, save_masks, select_top_p

MASKS_FILE = "isolation_masks.safetensors"
STATE_FILE = "isolation_state.json"
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _layer_of(name: str) -> str:
    m = _LAYER.search(name)
    return f"layer_{m.group(1)}" if m else ("embed" if "embed" in name else "other")


class EvolvingIsolationCallback(TrainerCallback):
    """Isolates the currently most important entries and re-decides every K steps (EPI).

    Works with `Trainer` and `SFTTrainer`, full fine-tuning or PEFT (only parameters with
    `requires_grad` are ranked and isolated, so LoRA factors are), and with several processes (the
    mask of rank 0 is broadcast, so every rank freezes the same entries). Logged at each `on_log`:
    `isolation/share` (isolated share of trainable entries), `isolation/share/<layer>`,
    `isolation/churn` (mean, over mask updates since the last log, of the share of isolated entries
    that were not isolated before) and `isolation/updates`. Masks and counters are written into every
    checkpoint (`isolation_masks.safetensors`, `isolation_state.json`) and read back when training
    resumes from `output_dir/checkpoint-<step>`. One instance may serve several trainers in turn
    (sequential stages): its masks carry over to the next stage.

    Memory beyond the optimizer: the compact masks (at most 1 bit per trainable entry) plus int64
    indices and a snapshot of the isolated entries only (about 12 bytes per isolated entry); with
    the default importance the estimate is AdamW's own `exp_avg_sq`.

    Example:
        ```python
        from trl import SFTTrainer
        from hf_ilp import EvolvingIsolationCallback, IsolationConfig

        epi = EvolvingIsolationCallback(IsolationConfig(isolation_ratio=0.05, isolation_interval=20))
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, callbacks=[epi])
        trainer.train()
        epi.save(args.output_dir)  # the final masks beside the model
        ```
    """

    def __init__(self, config: IsolationConfig | None = None, **overrides):
        config = replace(config or IsolationConfig(), **overrides)
        if config.isolation == "none":
            raise ValueError("EvolvingIsolationCallback needs isolation='epi' or 'static'; for 'none' add no callback")
        self.config = config
        self.masks: dict[str, CompactMask] = {}
        self.history: list[dict] = []  # one entry per mask update: step, churn, share
        self._params: dict[str, torch.nn.Parameter] = {}
        self._masker: UpdateMasker | None = None
        self._ema: dict[str, torch.Tensor] | None = None
        self._optimizer = None
        self._state_checked = False
        self._logged_updates = 0

    # ---- events -------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not params:
            raise ValueError("EvolvingIsolationCallback: the model has no trainable parameters (none with requires_grad)")
        if optimizer is None or not hasattr(optimizer, "state") or not hasattr(optimizer, "param_groups"):
            raise TypeError(
                f"EvolvingIsolationCallback needs a torch optimizer with per-parameter state (e.g. AdamW); got "
                f"{type(optimizer).__name__}"
            )
        self._params = params
        self._optimizer = optimizer
        self._state_checked = False
        self._masker = UpdateMasker(params, optimizer)
        if self.config.isolation_importance == "grad_sq" and self.config.isolation_ema_beta is not None:
            if self._ema is None or set(self._ema) != set(params):
                self._ema = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        if state.global_step > 0:
            self._resume(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        if self.masks:
            self._masker.set_masks(self.masks)

    @torch.no_grad()
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._ema is not None:
            beta = self.config.isolation_ema_beta
            for name, p in self._params.items():
                if p.grad is not None:
                    self._ema[name].mul_(beta).addcmul_(p.grad, p.grad, value=1 - beta)
        step = state.global_step
        if step > 0 and step % self.config.isolation_interval == 0:
            if self.config.isolation == "epi" or not self.history:
                self._update_masks(step)
        self._masker.snapshot()

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, **kwargs):
        if not self._state_checked:
            if not any(self._optimizer.state.get(p) for p in self._params.values()):
                raise TypeError(
                    f"EvolvingIsolationCallback needs an optimizer that keeps per-parameter state (AdamW, Adam, ...); "
                    f"{type(self._optimizer).__name__} kept none after its first step"
                )
            self._state_checked = True
        self._masker.restore()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self.masks:
            return
        extra = {"isolation/share": self.isolated_share(), "isolation/updates": len(self.history)}
        extra.update({f"isolation/share/{k}": v for k, v in self.layer_shares().items()})
        recent = self.history[self._logged_updates :]
        if recent:
            extra["isolation/churn"] = sum(h["churn"] for h in recent) / len(recent)
            self._logged_updates = len(self.history)
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.masks:
            self.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    # ---- public helpers -----------------------------------------------------------------------

    def isolated_share(self) -> float:
        """Isolated share of all trainable entries (0 before the first mask update)."""
        total = sum(p.numel() for p in self._params.values())
        return sum(m.count for m in self.masks.values()) / total if total else 0.0

    def layer_shares(self) -> dict[str, float]:
        """Isolated share per transformer layer (`layer_<i>`), embeddings and other parameters."""
        count: dict[str, int] = {}
        numel: dict[str, int] = {}
        for name, p in self._params.items():
            key = _layer_of(name)
            numel[key] = numel.get(key, 0) + p.numel()
            m = self.masks.get(name)
            count[key] = count.get(key, 0) + (m.count if m is not None else 0)
        return {k: count[k] / numel[k] for k in sorted(numel)}

    def save(self, folder) -> None:
        """Write the masks and counters into `folder` (files replaced atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{MASKS_FILE}.tmp-{os.getpid()}"
        save_masks(self.masks, tmp)
        os.replace(tmp, folder / MASKS_FILE)
        if self._ema is not None:
            from safetensors.torch import save_file

            tmp = folder / f".isolation_ema.tmp-{os.getpid()}"
            save_file({n: t.detach().cpu().contiguous() for n, t in self._ema.items()}, str(tmp))
            os.replace(tmp, folder / "isolation_ema.safetensors")
        from hf_ilp.files import write_json_atomic

        write_json_atomic(folder / STATE_FILE, {"config": vars(self.config), "history": self.history})

    # ---- internals ----------------------------------------------------------------------------

    def _update_masks(self, step: int) -> None:
        scores = importance_scores(self._params, self._optimizer, self.config.isolation_importance, self._ema)
        new = select_top_p(scores, self.config.isolation_ratio, self.config.isolation_scope)
        del scores
        new = _same_on_every_rank(new)
        churn = mask_churn(self.masks, new)
        self.masks = new
        self._masker.set_masks(new)
        self.history.append({"step": step, "churn": churn, "share": self.isolated_share()})

    def _resume(self, checkpoint: Path) -> None:
        if not (checkpoint / MASKS_FILE).exists():
            return
        device = next(iter(self._params.values())).device
        self.masks = load_masks(checkpoint / MASKS_FILE, device=device)
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        self.history = saved["history"]
        self._logged_updates = len(self.history)
        if self._ema is not None and (checkpoint / "isolation_ema.safetensors").exists():
            from safetensors.torch import load_file

            for name, t in load_file(str(checkpoint / "isolation_ema.safetensors"), device=str(device)).items():
                self._ema[name].copy_(t)


def _same_on_every_rank(masks: dict[str, CompactMask]) -> dict[str, CompactMask]:
    """Rank 0's masks on every process (a no-op in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return masks
    if torch.distributed.get_world_size() == 1:
        return masks
    from accelerate.utils import broadcast_object_list

    device = next(iter(masks.values())).data.device
    payload = [{n: (tuple(m.shape), m.kind, m.data.cpu(), m.count) for n, m in masks.items()}]
    broadcast_object_list(payload, from_process=0)
    return {n: CompactMask(shape, kind, data.to(device), count) for n, (shape, kind, data, count) in payload[0].items()}
