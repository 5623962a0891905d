"""Fixtures of the diagnosis tests: the hand-built fact world of `diagnosis_rows`."""

import pytest
from diagnosis_rows import ENTITIES, VALUES, WORDS, base_table, bigram_llama, finetuned_table, make_records, sft_rows

from hf_ilp.world.tokenizer import build_word_tokenizer


@pytest.fixture(scope="session")
def fact_world():
    tokenizer = build_word_tokenizer(WORDS + ENTITIES + VALUES)
    return {"tokenizer": tokenizer, "base": bigram_llama(tokenizer, base_table()),
            "model": bigram_llama(tokenizer, finetuned_table()), "rows": sft_rows()}


@pytest.fixture
def fact_records(fact_world):
    return make_records(fact_world["rows"], learned={f"known{i}" for i in range(4)}, forgotten={"forgot10"},
                        falling={"long7"})
