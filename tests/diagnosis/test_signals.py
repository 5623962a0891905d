"""Each cause's signal alone, on hand-built rows and exactly known models (see conftest.py)."""

import math

import numpy as np
import pytest
import torch

from hf_ilp.diagnosis._forward import teacher_forced_stats
from hf_ilp.diagnosis._inputs import read_samples
from hf_ilp.diagnosis.config import DiagnoserConfig
from hf_ilp.diagnosis.data_inconsistency import PromptIndex, data_inconsistency_signal, neighbourhood_density
from hf_ilp.diagnosis.diagnoser import PRECEDENCE, _verdict
from hf_ilp.diagnosis.forgetting import forgetting_signal
from hf_ilp.diagnosis.knowledge_conflict import knowledge_conflict_signal
from hf_ilp.diagnosis.missing_knowledge import missing_knowledge_signal
from hf_ilp.diagnosis.signals import score_above, score_below, score_close
from hf_ilp.diagnosis.under_training import under_training_signal

from datasets import Dataset

LEXICAL = DiagnoserConfig(encoder="lexical", progress=False, plots=False)


@pytest.fixture(scope="module")
def base_stats(fact_world):
    samples = read_samples(Dataset.from_list(fact_world["rows"]), fact_world["tokenizer"])
    stats = teacher_forced_stats(fact_world["base"], samples.sequences, batch_size=4, other=fact_world["model"],
                                 progress=False)
    return samples, stats


def test_scores_are_half_at_threshold_and_monotone():
    assert score_above(0.3, 0.3, 4.0) == pytest.approx(0.5)
    assert score_above(0.6, 0.3, 4.0) == pytest.approx(1 / (1 + 2 ** -4))
    assert score_below(0.15, 0.3, 4.0) == pytest.approx(score_above(0.6, 0.3, 4.0))
    assert score_close(1.0, 0.9, 4.0) > 0.999 and score_close(0.8, 0.9, 4.0) < 0.1
    assert score_above(float("nan"), 0.3, 4.0) == 0.0 and score_below(float("nan"), 0.3, 4.0) == 0.0


def test_teacher_forced_stats_are_exact(fact_world, base_stats):
    samples, stats = base_stats
    k = samples.ids.index("known0")
    assert stats["gm_p"][k] == pytest.approx(0.9, abs=1e-3)  # the bigram table's probability, EOS left out
    assert stats["exact"][k] == 1.0 and stats["alt_prob"][k] == 0.0
    c = samples.ids.index("conflict4")
    assert stats["exact"][c] == 0.0 and stats["alt_prob"][c] == pytest.approx(0.9, abs=1e-3)
    assert stats["other_gm_p"][c] == pytest.approx(0.4, abs=1e-3)
    assert stats["follows_alt"][c] == 1.0  # the fine-tuned model still prefers v4
    # JSD(base, ft) at one position, recomputed by hand from the two distributions
    seq = samples.sequences[c]
    ids = torch.tensor([seq[0]])
    with torch.no_grad():
        p = fact_world["base"](input_ids=ids).logits[0, -1].softmax(-1).double()
        q = fact_world["model"](input_ids=ids).logits[0, -1].softmax(-1).double()
    m = (p + q) / 2
    jsd = 0.5 * ((p * (p / m).log()).sum() + (q * (q / m).log()).sum()) / math.log(2)
    assert stats["jsd"][c] == pytest.approx(float(jsd), abs=1e-4)
    # long target: the geometric mean over its 8 tokens
    long7 = samples.ids.index("long7")
    assert stats["gm_p"][long7] == pytest.approx((0.9 * 0.6 ** 7) ** (1 / 8), abs=1e-3)


def test_missing_knowledge_and_conflict_signals(base_stats):
    samples, stats = base_stats
    idx = {sid: i for i, sid in enumerate(samples.ids)}
    missing, ev = missing_knowledge_signal(stats, LEXICAL)
    conflict, _ = knowledge_conflict_signal(stats, LEXICAL)
    for sid in ("missing8", "missing9", "forgot10"):  # the base never saw e8-e10: flat over the values
        assert missing[idx[sid]] > 0.8 and conflict[idx[sid]] < 0.1
    for sid in ("conflict4", "conflict5", "dupB"):  # the base puts 0.9 on another value, kept by SFT
        assert conflict[idx[sid]] > 0.9 and missing[idx[sid]] < 0.2
    # 0.8 on a guess about an unseen fact, which fine-tuning dropped: missing, not conflict
    assert conflict[idx["guess11"]] == 0.0 and missing[idx["guess11"]] > 0.8
    for sid in ("known0", "dupA", "long7"):  # the base knows these
        assert missing[idx[sid]] < 0.1 and conflict[idx[sid]] < 0.1
    assert ev["base_gold_prob"][idx["missing8"]] == pytest.approx(1 / 8, abs=1e-3)


