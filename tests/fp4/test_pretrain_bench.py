"""The FP4 pre-training benchmark's generated language: deterministic, heavy-tailed, learnable."""

import numpy as np
import pytest
import torch

from benchmarks import fp4_pretrain as bench


def _sample(vocab=256, seed=0, rows=2000, length=64):
    lang = bench.make_language(vocab, seed)
    return lang, bench.sample_tokens(lang, rows, length, np.random.default_rng([seed, 1]))


def test_corpus_is_deterministic_by_seed():
    lang_a, a = _sample(seed=3)
    lang_b, b = _sample(seed=3)
    np.testing.assert_array_equal(lang_a.successors, lang_b.successors)
    np.testing.assert_array_equal(a, b)
    _, c = _sample(seed=4)
    assert a.shape == c.shape == (2000, 64) and a.dtype == np.int64
    assert (a != c).mean() > 0.5


def test_next_token_law_is_a_distribution():
    lang = bench.make_language(128, 0)
    prev, nxt = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
    np.testing.assert_allclose(lang.next_token_prob(prev, nxt).sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corpus_statistics(seed):
    lang, x = _sample(seed=seed)
    assert lang.unigram[0] / lang.unigram[1] == pytest.approx(2**1.1)
    counts = np.sort(np.bincount(x.ravel(), minlength=256))[::-1]
    slope = np.polyfit(np.log(np.arange(1, 51)), np.log(counts[:50]), 1)[0]
    assert -1.6 < slope < -0.8  # Zipfian rank-frequency law in the generated text
    unigram_entropy = -(lang.unigram * np.log(lang.unigram)).sum()
    assert bench.source_nll(lang, x) < unigram_entropy - 1.0  # the bigram structure is there to learn
    other = bench.make_language(256, seed + 10)
    assert bench.source_nll(other, x) > bench.source_nll(lang, x)
    after_burst = lang.burst[x[:, :-1]]
    assert after_burst.sum() > 20  # rare burst tokens repeat themselves
    assert (x[:, 1:] == x[:, :-1])[after_burst].mean() > 0.8


def test_scale_defaults():
    args = bench.resolve_args(bench.make_parser().parse_args(["--device", "cuda"]))
    with torch.device("meta"):
        from transformers import LlamaForCausalLM

        params = sum(p.numel() for p in LlamaForCausalLM(bench.llama_config(args)).parameters())
    assert params >= 20e6 and args.steps >= 2000 and args.last == args.steps // 10
    cpu = bench.resolve_args(bench.make_parser().parse_args(["--steps", "40"]))
    assert (cpu.hidden, cpu.steps, cpu.last) == (128, 40, 4)


def test_run_smoke(fp4_backends, capsys):
    args = bench.make_parser().parse_args(
        ["--seeds", "0", "--steps", "3", "--hidden", "64", "--layers", "1", "--vocab", "64", "--seq", "16", "--batch", "2"]
    )
    out = bench.run(args)
    assert set(out["seeds"][0]["arms"]) == {"fp32", "max", "halfs"}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("halfs closer to high precision than max on")
