"""under_training: more optimization, stopped by validation loss, optionally aimed at the flagged.

The paper's intervention for insufficient optimization: add epochs one at a time and stop when
the validation loss rises, val_loss(e) > val_loss(e-1) + delta (delta = 0.01). Here the extra
epochs continue from the fine-tuned model; the epoch that raised the loss is undone (the weights
of the last accepted evaluation are restored), so the result is the paper's "last good epoch".
The extra epochs are targeted (`targeted`, the default): they go over the flagged samples,
several copies each, so the rare samples get the optimization they lacked without training the
rest for whole extra epochs (which overfits it and stops the run at once). What the extra
epochs do to the rest is what the validation loss measures; where fitting the flagged samples
pulls the others away, `replay_ratio` mixes in replayed other rows (replaying rows that are
already fitted retrains them at the full learning rate, itself a source of validation drift).
`upsample` keeps the whole training set and only adds copies of the flagged rows.

    stop = ValLossRiseStopping(delta=0.01)
    trainer = SFTTrainer(model=sft_model, args=args_with_eval_each_epoch, train_dataset=upsample(train, ids, 2),
                         eval_dataset=val, callbacks=[stop])
    trainer.evaluate(); trainer.train()
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback


class ValLossRiseStopping(TrainerCallback):
    """Stop training when `eval_loss` exceeds the previous evaluation's by more than `delta`,
    and put back the trainable weights of the last accepted evaluation (`restore=True`).

    Evaluate once before training (`trainer.evaluate()`) so that the first extra epoch is judged
    too. The snapshot holds the trainable parameters only (a LoRA adapter's, under PEFT).

    Example:
        trainer = SFTTrainer(..., args=SFTConfig(eval_strategy="epoch", ...), callbacks=[ValLossRiseStopping()])
    """

    def __init__(self, delta: float = 0.01, restore: bool = True):
        self.delta, self.restore = delta, restore
        self.losses: list[float] = []
        self.stopped_at_epoch: float | None = None
        self.rejected_loss: float | None = None  # the evaluation that stopped the run
        self._snapshot = None

    @torch.no_grad()
    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            raise ValueError("ValLossRiseStopping needs 'eval_loss' in the evaluation metrics; give an eval_dataset")
        if self.losses and loss > self.losses[-1] + self.delta:
            self.stopped_at_epoch, self.rejected_loss = state.epoch, float(loss)
            control.should_training_stop = True
            if self.restore and self._snapshot is not None:
                params = dict(model.named_parameters())
                for name, value in self._snapshot.items():
                    params[name].copy_(value)
            return
        self.losses.append(float(loss))
        if self.restore:
            self._snapshot = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def upsample(dataset, ids, factor: int):
    """A new dataset in which the rows with the given ids appear `factor` times (copies keep their id)."""
    from datasets import concatenate_datasets

    if factor < 1:
        raise ValueError(f"upsampling factor must be >= 1, got {factor}")
    wanted = {str(i) for i in ids}
    if factor == 1:
        return dataset.select(range(len(dataset)))
    extra = dataset.filter(lambda i: str(i) in wanted, input_columns="id")
    return concatenate_datasets([dataset] + [extra] * (factor - 1))


def targeted(dataset, ids, factor: int, replay_ratio: float = 0.0, seed: int = 0):
    """A new dataset for targeted extra epochs: `factor` copies of each row with an id in `ids`, and
    round(replay_ratio x that many) other rows drawn without replacement (seeded; all of them if
    there are fewer). Copies keep their id."""
    import numpy as np
    from datasets import concatenate_datasets

    if factor < 1 or replay_ratio < 0:
        raise ValueError(f"targeted extra epochs need factor >= 1 and replay_ratio >= 0, got {factor}, {replay_ratio}")
    wanted = {str(i) for i in ids}
    is_flagged = [str(i) in wanted for i in dataset["id"]]
    flagged = [k for k, f in enumerate(is_flagged) if f]
    if not flagged:
        raise ValueError("targeted extra epochs: none of the flagged ids is in the training set")
    others = [k for k, f in enumerate(is_flagged) if not f]
    n_replay = min(len(others), round(replay_ratio * factor * len(flagged)))
    replay = sorted(np.random.default_rng(seed).choice(others, size=n_replay, replace=False).tolist()) if n_replay else []
    return concatenate_datasets([dataset.select(flagged)] * factor + ([dataset.select(replay)] if replay else []))
