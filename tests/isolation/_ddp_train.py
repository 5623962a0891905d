"""Two-process EPI training for test_ddp.py: each rank writes its final masks and parameters."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from trl import SFTTrainer

from hf_ilp.isolation import EvolvingIsolationCallback, save_masks
from hf_ilp.world import build_multitask_world

cache, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(1)
world = build_multitask_world("tiny", seed=0, cache_dir=cache, version=1)
epi = EvolvingIsolationCallback(isolation_ratio=0.1, isolation_interval=2)
args = world.sft_config(out / "run", max_steps=6, per_device_train_batch_size=8, weight_decay=0.1, logging_steps=2)
trainer = SFTTrainer(model=world.load_base_model(), args=args, train_dataset=world.train.select(range(96)),
                     processing_class=world.tokenizer, callbacks=[epi])
trainer.train()
rank = trainer.accelerator.process_index
save_masks(epi.masks, out / f"masks-rank{rank}.safetensors")
save_file({n: p.detach().contiguous() for n, p in trainer.model.named_parameters()}, str(out / f"params-rank{rank}.safetensors"))
print(f"rank {rank} of {trainer.accelerator.num_processes}: {len(epi.history)} mask updates", flush=True)
