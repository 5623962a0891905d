"""Importance of each trainable entry, normalized within its tensor (EPI's online estimate).

`importance_scores(params, optimizer, kind, ema=None)` returns one score tensor per parameter:
- ``grad_sq``: EMA of squared gradients: the optimizer's ``exp_avg_sq`` (AdamW keeps exactly this,
  with factor beta2) or, when given, the caller's own EMA tensors ``ema``;
- ``grad_weight``: |g * w| with the current gradient (first-order estimate of the loss change if
  the entry were zeroed);
- ``magnitude``: |w|.
Each tensor's scores are divided by their mean, so tensors with different gradient scales (an
embedding, a norm, a LoRA factor) compete on equal terms in a global top-p.
"""

import torch


def _normalized(score: torch.Tensor) -> torch.Tensor:
    score = score.float()
    return score / score.mean().clamp_min(torch.finfo(torch.float32).tiny)


@torch.no_grad()
def importance_scores(params, optimizer, kind: str, ema=None) -> dict[str, torch.Tensor]:
    """Per-tensor-normalized importance for every parameter in `params` (name -> Parameter)."""
    out = {}
    for name, p in params.items():
        if kind == "magnitude":
            raw = p.detach().abs()
        elif kind == "grad_weight":
            if p.grad is None:
                raise RuntimeError(f"importance 'grad_weight' needs gradients, but {name!r} has none at this step")
            raw = (p.grad.detach() * p.detach()).abs()
        elif kind == "grad_sq":
            if ema is not None:
                raw = ema[name]
            else:
                raw = optimizer.state.get(p, {}).get("exp_avg_sq")
                if not torch.is_tensor(raw) or raw.shape != p.shape:
                    raise TypeError(
                        f"importance 'grad_sq' reads the optimizer's exp_avg_sq, but {type(optimizer).__name__} keeps "
                        f"none for {name!r}; use an Adam-family optimizer or set isolation_ema_beta to keep an own EMA"
                    )
        else:
            raise ValueError(f"unknown importance kind {kind!r}; use 'grad_sq', 'grad_weight' or 'magnitude'")
        out[name] = _normalized(raw)
    return out
