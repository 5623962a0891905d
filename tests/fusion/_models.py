"""Tiny Llama models for the fusion tests."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed=0, **overrides):
    kw = dict(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    kw.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**kw))


def perturbed(model, seed, scale=0.01):
    """A copy of `model` with every weight moved by Gaussian noise (a stand-in for a fine-tune)."""
    out = LlamaForCausalLM(model.config)
    out.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


