"""Batch reranking throughput on the demo model: the same batch through one vLLM OpenAI server on loopback
against the in-process vLLM engine (the cost of going over HTTP; target: at least 0.9 of its judgments per
second), then through two servers (the share of requests each took).

    .venv/bin/python benchmarks/batch.py [--queries 12] [--top-k 4] [--budget 64] [--concurrency 16]
    .venv/bin/python benchmarks/batch.py --driver [--queries 4] [--top-k 100]
    .venv/bin/python benchmarks/batch.py --ray [--shape rank1-0.5b] [--queries 12] [--top-k 4] [--budget 64]

``--ray`` measures the cost of Ray instead, on the transformers engine: the batch in process, then through Ray on one
node (one worker with both cores: Ray's overhead only; target at least 0.9 of the in-process rate), then on a local
cluster of two nodes of one core each (one worker each: how the work spreads, on the same two cores). ``--shape``
runs it on a random-weight model of that shape (benchmarks/real_shape.py): what the product costs, not the demo.

``--driver`` measures the batch runner's own CPU time per event instead: rank1 on an engine that answers at once
from a script (every document reasons ``--budget`` tokens, one event each, then is judged), so that the process's
CPU time is the folding, counting and storing of events.

Each case runs rank1 over the same run file (BM25 on the sample corpus) in a fresh process with a fresh batch
folder, after a warm-up batch on other queries. On a 2-core machine two servers share the same cores, so the
two-server case shows how the work spreads, not a speed-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from common import in_fresh_process, print_table

from search.batch import BatchSpec, BatchStore, load_batch, run_batch
from search.corpus import load_corpus
from search.engines.base import Engine
from search.engines.demo_model import ensure_demo_model
from search.evaluation import retrieve_run
from search.rerank.events import Event
from search.rerank.rank1 import Rank1Reranker
from search.retrieval.first_stage import open_first_stage
from search.settings import REPO_ROOT, SAMPLE_CORPUS, CorpusSettings, RerankSettings, Settings
from search.trec import write_trec_run

sys.path.insert(0, str(REPO_ROOT / "tests"))
from servers import VLLMServer  # the tests' loopback vLLM server

MAX_MODEL_LEN = 2048


def _batch(engine: Engine, run: Path, budget: int, concurrency: int) -> dict:
    """Rerank the run file's queries into a fresh folder; seconds and counts."""
    reranker = Rank1Reranker(engine, model_key="demo", budget=budget, settings=RerankSettings())
    return _timed_batch(run, lambda inputs, store: run_batch(inputs, store, reranker, concurrency=concurrency,
                                                             report=lambda _: None))


def _measured(engine: Engine, warmup: Path, run: Path, budget: int, concurrency: int) -> dict:
    _batch(engine, warmup, budget, concurrency)
    return _batch(engine, run, budget, concurrency)


def in_process_case(warmup: Path, run: Path, budget: int, concurrency: int) -> dict:
    from search.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(model="demo", location=str(ensure_demo_model()), max_model_len=MAX_MODEL_LEN)
    try:
        return {"case": "in-process vLLM", **_measured(engine, warmup, run, budget, concurrency)}
    finally:
        engine.close()


def server_case(urls: list[str], warmup: Path, run: Path, budget: int, concurrency: int) -> dict:
    from search.engines.openai_engine import OpenAIEngine

    engine = OpenAIEngine(endpoints=urls, tokenizer_location=str(ensure_demo_model()))
    try:
        result = _measured(engine, warmup, run, budget, concurrency)
        served = [endpoint.served for endpoint in engine.endpoints]
        outages = sum(endpoint.outages for endpoint in engine.endpoints)
    finally:
        engine.close()
    shares = ", ".join(f"{count / max(sum(served), 1):.0%}" for count in served)
    return {"case": f"{len(urls)} vLLM server{'s' if len(urls) > 1 else ''} (HTTP)", **result, "shares": shares,
            "outages": outages}


@contextlib.contextmanager
def vllm_servers(model: Path, logs: Path, count: int) -> Iterator[list[VLLMServer]]:
    """``count`` vLLM servers on loopback, healthy, stopped after the block."""
    servers = [VLLMServer(model, logs / f"server-{number}.log") for number in range(count)]
    try:
        for server in servers:
            server.wait_healthy()
        yield servers
    finally:
        for server in servers:
            server.stop()


