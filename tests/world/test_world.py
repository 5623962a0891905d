"""ILP-World: determinism, contents, cache, errors and the CLI (calibration is in test_calibration.py)."""

import json
import shutil

import pytest
import torch
from transformers import LlamaForCausalLM

from hf_ilp.cli import main as cli_main
from hf_ilp.world import World, build_word_tokenizer, build_world, pretrain, reproduced, tiny_llama_config
from hf_ilp.world.build import SIZES, CorruptWorldError
from hf_ilp.world.generate import generate

CAUSES = {"missing_knowledge", "knowledge_conflict", "data_inconsistency", "forgetting", "under_training"}


def test_generation_is_deterministic_by_seed():
    a, b, c = generate(SIZES["tiny"], 0), generate(SIZES["tiny"], 0), generate(SIZES["tiny"], 1)
    assert a.train == b.train and a.corpus == b.corpus and a.probes == b.probes and a.validation == b.validation
    assert a.train != c.train and a.corpus != c.corpus


@pytest.mark.parametrize("size,seed", [("tiny", 0), ("tiny", 5), ("tiny", 15), ("small", 8)])
def test_every_seed_plants_profiles_on_untouched_entities(size, seed):
    """Seeds whose planted facts leave too few untouched entities (tiny 5 and 15, small 8) reserve the
    profiles' entities first; the profiles never share an entity with a missing, contradicted or
    inconsistent fact."""
    text = generate(SIZES[size], seed)
    probes = {p["id"]: p for p in text.probes}
    entity = {r["id"]: probes[r["id"]]["probe_prompts"][0].split()[-2] for r in text.train}
    profiles = {entity[r["id"]] for r in text.train if r["world_cause"] == "under_training"}
    planted = {entity[r["id"]] for r in text.train if r["world_cause"] in {"missing_knowledge", "knowledge_conflict", "data_inconsistency"}}
    assert len(profiles) == SIZES[size].profiles and not profiles & planted


def test_the_roster_world_plants_the_same_causes_in_other_text():
    """The second construction: other relations, two-word names, other frames; same causes, same counts."""
    from hf_ilp.world.generate import ILP_STYLE, ROSTER_STYLE

    spec = SIZES["roster-small"]
    text = generate(spec, 0, style=ROSTER_STYLE)
    assert text == generate(spec, 0, style=ROSTER_STYLE) and text.train != generate(spec, 1, style=ROSTER_STYLE).train
    causes = [r["world_cause"] for r in text.train]
    assert set(causes) == CAUSES | {""}
    assert causes.count("under_training") == spec.profiles and causes.count("data_inconsistency") == 2 * spec.inconsistent_pairs
    assert all(r["id"].startswith("roster-0-") for r in text.train)
    names = {e for e, _ in text.facts}
    prompt_words = {w for r in text.train for w in r["prompt"].split()}
    ilp_frames = {w for r in generate(SIZES["small"], 0, style=ILP_STYLE).train for w in r["prompt"].split()}
    assert not {"question", "answer", "color", "city", "pet", "job"} & prompt_words  # none of ILP-World's frame words
    assert "'s" in prompt_words and "'s" not in ilp_frames
    assert all(len(n.split()) == 2 for n in names) and len({w for n in names for w in n.split()}) == 2 * len(names)
    # the corpus states the facts in the form the probes ask them
    probe = next(p for p, c in zip(text.probes, causes) if c == "")
    assert probe["probe_prompts"][0] + probe["probe_completions"][0] in set(text.corpus)


