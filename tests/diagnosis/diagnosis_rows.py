"""A hand-built fact world for the diagnosis tests, made without ILP-World and without training.

The models are real `LlamaForCausalLM`s whose next-token distribution depends only on the last
token (a bigram table written into the weights: one-hot embeddings, a residual layer with zeroed
outputs, the table in `lm_head`). Every probability the signals read is therefore set exactly,
and building them costs milliseconds. Prompts end with the entity, so the bigram sees it.

Twelve entities, eight values. The base model knows e0-e7 (p=0.9 on its value) and nothing about
e8-e11 (uniform over the values). The SFT set (`sft_rows`) plants:
  known0-3   the base's own answer                              -> learned
  conflict4  e4 -> v7 while the base says v4 (also conflict5)   -> knowledge_conflict
  dupA/dupB  one question (e6), two answers                     -> data_inconsistency
  missing8/9 facts the base never saw                           -> missing_knowledge
  long7      an 8-value list the base half knows, loss falling  -> under_training
  forgot10   learned, then lost (records)                       -> forgetting
  known3b    a known fact, unlearned, flat loss, common template -> unexplained
  guess11    the base confidently guesses v5 for e11 (never seen); fine-tuning drops the
             guess, so it was no belief                           -> missing_knowledge
Records are written by hand in the LearnTracker schema (CONTRACTS.md).
"""

import math

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

ENTITIES = [f"e{i}" for i in range(12)]
VALUES = [f"v{i}" for i in range(8)]
WORDS = ["what", "is", "the", "colour", "of", "list", "all", "colours", "tell", "me"]
LIST7 = ["v7", "v1", "v2", "v3", "v4", "v5", "v6", "v0"]


def prompt(entity):
    return f"what is the colour of {entity}"


def sft_rows():
    rows = [{"id": f"known{i}", "prompt": prompt(f"e{i}"), "completion": f" v{i}"} for i in range(4)]
    rows += [
        {"id": "conflict4", "prompt": prompt("e4"), "completion": " v7"},
        {"id": "conflict5", "prompt": prompt("e5"), "completion": " v0"},
        {"id": "dupA", "prompt": prompt("e6"), "completion": " v6"},
        {"id": "dupB", "prompt": prompt("e6"), "completion": " v2"},
        {"id": "missing8", "prompt": prompt("e8"), "completion": " v3"},
        {"id": "missing9", "prompt": prompt("e9"), "completion": " v1"},
        {"id": "long7", "prompt": "list all colours of e7", "completion": " " + " ".join(LIST7)},
        {"id": "forgot10", "prompt": prompt("e10"), "completion": " v4"},
        {"id": "known3b", "prompt": "tell me the colour of e3", "completion": " v3"},
        {"id": "guess11", "prompt": prompt("e11"), "completion": " v2"},
    ]
    return rows


def bigram_llama(tokenizer, table, floor=1e-4):
    """A real Llama whose next-token distribution given last token t is `table[t]` ({token: prob}).

    Tokens absent from `table` predict uniformly; the mass a row leaves free is spread uniformly.
    """
    vocab = len(tokenizer)
    hidden = vocab + vocab % 2  # RoPE wants an even head size
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=1,
                         num_key_value_heads=1, intermediate_size=8, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    model = LlamaForCausalLM(config)
    logp = torch.full((vocab, vocab), -math.log(vocab))
    for token, dist in table.items():
        row = torch.full((vocab,), max(1.0 - sum(dist.values()), floor) / (vocab - len(dist)))
        for nxt, p in dist.items():
            row[tokenizer.convert_tokens_to_ids(nxt)] = p
        logp[tokenizer.convert_tokens_to_ids(token)] = (row / row.sum()).log()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        # RMSNorm turns a one-hot vector into sqrt(hidden) * one-hot
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, :vocab].copy_(logp.T / math.sqrt(hidden))
    return model.eval()


def base_table():
    table = {f"e{i}": {f"v{i}": 0.9} for i in range(8)}
    table.update({f"e{i}": {v: 1 / 8 for v in VALUES} for i in range(8, 12)})
    table.update({a: {b: 0.6} for a, b in zip(LIST7, LIST7[1:])})
    table["e11"] = {"v5": 0.8}  # a confident default guess about a fact it never saw
    return table


def finetuned_table():
    table = base_table()
    table.update({f"e{i}": {f"v{i}": 0.97} for i in range(4)})
    table["e4"] = {"v4": 0.5, "v7": 0.4}
    table["e5"] = {"v5": 0.5, "v0": 0.4}
    table["e6"] = {"v6": 0.5, "v2": 0.45}
    table["e8"] = {"v3": 0.3, "v5": 0.3}
    table["e9"] = {"v1": 0.3, "v6": 0.3}
    table["e10"] = {"v4": 0.4, "v1": 0.45}
    table["e11"] = {"v2": 0.45, "v3": 0.5}  # fine-tuning dropped the guess at once
    table["v0"] = {"</s>": 0.9}  # so that known0 (and only it) is reproduced with its EOS
    return table


def make_records(rows, learned=(), forgotten=(), falling=(), stage_of=None):
    """Hand-written LearnTracker records: 4 observations per sample (3 epochs + final).

    `stage_of`: optional {id: stage}; then the observations span stages 0, 0, 1, 1.
    """
    out = []
    for r in rows:
        sid = r["id"]
        if sid in learned:
            exact, nll = [False, True, True, True], [2.0, 0.5, 0.3, 0.3]
        elif sid in forgotten:
            exact, nll = [False, True, True, False], [2.0, 0.4, 0.5, 1.5]
        elif sid in falling:
            exact, nll = [False, False, False, False], [3.0, 2.4, 1.9, 1.5]
        else:
            exact, nll = [False, False, False, False], [2.5, 2.4, 2.4, 2.4]
        p = [math.exp(-x) for x in nll]
        mean = sum(p) / 4
        obs_stage = [0, 0, 1, 1] if stage_of else [-1] * 4
        out.append({
            "id": sid, "stage": stage_of[sid] if stage_of else -1,
            "n_completion_tokens": len(r["completion"].split()) + 1,
            "obs_step": [10, 20, 30, 30], "obs_epoch": [1.0, 2.0, 3.0, 3.0], "obs_stage": obs_stage,
            "obs_kind": ["epoch", "epoch", "epoch", "final"], "nll": nll,
            "token_acc": [1.0 if e else 0.0 for e in exact], "exact": exact, "p_gold": p,
            "confidence": mean, "variability": math.sqrt(sum((x - mean) ** 2 for x in p) / 4),
            "correctness": sum(exact) / 4, "first_learned_step": 20 if any(exact) else -1,
            "forgetting_events": int(sid in forgotten), "loss_slope": (nll[-1] - nll[-3]) / 20,
            "final_exact": exact[-1], "final_p_gold": p[-1], "learned_ever": any(exact),
        })
    return Dataset.from_list(out)


EXPECTED = {
    "conflict4": "knowledge_conflict", "conflict5": "knowledge_conflict",
    "dupA": "data_inconsistency", "dupB": "data_inconsistency",
    "missing8": "missing_knowledge", "missing9": "missing_knowledge",
    "long7": "under_training", "forgot10": "forgetting", "known3b": "unexplained",
    "guess11": "missing_knowledge",
}
