"""The rerank API as RAG stacks call it: ``python -m search serve`` on the demo model (transformers engine), called
by clients nobody here wrote (the cohere SDK, LangChain's CohereRerank) and by raw httpx (Server-Sent Events, 16
clients at once, bad requests); then the same API beside the page in one app.py process."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cohere
import httpx
import pytest
from fastapi.testclient import TestClient
from gradio_client import Client
from langchain_cohere import CohereRerank
from langchain_core.documents import Document
from servers import app_process, serve_process

from search.api import open_reranker
from search.corpus import load_corpus
from search.server import ApiState, headless_app
from search.settings import SAMPLE_CORPUS, ApiSettings, CorpusSettings

KEY = "a-key-for-the-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERY = "which planets have no moons"
START_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Six sample-corpus documents, as a RAG stack sends its chunks."""
    corpus = load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS))
    return [f"{document.title} {document.text}" for document in corpus.documents[:6]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Iterator[str]:
    """``python -m search serve`` asking for ``KEY``, until the module's last test; it must stop cleanly on
    SIGTERM."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_process(log, "--budget", "8", "--no-judgment-cache", "--api-key", KEY) as (url, _):
        yield url


def test_the_cohere_sdk_reranks_and_the_raw_answer_has_the_reasoning(server: str, texts: list[str]) -> None:
    client = cohere.ClientV2(api_key=KEY, base_url=server)
    answer = client.rerank(model="demo", query=QUERY, documents=texts, top_n=3)
    scores = [result.relevance_score for result in answer.results]
    assert len(answer.results) == 3 and scores == sorted(scores, reverse=True)
    assert len({result.index for result in answer.results}) == 3
    assert all(0 <= result.index < len(texts) and 0 <= result.relevance_score <= 1 for result in answer.results)
    raw = httpx.post(f"{server}/v2/rerank", json={"model": "demo", "query": QUERY, "documents": texts, "top_n": 3},
                     headers=AUTH, timeout=300).json()
    assert all(isinstance(result["reasoning"], str) and result["reasoning"] for result in raw["results"])
    models = httpx.get(f"{server}/v1/models", headers=AUTH).json()
    assert [card["id"] for card in models["data"]] == ["demo"]


def test_langchains_cohere_rerank_compresses_documents(server: str, texts: list[str]) -> None:
    reranker = CohereRerank(cohere_api_key=KEY, base_url=server, model="demo", top_n=2)
    kept = reranker.compress_documents([Document(page_content=text) for text in texts], QUERY)
    scores = [document.metadata["relevance_score"] for document in kept]
    assert len(kept) == 2 and scores == sorted(scores, reverse=True)
    assert {document.page_content for document in kept} <= set(texts)


def test_a_streamed_rerank_sends_events_before_the_results(server: str, texts: list[str]) -> None:
    seen: list[str] = []
    with httpx.stream("POST", f"{server}/v1/rerank", headers=AUTH, timeout=300,
                      json={"query": QUERY, "documents": texts[:2], "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
            elif line.startswith("data: ") and seen[-1] == "results":
                results = json.loads(line.removeprefix("data: "))["results"]
    assert seen[-1] == "results" and seen.index("reasoning") < seen.index("results")
    assert seen.count("started") == 2 and {result["index"] for result in results} == {0, 1}


def test_sixteen_clients_at_once_on_one_engine_each_get_their_own_answer(server: str, texts: list[str]) -> None:
    async def one(client: httpx.AsyncClient, number: int) -> tuple[int, dict]:
        documents = [texts[number % len(texts)], texts[(number + 1) % len(texts)]]
        response = await client.post(f"{server}/v1/rerank", headers=AUTH,
                                     json={"query": f"{QUERY} ({number})", "documents": documents,
                                           "return_documents": True})
        assert response.status_code == 200, response.text
        return number, response.json()

    async def all_at_once() -> list[tuple[int, dict]]:
        async with httpx.AsyncClient(timeout=600) as client:
            return await asyncio.gather(*(one(client, number) for number in range(16)))

    for number, answer in asyncio.run(all_at_once()):
        by_index = {result["index"]: result for result in answer["results"]}
        assert set(by_index) == {0, 1}
        assert by_index[0]["document"]["text"] == texts[number % len(texts)]
        assert all(result["status"] == "judged" and result["reasoning"] for result in by_index.values())


def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server: str) -> None:
    rerank = f"{server}/v1/rerank"
    assert httpx.post(rerank, json={"query": QUERY, "documents": ["a"]}).status_code == 401  # no key
    refusals = {
        400: [b'{"query": "q", "documents": ["a"', b'{"query": "q", "documents": []}'],
        422: [b'{"query": "q"}', b'{"query": "q", "documents": ["a"], "top_n": 2.5}',
              b'{"query": ["q"], "documents": ["a"]}'],
        413: [json.dumps({"query": "q", "documents": ["a document"] * 10_000}).encode()],
    }
    for status, bodies in refusals.items():
        for body in bodies:
            refused = httpx.post(rerank, content=body, headers={**AUTH, "Content-Type": "application/json"})
            assert refused.status_code == status, (body[:60], refused.text)
            assert refused.json()["message"]
    served = httpx.post(rerank, json={"query": QUERY, "documents": ["Mercury has no moon."]}, headers=AUTH,
                        timeout=300)
    assert served.status_code == 200 and served.json()["results"][0]["index"] == 0


def test_the_page_and_the_api_serve_side_by_side_in_one_process(tmp_path: Path, index_dir: Path,
                                                                 demo_model: Path, texts: list[str]) -> None:
    with app_process(tmp_path / "annotations.sqlite3", index_dir, tmp_path / "app.log") as (url, _):
        answer = cohere.ClientV2(api_key="unused", base_url=url).rerank(model="demo", query=QUERY,
                                                                       documents=texts[:3], top_n=2)
        assert len(answer.results) == 2
        assert httpx.get(f"{url}health").json()["status"] == "ok"  # the app's URL ends with a slash
        page = httpx.get(url)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        html = Client(url, verbose=False).predict(QUERY, "bm25", 3, "sample_corpus", api_name="/search")
        assert "es-" in html  # the page's own API answers as before


def test_past_its_deadline_the_real_engine_stops_and_the_answer_keeps_what_was_judged(
        demo_model: Path, tmp_path: Path, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The transformers engine with the demo model: a judgment replayed from the cache lands at once, while 19
    long passages cannot be judged within the 1 s deadline (the running batch decodes no step until the answer is
    back, however fast the machine); their engine requests are aborted, and the engine serves the next
    request."""
    reranker = open_reranker("demo", engine="transformers", budget=8, judgment_cache_path=tmp_path / "cache.sqlite3")

    def client(seconds: float) -> TestClient:
        return TestClient(headless_app(ApiState(reranker=reranker, limits=ApiSettings(api_request_seconds=seconds),
                                                slots=asyncio.Semaphore(8))))

    try:
        seeded = client(600).post("/v1/rerank", json={"query": QUERY, "documents": [texts[0]]}).json()
        assert seeded["results"][0]["status"] == "judged"
        long = [f"{texts[number % len(texts)]} " * 8 for number in range(19)]
        engine = reranker.loaded.engine
        answered, decode = threading.Event(), engine._batch.decode
        monkeypatch.setattr(engine._batch, "decode", lambda: answered.wait(120) and decode())
        try:
            cut = client(1).post("/v1/rerank", json={"query": QUERY, "documents": [texts[0], *long]})
        finally:
            answered.set()
        assert cut.status_code == 200, cut.text
        by_index = {result["index"]: result for result in cut.json()["results"]}
        assert by_index[0]["status"] == "judged" and by_index[0]["from_cache"] is True
        assert by_index[0]["relevance_score"] == seeded["results"][0]["relevance_score"]
        unfinished = [result for result in by_index.values() if result["status"] in ("waiting", "reasoning")]
        assert unfinished and all(
            result["relevance_score"] == 0 and result["failure"] == "unfinished: the request's deadline of 1 s "
            "(api_request_seconds) passed first" for result in unfinished)
        assert all(result["status"] != "failed" for result in by_index.values())
        assert cut.json()["meta"]["explainable_search"]["unfinished"] == len(unfinished)
        stopped_by = time.monotonic() + 60
        while engine.active_requests():  # the aborts reach the engine's worker between its steps
            assert time.monotonic() < stopped_by, "the engine kept working on the requests of a finished answer"
            time.sleep(0.05)
        after = client(600).post("/v1/rerank", json={"query": QUERY, "documents": [texts[1]]}).json()
        assert after["results"][0]["status"] == "judged" and after["results"][0]["failure"] is None
    finally:
        reranker.close()
