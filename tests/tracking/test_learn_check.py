"""check_learned: TRL's tokenization, and verdicts that equal `model.generate`."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from hf_ilp import check_learned
from hf_ilp.tracking.learn_check import tokenize_rows

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% if m['role'] == 'assistant' %}{{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
)


def _generate_reproduces(model, tokenizer, rows, **gen_kwargs):
    """Reproduction flags of `model.generate` (left-padded batch); shape (rows, num_return_sequences)."""
    tokenized = tokenize_rows(rows, tokenizer)
    prompts, completions = [], []
    for ids, tgt in zip(tokenized.ids, tokenized.targets):
        start = tgt.index(1)
        prompts.append(ids[:start])
        completions.append(ids[start:])
    n_ret = gen_kwargs.get("num_return_sequences", 1)
    width = max(map(len, prompts))
    max_new = max(map(len, completions))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **gen_kwargs,
        )[:, width:].tolist()
    flags = np.zeros((len(rows), n_ret), dtype=bool)
    for k, seq in enumerate(out):
        c = completions[k // n_ret]
        flags[k // n_ret, k % n_ret] = seq[: len(c)] == c
    return flags


def test_tokenization_matches_sft_trainer(word_tokenizer, rows, make_model, tmp_path):
    tok = word_tokenizer
    tok.chat_template = CHAT_TEMPLATE
    messages = Dataset.from_list(
        [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"].strip()}]}
         for r in rows.select(range(6))]
    )
    for data in (rows, messages):
        args = SFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False, gradient_checkpointing=False)
        trainer = SFTTrainer(model=make_model(), args=args, train_dataset=data, processing_class=tok)
        ours = tokenize_rows(data, tok)
        assert trainer.train_dataset["input_ids"] == ours.ids
        if data is rows:  # prompt-completion: the loss covers exactly the completion (EOS included)
            labels = trainer.train_dataset["labels"]
            assert [[int(x != -100) for x in lab] for lab in labels] == ours.targets
        else:  # messages: the completion is the last answer and its EOS
            assert [tok.decode([i for i, t in zip(ids, tgt) if t]) for ids, tgt in zip(ours.ids, ours.targets)] == [
                m["messages"][-1]["content"] + " </s>" for m in messages
            ]


def test_greedy_verdict_equals_generate(half_trained, word_tokenizer, rows):
    verdict = check_learned(half_trained, word_tokenizer, rows, batch_size=7, progress=False)
    greedy = _generate_reproduces(half_trained, word_tokenizer, rows, do_sample=False)[:, 0]
    assert 0 < greedy.sum() < len(rows)  # both verdicts occur
    assert verdict["id"] == rows["id"]
    np.testing.assert_array_equal(np.array(verdict["exact"]), greedy)
    # exact <=> every completion token is the argmax
    np.testing.assert_array_equal(np.array(verdict["exact"]), np.isclose(verdict["token_acc"], 1.0))


def test_greedy_verdict_equals_generate_on_ilp_world(tiny_world):
    model = tiny_world.load_base_model().eval()
    verdict = check_learned(model, tiny_world.tokenizer, tiny_world.train, progress=False)
    greedy = _generate_reproduces(model, tiny_world.tokenizer, tiny_world.train, do_sample=False)[:, 0]
    assert 0 < greedy.sum() < len(greedy)
    np.testing.assert_array_equal(np.array(verdict["exact"]), greedy)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_closed_form_matches_sampling(half_trained, word_tokenizer, rows, temperature):
    torch.manual_seed(0)
    k = 40
    sampled = _generate_reproduces(
        half_trained, word_tokenizer, rows, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
        num_return_sequences=k,
    )
    verdict = check_learned(half_trained, word_tokenizer, rows, num_samples=5, temperature=temperature, progress=False)
    p = np.array(verdict["p_sample"])
    freq = sampled.mean(1)
    sd = np.sqrt((p * (1 - p)).sum()) / (len(p) * np.sqrt(k))  # sd of the mean sampled frequency
    assert abs(freq.mean() - p.mean()) < 4 * sd + 1e-3, (freq.mean(), p.mean(), sd)
    # per row: no sampled frequency is far outside its binomial range
    z = (freq - p) / np.sqrt(np.maximum(p * (1 - p), 1e-4) / k)
    assert np.abs(z).max() < 5
    assert np.allclose(verdict["pass_at_n"], 1 - (1 - p) ** 5)
    if temperature == 1.0:
        np.testing.assert_allclose(verdict["p_sample"], verdict["p_gold"])
        np.testing.assert_allclose(np.exp(-np.array(verdict["nll"]) * np.array(verdict["n_completion_tokens"])), verdict["p_gold"], rtol=1e-6)


def test_bad_input_is_named(half_trained, word_tokenizer, rows):
    with pytest.raises(ValueError, match="no completion token.*item0-color"):
        check_learned(half_trained, word_tokenizer, rows.select(range(3)), max_length=4, progress=False)
    with pytest.raises(ValueError, match="prompt.*completion"):
        check_learned(half_trained, word_tokenizer, Dataset.from_dict({"text": ["what is"]}), progress=False)
    with pytest.raises(ValueError, match="assistant"):
        check_learned(half_trained, word_tokenizer, Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}]))
    with pytest.raises(ValueError, match="temperature"):
        check_learned(half_trained, word_tokenizer, rows, temperature=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_scoring_equals_the_whole_logits(half_trained, word_tokenizer, rows, temperature):
    """The head scored one completion position at a time (the smallest chunk) and the model's own
    forward (no chunking) give the same verdicts and probabilities."""
    import copy

    from hf_ilp.tracking.learn_check import decoder_and_head, score_rows

    tokenized = tokenize_rows(rows, word_tokenizer)
    vocab = half_trained.config.vocab_size
    assert decoder_and_head(half_trained) is not None
    one_position = score_rows(half_trained, tokenized, range(len(rows)), batch_size=8, temperature=temperature,
                              progress=False, chunk_elements=vocab)
    # a config that declares a logit transform is scored from the model's own forward; Llama ignores
    # this field, so its logits stay lm_head's and the two paths must agree
    own = copy.deepcopy(half_trained)
    own.config.final_logit_softcapping = 30.0
    assert decoder_and_head(own) is None
    whole = score_rows(own, tokenized, range(len(rows)), batch_size=8, temperature=temperature, progress=False)
    np.testing.assert_array_equal(one_position["exact"], whole["exact"])
    np.testing.assert_array_equal(one_position["token_acc"], whole["token_acc"])
    for key in ("nll", "p_gold", "p_sample"):
        np.testing.assert_allclose(one_position[key], whole[key], rtol=1e-5, err_msg=key)
