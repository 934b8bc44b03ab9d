"""Shared pieces of the benchmark scripts: a synthetic corpus, latency statistics, peak memory per case."""

from __future__ import annotations

import multiprocessing
import random
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from search.corpus import Document, Passage, Query, load_corpus, load_queries
from search.retrieval.ranking import Candidate, ranking_from_scores
from search.settings import SAMPLE_CORPUS, CorpusSettings


def synthetic_corpus(size: int, words_per_passage: int = 60, seed: int = 13) -> tuple[list[Document], list[Query]]:
    """``size`` passages of Zipf-distributed words, and 100 queries of 3 to 6 words taken from random passages
    so that every query has matches. The frequent words are the sample corpus's English ones; a long tail of
    made-up words gives BM25 a realistic vocabulary without making passages far longer in encoder tokens."""
    rng = random.Random(seed)
    english = sorted({
        word.strip(".,;:()'\"").lower()
        for document in load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS)).documents
        for word in document.text.split()
    } - {""})
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vor", "el", "quin", "da", "po", "ny", "ish", "ber", "gal"]
    invented = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(60_000)})
    rng.shuffle(english)
    rng.shuffle(invented)
    known = set(english)
    vocabulary = english + [word for word in invented if word not in known]
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    documents = []
    for number in range(size):
        words = rng.choices(vocabulary, weights=weights, k=words_per_passage)
        documents.append(Document(doc_id=f"s{number}", title="", text=" ".join(words)))
    queries = []
    for number in range(100):
        source = rng.choice(documents).text.split()
        queries.append(Query(query_id=f"q{number}", text=" ".join(rng.sample(source, rng.randint(3, 6)))))
    return documents, queries


def sample_workload(count: int) -> tuple[str, list[Candidate]]:
    """The sample corpus's first query and its first ``count`` documents as candidates, whole."""
    corpus = load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS))
    query = load_queries(SAMPLE_CORPUS / "queries.jsonl")[0][0].text
    passages = [Passage(passage_id=document.doc_id, doc_id=document.doc_id, index=0, title=document.title,
                        text=document.text) for document in corpus.documents[:count]]
    return query, list(ranking_from_scores(query, "bm25", [(passage, 1.0) for passage in passages]).candidates)


def latency_ms(run_one: Callable[[Any], Any], items: Sequence[Any], warmup: int = 3) -> tuple[float, float]:
    """Median and 95th percentile milliseconds of ``run_one`` over ``items``, after a few warm-up calls."""
    for item in items[:warmup]:
        run_one(item)
    times = []
    for item in items:
        start = time.perf_counter()
        run_one(item)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), statistics.quantiles(times, n=20)[-1]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(target: Callable[..., dict], args: tuple, queue: multiprocessing.Queue) -> None:
    queue.put(target(*args))


def in_fresh_process(target: Callable[..., dict], *args: Any) -> dict:
    """Run one benchmark case in its own process, so its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, args, queue))
    process.start()
    result = queue.get()
    process.join(timeout=60)
    if process.is_alive():  # stuck joining helper processes of its own after its work was done
        process.kill()
    return result


def print_table(rows: Sequence[dict], columns: Sequence[str]) -> None:
    widths = [max(len(column), *(len(str(row.get(column, ""))) for row in rows)) for column in columns]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row.get(column, "")).ljust(width) for column, width in zip(columns, widths, strict=True)))
