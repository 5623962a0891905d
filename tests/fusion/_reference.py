"""Hand references for the fusion tests: saved states, mergekit's SLERP on flattened tensors, cores
by a global top-k, and the fused value of two task models with the core-winner rule."""

import torch
from mergekit.merge_methods.slerp import slerp as mergekit_slerp
from transformers import LlamaForCausalLM


def state(path, dtype=torch.float32):
    return {k: v.to(dtype) for k, v in LlamaForCausalLM.from_pretrained(path, dtype=dtype).state_dict().items()}


def slerp_ref(a, b, t):
    return mergekit_slerp(torch.tensor(t), a.reshape(1, -1).float(), b.reshape(1, -1).float()).reshape(a.shape)


def hand_cores(base, task, share):
    deltas = {n: (task[n] - base[n]).abs().reshape(-1) for n in base}
    k = round(share * sum(d.numel() for d in deltas.values()))
    thr = torch.topk(torch.cat(list(deltas.values())), k).values[-1]
    return {n: set((d >= thr).nonzero().squeeze(1).tolist()) for n, d in deltas.items()}


def two_task_fused(base, sa, sb, ca, cb, t):
    """{name: expected flat tensor} for tasks a then b fused at `t`, and how many shared core entries
    each task won ({"a": n, "b": n}): the larger |task - base| wins, ties to the earlier task."""
    t1, t2 = (t / 2) / ((1 - t) + t / 2), (t / 2) / ((1 - t) + t)
    expected, won = {}, {"a": 0, "b": 0}
    for n in base:
        flat = slerp_ref(slerp_ref(base[n], sa[n], t1), sb[n], t2).reshape(-1).clone()
        for i in ca[n] | cb[n]:
            da = abs(sa[n].view(-1)[i] - base[n].view(-1)[i]) if i in ca[n] else -1.0
            db = abs(sb[n].view(-1)[i] - base[n].view(-1)[i]) if i in cb[n] else -1.0
            flat[i] = (sa if da >= db else sb)[n].view(-1)[i]
            if i in ca[n] and i in cb[n]:
                won["a" if da >= db else "b"] += 1
        expected[n] = flat
    return expected, won
