"""Greedy reproduction of prompt-completion samples, checked under teacher forcing.

Greedy decoding reproduces a completion exactly if and only if, under teacher forcing, the argmax
at every completion position (EOS included) is the target token: one batched forward pass
answers it, no generation loop. ILP-World uses it to calibrate its planted causes and the demo
recipe to count unlearned samples; `hf_ilp.check_learned` is the full learn-check (sampling,
pass@N, NLL) for general use.
"""

import torch


@torch.no_grad()
def reproduced(model, tokenizer, dataset, batch_size: int = 64) -> list[bool]:
    """For each row of `dataset` (columns `prompt`, `completion`), whether greedy decoding reproduces the completion.

    Tokenized as TRL's `SFTTrainer` does for prompt-completion data: the text `prompt + completion
    + eos`, the completion starting where its tokens diverge from those of the prompt alone.
    """
    missing = {"prompt", "completion"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"reproduced: the dataset lacks the column(s) {sorted(missing)}; it needs prompt-completion rows")
    eos = tokenizer.eos_token
    prompts, completions = list(dataset["prompt"]), list(dataset["completion"])
    prompt_ids = tokenizer(prompts)["input_ids"]
    full_ids = tokenizer([p + c + eos for p, c in zip(prompts, completions)])["input_ids"]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    result = []
    for start in range(0, len(full_ids), batch_size):
        rows = full_ids[start : start + batch_size]
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        predicted = model(input_ids=input_ids, attention_mask=attention_mask).logits.argmax(-1)
        for i, row in enumerate(rows):
            p_ids = prompt_ids[start + i]
            begin = next((k for k, (a, b) in enumerate(zip(p_ids, row)) if a != b), min(len(p_ids), len(row)))
            begin = max(begin, 1)
            targets = input_ids[i, begin : len(row)]
            result.append(bool((predicted[i, begin - 1 : len(row) - 1] == targets).all()))
    model.train(was_training)
    return result


def unlearned_by_cause(dataset, reproduced_flags) -> dict:
    """Count, per `world_cause` ("" for normal samples), how many rows are not reproduced.

    Returns `{cause: {"unlearned": n, "total": m}}`. ILP-World's ground truth is read here only
    to calibrate the world and to summarize its demo; no diagnosis code calls this.
    """
    counts = {}
    for cause, ok in zip(dataset["world_cause"], reproduced_flags):
        entry = counts.setdefault(cause, {"unlearned": 0, "total": 0})
        entry["total"] += 1
        entry["unlearned"] += not ok
    return dict(sorted(counts.items()))
