"""The contract each cause's intervention follows (mergekit declares one per merge method the same way).

An `Intervention` names the causes it fixes, refuses bad input in `check` before any output
exists, and trains in `run`; `hf_ilp.interventions.intervene` finds it by cause and does the rest
(the atomic output folder, the saved model and data, the manifest). Adding a cause's fix is one
module with one `Intervention` subclass, listed in `apply._interventions`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence



@dataclasses.dataclass(frozen=True)
class InterventionInputs:
    """Everything `intervene` was given, checked: what an `Intervention` reads (never modifies)."""

    cause: str
    report: Any
    train: Any  # the SFT dataset the report describes
    flagged: list  # ids the report gives `cause`
    base_model: Any
    model: Any
    tokenizer: Any
    args: Any  # the original run's SFTConfig
    eval_dataset: Any = None
    knowledge_source: Any = None
    general_texts: Sequence[str] | None = None
    judge: Callable | str | None = None
    peft_config: Any = None
    callbacks: tuple = ()
    config: Any = None  # an InterventionConfig


class Intervention:
    """One cause's fix as a causal test (one module per cause defines one).

    `check(inputs)` refuses bad input with a clear error and prepares what `run` needs (a corpus,
    the conflicting groups), before any output exists; `run(inputs, prepared, tmp, run_args)` trains
    into the temporary folder `tmp` (`run_args`: the original args with `output_dir=tmp/run`) and
    returns `(method, details, train_dataset_used, trainer)`. `intervene` does the rest: the atomic
    output folder, the saved model and data, the manifest.
    """

    causes: tuple[str, ...] = ()
    #: True when the fix continues the fine-tuned model rather than a new run from the base.
    continues_fine_tuned: bool = False

    def check(self, inputs: InterventionInputs):
        return None

    def run(self, inputs: InterventionInputs, prepared, tmp, run_args):
        raise NotImplementedError


def sft(model, tokenizer, dataset, args, callbacks, trainer_cls, eval_dataset=None):
    """SFT with the sequential-stage protocol of `hf_ilp.training.train_stages`."""
    from hf_ilp.training import train_stages

    return train_stages(model, tokenizer, dataset, args, callbacks=list(callbacks), eval_dataset=eval_dataset,
                        trainer_cls=trainer_cls)


def with_peft(model, peft_config):
    """`model` wrapped in a new PEFT adapter of `peft_config` (unchanged without one, or if already wrapped)."""
    if peft_config is None or hasattr(model, "peft_config"):
        return model
    from peft import get_peft_model

    return get_peft_model(model, peft_config)