def test_probes_sharpen_missing_knowledge(base_stats):
    """A base that answers the sample's prerequisite probes is not missing the knowledge."""
    samples, stats = base_stats
    m = samples.ids.index("missing8")
    n = len(samples.ids)
    known_probe = {"gm_p": np.full(n, 0.9), "alt_prob": np.zeros(n)}
    unknown_probe = {"gm_p": np.full(n, 0.05), "alt_prob": np.full(n, 0.1)}
    assert missing_knowledge_signal(stats, LEXICAL, known_probe)[0][m] < 0.1
    assert missing_knowledge_signal(stats, LEXICAL, unknown_probe)[0][m] > 0.8


def _qa_prompts():
    """60 entities asked in two templates; entity 0 twice verbatim, entity 1 in both templates (a
    paraphrase), each time with two different answers; entity 2 in both templates, same answer."""
    templates = ("question : what is the colour of ent{} ? answer :", "question : which colour does ent{} have ? answer :")
    colours = ["red", "blue", "green", "black", "white", "pink"]
    prompts, answers = [], []
    for e in range(60):
        prompts.append(templates[e % 2].format(e))
        answers.append(" " + colours[e % 6])
    prompts += [templates[0].format(0), templates[0].format(1) if 1 % 2 else templates[1].format(1), templates[0].format(2)]
    answers += [" pink", " white", answers[2]]
    return prompts, answers


@pytest.mark.parametrize("encoder", ["lexical", "auto"])
def test_near_duplicates(encoder):
    prompts, answers = _qa_prompts()
    config = DiagnoserConfig(encoder=encoder, progress=False)
    index = PromptIndex(prompts, config)
    assert (index.encoder is None) == (encoder == "lexical")
    ids = [f"p{i}" for i in range(len(prompts))]
    score, ev = data_inconsistency_signal(index, answers, ids, np.arange(len(prompts)), config)
    flagged = set(np.flatnonzero(score >= 0.5).tolist())
    verbatim, paraphrase = {0, 60}, {1, 61}
    assert ev["dup_neighbor"][0] == "p60" and score[0] > 0.9
    # same template, another entity: close for the encoder (ids differ by a digit), a different question
    if encoder == "auto":
        assert ev["dup_similarity"][1] > 0.9  # the paraphrase
        assert flagged == verbatim | paraphrase
    else:  # TF-IDF alone only sees near-identical wording
        assert flagged == verbatim
    assert 2 not in flagged and 62 not in flagged  # same question, same answer: consistent


@pytest.mark.parametrize("encoder", ["lexical", "auto"])
def test_template_density_finds_the_rare_template(encoder):
    prompts = [f"question : what is the colour of {e} ? answer :" for e in ("zorvak", "blimmet", "quandor", "frelling")]
    prompts += [f"question : which colour does {e} have ? answer :" for e in ("zorvak", "quandor", "skiv")]
    prompts += ["write a poem about the sea in three lines"]
    density = neighbourhood_density(PromptIndex(prompts, DiagnoserConfig(encoder=encoder, progress=False)),
                                    DiagnoserConfig(num_neighbors=3))
    assert density.argmin() == len(prompts) - 1


