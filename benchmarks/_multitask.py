"""Pieces shared by the multi-task benchmarks (`bench_epi.py`, `bench_cpi_ft.py`).

- `train_alone(world, seed, workdir)`: each task fine-tuned alone from the base with the world's
  budget; the reference a method's per-task accuracy is held against (the seesaw measure).
- `shortfall(alone, final)`: the largest loss of any task against training it alone, >= 0.
- `StepCount`, `EvalAt`: callbacks counting optimizer steps and evaluating at epoch/stage ends.
- `spread(values)`: "mean ± sd (min-max)" over seeds.
"""

import statistics
from pathlib import Path

from transformers import TrainerCallback
from trl import SFTTrainer


class StepCount(TrainerCallback):
    """Counts optimizer steps over every trainer it serves (stages included)."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


class EvalAt(TrainerCallback):
    """Evaluates the world's tasks at each epoch end (`event="epoch"`) or each training end ("stage")."""

    def __init__(self, world, event):
        self.world, self.event, self.history = world, event, []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.event == "epoch":
            self.history.append(self.world.evaluate(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.event == "stage":
            self.history.append(self.world.evaluate(model))


def train_alone(world, seed, workdir, **overrides) -> tuple[dict[str, float], int]:
    """Exact match of each task after fine-tuning the base on that task alone; and the steps of one such run."""
    out, steps = {}, 0
    for task in world.tasks:
        rows = world.train.filter(lambda t, task=task: t == task, input_columns="task").remove_columns("stage")
        counter = StepCount()
        args = world.sft_config(Path(workdir) / f"alone-{task}", seed=seed, logging_steps=10_000, **overrides)
        trainer = SFTTrainer(model=world.load_base_model(), args=args, train_dataset=rows,
                             processing_class=world.tokenizer, callbacks=[counter])
        trainer.train()
        out[task] = world.evaluate(trainer.model)[task]
        steps = max(steps, counter.steps)
    return out, steps


def mixed_at_steps(world, seed, workdir, max_steps) -> dict[str, float]:
    """All tasks mixed, trained for `max_steps` optimizer steps (the seesaw check at equal steps)."""
    args = world.sft_config(Path(workdir) / "mixed-equal-steps", seed=seed, logging_steps=10_000, max_steps=max_steps)
    trainer = SFTTrainer(model=world.load_base_model(), args=args, train_dataset=world.train.remove_columns("stage"),
                         processing_class=world.tokenizer)
    trainer.train()
    return world.evaluate(trainer.model)


def shortfall(alone: dict[str, float], final: dict[str, float]) -> float:
    """The seesaw measure: the largest loss of any task against training it alone (0 if none lost)."""
    return max(0.0, max(alone[t] - final[t] for t in alone))


def spread(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f}-{max(values):.3f})"
