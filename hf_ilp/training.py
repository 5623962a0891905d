"""Sequential fine-tuning: one trainer per stage of the data, one model throughout.

Left-side forgetting (a cause of incomplete learning) exists only when a model is fine-tuned on
one dataset after another. `train_stages` is that protocol, written once for every part of
hf_ilp: the ILP-World recipe, the tests, the benchmarks and the interventions that compare
sequential with shuffled training.

    >>> from trl import SFTTrainer
    >>> trainer = train_stages(model, tokenizer, world.train, world.sft_config("out"), callbacks=[tracker])
    >>> trainer.model  # the model after the last stage
"""

import dataclasses
import os
import shutil
from pathlib import Path

from trl import SFTTrainer

from hf_ilp.files import move_into_place


def train_stages(
    model,
    processing_class,
    train_dataset,
    args,
    callbacks=(),
    eval_dataset=None,
    trainer_cls=SFTTrainer,
    peft_config=None,
):
    """Fine-tune `model` on each distinct `stage` of `train_dataset` in ascending order; return the last trainer.

    Every stage gets a fresh trainer (so a fresh optimizer and scheduler) on the same model and the
    same callback instances (those that keep a `trainer` attribute are pointed at it: `bind_trainer`),
    with its outputs in `args.output_dir/stage-K`; callbacks therefore see
    one `on_train_begin`/`on_train_end` per stage and can tell stages apart by the trainer's
    `args.output_dir`. Without a `stage` column this is one ordinary training run in
    `args.output_dir`. `peft_config`, if given, wraps the model once, in the first stage.

    `args.resume_from_checkpoint` is honoured: a checkpoint path for a run without stages; `True`
    resumes every stage from the last checkpoint in its own folder (a finished stage from its
    final checkpoint, a stage with none from its start).
    """
    resume = getattr(args, "resume_from_checkpoint", None)
    resume = True if str(resume).lower() == "true" else resume  # `--resume_from_checkpoint true` parses as a string
    if "stage" not in train_dataset.column_names:
        return _train(trainer_cls, model, processing_class, train_dataset, args, callbacks, eval_dataset, peft_config,
                      resume)
    if resume not in (None, False, True):
        raise ValueError(
            f"resume_from_checkpoint={resume!r}: with a 'stage' column each stage has its own checkpoints "
            f"(output_dir/stage-K/checkpoint-N); pass True to resume every stage from its last one"
        )
    stages = sorted(set(train_dataset["stage"]))
    trainer = None
    for stage in stages:
        subset = train_dataset.filter(lambda s, k=stage: s == k, input_columns="stage")
        stage_args = dataclasses.replace(args, output_dir=os.path.join(args.output_dir, f"stage-{stage}"))
        stage_resume = _last_checkpoint(stage_args.output_dir) if resume else None
        trainer = _train(trainer_cls, model, processing_class, subset, stage_args, callbacks, eval_dataset, peft_config,
                         stage_resume)
        model, peft_config = trainer.model, None
    return trainer


def _last_checkpoint(folder):
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(folder) if os.path.isdir(folder) else None


def bind_trainer(trainer):
    """Point the callbacks of `trainer` that keep a `trainer` attribute at this trainer; returns it.

    That attribute is TRL's convention for a callback that needs its trainer (`LogCompletionsCallback(trainer)`,
    `hf_ilp.LearnTracker(trainer=...)`). A callback instance shared by several trainers (one per
    stage, as here) must serve the one that runs: call this on each trainer before it trains.
    """
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "trainer"):
            callback.trainer = trainer
    return trainer


def _train(trainer_cls, model, processing_class, train_dataset, args, callbacks, eval_dataset, peft_config, resume=None):
    kwargs = {"peft_config": peft_config} if peft_config is not None else {}
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        callbacks=list(callbacks),
        **kwargs,
    )
    bind_trainer(trainer)
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer


def save_final_model(trainer, processing_class, folder, extra=None) -> Path:
    """`trainer.save_model` and the tokenizer into `folder`, which appears only once complete.

    Every process must call it: under FSDP and DeepSpeed ZeRO-3 the weights are gathered
    collectively, then the main process writes them. `extra(tmp_folder)` may add files (main
    process only) before the folder is moved into place.
    """
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.saving"
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if accelerator.is_main_process:
        processing_class.save_pretrained(str(tmp))
        if extra is not None:
            extra(tmp)
        move_into_place(tmp, folder)
    accelerator.wait_for_everyone()
    return folder


def no_activation_checkpointing() -> dict:
    """Training arguments that turn activation checkpointing off (TRL's configs turn it on).

    transformers 5.23 renamed `gradient_checkpointing` to `activation_checkpointing` (the old
    name stays as a deprecated alias); this names every one of the two that `TrainingArguments` has.
    """
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {name: False for name in ("activation_checkpointing", "gradient_checkpointing") if name in fields}


_MOVED_TO_RECIPES = ("USER_RUN_FLAGS", "parse_recipe_args", "load_model_and_tokenizer", "prefixed_arguments", "recipe_config")


def __getattr__(name):
    """The recipe helpers moved to `hf_ilp.recipes`; their old names here work for one more release."""
    if name in _MOVED_TO_RECIPES:
        import warnings

        warnings.warn(f"hf_ilp.training.{name} moved to hf_ilp.recipes.{name}; the old name will be removed in the "
                      f"next release", DeprecationWarning, stacklevel=2)
        from hf_ilp import recipes

        return getattr(recipes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
