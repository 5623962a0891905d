"""Nearest prompts for data_inconsistency: hf_ilp's blocked top-k against sentence-transformers' search.

`PromptIndex.neighbors` (the dense branch: the encoder's embeddings) takes each block of 1024
queries' similarities to every prompt as one matrix product and keeps a top-k per row, as tensors.
`sentence_transformers.util.semantic_search` does the same products and top-k per chunk, then
returns a list of dicts per query. Both run here on the same embeddings (the offline sentence
encoder on templated prompts), with one torch thread, `--repeats` times each, alternated:
- ours: `index.neighbors(all rows, k)`;
- baseline: `semantic_search(emb, emb, top_k=k + 1, query_chunk_size=1024, score_function=dot_score)`
  (the embeddings are normalized, so the dot product is the cosine; `k + 1` because a prompt is
  its own best match), then each query's own index dropped and the hits put into arrays.
Checks that both find the same neighbours (ties aside); the last line is the time ratio
semantic_search / ours (above 1: ours is faster).

    python benchmarks/bench_neighbors.py              # 8,000 prompts, k = 10
    python benchmarks/bench_neighbors.py --rows 20000
"""

import argparse
import statistics
import time

import numpy as np
import torch

from hf_ilp.diagnosis import DiagnoserConfig
from hf_ilp.diagnosis.data_inconsistency import PromptIndex


def templated_prompts(n, seed=0):
    """Prompts of a few templates over many entities: near neighbours exist, exact duplicates are rare."""
    rng = np.random.default_rng(seed)
    templates = ["what is the {} of {} ?", "tell me the {} of {} .", "which {} does {} have ?", "{} of {} :"]
    relations = ["color", "capital", "author", "size", "owner", "language", "founder", "price"]
    words = [f"{a}{b}" for a in ("ka", "mo", "ti", "lu", "fe", "zo", "ri", "pa") for b in ("ven", "dor", "mil", "sat", "quo")]
    return [
        templates[rng.integers(len(templates))].format(relations[rng.integers(len(relations))],
                                                       " ".join(rng.choice(words, size=2)) + f" {i % 97}")
        for i in range(n)
    ]


def search_with_sentence_transformers(emb, k):
    from sentence_transformers.util import dot_score, semantic_search

    hits = semantic_search(emb, emb, query_chunk_size=1024, top_k=k + 1, score_function=dot_score)
    idx = np.array([[h["corpus_id"] for h in row if h["corpus_id"] != q][:k] for q, row in enumerate(hits)])
    sims = np.array([[h["score"] for h in row if h["corpus_id"] != q][:k] for q, row in enumerate(hits)])
    return sims, idx


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    a = parser.parse_args()
    torch.set_num_threads(1)
    prompts = templated_prompts(a.rows)
    start = time.perf_counter()
    index = PromptIndex(prompts, DiagnoserConfig(progress=False))
    if index.embeddings is None:
        raise SystemExit(f"no sentence encoder here ({'; '.join(index.notes)}): this benchmark compares the dense search")
    print(f"{a.rows} prompts encoded by {index.encoder} in {time.perf_counter() - start:.1f} s; k = {a.k}")
    everyone = np.arange(a.rows)
    times = {"ours": [], "semantic_search": []}
    for r in range(a.repeats):
        for name in (("ours", "semantic_search") if r % 2 == 0 else ("semantic_search", "ours")):
            start = time.perf_counter()
            if name == "ours":
                sims, idx = index.neighbors(everyone, a.k)
            else:
                st_sims, st_idx = search_with_sentence_transformers(index.embeddings, a.k)
            times[name].append(time.perf_counter() - start)
    np.testing.assert_allclose(np.sort(sims, 1), np.sort(st_sims, 1), atol=1e-5)
    same = np.mean([len(set(x) & set(y)) / a.k for x, y in zip(idx, st_idx)])
    print(f"same neighbours: {same:.4f} of each top-{a.k} (similarities equal to 1e-5; the rest are ties)")
    for name, t in times.items():
        print(f"{name}: median {statistics.median(t):.3f} s over {a.repeats} runs ({min(t):.3f}-{max(t):.3f})")
    print(f"time ratio semantic_search / PromptIndex.neighbors: "
          f"{statistics.median(times['semantic_search']) / statistics.median(times['ours']):.2f}")


if __name__ == "__main__":
    main()