@contextlib.contextmanager
def run_files(queries: int, top_k: int) -> Iterator[tuple[Path, Path]]:
    """A BM25 run of the sample corpus: a warm-up file (other queries) and the measured one."""
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings().replace(corpus=SAMPLE_CORPUS, index_dir=Path(folder) / "indexes")
        first_stage = open_first_stage(settings, ("bm25",))
        measured = first_stage.corpus.queries[:queries]
        warm = first_stage.corpus.queries[queries:queries + 4]
        paths = Path(folder) / "warmup.trec", Path(folder) / "run.trec"
        for chosen, path in zip((warm, measured), paths, strict=True):
            write_trec_run(retrieve_run(first_stage.retrievers["bm25"], chosen, top_k), path, tag="bm25")
        yield paths


def driver_case(queries: int, top_k: int, tokens: int) -> dict:
    """The runner's CPU time per event over ``queries`` × ``top_k`` documents of the sample corpus."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from scripted import ScriptedEngine, rank1_judge

    tokenizer = AutoTokenizer.from_pretrained(ensure_demo_model())
    judged = rank1_judge(tokenizer)
    thinking = tokens_of_one(tokenizer)

    def script(request: object) -> list:
        answer = judged(request)
        return answer if getattr(request, "allowed_token_ids", None) else [thinking] * tokens + list(answer)

    corpus = load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS))
    events = 0
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run.trec"
        write_trec_run({query.query_id: {document.doc_id: float(-rank) for rank, document
                                         in enumerate(corpus.documents[:top_k])}
                        for query in corpus.queries[:queries]}, run, tag="all")
        inputs = load_batch(corpus, None, run, top_k)
        reranker = Rank1Reranker(ScriptedEngine(tokenizer, script), model_key="scripted", budget=tokens + 8,
                                 settings=RerankSettings(judgment_cache=False))
        stream = reranker.stream

        async def counted(*args: object, **kwargs: object) -> AsyncIterator[Event]:
            nonlocal events
            async for event in stream(*args, **kwargs):
                events += 1
                yield event

        reranker.stream = counted
        spec = BatchSpec(inputs=inputs.digest(), top_k=top_k, reranker="rank1", model="scripted", budget=tokens + 8)
        store = BatchStore.open(Path(folder) / "out", spec, inputs, sources={})
        started, wall = time.process_time(), time.perf_counter()
        asyncio.run(run_batch(inputs, store, reranker, concurrency=16, report=lambda _: None))
        cpu, wall = time.process_time() - started, time.perf_counter() - wall
        store.close()
    return {"events": events, "cpu_s": cpu, "wall_s": wall}


def tokens_of_one(tokenizer: object) -> object:
    """One streamed reasoning token, as the scripted engine sends it."""
    from search.engines.base import GenerationChunk

    return GenerationChunk(text=" so", token_ids=(tokenizer(" so", add_special_tokens=False).input_ids[0],),
                           logprobs=({},))


def _timed_batch(run: Path, rerank: object) -> dict:
    """``rerank(inputs, store)`` (a coroutine giving the progress) over the run file, in a fresh folder."""
    inputs = load_batch(load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS)), None, run, 10_000)
    with tempfile.TemporaryDirectory() as out:
        spec = BatchSpec(inputs=inputs.digest(), top_k=10_000, reranker="rank1", model="demo", budget=0)
        store = BatchStore.open(Path(out), spec, inputs, sources={})
        start = time.perf_counter()
        progress = asyncio.run(rerank(inputs, store))
        seconds = time.perf_counter() - start
        store.close()
    return {"judgments": progress.documents_done, "failed": progress.failed, "tokens": progress.tokens,
            "seconds": seconds}


def ray_settings(model: str, budget: int, concurrency: int) -> Settings:
    return Settings().replace(model=model, engine="transformers", budget=budget, concurrency=concurrency,
                              judgment_cache=False, max_model_len=MAX_MODEL_LEN)


def transformers_case(model: str, warmup: Path, run: Path, budget: int, concurrency: int) -> dict:
    from search.pipeline import build_reranker, open_model

    settings = ray_settings(model, budget, concurrency)
    reranker = build_reranker(settings.rerank, open_model(settings.serving, "rank1"))

    def rerank(inputs: object, store: BatchStore) -> object:
        return run_batch(inputs, store, reranker, concurrency=concurrency, report=lambda _: None)

    _timed_batch(warmup, rerank)
    return {"case": "in process (transformers)", **_timed_batch(run, rerank)}


def ray_case(address: str, model: str, warmup: Path, run: Path, budget: int, concurrency: int) -> dict:
    from search.batch.cluster import run_batch_on_ray, start_workers, stop_workers
    from search.cluster import connect

    settings = ray_settings(model, budget, concurrency)
    connect(address)
    workers = start_workers(settings)
    try:
        def rerank(inputs: object, store: BatchStore) -> object:
            return run_batch_on_ray(inputs, store, settings, workers, report=lambda _: None)

        _timed_batch(warmup, rerank)
        nodes = len({worker.spec.node for worker in workers}), len(workers)
        return {"case": f"Ray, {nodes[1]} worker{'s' if nodes[1] > 1 else ''}", **_timed_batch(run, rerank)}
    finally:
        stop_workers(workers)


def ray_rows(model: str, warmup: Path, run: Path, budget: int, concurrency: int) -> list[dict]:
    """In process, then Ray on one node of two cores, then on two nodes of one core each."""
    from ray.cluster_utils import Cluster

    rows = [in_fresh_process(transformers_case, model, warmup, run, budget, concurrency)]
    for layout in ((2,), (1, 1)):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": layout[0]})
        for cpus in layout[1:]:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        try:
            row = in_fresh_process(ray_case, cluster.address, model, warmup, run, budget, concurrency)
        finally:
            cluster.shutdown()
        rows.append({**row, "case": f"{row['case']} on {len(layout)} node{'s' if len(layout) > 1 else ''}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--driver", action="store_true", help="the runner's CPU time per event (no model)")
    parser.add_argument("--ray", action="store_true", help="in process against Ray on one and two local nodes")
    parser.add_argument("--shape", help="--ray: a random-weight model of this shape (real_shape.py), not the demo")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.driver:
        result = driver_case(args.queries, args.top_k, args.budget)
        print(f"{args.queries} queries × top {args.top_k}, {args.budget} reasoning tokens each: {result['events']:,} "
              f"events, {result['cpu_s']:.2f} s CPU ({result['cpu_s'] / result['events'] * 1e6:.0f} µs per event), "
              f"{result['wall_s']:.2f} s wall")
        return
    model = ensure_demo_model()
    settings = (args.budget, args.concurrency)
    with run_files(args.queries, args.top_k) as (warmup, run), tempfile.TemporaryDirectory() as logs:
        if args.ray:
            from real_shape import build_shape

            rows = ray_rows(str(build_shape(args.shape)) if args.shape else "demo", warmup, run, *settings)
        else:
            rows = [in_fresh_process(in_process_case, warmup, run, *settings)]
            with vllm_servers(model, Path(logs), 1) as (server,):
                rows.append(in_fresh_process(server_case, [server.url], warmup, run, *settings))
            with vllm_servers(model, Path(logs), 2) as servers:
                rows.append(in_fresh_process(server_case, [item.url for item in servers], warmup, run, *settings))
    base = rows[0]["judgments"] / rows[0]["seconds"]
    for row in rows:
        rate = row["judgments"] / row["seconds"]
        row.update({"judgments/s": f"{rate:.2f}", "tokens/s": f"{row['tokens'] / row['seconds']:.0f}",
                    "vs in-process": f"{rate / base:.2f}", "seconds": f"{row['seconds']:.1f}"})
    print(f"{args.queries} queries × top {args.top_k}, budget {args.budget}, {args.concurrency} at once"
          + (f", {args.shape} shape" if args.shape else ""))
    print_table(rows, ["case", "judgments", "failed", "seconds", "judgments/s", "tokens/s", "vs in-process",
                       "shares", "outages"])


# Guarded: vLLM starts its engine processes with spawn, which imports this module again.
if __name__ == "__main__":
    main()
