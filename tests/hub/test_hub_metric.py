"""The `incomplete_learning` evaluate metric: loaded by path, exact against greedy generation."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def metric():
    import evaluate

    from hf_ilp.metrics import INCOMPLETE_LEARNING

    return evaluate.load(INCOMPLETE_LEARNING)


def test_metric_counts_exact_reproductions(metric):
    out = metric.compute(
        predictions=[[7, 9, 2, 0], [7, 8, 2, 0], [3, 3, 4, 4]],
        references=[[-100, 7, 9, 2], [-100, 7, 9, 2], [-100, -100, 3, 4]],
        return_per_sample=True,
    )
    # row 3: only the last two positions are supervised; predictions 3, 4 at positions 1, 2 -> hits
    assert out["exact"] == [True, False, True]
    assert out["n_learned"] == 2 and out["n_samples"] == 3
    assert out["learned_share"] == pytest.approx(2 / 3)
    assert out["token_accuracy"] == pytest.approx(7 / 8)
    aligned = metric.compute(predictions=[[1, 2, 5]], references=[[-100, 2, 5]], shift=False)
    assert aligned["learned_share"] == 1.0
    with pytest.raises(ValueError, match="sample 0 has no supervised token"):
        metric.compute(predictions=[[1, 2]], references=[[-100, -100]])


def test_metric_in_compute_metrics_matches_greedy_generate(tmp_path):
    """SFTTrainer.evaluate -> compute_metrics -> metric: the same verdicts as model.generate."""
    import evaluate
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from hf_ilp.metrics import INCOMPLETE_LEARNING, argmax_logits
    from hf_ilp.world.tokenizer import build_word_tokenizer

    torch.manual_seed(0)
    words = [f"w{i}" for i in range(24)]
    tok = build_word_tokenizer(words)
    rows = [{"prompt": f"w{i} w{i + 1}", "completion": f" w{(3 * i) % 24} w{(5 * i + 1) % 24}"} for i in range(8)]
    # the same question twice with two answers: at most one of them can be reproduced
    rows += [{"prompt": "w20 w21", "completion": " w1 w2"}, {"prompt": "w20 w21", "completion": " w3 w4"}]
    data = Dataset.from_list(rows)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    metric = evaluate.load(INCOMPLETE_LEARNING)
    seen = {}

    def compute_metrics(p):
        out = metric.compute(predictions=p.predictions, references=p.label_ids, return_per_sample=True)
        seen["exact"] = out.pop("exact")
        return out

    args = SFTConfig(output_dir=str(tmp_path), max_steps=30, learning_rate=2e-2, per_device_train_batch_size=10, per_device_eval_batch_size=4,
                     bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", logging_strategy="no", seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tok,
                         compute_metrics=compute_metrics, preprocess_logits_for_metrics=argmax_logits)
    trainer.train()
    scores = trainer.evaluate()

    model.eval()
    greedy = []
    for row in rows:
        prompt = tok(row["prompt"], return_tensors="pt")
        target = tok(row["completion"], add_special_tokens=False).input_ids + [tok.eos_token_id]
        with torch.no_grad():
            gen = model.generate(**prompt, max_new_tokens=len(target), do_sample=False, pad_token_id=tok.pad_token_id)
        greedy.append(gen[0, prompt.input_ids.shape[1]:].tolist() == target)
    assert seen["exact"] == greedy
    assert scores["eval_learned_share"] == pytest.approx(sum(greedy) / len(greedy))
    assert 0 < sum(greedy) < len(greedy)  # both verdicts occur, so the comparison means something
