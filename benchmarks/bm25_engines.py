"""rank-bm25 against bm25s as the BM25 engine: build time, peak memory, query latency and nDCG@10.

    .venv/bin/python benchmarks/bm25_engines.py ../shared/data/cranfield [--synthetic 200000]

Both engines get the same tokens (bm25s's tokenizer with English stopwords and the Snowball stemmer), so
the comparison is of the engines alone. Each case runs in a fresh process for its own peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import in_fresh_process, latency_ms, peak_rss_mib, print_table, synthetic_corpus

from search.corpus import Document, Passage, Query, load_corpus
from search.evaluation import evaluate
from search.passages import split_documents
from search.retrieval.ranking import ranking_from_scores
from search.settings import BM25Settings, CorpusSettings, PassageSettings

Searcher = Callable[[str, int], list[tuple[Passage, float]]]


def _rank_bm25(passages: Sequence[Passage], settings: BM25Settings) -> Searcher:
    import bm25s
    import numpy as np
    import Stemmer
    from rank_bm25 import BM25Okapi

    stemmer = Stemmer.Stemmer(settings.bm25_stemmer)

    def tokens(texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)

    model = BM25Okapi(tokens([passage.contents for passage in passages]), k1=settings.bm25_k1, b=settings.bm25_b)

    def search(query: str, k: int) -> list[tuple[Passage, float]]:
        scores = model.get_scores(tokens([query])[0])
        top = np.argsort(-scores)[:k]
        return [(passages[row], float(scores[row])) for row in top if scores[row] > 0]

    return search


def _bm25s(backend: str) -> Callable[[Sequence[Passage], BM25Settings], Searcher]:
    def build(passages: Sequence[Passage], settings: BM25Settings) -> Searcher:
        from search.retrieval.bm25 import BM25Retriever

        retriever = BM25Retriever.build(passages, dataclasses.replace(settings, bm25_backend=backend))
        return lambda query, k: [(c.passage, c.score) for c in retriever.search(query, k).candidates]

    return build


ENGINES = {
    "rank-bm25 BM25Okapi": _rank_bm25,
    "bm25s (numpy backend)": _bm25s("numpy"),
    "bm25s (numba backend)": _bm25s("numba"),
}


def _case(engine: str, dataset: str, documents: list[Document], queries: list[Query],
          qrels: dict | None) -> dict:
    passages = split_documents(documents, PassageSettings())
    baseline = peak_rss_mib()
    start = time.perf_counter()
    search = ENGINES[engine](passages, BM25Settings())
    build_s = time.perf_counter() - start
    memory = peak_rss_mib() - baseline
    row = {"dataset": dataset, "engine": engine, "passages": len(passages), "build s": f"{build_s:.1f}",
           "peak MiB over imports": f"{memory:.0f}"}
    median, p95 = latency_ms(lambda query: search(query.text, 100), queries)
    row |= {"query ms median": f"{median:.2f}", "p95": f"{p95:.2f}"}
    if qrels:
        run = {query.query_id: dict(ranking_from_scores(query.text, "bm25", search(query.text, 200)).documents()[:100])
               for query in queries}
        row["nDCG@10"] = f"{evaluate(qrels, run)['nDCG@10']:.4f}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a BEIR folder with judgments (Cranfield)")
    parser.add_argument("--synthetic", type=int, default=200_000, help="synthetic passages (0 to skip)")
    args = parser.parse_args()
    corpus = load_corpus(CorpusSettings(corpus=args.dataset, skip_bad=True))
    judged = [query for query in corpus.queries if query.query_id in corpus.qrels]
    rows = [in_fresh_process(_case, engine, args.dataset.name, list(corpus.documents), judged, dict(corpus.qrels))
            for engine in ENGINES]
    if args.synthetic:
        documents, queries = synthetic_corpus(args.synthetic)
        rows += [in_fresh_process(_case, engine, f"synthetic-{args.synthetic}", documents, queries, None)
                 for engine in ENGINES]
    print_table(rows, ["dataset", "engine", "passages", "build s", "peak MiB over imports", "query ms median",
                       "p95", "nDCG@10"])


if __name__ == "__main__":
    main()
