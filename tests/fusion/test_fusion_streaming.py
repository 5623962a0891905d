"""The blocked and mapped paths of the fusion: block and window boundaries, the candidate buffer of
the core selection (cuts, sampled floor, rescan when the floor was too high), bfloat16 models,
tensors that are not floating point, and the checkpoint reader and writer underneath."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_ilp.fusion import core, core_regions, fuse_checkpoints, load_cores, merge_utils, slerp
from hf_ilp.fusion.checkpoint import Checkpoint, ShardWriter

from tests.fusion._models import perturbed, tiny_llama
from tests.fusion._reference import hand_cores, slerp_ref, state, two_task_fused


@pytest.mark.parametrize("block", [1, 7, 1000])
def test_blocked_slerp_matches_mergekit_across_block_boundaries(monkeypatch, block):
    monkeypatch.setattr(merge_utils, "BLOCK", block)
    g = torch.Generator().manual_seed(block)
    a, b = torch.randn(37, 29, generator=g), torch.randn(37, 29, generator=g)
    ref = slerp_ref(a, b, 0.3)
    out = slerp(a, b, 0.3)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    # bfloat16 blocks are widened to float32 block by block: same as widening the whole tensor
    out16 = slerp(a.bfloat16(), b.bfloat16(), 0.3)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16, slerp_ref(a.bfloat16(), b.bfloat16(), 0.3).bfloat16(), rtol=1e-2, atol=1e-3)


def _record_scans(monkeypatch):
    floors = []
    scan = core._scan

    def recording(base, task, names, k, floor):
        floors.append(floor)
        return scan(base, task, names, k, floor)

    monkeypatch.setattr(core, "_scan", recording)
    return floors


@pytest.mark.parametrize(
    "setting",
    [
        dict(BLOCK=16, _WINDOW=50),  # many blocks and windows; the buffer is cut many times
        dict(_SAMPLE_SHARE=1.0, _RUN=8),  # everything sampled: the scan starts from an estimated floor
        dict(_SAMPLE_SHARE=1.0, _RUN=8, _MARGIN=0.5),  # floor too high: fewer than k above it, rescan from 0
    ],
)
def test_core_selection_is_exact_whatever_the_path(saved_models, monkeypatch, setting):
    for key, value in setting.items():
        monkeypatch.setattr(merge_utils if key == "BLOCK" else core, key, value)
    floors = _record_scans(monkeypatch)
    base, alpha = state(saved_models["base"]), state(saved_models["alpha"])
    cores = core_regions(saved_models["base"], saved_models["alpha"], share=0.05)
    assert {n: set(m.indices().tolist()) for n, m in cores.items()} == hand_cores(base, alpha, 0.05)
    if "_MARGIN" in setting:
        assert floors[0] > 0.0 and floors[1:] == [0.0]
    elif "_SAMPLE_SHARE" in setting:
        assert len(floors) == 1 and floors[0] > 0.0
    else:
        assert floors == [0.0]


def test_candidate_buffer_stays_bounded_and_exact():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(10_000, generator=g).numpy()
    top = core._TopK(k=300, block=64)
    peak = 0
    for start in range(0, scores.size, 64):
        top.add(scores[start : start + 64], start)
        peak = max(peak, top.held)
    assert peak <= 2 * 300 and top.floor > 0.0
    assert set(top.indices().tolist()) == set(torch.topk(torch.from_numpy(scores), 300).indices.tolist())


@pytest.mark.parametrize("block", [5, 64])
def test_two_tasks_fused_block_by_block_equal_hand_computation(saved_models, tmp_path, monkeypatch, block):
    monkeypatch.setattr(merge_utils, "BLOCK", block)
    tasks = {"alpha": saved_models["alpha"], "beta": saved_models["beta"]}
    t = 0.5
    fuse_checkpoints(saved_models["base"], tasks, tmp_path / "fused", t=t, core_share=0.05)
    base, sa, sb, fused = (state(p) for p in (saved_models["base"], tasks["alpha"], tasks["beta"], tmp_path / "fused"))
    expected, won = two_task_fused(base, sa, sb, hand_cores(base, sa, 0.05), hand_cores(base, sb, 0.05), t)
    for n in base:
        torch.testing.assert_close(fused[n].reshape(-1), expected[n], rtol=1e-5, atol=1e-6, msg=n)
    assert won["a"] > 0 and won["b"] > 0  # both ways of settling a shared entry happened


def test_bfloat16_models_fuse_in_float32_and_stay_bfloat16(tmp_path, monkeypatch):
    monkeypatch.setattr(merge_utils, "BLOCK", 48)
    base = tiny_llama().to(torch.bfloat16)
    base.save_pretrained(tmp_path / "base")
    perturbed(base.float(), 3).to(torch.bfloat16).save_pretrained(tmp_path / "task")
    fuse_checkpoints(tmp_path / "base", {"task": tmp_path / "task"}, tmp_path / "f", t=0.4, core_share=0.02)
    b, x, f = (state(tmp_path / p, torch.bfloat16) for p in ("base", "task", "f"))
    cores = load_cores(tmp_path / "f")["task"]
    for n in b:
        assert f[n].dtype == torch.bfloat16
        exp = slerp_ref(b[n], x[n], 0.4).bfloat16().reshape(-1)
        idx = cores[n].indices()
        exp[idx] = x[n].reshape(-1)[idx]
        assert torch.equal(f[n].reshape(-1)[idx], x[n].reshape(-1)[idx])  # transplanted bit for bit
        torch.testing.assert_close(f[n].reshape(-1).float(), exp.float(), rtol=8e-3, atol=1e-4, msg=n)


def _raw_model(path, tensors):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "toy", "architectures": ["Toy"]}))
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_tensors_that_are_not_floating_point_are_copied_from_the_base(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 3, generator=g)
    _raw_model(tmp_path / "base", {"w": w, "ids": torch.arange(10)})
    _raw_model(tmp_path / "task", {"w": w + 0.1 * torch.randn(40, 3, generator=g), "ids": torch.arange(10) * 7})
    fuse_checkpoints(tmp_path / "base", {"task": tmp_path / "task"}, tmp_path / "f", t=0.5, core_share=0.1)
    ck = Checkpoint(tmp_path / "f")
    assert torch.equal(ck.view("ids"), torch.arange(10))
    assert ck.view("w").shape == (40, 3)


def test_checkpoint_views_and_windows_match_the_saved_tensors(tmp_path):
    g = torch.Generator().manual_seed(1)
    tensors = {"a": torch.randn(5, 7, generator=g), "b": torch.randn(3, generator=g).double(), "e": torch.empty(0)}
    _raw_model(tmp_path / "m", tensors)
    ck = Checkpoint(tmp_path / "m")
    for n, t in tensors.items():
        assert torch.equal(ck.view(n), t)
    assert torch.equal(ck.view("a", 3, 30), tensors["a"].reshape(-1)[3:30])
    # data that is not aligned to its dtype inside the file is copied instead of mapped
    header = json.dumps({"u": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                         "f": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]}}).encode()
    raw = struct.pack("<Q", len(header)) + header + bytes([1, 2, 3]) + torch.tensor([1.5, -2.0]).numpy().tobytes()
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "model.safetensors").write_bytes(raw)
    assert torch.equal(Checkpoint(tmp_path / "odd").view("f"), torch.tensor([1.5, -2.0]))


def test_checkpoint_reads_a_copy_where_files_cannot_be_mapped(tmp_path, monkeypatch):
    from hf_ilp.fusion import checkpoint as _checkpoint

    t = torch.randn(6, 5)
    _raw_model(tmp_path / "m", {"w": t})

    def refuse(*args, **kwargs):
        raise OSError("mmap not supported")

    monkeypatch.setattr(_checkpoint.mmap, "mmap", refuse)
    ck = Checkpoint(tmp_path / "m")
    assert torch.equal(ck.view("w"), t) and torch.equal(ck.view("w", 4, 17), t.reshape(-1)[4:17])


def test_shard_writer_checks_parts(tmp_path):
    w = ShardWriter(tmp_path / "s.safetensors", [("x", "F32", (2, 3), 24)])
    w.write_part(torch.zeros(4))
    with pytest.raises(ValueError, match="is F32"):
        w.write_part(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs 24 bytes"):
        w.end_tensor("x")
    w.write_part(torch.ones(2))
    w.end_tensor("x")
    w.close()
    assert torch.equal(load_file(str(tmp_path / "s.safetensors"))["x"], torch.tensor([[0.0, 0, 0], [0, 1, 1]]))
