"""under_training: more optimization, stopped by validation loss, optionally aimed at the flagged.

The paper's intervention for insufficient optimization: add epochs one at a time and stop when
the validation loss rises, val_loss(e) > val_loss(e-1) + delta (delta = 0.01). Here the extra
epochs continue from the fine-tuned model; an epoch the rule rejects is undone (the weights of
the last accepted evaluation are restored), so the result is the paper's "last good epoch".
The extra epochs are targeted (`targeted`, the default): they go over the flagged samples,
several copies each, so the rare samples get the optimization they lacked without training the
rest for whole extra epochs (which overfits it and stops the run at once). What the extra
epochs do to the rest is what the validation loss measures; where fitting the flagged samples
pulls the others away, `replay_ratio` mixes in replayed other rows (replaying rows that are
already fitted retrains them at the full learning rate, itself a source of validation drift).
`upsample` keeps the whole training set and only adds copies of the flagged rows.

The stopping rule of the intervention (`InterventionConfig`: `extra_reference="start"`,
`extra_patience=2`) departs from the paper's epoch-over-epoch test, which did not hold run to
run. A targeted epoch is a few optimizer steps; while the flagged samples are still being fitted
the validation loss can drift up by about delta per epoch, so the epoch at which val_loss(e)
first exceeds val_loss(e-1) + delta, and with it the share of flagged samples fixed, turned on
differences of a few thousandths. On ILP-World small seed 1, one fine-tuned model continued with
two data orders kept 2 and 4 extra epochs (25% and 75% of its flagged samples fixed); a model
fine-tuned with another seed kept 1 and fixed none. The intervention's rule instead:

- compares every evaluation with the validation loss of the model the extra epochs started from
  (`reference="start"`): extra epochs are kept while the validation loss stays within delta of
  where it was. The tolerance bounds the total harm to the rest, so it does not grow or shrink
  with the length of an epoch (how the extra training is cut up, e.g. by the upsampling factor),
  and the reference is one fixed number, not another noisy evaluation;
- stops only after `patience=2` rejected evaluations in a row: one transient bad epoch (the first
  steps of a fresh optimizer, one unlucky order) does not end the run by itself;
- restores the weights of the last accepted evaluation, as before (also when the last epoch of
  the run is rejected).

Measured with `intervene` on ILP-World small seeds 0-2, each fine-tuned with three seeds and
continued with two data orders (18 runs per rule, at most 5 extra epochs): the paper's rule removed
0-88% of the planted under-trained samples left unlearned (6 runs of 18 below half; seed 1 alone
0-75%), this one 38-100% (1 run below half; seed 1: 38-100%), with the other causes' unlearned
counts changing by -2% to +11% under either rule. `ValLossRiseStopping()`'s own defaults remain
the paper's rule.

    stop = ValLossRiseStopping(delta=0.01, patience=2, reference="start")
    trainer = SFTTrainer(model=sft_model, args=args_with_eval_each_epoch, train_dataset=upsample(train, ids, 2),
                         eval_dataset=val, callbacks=[stop])
    trainer.evaluate(); trainer.train()
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from hf_ilp.interventions._common import fresh_model
from hf_ilp.interventions.base import Intervention, with_peft


class ValLossRiseStopping(TrainerCallback):
    """Stop training when `eval_loss` rises more than `delta` above a reference, and put back the
    trainable weights of the last accepted evaluation (`restore=True`).

    An evaluation is accepted when its loss is at most reference + `delta`. The reference is the
    last accepted evaluation (`reference="previous"`, the paper's val_loss(e) > val_loss(e-1) +
    delta) or the first one, the model before the extra epochs (`reference="start"`). The run
    stops after `patience` rejected evaluations in a row, or at a rejected evaluation at the last
    step; an accepted one resets the count. The defaults (`patience=1`, `reference="previous"`)
    are the paper's rule; the under_training intervention uses `patience=2, reference="start"`
    (see the module docstring for why).

    Evaluate once before training (`trainer.evaluate()`) so that the first extra epoch is judged
    too (and, with `reference="start"`, so that the reference is the starting model). The snapshot
    holds the trainable parameters only (a LoRA adapter's, under PEFT). Evaluate at the end of
    training (e.g. `eval_strategy="epoch"`) so that a rejected last epoch is undone before
    `on_train_end`; without it, the weights are restored at `on_train_end`.

    Example:
        trainer = SFTTrainer(..., args=SFTConfig(eval_strategy="epoch", ...), callbacks=[ValLossRiseStopping()])
    """

    REFERENCES = ("previous", "start")

    def __init__(self, delta: float = 0.01, restore: bool = True, patience: int = 1, reference: str = "previous"):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1 (rejected evaluations in a row before stopping), got {patience!r}")
        if reference not in self.REFERENCES:
            raise ValueError(f"reference must be one of {self.REFERENCES}, got {reference!r}")
        self.delta, self.restore, self.patience, self.reference = delta, restore, patience, reference
        self.losses: list[float] = []  # the accepted evaluations, in order
        self.rejected: list[float] = []  # every rejected evaluation, in order
        self.stopped_at_epoch: float | None = None
        self.rejected_loss: float | None = None  # the evaluation that stopped the run
        self._in_a_row = 0
        self._snapshot = None

    @torch.no_grad()
    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            raise ValueError("ValLossRiseStopping needs 'eval_loss' in the evaluation metrics; give an eval_dataset")
        if self.losses and loss > self.losses[0 if self.reference == "start" else -1] + self.delta:
            self.rejected.append(float(loss))
            self._in_a_row += 1
            last_step = state.max_steps > 0 and state.global_step >= state.max_steps
            if self._in_a_row >= self.patience or last_step:
                self.stopped_at_epoch, self.rejected_loss = state.epoch, float(loss)
                control.should_training_stop = True
                self._put_back(model)
            return
        self._in_a_row = 0
        self.losses.append(float(loss))
        if self.restore:
            self._snapshot = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._in_a_row and self.stopped_at_epoch is None:  # the run ended on a rejected evaluation
            self.stopped_at_epoch, self.rejected_loss = state.epoch, self.rejected[-1]
            self._put_back(model)

    @torch.no_grad()
    def _put_back(self, model):
        self._in_a_row = 0
        if self.restore and self._snapshot is not None:
            params = dict(model.named_parameters())
            for name, value in self._snapshot.items():
                params[name].copy_(value)


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


class UnderTrainingIntervention(Intervention):
    """under_training: extra epochs from the fine-tuned model over the flagged samples (`targeted`,
    or `upsample` with `extra_on="all"`), kept while `ValLossRiseStopping` accepts them."""

    causes = ("under_training",)
    continues_fine_tuned = True

    def check(self, inputs):
        if inputs.model is None:
            raise ValueError("under_training continues from the fine-tuned model: pass model=")
        if inputs.eval_dataset is None or len(inputs.eval_dataset) == 0:
            raise ValueError("under_training stops on validation loss: pass a non-empty eval_dataset")

    def run(self, inputs, prepared, tmp, run_args):
        import dataclasses

        from trl import SFTTrainer

        from hf_ilp.training import bind_trainer

        cfg, train = inputs.config, inputs.train
        if "stage" in train.column_names:  # extra epochs go over all stages at once
            train = train.rename_column("stage", "source_stage")
        if cfg.extra_on == "flagged":
            train = targeted(train, inputs.flagged, cfg.upsample_factor, cfg.extra_replay_ratio, seed=run_args.seed)
        else:
            train = upsample(train, inputs.flagged, cfg.upsample_factor)
        stop = ValLossRiseStopping(delta=cfg.extra_delta, patience=cfg.extra_patience, reference=cfg.extra_reference)
        model = with_peft(fresh_model(inputs.model), inputs.peft_config)
        args = dataclasses.replace(run_args, num_train_epochs=cfg.extra_max_epochs, eval_strategy="epoch")
        trainer = bind_trainer(SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=inputs.eval_dataset,
                                          processing_class=inputs.tokenizer, callbacks=[*inputs.callbacks, stop]))
        trainer.evaluate()
        trainer.train()
        details = {"val_losses": stop.losses, "rejected_val_loss": stop.rejected_loss, "rejected_val_losses": stop.rejected,
                   "extra_epochs_kept": len(stop.losses) - 1, "stopped_at_epoch": stop.stopped_at_epoch,
                   "extra_on": cfg.extra_on, "rows_per_epoch": len(train), "upsample_factor": cfg.upsample_factor}
        return "extra_epochs+early_stopping", details, train, trainer
