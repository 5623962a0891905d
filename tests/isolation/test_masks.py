"""Masks: compact storage, top-p selection, and update masking that freezes entries bitwise."""

import pytest
import torch

from hf_ilp.isolation.masks import CompactMask, UpdateMasker, load_masks, mask_churn, save_masks, select_top_p


@pytest.mark.parametrize("shape,share", [((7,), 0.5), ((13, 5), 0.01), ((64, 33), 0.2), ((3, 4, 5), 0.0), ((9,), 1.0)])
def test_compact_mask_roundtrip(shape, share):
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(shape, generator=g) < share
    m = CompactMask.from_bool(dense)
    assert torch.equal(m.to_bool(), dense)
    assert torch.equal(m.indices(), dense.reshape(-1).nonzero().squeeze(1))
    assert m.count == int(dense.sum())
    assert m == CompactMask.from_indices(m.indices(), shape)
    # never more than one bit per entry (plus padding), and indices only when cheaper
    assert m.nbytes <= (dense.numel() + 7) // 8 + 4
    if m.kind == "indices":
        assert m.count * 32 < dense.numel()


def test_select_top_p_global_matches_full_sort():
    g = torch.Generator().manual_seed(1)
    scores = {"a": torch.rand(300, 200, generator=g), "b": torch.rand(1000, generator=g) * 2, "c": torch.rand(10, 10, generator=g) * 0.1}
    masks = select_top_p(scores, 0.1)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    k = round(0.1 * flat.numel())
    expected = torch.zeros_like(flat, dtype=torch.bool)
    expected[torch.topk(flat, k).indices] = True
    got = torch.cat([masks[n].to_bool().reshape(-1) for n in scores])
    assert torch.equal(got, expected)
    assert masks["c"].count == 0 and masks["b"].count > masks["a"].count * 1000 / 60000


def test_select_top_p_per_layer_and_ties():
    scores = {"a": torch.arange(100.0).view(10, 10), "b": torch.ones(40)}
    masks = select_top_p(scores, 0.25, scope="per_layer")
    assert masks["a"].count == 25 and masks["b"].count == 10
    assert torch.equal(masks["a"].indices(), torch.arange(75, 100))
    # global scope keeps every entry tied with the threshold
    tied = select_top_p({"x": torch.tensor([3.0, 2.0, 2.0, 2.0, 1.0])}, 0.4)
    assert tied["x"].count == 4


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_bad_p_is_rejected(p):
    with pytest.raises(ValueError, match="between 0 and 1"):
        select_top_p({"a": torch.rand(4)}, p)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def _train(model, opt, masker, steps):
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        masker.snapshot()
        opt.step()
        masker.restore()


def test_update_masker_freezes_bitwise_under_adamw_weight_decay():
    model = _mlp()
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    masker = UpdateMasker(params, opt)
    # build up momentum first, so a gradient-only freeze would visibly fail
    _train(model, opt, masker, 3)
    masks = select_top_p({n: p.detach().abs() for n, p in params.items()}, 0.3)
    masker.set_masks(masks)
    before = {n: p.detach().clone() for n, p in params.items()}
    _train(model, opt, masker, 5)
    assert sum(m.count for m in masks.values()) > 100
    for n, p in params.items():
        sel = masks[n].to_bool()
        assert torch.equal(p.detach()[sel], before[n][sel]), n  # bitwise: not one ulp moved
        assert (p.detach()[~sel] != before[n][~sel]).float().mean() > 0.9, n  # the rest trains
        assert torch.all(opt.state[p]["exp_avg"][sel] == 0)
    # released entries train again
    masker.set_masks({})
    frozen = {n: p.detach().clone() for n, p in params.items()}
    _train(model, opt, masker, 2)
    for n, p in params.items():
        sel = masks[n].to_bool()
        if sel.any():
            assert (p.detach()[sel] != frozen[n][sel]).float().mean() > 0.9, n


def test_gradient_zeroing_alone_would_not_freeze():
    """The pitfall the masker exists for: AdamW moves entries whose gradient is zero."""
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    w = model[0].weight
    loss = model(torch.randn(8, 16)).pow(2).mean()
    loss.backward()
    opt.step()
    before = w.detach().clone()
    opt.zero_grad()
    model(torch.randn(8, 16)).pow(2).mean().backward()
    w.grad.zero_()
    opt.step()
    assert not torch.equal(w.detach(), before)


def test_save_load_and_churn(tmp_path):
    g = torch.Generator().manual_seed(3)
    scores = {"w": torch.rand(50, 40, generator=g), "b": torch.rand(40, generator=g)}
    a = select_top_p(scores, 0.2)
    b = select_top_p(scores, 0.01)
    save_masks({**a, "tiny": b["w"]}, tmp_path / "m.safetensors")
    back = load_masks(tmp_path / "m.safetensors")
    assert back["w"] == a["w"] and back["b"] == a["b"] and back["tiny"] == b["w"]
    assert back["tiny"].kind == "indices" and back["w"].kind == "bits"
    assert mask_churn(a, a) == 0.0
    n_a = a["w"].count + a["b"].count
    n_b = b["w"].count + b["b"].count
    assert mask_churn(b, a) == pytest.approx(1 - n_b / n_a)  # b's entries are a subset of a's
    assert mask_churn(a, b) == 0.0
    assert mask_churn({}, a) == 1.0
