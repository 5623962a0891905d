"""Training run used by test_two_processes: `python two_process_run.py OUT PER_DEVICE_BATCH`.

Launched once plainly and once with `accelerate launch --multi_gpu --num_processes 2` with half
the per-device batch, so both runs see the same global batches.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trl import SFTTrainer  # noqa: E402

from hf_ilp import LearnTracker, LearnTrackerConfig  # noqa: E402
from tests.tracking.conftest import ITEMS, RELATIONS, VALUES, make_rows, sft_args, tiny_model  # noqa: E402
from hf_ilp.world.tokenizer import build_word_tokenizer  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, per_device = sys.argv[1], int(sys.argv[2])
    tokenizer = build_word_tokenizer(["what", "is", "the", "of", "?"] + ITEMS + RELATIONS + VALUES)
    rows = make_rows()
    model = tiny_model(tokenizer, seed=0, hidden_size=48)
    args = sft_args(out, num_train_epochs=3, per_device_train_batch_size=per_device, save_strategy="steps", save_steps=4, use_cpu=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.add_callback(LearnTracker(config=LearnTrackerConfig(every_n_steps=2, batch_size=7), trainer=trainer))
    trainer.train()
    if torch.distributed.is_initialized():  # close gloo before the interpreter exits, not during its teardown
        torch.distributed.destroy_process_group()