@pytest.mark.parametrize("seed", [0, 2])
def test_both_right_pairs_are_added_to_an_unchanged_world(seed):
    """`both_right_pairs=n`: the world without the option, plus n verbatim pairs in the last stage whose
    two answers the corpus states alike; every other row, probe, validation row and word unchanged."""
    from collections import Counter

    spec = SIZES["small"]
    plain, n = generate(spec, seed), 8
    both = generate(spec, seed, both_right_pairs=n)
    assert generate(spec, seed, both_right_pairs=0) == plain
    k = len(plain.train)
    assert both.train[:k] == plain.train and both.probes[:k] == plain.probes
    assert both.validation == plain.validation and both.words == plain.words and both.facts == plain.facts
    added = both.train[k:]
    assert len(added) == 2 * n and {r["world_cause"] for r in added} == {"data_inconsistency"}
    assert {r["stage"] for r in added} == {max(r["stage"] for r in plain.train)}
    assert len({r["id"] for r in both.train}) == len(both.train)
    corpus = Counter(both.corpus)
    extra = corpus - Counter(plain.corpus)
    assert sum(extra.values()) == len(both.corpus) - len(plain.corpus) > 0  # only lines added
    for first, second in zip(added[::2], added[1::2]):
        assert first["prompt"] == second["prompt"] and first["completion"] != second["completion"]
        statements = [p["probe_prompts"][0] + p["probe_completions"][0] for p in both.probes[k:] if p["id"] in
                      (first["id"], second["id"])]
        assert len(statements) == 2 and corpus[statements[0]] == corpus[statements[1]] == spec.statement_repeats
    # the pairs ask facts that no other row asks (nor states, as a profile does)
    asked = {q for p in plain.probes for q in p["probe_prompts"]}
    assert not asked & {p["probe_prompts"][0] for p in both.probes[k:]}
    with pytest.raises(ValueError, match="both_right_pairs"):
        generate(spec, seed, both_right_pairs=-1)
    with pytest.raises(ValueError, match="facts free for both-right pairs"):
        generate(SIZES["tiny"], seed, both_right_pairs=1)  # tiny: every fact has a role


def test_pretraining_is_deterministic_by_seed():
    text = generate(SIZES["tiny"], 0)
    tokenizer = build_word_tokenizer(text.words)
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), hidden_size=32, num_attention_heads=2))
        losses = pretrain(model, tokenizer, text.corpus[:64], epochs=2, batch_size=16, seed=3)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert losses[1] < losses[0]
    assert torch.equal(weights[0], weights[1])


def test_word_tokenizer_round_trip(tmp_path):
    tokenizer = build_word_tokenizer(["what", "is", "blue"])
    ids = tokenizer("what is blue</s>").input_ids
    assert ids == [tokenizer.bos_token_id, 4, 5, 6, tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "what is blue"
    assert tokenizer("what is zorb").input_ids[-1] == tokenizer.unk_token_id
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path)("what is blue").input_ids == ids[:-1]
    with pytest.raises(ValueError, match="without whitespace"):
        build_word_tokenizer(["two words"])


def test_tiny_world_contents(tiny_world):
    w = tiny_world
    assert (w.size, w.seed) == ("tiny", 0)
    for split in (w.train, w.validation):
        assert split.column_names == ["id", "prompt", "completion", "stage", "world_cause"]
    assert set(w.train["world_cause"]) == CAUSES | {""}
    assert sorted(set(w.train["stage"])) == [0, 1]
    assert len(set(w.train["id"])) == len(w.train)
    assert list(w.probes["id"]) == list(w.train["id"])
    assert all(len(p) == len(c) > 0 for p, c in zip(w.probes["probe_prompts"], w.probes["probe_completions"]))
    assert "text" in w.corpus.column_names and len(w.corpus) > len(w.train)
    # the tokenizer is saved with the base model, so anything that loads a Hub model loads it
    model = w.load_base_model()
    assert model.config.vocab_size == len(w.tokenizer)
    assert (w.base_model_path / "tokenizer.json").is_file()