def test_neighbour_search_is_blocked_top_k():
    """Thousands of prompts: k neighbours each from blocked products, in well under a minute."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    prompts = [" ".join(rng.choice(words, 6)) for _ in range(3000)]
    index = PromptIndex(prompts, DiagnoserConfig(encoder="lexical", progress=False))
    sims, nbrs = index.neighbors(np.arange(3000), 5)
    assert sims.shape == (3000, 5) and (nbrs != np.arange(3000)[:, None]).all()
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # best first


def _rec(exact, nll=None, stage=-1, obs_stage=None):
    n = len(exact)
    return {"id": "x", "stage": stage, "exact": exact, "nll": nll or [1.0] * n, "obs_step": list(range(10, 10 * n + 1, 10)),
            "obs_stage": obs_stage or [-1] * n, "first_learned_step": -1, "forgetting_events": 0}


def test_forgetting_signal():
    rows = [
        _rec([False, True, True, False]),                 # learned, held once more, lost: share 2/3
        _rec([False, True, False, False]),                # a flicker: reproduced at 1 of 3 observations
        _rec([False, False, False, False]),               # never learned
        _rec([False, True, False, True]),                 # learned at the end: not forgotten
        _rec([False, True, False, False, False], stage=0, obs_stage=[0, 0, 0, 1, 1]),  # left-side forgetting
        _rec([False, False, False, True, False], stage=1, obs_stage=[0, 1, 1, 1, 1]),  # last stage: 1 of 2
        _rec([True, False, False, False], stage=1, obs_stage=[0, 1, 1, 1]),  # reproduced only before its stage
    ]
    score, ev = forgetting_signal(rows, DiagnoserConfig())
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert score.tolist() == pytest.approx(
        [sigmoid(4 * math.log(4 / 3)), sigmoid(4 * math.log(2 / 3)), 0.0, 0.0, 0.9, 0.5, 0.0])
    assert ev["learned_obs_share"][0] == pytest.approx(2 / 3) and ev["learned_obs_share"][4] == pytest.approx(0.25)
    assert ev["forgot_stage"][4] == 0 and np.isnan(ev["forgot_stage"][5]) and np.isnan(ev["learned_obs_share"][6])


def test_under_training_signal():
    config = DiagnoserConfig()
    rows = [
        _rec([False] * 4, nll=[3.0, 2.4, 1.9, 1.5]),   # falling ~20% per observation
        _rec([False] * 4, nll=[2.5, 2.4, 2.4, 2.4]),   # flat
        _rec([False] * 4, nll=[2.5, 2.4, 2.4, 2.4]),   # flat but long
        _rec([False] * 4, nll=[2.5, 2.4, 2.4, 2.4]),   # flat but the rarest template
        _rec([False, True, False, False], nll=[3.0, 2.4, 1.9, 1.5]),  # learned once: not under-training
        # stage 0 sample: falling during its stage, flat after (later stages do not train it)
        _rec([False] * 5, nll=[3.0, 2.4, 1.9, 1.9, 1.9], stage=0, obs_stage=[0, 0, 0, 1, 1]),
    ]
    rank = np.array([0.5, 0.5, 0.5, 0.0, 0.5, 0.5])
    ratio = np.array([1.0, 1.0, 3.0, 1.0, 1.0, 1.0])
    score, ev = under_training_signal(rows, rank, ratio, config)
    assert score[0] > 0.9 and score[1] < 0.1 and score[2] > 0.8 and score[3] > 0.5
    assert score[4] == 0.0 and score[5] > 0.9
    assert ev["loss_drop"][0] == pytest.approx(-np.polyfit([0, 1, 2], np.log([2.4, 1.9, 1.5]), 1)[0])


def test_verdict_follows_precedence_and_reports_runner_up():
    scores = dict.fromkeys(PRECEDENCE, 0.0)
    v = _verdict({**scores, "missing_knowledge": 0.8, "data_inconsistency": 0.6}, 0.5)
    assert (v["cause"], v["confidence"], v["runner_up"], v["runner_up_confidence"]) == (
        "data_inconsistency", 0.6, "missing_knowledge", 0.8)
    v = _verdict({**scores, "under_training": 0.9, "forgetting": 0.3}, 0.5)
    assert (v["cause"], v["runner_up"]) == ("under_training", "forgetting")
    v = _verdict({**scores, "knowledge_conflict": 0.4}, 0.5)
    assert (v["cause"], v["runner_up"], v["runner_up_confidence"]) == ("unexplained", "knowledge_conflict", 0.4)
    assert v["confidence"] == pytest.approx(0.6)


def test_batched_stats_equal_one_row_at_a_time():
    """Left padding with explicit positions: a row's statistics do not depend on its batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=64, max_position_embeddings=64)
    model, other = LlamaForCausalLM(config).eval(), LlamaForCausalLM(config).eval()
    rng = np.random.default_rng(0)
    seqs = [(rng.integers(4, 40, rng.integers(2, 9)).tolist(), rng.integers(4, 40, rng.integers(1, 6)).tolist())
            for _ in range(7)]
    together = teacher_forced_stats(model, seqs, batch_size=7, other=other, progress=False)
    alone = teacher_forced_stats(model, seqs, batch_size=1, other=other, progress=False)
    # the LM heads read one position at a time (the smallest chunk of logits)
    chunked = teacher_forced_stats(model, seqs, batch_size=7, other=other, progress=False, chunk_elements=1)
    for key in ("gm_p", "p_seq", "alt_prob", "jsd", "other_gm_p"):
        np.testing.assert_allclose(together[key], alone[key], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(together[key], chunked[key], rtol=1e-5, atol=1e-7)
    for key in ("exact", "alt_token", "follows_alt"):
        np.testing.assert_array_equal(together[key], chunked[key])
    # and the same as a plain unpadded forward
    prompt, completion = seqs[3]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([prompt + completion])).logits[0].log_softmax(-1)
    gold = [logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(completion)]
    assert together["p_seq"][3] == pytest.approx(math.exp(sum(gold)), rel=1e-4)
