"""The main job at a real model's scale: a Qwen2.5-0.5B-shaped Llama and 1,024-token chat completions.

The model is built from a config with random weights (vocabulary 151,936, hidden 896, 24 layers,
14 heads / 2 KV heads, tied embeddings; `--layers` shrinks it on a CPU: the logits, not the
layers, dominate the memory measured here). The tokenizer is a word-level one over the whole
vocabulary; each chat row is a user turn and an assistant turn of 1,023 random words (+ EOS:
1,024 completion tokens). One run prints, each after the other on the same rows:
(a) an SFT epoch without and with `LearnTracker`: median step time, the epoch's wall time (the
    tracked one includes the end-of-run learn-check) and its peak memory beyond the model;
(b) `check_learned` at batch 8 and 32: time and peak memory beyond the model;
(c) the generate protocol (1 greedy + 5 sampled generations per row, batched `generate`) against
    `check_learned` on the first `--generate_rows` rows;
(d) `hf_ilp.diagnose` (base = the initial weights, lexical near-duplicates): time and peak memory, by
    default and without the texts of what the models say instead (`continuation_tokens=0`).
The last line compares with the targets: tracked / plain epoch peak <= 1.1x, check_learned's peak
beyond the model <= 1 GiB at batch 8, tracker overhead <= 1.05x per step and <= 1.15x per epoch,
learn-check >= 10x faster than generate, diagnosis <= one training epoch.

Peak memory: `torch.cuda.max_memory_allocated` on a GPU; on the CPU the process's resident size
(after `malloc_trim`, so that freed memory does not count at the start), sampled every 2 ms by a
thread (a peak shorter than that can be missed).

    python benchmarks/bench_scale.py --device cuda                      # the whole model, bf16
    python benchmarks/bench_scale.py --layers 1 --rows 8 --train_batch 2 --generate_rows 1   # 2-core CPU
"""

import argparse
import copy
import ctypes
import ctypes.util
import gc
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
from trl import SFTConfig, SFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tracking import _generate_protocol  # noqa: E402

from hf_ilp import LearnTracker, LearnTrackerConfig, check_learned  # noqa: E402
from hf_ilp.diagnosis import DiagnoserConfig, diagnose  # noqa: E402
from hf_ilp.training import bind_trainer, no_activation_checkpointing  # noqa: E402
from hf_ilp.world import build_word_tokenizer  # noqa: E402

