"""Tiny, fast fixtures for the intervention tests: a word-level tokenizer, a random Llama, rows."""

import pytest
import torch


WORDS = [f"w{i}" for i in range(40)] + ["what", "is", "of", "the", "answer", "?", "fact", ":"]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def make_model(tokenizer, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(cfg)


def make_rows(n=24, stages=None):
    """`n` prompt/completion rows: 'what is wK ?' -> ' w(K+20)' (ids s0..)."""
    rows = []
    for k in range(n):
        row = {"id": f"s{k}", "prompt": f"what is w{k % 20} ?", "completion": f" w{20 + k % 20}"}
        if stages:
            row["stage"] = k % stages
        rows.append(row)
    return rows


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return make_model(tokenizer)


def sft_args(tmp_path, **kw):
    from trl import SFTConfig

    base = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-2,
        bf16=False, gradient_checkpointing=False, report_to="none", logging_steps=1000, save_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0,
    )
    base.update(kw)
    return SFTConfig(**base)
