"""First-stage speed and memory: index build rate, peak memory and query latency for BM25, dense and
hybrid, on a BEIR collection and on a synthetic corpus; and the warm-restart time on the sample corpus.

    .venv/bin/python benchmarks/retrieval.py ../shared/data/cranfield [--synthetic 200000]

Queries run one at a time (top 100), as the page sends them. Latency excludes the first model load.

MiniLM encodes about 50 passages a second on 2 cores, so encoding 200k passages would take over an hour.
For corpora above ``--encode-sample`` passages the encoder runs for real on that many, its rate gives the
projected build time, and the FAISS index is filled with those real embeddings plus small noise (one
vector per passage, normalised), so that index build, memory and search run at full size.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import in_fresh_process, latency_ms, peak_rss_mib, print_table, synthetic_corpus

from search.corpus import Document, Passage, Query, load_corpus
from search.passages import split_documents
from search.retrieval.dense import DenseRetriever, encode_texts, load_encoder
from search.retrieval.first_stage import open_first_stage, open_retrievers
from search.retrieval.fusion import FusedRetriever
from search.settings import REPO_ROOT, SAMPLE_CORPUS, CorpusSettings, Settings


def _sampled_dense(passages: list[Passage], settings: Settings, sample: int) -> tuple[DenseRetriever, float]:
    """A full-size dense index from ``sample`` real embeddings plus noise; returns it and the projected build
    seconds (measured encoding rate over all passages, plus the measured index build)."""
    encoder = load_encoder(settings.dense.encoder)
    chosen = random.Random(7).sample(passages, sample)
    start = time.perf_counter()
    real = encode_texts(encoder, [passage.contents for passage in chosen], settings.dense.encode_batch_size)
    encode_rate = sample / (time.perf_counter() - start)
    noise = np.random.default_rng(7)
    embeddings = real[noise.integers(0, sample, len(passages))]
    embeddings += noise.normal(0, 0.02, embeddings.shape).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    start = time.perf_counter()
    retriever = DenseRetriever.from_embeddings(encoder, embeddings, passages, settings.dense)
    return retriever, len(passages) / encode_rate + time.perf_counter() - start


def _case(dataset: str, documents: list[Document], queries: list[Query], index_dir: str,
          encode_sample: int) -> list[dict]:
    settings = Settings().replace(index_dir=Path(index_dir))
    passages = list(split_documents(documents, settings.passages))
    load_encoder(settings.dense.encoder)
    baseline = peak_rss_mib()
    rows = []
    retrievers = {}
    for method in ("bm25", "dense"):
        start = time.perf_counter()
        if method == "dense" and len(passages) > encode_sample:
            retrievers["dense"], seconds = _sampled_dense(passages, settings, encode_sample)
            label = "dense (projected)"
        else:
            retrievers |= open_retrievers(passages, settings, [method])
            seconds, label = time.perf_counter() - start, method
        rows.append({"dataset": dataset, "method": label, "retriever": method, "passages": len(passages),
                     "build s": f"{seconds:.1f}", "passages/s": f"{len(passages) / seconds:,.0f}",
                     "peak MiB over imports": f"{peak_rss_mib() - baseline:.0f}"})
    retrievers["hybrid"] = FusedRetriever([retrievers["bm25"], retrievers["dense"]], settings.fusion)
    rows.append({"dataset": dataset, "method": "hybrid", "retriever": "hybrid", "passages": len(passages)})
    for row in rows:
        retriever = retrievers[row.pop("retriever")]
        median, p95 = latency_ms(lambda query, retriever=retriever: retriever.search(query.text, 100), queries)
        row |= {"query ms median": f"{median:.1f}", "p95": f"{p95:.1f}"}
    return rows


def _warm_restart(index_dir: str) -> dict:
    """Answer a query on the sample corpus in two fresh processes (the first builds the indexes, the second
    loads them), then time opening the stored indexes alone, with the libraries and encoder already loaded."""
    command = [sys.executable, "-m", "search", "query", "coffee and sleep", "-k", "3", "--index-dir", index_dir]
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
        timings.append(time.perf_counter() - start)
    settings = Settings().replace(corpus=SAMPLE_CORPUS, index_dir=Path(index_dir))
    load_encoder(settings.dense.encoder)
    start = time.perf_counter()
    open_first_stage(settings)
    in_process = time.perf_counter() - start
    return {"first start s (builds indexes)": f"{timings[0]:.1f}",
            "warm start s (new process to first answer)": f"{timings[1]:.1f}",
            "index load s (libraries already loaded)": f"{in_process:.3f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a BEIR folder (Cranfield)")
    parser.add_argument("--synthetic", type=int, default=200_000, help="synthetic passages (0 to skip)")
    parser.add_argument("--index-dir", type=Path, help="reuse indexes here (default: build afresh in a temp dir)")
    parser.add_argument("--encode-sample", type=int, default=5_000,
                        help="above this many passages, encode only this many for real (see above)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        index_dir = str(args.index_dir or scratch)
        corpus = load_corpus(CorpusSettings(corpus=args.dataset, skip_bad=True))
        rows = in_fresh_process(_case, args.dataset.name, list(corpus.documents), list(corpus.queries), index_dir,
                                args.encode_sample)
        if args.synthetic:
            documents, queries = synthetic_corpus(args.synthetic)
            rows += in_fresh_process(_case, f"synthetic-{args.synthetic}", documents, queries, index_dir,
                                     args.encode_sample)
        print_table(rows, ["dataset", "method", "passages", "build s", "passages/s", "peak MiB over imports",
                           "query ms median", "p95"])
        print()
        restart = _warm_restart(tempfile.mkdtemp(dir=scratch))
        print_table([restart], list(restart))


if __name__ == "__main__":
    main()
