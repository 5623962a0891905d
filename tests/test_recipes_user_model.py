"""Every recipe on a user's model and dataset: a Llama built from a config and saved with
`save_pretrained`, JSONL files in a folder, completions longer than 64 tokens. The embedded world's
budget (the recipe's default YAML, `max_length: 64` among it) must not leak into such a run, and
the rows must arrive whole."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(40)]
COMPLETION_WORDS = 80  # > 64: truncated by a leaked `max_length: 64`
TRL_MAX_LENGTH = 1024  # SFTConfig's default


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """(model folder, dataset folder, tokenizer) of a user's run, built offline."""
    import random

    from transformers import LlamaForCausalLM

    from hf_ilp.world import build_word_tokenizer, tiny_llama_config

    root = tmp_path_factory.mktemp("user")
    tokenizer = build_word_tokenizer(WORDS + ["say", "task", "a", "b", ":"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, max_position_embeddings=256))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rng = random.Random(0)
    rows = [{"prompt": f"task {'ab'[i % 2]} say {WORDS[i]} :",
             "completion": " " + " ".join(rng.choice(WORDS) for _ in range(COMPLETION_WORDS)),
             "task": "ab"[i % 2]} for i in range(16)]
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "model", root / "data", tokenizer


def _run(recipe, model, data, out, *flags, processes=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    # two processes on the CPU: --multi_gpu starts two gloo processes (--cpu would silently start one)
    launch = ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, str(ROOT / "recipes" / f"{recipe}.py"),
           "--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out),
           "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
           "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


class _ArgsUnpickler(pickle.Unpickler):
    """Reads the trainer's saved arguments, also those of a config class defined in a recipe script
    (`__main__` there, absent here), as a plain attribute holder."""

    def find_class(self, module, name):
        if module == "__main__":
            return type(name, (), {})
        return super().find_class(module, name)


def _training_args(folder):
    holder = type(sys)("args_pickle")
    holder.Unpickler, holder.load = _ArgsUnpickler, pickle.load
    return torch.load(Path(folder) / "training_args.bin", weights_only=False, pickle_module=holder)


@pytest.mark.parametrize("recipe,flags", [
    ("diagnose_sft", ["--diagnosis_encoder", "lexical", "--tracker_every_n_steps", "2"]),
    ("diagnose_sft", ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"]),
    ("epi_sft", ["--isolation_interval", "2"]),
    ("fp4_sft", []),
    ("cpi_ft", []),
])
def test_recipe_runs_on_a_users_model_with_trl_defaults(recipe, flags, user_run, tmp_path):
    model, data, tokenizer = user_run
    out = tmp_path / "run"
    _run(recipe, model, data, out, *flags)
    args = _training_args(out / "final_model")
    assert args.max_length == TRL_MAX_LENGTH and args.num_train_epochs == 1  # no ILP-World budget
    if recipe == "diagnose_sft":  # every completion token reached the tracker and the diagnosis
        from hf_ilp import load_records

        records = load_records(out / "hf_ilp_records")
        whole = len(tokenizer(" " + " ".join(["w0"] * COMPLETION_WORDS), add_special_tokens=False).input_ids) + 1  # + EOS
        assert set(records["n_completion_tokens"]) == {whole} and whole > 64
        summary = json.loads((out / "diagnose_summary.json").read_text())
        assert summary["n_train"] == 16 and (out / "diagnosis" / "samples.parquet").is_file()
        diagnosis = json.loads((out / "diagnosis" / "summary.json").read_text())
        assert ("--use_peft" in flags) == any("adapters disabled" in n for n in diagnosis["notes"])
        if "--diagnosis_encoder" in flags:  # LearnTrackerConfig and DiagnoserConfig fields reached as flags
            assert diagnosis["settings"]["encoder"] is None and diagnosis["settings"]["encoder_batch_size"] == 64
            assert any("steps" in kinds for kinds in records["obs_kind"])


@pytest.mark.slow
def test_two_processes_finish_and_split_the_diagnosis(user_run, tmp_path):
    """DDP with two gloo processes: every process saves the model (as FSDP / ZeRO-3 need), the
    end-of-run check and the diagnosis are split between them, and the diagnosis written equals
    the one a single process computes from the saved model and records."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM

    from hf_ilp import load_records
    from hf_ilp.diagnosis import DiagnoserConfig, DiagnosisReport, diagnose

    model, data, tokenizer = user_run
    out = tmp_path / "run"
    proc = _run("diagnose_sft", model, data, out, "--diagnosis_encoder", "lexical", "--per_device_train_batch_size", "2",
                "--diagnosis_batch_size", "3", "--tracker_batch_size", "3",
                processes=2)
    assert proc.stdout.count("[diagnose_sft] diagnosing the unlearned samples") == 1  # printed by the main process only
    records = load_records(out / "hf_ilp_records")
    assert all(kinds.count("final") == 1 for kinds in records["obs_kind"])  # each row checked once, none lost
    written = DiagnosisReport.load(out / "diagnosis").samples
    torch.set_num_threads(1)
    alone = diagnose(AutoModelForCausalLM.from_pretrained(out / "final_model"), AutoModelForCausalLM.from_pretrained(model),
                     tokenizer, load_dataset(str(data), split="train"), records, config=DiagnoserConfig(encoder="lexical", batch_size=3))
    assert written["id"] == alone.samples["id"] and written["cause"] == alone.samples["cause"]
    np.testing.assert_allclose(written["confidence"], alone.samples["confidence"], rtol=1e-4, atol=1e-6)


def test_unusable_data_is_refused_before_training(user_run, tmp_path):
    model, _, _ = user_run
    data = tmp_path / "text_only"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"text": "w1 w2"}) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "recipes" / "diagnose_sft.py"), "--model_name_or_path", str(model),
           "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "needs prompt-completion rows ('prompt' and 'completion') or conversations ('messages')" in proc.stderr
    assert "['text']" in proc.stderr and not (tmp_path / "out" / "final_model").exists()
