"""CPIFTTrainer: pipelined SFT over groups, earlier groups' cores frozen bit for bit under AdamW."""

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForCausalLM, TrainerCallback

from hf_ilp.fusion import CPIFTConfig, CPIFTTrainer, core_regions, train_probes
from hf_ilp.world.model import tiny_llama_config
from hf_ilp.world.tokenizer import build_word_tokenizer

WORDS = ["up", "down", "a", "b", "c", "d", "="]


def _data():
    rows = []
    for i, (x, y) in enumerate([(x, y) for x in "abcd" for y in "abcd"]):
        rows.append({"prompt": f"up {x} {y} =", "completion": f" {y} {x}", "task": "up"})
        rows.append({"prompt": f"down {x} {y} =", "completion": f" {x} {x}", "task": "down"})
    return Dataset.from_list(rows)


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-2,
        weight_decay=0.1, max_length=16, bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=100, disable_tqdm=True, seed=0,
    )
    base.update(kw)
    return CPIFTConfig(**base)


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(WORDS)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    return tok, model


class _StageEnds(TrainerCallback):
    def __init__(self, watch):
        self.watch, self.values, self.rows = watch, [], []

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.rows.append(len(train_dataloader.dataset))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.values.append({n: p.detach().reshape(-1).clone() for n, (p, i) in self.watch(model).items()})


@pytest.mark.parametrize("mix", ["group", "cumulative"])
def test_earlier_groups_cores_do_not_move_at_all(tiny, tmp_path, mix):
    tok, base = tiny
    model = LlamaForCausalLM(base.config)
    model.load_state_dict(base.state_dict())
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    # cores: 5% of every tensor (a large share, so that unmasked AdamW would surely move them)
    cores = {t: core_regions(model, {n: p + torch.randn(p.shape, generator=g) for n, p in params.items()}, 0.05) for t in ("up", "down")}
    frozen_idx = {n: m.indices() for n, m in cores["up"].items() if m.count}

    def watch(m):
        ps = dict(m.named_parameters())
        return {n: (ps[n], i) for n, i in frozen_idx.items()}

    ends = _StageEnds(watch)
    trainer = CPIFTTrainer(
        model=model, args=_args(tmp_path, cpi_stage_mix=mix), train_dataset=_data(), processing_class=tok,
        groups=[["up"], ["down"]], cores=cores, callbacks=[ends],
    )
    start = {n: p.detach().clone() for n, p in params.items()}
    given = (trainer.args.output_dir, trainer.train_dataset)
    trainer.train()
    assert (trainer.args.output_dir, trainer.train_dataset) == given  # the stages did not change them
    assert [t.args.output_dir for t in trainer.stage_trainers] == [f"{given[0]}/stage-0", f"{given[0]}/stage-1"]
    assert len(ends.values) == 2  # one on_train_end per stage
    # stage 1 trains on "down" alone, or (cumulative) on "up" and "down" while up's core stays frozen
    assert ends.rows == ([16, 16] if mix == "group" else [16, 32])
    stage0, stage1 = ends.values
    moved_in_stage0 = sum(int((stage0[n][i] != start[n].reshape(-1)[i]).sum()) for n, i in frozen_idx.items())
    assert moved_in_stage0 > 0.9 * sum(i.numel() for i in frozen_idx.values())  # free in its own stage
    for n, i in frozen_idx.items():
        assert torch.equal(stage0[n][i], stage1[n][i]), n  # frozen in the later stage, bit for bit
        free = torch.ones(stage0[n].numel(), dtype=torch.bool)
        free[i] = False
        assert (stage0[n][free] != stage1[n][free]).float().mean() > 0.5, n  # the rest kept training
    w = "model.layers.0.mlp.down_proj.weight"
    assert trainer.frozen_masks(1)[w].count == cores["up"][w].count
    assert trainer.frozen_masks(0) == {}


def test_bad_task_setup_is_refused(tiny, tmp_path):
    tok, model = tiny
    data = _data()
    with pytest.raises(ValueError, match="have no rows"):
        CPIFTTrainer(model=model, args=_args(tmp_path), train_dataset=data, processing_class=tok, groups=[["up"], ["side"]], cores={})
    with pytest.raises(ValueError, match="belong to no group"):
        CPIFTTrainer(model=model, args=_args(tmp_path), train_dataset=data, processing_class=tok, groups=[["up"]], cores={})
    with pytest.raises(ValueError, match="no core region"):
        CPIFTTrainer(model=model, args=_args(tmp_path), train_dataset=data, processing_class=tok, groups=[["up"], ["down"]], cores={})
    with pytest.raises(ValueError, match="task column"):
        train_probes("unused", data.remove_columns("task"), _args(tmp_path), tok)
    with pytest.raises(ValueError, match=r"\['side'\] have no rows"):
        train_probes("unused", data, _args(tmp_path), tok, tasks=["up", "side"])
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="cpi_slerp_t"):
        _args(tmp_path, cpi_slerp_t=2.0)
    with pytest.raises(ValueError, match="cpi_stage_mix"):
        _args(tmp_path, cpi_stage_mix="all")


def test_run_cpi_ft_end_to_end(tiny, tmp_path):
    from hf_ilp.fusion import run_cpi_ft

    tok, model = tiny
    model.save_pretrained(tmp_path / "base")
    args = _args(tmp_path, num_train_epochs=1, cpi_core_share=0.02)
    trainer, fusion = run_cpi_ft(tmp_path / "base", _data(), args, tok)
    run = tmp_path / "run"
    assert {"fused", "probe-down", "probe-up"} <= {p.name for p in run.iterdir()}  # stages save nothing here
    assert sorted(t for g in fusion.groups for t in g) == ["down", "up"]
    assert set(fusion.core_entries) == {"down", "up"} and all(n > 0 for n in fusion.core_entries.values())
    fused = LlamaForCausalLM.from_pretrained(run / "fused")
    # the pipelined SFT started from the fused model and moved it
    moved = [not torch.equal(p, q) for p, q in zip(fused.parameters(), trainer.model.parameters())]
    assert any(moved)