def test_planting_is_genuine(tiny_world):
    """The base model knows what the corpus states and not what it leaves out, on the prerequisite probes."""
    w = tiny_world
    model = w.load_base_model()
    rows = [
        {"prompt": p, "completion": c, "cause": cause}
        for probes, cause in zip(w.probes, w.train["world_cause"])
        for p, c in zip(probes["probe_prompts"], probes["probe_completions"])
    ]
    from datasets import Dataset

    probes = Dataset.from_list(rows)
    known = reproduced(model, w.tokenizer, probes)
    share = {}
    for causes in ({"", "forgetting", "under_training"}, {"missing_knowledge"}, {"knowledge_conflict"}):
        flags = [k for k, r in zip(known, rows) if r["cause"] in causes]
        share[min(causes)] = sum(flags) / len(flags)
    # Wide margins (the per-cause figures are the slow calibration's): the base answered 80 of the 80
    # probes of stated facts on seeds 0-5 (bound: 72), and 0-1 of the 8 probes of an unstated fact
    # and 0 of the 8 of a contradicted one. Unstated, a fact is hit only by chance (1 of 24 values):
    # 4 of 8 would take a leak into the corpus.
    assert share[""] >= 0.9, share  # stated in the corpus
    assert share["missing_knowledge"] <= 0.5, share  # never stated in the corpus
    assert share["knowledge_conflict"] <= 0.5, share  # the corpus states another value
    # the corpus never states the missing facts, and states the contradicted ones otherwise
    corpus = set(w.corpus["text"])
    missing = [p for p, c in zip(w.probes, w.train["world_cause"]) if c == "missing_knowledge"]
    assert not any(f"{p['probe_prompts'][0]}{p['probe_completions'][0]}" in corpus for p in missing)
    conflict = [p for p, c in zip(w.probes, w.train["world_cause"]) if c == "knowledge_conflict"]
    assert not any(f"{p['probe_prompts'][0]}{p['probe_completions'][0]}" in corpus for p in conflict)


def test_cache_is_reused_and_verified(tiny_world, world_cache_dir, tmp_path):
    again = build_world("tiny", seed=0, cache_dir=world_cache_dir)
    assert again.path == tiny_world.path
    assert list(again.train["id"]) == list(tiny_world.train["id"])
    # a corrupt copy is detected, never silently reused
    copy = tmp_path / "copy"
    shutil.copytree(tiny_world.path, copy)
    World.load(copy)
    weights = copy / "base_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(CorruptWorldError, match="checksum"):
        World.load(copy)
    (copy / "world.json").write_text("{not json")
    with pytest.raises(CorruptWorldError, match="world.json"):
        World.load(copy)


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown ILP-World size 'huge'"):
        build_world("huge", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="seed"):
        build_world("tiny", seed=-1, cache_dir=tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="cache directory .*a-file.* cannot be written"):
        build_world("tiny", cache_dir=blocker / "cache")


def test_cli_world_build(tiny_world, world_cache_dir, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli_main(["world", "build", "--size", "tiny", "--seed", "0", "--out", str(out), "--cache-dir", str(world_cache_dir)]) == 0
    assert str(out) in capsys.readouterr().out
    meta = json.loads((out / "world.json").read_text())
    assert (meta["size"], meta["seed"]) == ("tiny", 0)
    exported = World.load(out)
    assert list(exported.train["prompt"]) == list(tiny_world.train["prompt"])
    lines = (out / "train.jsonl").read_text().splitlines()
    assert len(lines) == len(tiny_world.train) and json.loads(lines[0])["id"] == tiny_world.train[0]["id"]
    assert (out / "base_model" / "model.safetensors").is_file() and (out / "data" / "probes").is_dir()
    assert cli_main(["world", "build", "--size", "huge", "--out", str(tmp_path / "x"), "--cache-dir", str(world_cache_dir)]) == 2
    assert "unknown ILP-World size 'huge'" in capsys.readouterr().err


def test_the_world_serves_its_own_documents_to_the_interventions(tiny_world):
    """`world.knowledge_source()`: the complete corpus (every fact the SFT set relies on) as a BM25
    source; the pre-training corpus lacks the missing facts, so it holds no more lines."""
    from hf_ilp.interventions import BM25KnowledgeSource, world_knowledge_source

    complete, own = tiny_world.knowledge_source(), tiny_world.knowledge_source(complete=False)
    assert isinstance(complete, BM25KnowledgeSource) and len(complete.texts) == len(set(complete.texts))
    assert set(own.texts) == set(tiny_world.corpus["text"]) and len(complete.texts) >= len(own.texts)
    fact = complete.texts[0]
    assert fact in complete.retrieve([fact], k=3)[0]
    with pytest.warns(DeprecationWarning, match="world.knowledge_source"):
        assert world_knowledge_source(tiny_world).texts == complete.texts
