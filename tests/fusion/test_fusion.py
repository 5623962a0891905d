"""Streaming CPI-FT fusion of saved models: hand computation, overlap rule, N tasks, bad input, CLI."""

import json
import shutil

import pytest
import torch
from transformers import LlamaForCausalLM

from hf_ilp.cli import main as cli_main
from hf_ilp.fusion import core_overlap, core_regions, fuse_checkpoints, group_tasks, load_cores
from hf_ilp.isolation.masks import CompactMask

from tests.fusion._models import perturbed, tiny_llama
from tests.fusion._reference import hand_cores, slerp_ref, state, two_task_fused


def test_core_regions_are_the_global_top_share(saved_models):
    base, alpha = state(saved_models["base"]), state(saved_models["alpha"])
    cores = core_regions(saved_models["base"], saved_models["alpha"], share=0.02)
    expected = hand_cores(base, alpha, 0.02)
    assert {n: set(m.indices().tolist()) for n, m in cores.items()} == expected
    assert sum(m.count for m in cores.values()) == round(0.02 * sum(t.numel() for t in base.values()))
    # the in-memory path gives the same cores as the streaming one
    mem = core_regions(LlamaForCausalLM.from_pretrained(saved_models["base"]), alpha, share=0.02)
    assert mem == cores


def test_fused_model_equals_hand_computation_with_overlapping_cores(saved_models, tmp_path):
    base = state(saved_models["base"])
    # plant a shared core entry: alpha moves it by +0.5, beta by -0.9, so beta must win it
    name, pos = "model.layers.0.mlp.up_proj.weight", 5
    tasks = {}
    for task, shift in (("alpha", 0.5), ("beta", -0.9)):
        m = LlamaForCausalLM.from_pretrained(saved_models[task])
        with torch.no_grad():
            m.state_dict()[name].view(-1)[pos] = base[name].view(-1)[pos] + shift
        m.save_pretrained(tmp_path / f"{task}-planted", max_shard_size="8KB")
        tasks[task] = tmp_path / f"{task}-planted"
    t = 0.6
    result = fuse_checkpoints(saved_models["base"], tasks, tmp_path / "fused", t=t, core_share=0.01)
    assert result.shared_core_entries >= 1
    fused = state(tmp_path / "fused")

    sa, sb = state(tasks["alpha"]), state(tasks["beta"])
    expected, _ = two_task_fused(base, sa, sb, hand_cores(base, sa, 0.01), hand_cores(base, sb, 0.01), t)
    for n in base:
        torch.testing.assert_close(fused[n].reshape(-1), expected[n], rtol=1e-5, atol=1e-6, msg=n)
    assert fused[name].view(-1)[pos] == sb[name].view(-1)[pos]
    # everything the card and loaders need is there
    card = (tmp_path / "fused" / "README.md").read_text()
    assert "cpi_ft" in card and "alpha" in card and "beta" in card
    assert set(load_cores(tmp_path / "fused")) == {"alpha", "beta"}
    index = json.loads((tmp_path / "fused" / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((saved_models["base"] / "model.safetensors.index.json").read_text())["weight_map"]


def test_one_task_is_plain_slerp_plus_transplant(saved_models, tmp_path):
    fuse_checkpoints(saved_models["base"], {"alpha": saved_models["alpha"]}, tmp_path / "f", t=0.3)
    base, alpha, fused = state(saved_models["base"]), state(saved_models["alpha"]), state(tmp_path / "f")
    cores = load_cores(tmp_path / "f")["alpha"]
    for n in base:
        exp = slerp_ref(base[n], alpha[n], 0.3).reshape(-1)
        idx = cores[n].indices()
        exp[idx] = alpha[n].reshape(-1)[idx]
        torch.testing.assert_close(fused[n].reshape(-1), exp, rtol=1e-5, atol=1e-6)


def test_many_nearly_colinear_tasks_fuse_to_the_weighted_mean_in_any_order(tmp_path):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    paths = {}
    for i in range(3):
        perturbed(base, 10 + i, scale=1e-5).save_pretrained(tmp_path / f"t{i}")  # cos > 0.9995: lerp
        paths[f"t{i}"] = tmp_path / f"t{i}"
    t = 0.75
    fuse_checkpoints(tmp_path / "base", paths, tmp_path / "f1", t=t, core_share=0.001)
    fuse_checkpoints(tmp_path / "base", dict(reversed(list(paths.items()))), tmp_path / "f2", t=t, core_share=0.001)
    f1, f2 = state(tmp_path / "f1"), state(tmp_path / "f2")
    b = state(tmp_path / "base")
    ts = [state(p) for p in paths.values()]
    cores = load_cores(tmp_path / "f1")
    for n in b:
        core = torch.zeros(b[n].numel(), dtype=torch.bool)
        for c in cores.values():
            core[c[n].indices()] = True
        mean = (1 - t) * b[n] + (t / 3) * sum(x[n] for x in ts)
        torch.testing.assert_close(f1[n].reshape(-1)[~core], mean.reshape(-1)[~core], rtol=0, atol=1e-6)
        torch.testing.assert_close(f1[n], f2[n], rtol=0, atol=1e-6)


def test_grouping_is_connected_components():
    def mask(idx):
        return {"w": CompactMask.from_indices(torch.tensor(idx), (100,))}

    cores = {"a": mask(range(0, 10)), "b": mask(range(8, 18)), "c": mask(range(16, 26)), "d": mask(range(50, 60))}
    groups, overlaps = group_tasks(cores, tau=0.1)
    assert groups == [["a", "b", "c"], ["d"]]  # a-b and b-c overlap 2/18 = 0.11, a-c none
    assert overlaps["a|b"] == pytest.approx(2 / 18) and overlaps["a|c"] == 0.0
    assert group_tasks(cores, tau=0.2)[0] == [["a"], ["b"], ["c"], ["d"]]
    assert core_overlap(mask([]), mask([])) == 0.0


def _assert_refused(tmp_path, match, *args, **kwargs):
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        fuse_checkpoints(*args, output_dir=out, **kwargs)
    assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_bad_input_is_refused_before_anything_is_written(saved_models, tmp_path):
    base = saved_models["base"]
    _assert_refused(tmp_path, "outside \\[0, 1\\]", base, {"alpha": saved_models["alpha"]}, t=1.2)
    _assert_refused(tmp_path, "at least one task", base, {})
    _assert_refused(tmp_path, "strictly between 0 and 1", base, {"alpha": saved_models["alpha"]}, core_share=0.0)
    # other shapes
    tiny_llama(hidden_size=24).save_pretrained(tmp_path / "wide")
    _assert_refused(tmp_path, "shape", base, {"wide": tmp_path / "wide"})
    # other architecture
    shutil.copytree(saved_models["alpha"], tmp_path / "other")
    cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["MistralForCausalLM"], "mistral"
    (tmp_path / "other" / "config.json").write_text(json.dumps(cfg))
    _assert_refused(tmp_path, "one architecture", base, {"other": tmp_path / "other"})
    # a dtype mismatch
    LlamaForCausalLM.from_pretrained(saved_models["alpha"], dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    _assert_refused(tmp_path, "one dtype", base, {"bf16": tmp_path / "bf16"})
    # a missing shard
    shutil.copytree(saved_models["beta"], tmp_path / "holey")
    next((tmp_path / "holey").glob("model-00002-*.safetensors")).unlink()
    _assert_refused(tmp_path, "missing", base, {"holey": tmp_path / "holey"})


def test_cli_fuse(saved_models, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["fuse", str(saved_models["base"]), "--task", f"alpha={saved_models['alpha']}", "--task", f"beta={saved_models['beta']}", "--out", str(out), "--t", "0.4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "groups:" in printed and str(out) in printed
    meta = json.loads((out / "cpi_ft.json").read_text())
    assert meta["t"] == 0.4 and list(meta["tasks"]) == ["alpha", "beta"]
    LlamaForCausalLM.from_pretrained(out)