VOCAB = 151_936
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% if m['role'] == 'assistant' %}{{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
)
GIB = 2**30
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
# Every allocation from 64 KiB up gets its own mapping, handed back to the OS when freed: without a fixed
# threshold glibc raises it after large frees and serves later tensors from heap that training left
# resident, so the resident size (what the CPU peak reads) no longer follows what is alive.
_LIBC.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD


class Peak:
    """Peak memory of a block beyond what was in use when it started (GiB)."""

    def __init__(self, device):
        self.device, self.beyond = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            gc.collect()
            _LIBC.malloc_trim(0)  # hand freed heap back to the OS, so that the resident size is what is alive
            proc = psutil.Process()
            self.start = self.top = proc.memory_info().rss
            self.stop = threading.Event()

            def sample():
                while not self.stop.is_set():
                    self.top = max(self.top, proc.memory_info().rss)
                    time.sleep(0.002)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.beyond = (torch.cuda.max_memory_allocated() - self.start) / GIB
        else:
            self.stop.set()
            self.thread.join()
            self.beyond = (self.top - self.start) / GIB


class _StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def build(args):
    words = [f"t{i}" for i in range(VOCAB - 4 - 3)] + ["user", "assistant", ":"]
    tokenizer = build_word_tokenizer(words)
    tokenizer.chat_template = CHAT_TEMPLATE
    assert len(tokenizer) == VOCAB, len(tokenizer)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(args.dtype)
    rng = np.random.default_rng(0)
    rows = [{"id": f"row-{k}",
             "prompt": [{"role": "user", "content": " ".join(f"t{j}" for j in rng.integers(0, 1000, 24))}],
             "completion": [{"role": "assistant", "content": " ".join(f"t{j}" for j in rng.integers(0, VOCAB - 7, args.completion_tokens - 1))}]}
            for k in range(args.rows)]
    return model, tokenizer, Dataset.from_list(rows)


def train_epoch(model, tokenizer, rows, args, tracker):
    timer = _StepTimer()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, num_train_epochs=1, per_device_train_batch_size=args.train_batch,
                           learning_rate=1e-5, max_length=args.completion_tokens + 64, report_to="none",
                           save_strategy="no", logging_steps=10**6, disable_tqdm=True, bf16=args.dtype == torch.bfloat16,
                           use_cpu=args.device.type == "cpu", seed=0, **no_activation_checkpointing())
        callbacks = [timer] + ([tracker] if tracker is not None else [])
        trainer = bind_trainer(SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer,
                                          callbacks=callbacks))
        with Peak(args.device) as peak:
            start = time.perf_counter()
            trainer.train()
            if args.device.type == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
    steps = np.diff(timer.times)
    step = float(np.median(steps[1:] if len(steps) > 1 else steps)) if len(steps) else float("nan")
    return step, wall, peak.beyond, trainer.model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--completion_tokens", type=int, default=1024)
    parser.add_argument("--train_batch", type=int, default=8)
    parser.add_argument("--generate_rows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    args.dtype = torch.bfloat16 if args.device.type == "cuda" else torch.float32
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, rows = build(args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Llama: {args.layers} layers, vocab {VOCAB:,}, {n_params / 1e6:.0f}M parameters, {args.dtype}, {args.device}; "
          f"{args.rows} chat rows with {args.completion_tokens}-token completions; training batch {args.train_batch}")
    initial = copy.deepcopy(model.state_dict())

    # (a) one SFT epoch without, then with the tracker, from the same weights (after an untimed warm-up step)
    train_epoch(model.to(args.device), tokenizer, rows.select(range(min(args.train_batch, len(rows)))), args, None)
    model.load_state_dict(initial)
    plain_step, plain_wall, plain_peak, _ = train_epoch(model.to(args.device), tokenizer, rows, args, None)
    model.load_state_dict(initial)
    tracker = LearnTracker(config=LearnTrackerConfig(batch_size=8))
    tracked_step, tracked_wall, tracked_peak, trained = train_epoch(model, tokenizer, rows, args, tracker)
    print(f"(a) SFT epoch: median step {plain_step:.3f} s plain, {tracked_step:.3f} s tracked ({tracked_step / plain_step:.3f}x); "
          f"epoch {plain_wall:.1f} s plain, {tracked_wall:.1f} s tracked incl. the end-of-run check ({tracked_wall / plain_wall:.3f}x); "
          f"peak beyond the model {plain_peak:.2f} GiB plain, {tracked_peak:.2f} GiB tracked "
          f"({tracked_peak / max(plain_peak, 1e-9):.3f}x)")

    # (b) the learn-check alone, at batch 8 and 32
    trained.eval()
    check = {}
    for batch in (8, 32):
        with Peak(args.device) as peak:
            start = time.perf_counter()
            check_learned(trained, tokenizer, rows, batch_size=batch, progress=False)
            seconds = time.perf_counter() - start
        check[batch] = (seconds, peak.beyond)  # read once the block has closed: the peak is known on exit
        print(f"(b) check_learned batch {batch}: {check[batch][0]:.1f} s, peak beyond the model {check[batch][1]:.2f} GiB")

    # (c) the generate protocol on the first rows, and the learn-check on the same rows
    few = rows.select(range(min(args.generate_rows, len(rows))))
    start = time.perf_counter()
    check_learned(trained, tokenizer, few, batch_size=8, progress=False)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    _generate_protocol(trained, tokenizer, few, 8, 5, 1.0)
    theirs = time.perf_counter() - start
    print(f"(c) {len(few)} rows: generate protocol {theirs:.1f} s, check_learned {ours:.2f} s ({theirs / ours:.1f}x)")

    # (d) the diagnosis of the tracked run
    base = LlamaForCausalLM(trained.config).to(args.dtype)
    base.load_state_dict(initial)
    base.to(args.device)
    diag = {}
    for texts in (24, 0):  # with what the models say instead (the default), and with the numbers only
        with Peak(args.device) as peak:
            start = time.perf_counter()
            diagnose(trained, base, tokenizer, rows, tracker.records,
                     config=DiagnoserConfig(encoder="lexical", batch_size=8, continuation_tokens=texts))
            diag[texts] = time.perf_counter() - start
        print(f"(d) diagnosis, continuation_tokens={texts}: {diag[texts]:.1f} s ({diag[texts] / plain_wall:.2f} of a plain "
              f"epoch), peak beyond the two models {peak.beyond:.2f} GiB")
    diag = diag[24]

    ok = lambda c: "met" if c else "NOT met"  # noqa: E731
    print(f"targets: tracked/plain epoch peak {tracked_peak / max(plain_peak, 1e-9):.3f}x (<= 1.1: {ok(tracked_peak <= 1.1 * plain_peak)}); "
          f"check_learned batch 8 peak {check[8][1]:.2f} GiB (<= 1: {ok(check[8][1] <= 1)}); "
          f"step {tracked_step / plain_step:.3f}x (<= 1.05: {ok(tracked_step <= 1.05 * plain_step)}); "
          f"epoch {tracked_wall / plain_wall:.3f}x (<= 1.15: {ok(tracked_wall <= 1.15 * plain_wall)}); "
          f"generate/check {theirs / ours:.1f}x (>= 10: {ok(theirs >= 10 * ours)}); "
          f"diagnosis/epoch {diag / plain_wall:.2f} (<= 1: {ok(diag <= plain_wall)})")


if __name__ == "__main__":
    main()
