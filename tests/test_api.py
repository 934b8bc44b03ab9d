"""The rerank API's logic, in process over a scripted engine: Cohere's request and response shapes, our fields,
every refusal naming its field, the bearer key, Server-Sent Events, and the Python API. Real servers and real
clients (the cohere SDK, LangChain, 16 at once) are in test_api_server.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from scripted import Judge, ScriptedEngine, reversing, scripted_model
from servers import free_port

from search.api import ReasoningReranker, RerankDocument
from search.engines.base import EngineError, GenerationChunk
from search.models import ResolvedModel
from search.pipeline import LoadedModel
from search.rerank.rank1 import VerdictTokens
from search.server import ApiState, headless_app
from search.server.routes import INFINITY_PATHS, RERANK_PATHS
from search.settings import ApiSettings, RerankSettings

KEY = "s3cret-key"
DOCUMENTS = ["Mercury has no moon: a good answer.", "Jupiter has many moons.",
             {"text": "Venus has no moon either, a good one.", "title": "Venus", "id": "venus"}]


def reranker_on(engine: ScriptedEngine, reranker: str = "rank1") -> ReasoningReranker:
    loaded = LoadedModel(engine=engine, model=ResolvedModel(name="scripted", location="", key="scripted-key",
                                                            is_demo=False))
    return ReasoningReranker(loaded, RerankSettings(reranker=reranker, budget=8, judgment_cache=False, window=3,
                                                    step=2, passage_tokens=48))


def client_of(reranker: ReasoningReranker | None, **limits: Any) -> TestClient:
    state = ApiState(reranker=reranker, limits=ApiSettings(**limits), slots=asyncio.Semaphore(4),
                     problem="the model could not load")
    return TestClient(headless_app(state))


@pytest.fixture
def judge(tokenizer: object) -> ScriptedEngine:
    """rank1 that finds "good" passages relevant (P(true) 0.8) and fails on "text of bad"."""
    engine = ScriptedEngine(tokenizer, Judge(VerdictTokens.of(tokenizer), failing=("bad",)))
    yield engine
    engine.close()


def test_a_rerank_answers_in_cohere_shape_best_first_with_the_reasoning(judge: ScriptedEngine) -> None:
    client = client_of(reranker_on(judge))
    for path in RERANK_PATHS:
        answer = client.post(path, json={"model": "scripted", "query": "which planets have no moons",
                                         "documents": DOCUMENTS, "top_n": 2, "return_documents": True})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        results = {result["index"]: result for result in body["results"]}
        assert set(results) == {0, 2}  # the two good ones; top_n cut the third
        assert [result["relevance_score"] for result in body["results"]] == pytest.approx([0.8, 0.8])
        assert results[2]["document"] == {"text": DOCUMENTS[2]["text"], "title": "Venus"}
        assert results[2]["id"] == "venus" and "id" not in results[0]
        assert all(result["reasoning"] == "thinking." and result["verdict"] is True and result["forced"] is False
                   and result["failure"] is None and "evidence" not in result for result in results.values())
        assert body["meta"]["warnings"] == [] and body["meta"]["explainable_search"]["reranker"] == "rank1"
        assert body["meta"]["explainable_search"]["relevance_score"].startswith("P(true)")
    whole = client.post("/v1/rerank", json={"query": "q", "documents": DOCUMENTS}).json()
    assert [result["index"] for result in whole["results"]][2] == 1  # the forced, unlikely one last
    assert whole["results"][2]["relevance_score"] == pytest.approx(0.2) and whole["results"][2]["forced"] is True
    assert "document" not in whole["results"][0]


def test_failures_come_last_with_zero_and_a_warning_and_all_failed_is_503(judge: ScriptedEngine) -> None:
    client = client_of(reranker_on(judge))
    body = client.post("/v1/rerank", json={"query": "q", "documents": ["a good one", "text of bad"]}).json()
    assert [(result["index"], result["status"]) for result in body["results"]] == [(0, "judged"), (1, "failed")]
    assert body["results"][1]["relevance_score"] == 0 and "server gone" in body["results"][1]["failure"]
    assert body["meta"]["warnings"] == ["1 of 2 documents failed: each has relevance_score 0 and says why in failure"]
    refused = client.post("/v1/rerank", json={"query": "q", "documents": ["text of bad", "text of bad"]})
    assert refused.status_code == 503 and "every document failed" in refused.json()["message"]


def test_listwise_failures_are_counted_in_documents_not_windows(tokenizer: object) -> None:
    """ReasonRank fails windows: the answer counts the documents they leave unranked, and all of them is a 503."""
    def failing_on(marker: str) -> ScriptedEngine:
        return ScriptedEngine(tokenizer, lambda request: EngineError("server gone") if marker in request.prompt
                              else reversing(request))

    documents = [f"passage {number}" for number in range(5)]  # windows of 3 by 2: positions 3-5, then 1-3
    client = client_of(reranker_on(failing_on("passage 4"), "reasonrank"))
    body = client.post("/v1/rerank", json={"query": "q", "documents": documents}).json()
    failed = {result["index"] for result in body["results"] if result["status"] == "failed"}
    assert failed == {3, 4}  # the first window failed; the second ranked 0, 1 and 2
    assert body["meta"]["warnings"] == ["2 of 5 documents failed: each has relevance_score 0 and says why in failure"]
    refused = client_of(reranker_on(failing_on("passage"), "reasonrank")).post(
        "/v1/rerank", json={"query": "q", "documents": documents})
    assert refused.status_code == 503 and "every document failed" in refused.json()["message"]
    assert "server gone" in refused.json()["message"]


@pytest.mark.parametrize(("reranker", "expected"), [
    ("assessor", {0: 1.7 / 3, 1: 1.7 / 3, 2: 1.7 / 3}),  # the scripted assessor's expected grade, ÷ 3
    ("reasonrank", {2: 1.0, 1: 2 / 3, 0: 1 / 3}),  # it reverses its window: (count − rank + 1) ÷ count
])
def test_relevance_is_on_zero_to_one_for_every_reranker(tokenizer: object, reranker: str,
                                                        expected: dict[int, float]) -> None:
    engine = ScriptedEngine(tokenizer, scripted_model(reranker, tokenizer))
    try:
        body = client_of(reranker_on(engine)).post("/v1/rerank", json={
            "query": "q", "documents": ["one", "two", "three"], "reranker": reranker}).json()
    finally:
        engine.close()
    assert {result["index"]: result["relevance_score"] for result in body["results"]} == pytest.approx(expected)
    assert body["meta"]["explainable_search"]["reranker"] == reranker


@pytest.mark.parametrize(("body", "status", "named"), [
    (b'{"query": "q", "documents": ["a",]}', 400, "not valid JSON"),
    (b'["q"]', 400, "must be a JSON object"),
    (b'{"query": "q"}', 422, "documents: Field required"),
    (b'{"documents": ["a"]}', 422, "query: Field required"),
    (b'{"query": "q", "documents": ["a"], "top_n": "2"}', 422, "top_n: Input should be a valid integer"),
    (b'{"query": "q", "documents": ["a"], "top_n": 0}', 422, "top_n: Input should be greater than or equal to 1"),
    (b'{"query": "q", "documents": ["a", 7]}', 422, "documents[1]: expected a string or a mapping"),
    (b'{"query": "q", "documents": [{"title": "no text"}]}', 422, "documents[0]: expected a string"),
    (b'{"query": "q", "documents": ["a"], "reranker": "bm25"}', 422, "reranker: 'bm25' is not a reranker"),
    (b'{"query": "q", "documents": ["a"], "evidence": "yes"}', 422, "evidence: Input should be a valid boolean"),
    (b'{"query": "q", "documents": []}', 400, "documents: empty"),
    (b'{"query": "  ", "documents": ["a"]}', 400, "query: empty"),
    (json.dumps({"query": "q", "documents": ["a"] * 10_000}).encode(), 413, "the limit is 1,000 per request"),
    (json.dumps({"query": "q", "documents": ["a", "x" * 100_001]}).encode(), 413,
     "documents[1]: 100,001 bytes; the limit is 100,000"),
    (b'{"query": "q", "documents": ["a"], "model": "gpt-4"}', 404, "model: 'gpt-4' is not served here"),
    (b'{"query": "q", "documents": ["a"], "budget": 1000000000}', 400, "budget: the reasoning budget"),
    (b'{"query": "q", "documents": ["a \\ud800 b"]}', 400, "documents[0].text: a lone surrogate"),
    (b'{"query": "q \\udc00", "documents": ["a"]}', 400, "query: a lone surrogate"),
    (b'{"query": "q", "documents": [{"text": "a", "title": "\\udfff"}]}', 400, "documents[0].title: a lone"),
    (b'{"query": "q", "documents": ["a"], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
     "nests JSON too deeply"),
    (json.dumps({"query": "moons " * 3000, "documents": ["a"]}).encode(), 400, "query: too long for this model"),
    (b'{"query": "q", "documents": [{"text": "a", "title": 5}]}', 422, "documents[0].title: expected a string"),
    (b'{"query": "q", "documents": [{"text": "a", "id": [1]}]}', 422, "documents[0].id: expected a string or"),
])
def test_bad_requests_get_a_4xx_that_names_the_field_and_the_server_keeps_serving(
        judge: ScriptedEngine, body: bytes, status: int, named: str) -> None:
    client = client_of(reranker_on(judge))
    refused = client.post("/v1/rerank", content=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == status, refused.text
    assert named in refused.json()["message"] and refused.json()["error"]["code"] == status
    assert client.post("/v1/rerank", json={"query": "q", "documents": ["a good one"]}).status_code == 200


def test_a_body_past_the_limit_is_refused_before_it_is_read(judge: ScriptedEngine) -> None:
    client = client_of(reranker_on(judge), api_max_request_bytes=1000)
    refused = client.post("/v1/rerank", json={"query": "q", "documents": ["x" * 2000]})
    assert refused.status_code == 413 and "over 1,000 bytes" in refused.json()["message"]


def test_the_key_is_asked_for_when_one_is_set(judge: ScriptedEngine) -> None:
    client = client_of(reranker_on(judge), api_key=KEY)
    request = {"query": "q", "documents": ["a good one"]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        refused = client.post("/v1/rerank", json=request, headers=headers)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/v1/models").status_code == 401
    assert client.post("/v1/rerank", json=request, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    models = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [card["id"] for card in models["data"]] == ["scripted"]
    assert client.get("/health").json()["status"] == "ok"  # for load balancers: no key
    for path in ("/docs", "/redoc", "/openapi.json"):  # they cannot send the key, so they are not served
        assert client.get(path).status_code == 404
        assert client_of(reranker_on(judge)).get(path).status_code == 200  # without a key they are


def test_a_stream_that_breaks_ends_with_an_error_event(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, lambda request: RuntimeError("the engine broke"))
    try:
        with client_of(reranker_on(engine)).stream("POST", "/v1/rerank", json={
                "query": "q", "documents": ["a"], "stream": True}) as streamed:
            events = server_sent_events(streamed.read().decode())
    finally:
        engine.close()
    kind, data = events[-1]
    assert kind == "error" and "the engine broke" in data["message"] and data["error"]["code"] == 500


def test_without_a_model_health_and_rerank_say_why_with_503() -> None:
    client = client_of(None)
    health = client.get("/health")
    assert health.status_code == 503 and "the model could not load" in health.json()["reason"]
    refused = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert refused.status_code == 503 and "the model could not load" in refused.json()["message"]
    assert refused.headers["Retry-After"]
    assert client.get("/v1/models").json()["data"] == []


def server_sent_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_a_streamed_rerank_sends_every_event_then_the_same_results(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, Judge(VerdictTokens.of(tokenizer)), pause_s=0.01)
    client = client_of(reranker_on(engine))
    request = {"query": "q", "documents": DOCUMENTS}
    try:
        with client.stream("POST", "/v1/rerank", json={**request, "stream": True}) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            events = server_sent_events(streamed.read().decode())
        plain = client.post("/v1/rerank", json=request).json()
    finally:
        engine.close()
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "results" and kinds.count("judged") == 3 and "reasoning" in kinds
    assert {data["doc_id"] for kind, data in events if kind == "started"} == {"0", "1", "2"}  # by index
    final = events[-1][1]
    assert ({(r["index"], r["relevance_score"], r["reasoning"]) for r in final["results"]}
            == {(r["index"], r["relevance_score"], r["reasoning"]) for r in plain["results"]})


def test_the_python_api_reranks_in_scripts_and_inside_a_running_loop(judge: ScriptedEngine) -> None:
    reranker = reranker_on(judge)
    results = reranker.rerank("q", ["plain", RerankDocument(text="a good one", id="g")], top_n=1)
    assert [(result.index, result.document.id, result.relevance_score) for result in results] == [(1, "g", 0.8)]
    assert results[0].reasoning == "thinking." and results[0].details["verdict"] is True

    async def in_a_notebook() -> tuple[list[Any], list[str]]:
        events = [event async for event in reranker.astream("q", ["a good one", "plain"])]
        return reranker.rerank("q", ["a good one"]), [event.type for event in events]  # sync, in a running loop

    inside, kinds = asyncio.run(in_a_notebook())
    assert inside[0].relevance_score == pytest.approx(0.8) and kinds.count("judged") == 2
    with pytest.raises(TypeError, match=r"documents\[0\]: expected a string"):
        reranker.rerank("q", [42])


def test_evidence_comes_with_each_result_when_asked(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, Judge(VerdictTokens.of(tokenizer)))
    try:
        body = client_of(reranker_on(engine)).post("/v1/rerank", json={
            "query": "q", "documents": ["A good start. More text here. Then an end. Four. Five."],
            "evidence": True}).json()
    finally:
        engine.close()
    evidence = body["results"][0]["evidence"]
    assert evidence is not None and len(evidence["sentences"]) == 5
    assert all(-1 <= sentence["delta"] <= 1 for sentence in evidence["sentences"])


def test_belief_probes_come_with_each_result_when_asked_and_never_otherwise(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, Judge(VerdictTokens.of(tokenizer)), pause_s=0.01)
    client = client_of(reranker_on(engine))
    request = {"query": "q", "documents": DOCUMENTS}
    try:
        plain = client.post("/v1/rerank", json=request).json()
        probed = client.post("/v1/rerank", json={**request, "belief": True}).json()
        with client.stream("POST", "/v1/rerank", json={**request, "belief": True, "stream": True}) as streamed:
            events = server_sent_events(streamed.read().decode())
        named = client.post("/v1/rerank", json={**request, "model": "scripted?belief=true"}).json()
        listwise = client_of(reranker_on(engine, "reasonrank")).post("/v1/rerank", json={**request, "belief": True})
    finally:
        engine.close()
    assert all("belief" not in result for result in plain["results"])
    assert not plain["meta"]["explainable_search"]["belief"] and probed["meta"]["explainable_search"]["belief"]
    by_index = {result["index"]: result for result in probed["results"]}
    # The scripted judge answers its forced step with the document's own P(true) (0.8 good, 0.2 otherwise).
    for index, result in by_index.items():
        expected = 0.8 if "good" in str(DOCUMENTS[index]) else 0.2
        assert [point["tokens"] for point in result["belief"]] == [0]  # one token of reasoning: under belief_every
        assert all(point["score"] == pytest.approx(expected) for point in result["belief"])
        assert result["belief"][0]["offset"] == 0 and len(result["belief"][0]["distribution"]) == 2
    streamed_points = {(data["doc_id"], data["point"]["tokens"]) for kind, data in events if kind == "belief"}
    assert streamed_points == {(str(index), tokens) for index in by_index for tokens in (0,)}
    assert all("belief" in result for result in named["results"])
    assert listwise.status_code == 422 and listwise.json()["message"].startswith("belief: reasonrank gives no verdict")


def test_a_server_that_probes_belief_still_answers_a_reranker_without_any(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, reversing)
    served = reranker_on(engine)
    served.settings = dataclasses.replace(served.settings, belief=True, early_verdict=True)
    try:
        answer = client_of(served).post("/v1/rerank", json={"query": "q", "documents": ["a", "b"],
                                                             "reranker": "reasonrank"})
    finally:
        engine.close()
    assert answer.status_code == 200 and all("belief" not in result for result in answer.json()["results"])


@contextlib.contextmanager
def serving(engine: ScriptedEngine, **limits: Any) -> Iterator[str]:
    """The API over ``engine`` on a real loopback server (uvicorn in a thread), at its base URL; the engine is
    closed after."""
    state = ApiState(reranker=reranker_on(engine), limits=ApiSettings(**limits), slots=asyncio.Semaphore(4))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(headless_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


@pytest.fixture
def live(tokenizer: object) -> Iterator[tuple[str, ScriptedEngine]]:
    """The API on a real loopback server over a slow scripted rank1: 0.2 s a chunk."""
    engine = ScriptedEngine(tokenizer, Judge(VerdictTokens.of(tokenizer)), pause_s=0.2)
    with serving(engine) as url:
        yield url, engine


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stops_mid_way(engine: ScriptedEngine, aborted_before: int) -> None:
    """The engine aborted what it was working on for the client that left, and starts nothing more for it."""
    wait_until(lambda: engine.running == 0 and len(engine.aborted) > aborted_before)
    asked = len(engine.requests)
    time.sleep(1.0)  # a judgment's own next request (a forced verdict) would come within 0.2 s
    assert len(engine.requests) == asked and engine.running == 0


def test_a_client_that_goes_away_stops_the_engine_work(live: tuple[str, ScriptedEngine]) -> None:
    url, engine = live
    request = {"query": "q", "documents": ["a good one", "another good one", "plain"]}
    with httpx.stream("POST", f"{url}/v1/rerank", json={**request, "stream": True}, timeout=30) as response:
        first = next(response.iter_lines())
        assert first.startswith("event: ")
    stops_mid_way(engine, 0)
    # Every request the engine had started was aborted mid-way (none had finished after one event); a document
    # whose request had not gone in yet (each waits for the one above it) never sends it.
    assert engine.aborted == engine.requests and 1 <= len(engine.aborted) <= 3
    aborted = len(engine.aborted)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/rerank", json=request, timeout=0.3)
    stops_mid_way(engine, aborted)


def test_the_answer_parses_as_each_published_response_model(judge: ScriptedEngine) -> None:
    """Cohere's SDK models, vLLM's ``RerankResponse`` and LiteLLM's (which its cohere, hosted_vllm and jina_ai
    providers validate against) all take the answer; Cohere's ``meta`` holds nothing but its own fields and ours
    under one name; the token counts are the prompts sent and the reasoning written."""
    from cohere.types import ApiMeta
    from cohere.v2.types import V2RerankResponse
    from litellm.types.rerank import RerankResponse as LiteLLMResponse
    from vllm.entrypoints.pooling.scoring.protocol import RerankResponse as VllmResponse

    body = client_of(reranker_on(judge)).post("/v1/rerank", json={
        "model": "scripted", "query": "which planets have no moons", "documents": DOCUMENTS,
        "return_documents": True}).json()
    V2RerankResponse.model_validate(body)
    VllmResponse.model_validate(body)
    LiteLLMResponse.model_validate(body)
    assert set(body["meta"]) - set(ApiMeta.model_fields) == {"explainable_search"}
    tokens = body["meta"]["tokens"]
    assert tokens["input_tokens"] > 3 * 10 and tokens["output_tokens"] > 0  # three prompts, each with its passage
    assert body["meta"]["billed_units"] == tokens
    assert body["usage"] == {"prompt_tokens": tokens["input_tokens"], "completion_tokens": tokens["output_tokens"],
                             "total_tokens": tokens["input_tokens"] + tokens["output_tokens"]}
    assert body["model"] == "scripted"


def test_infinitys_path_answers_each_document_as_a_string(judge: ScriptedEngine) -> None:
    client = client_of(reranker_on(judge))
    for path in INFINITY_PATHS:
        body = client.post(path, json={"query": "q", "documents": DOCUMENTS, "return_documents": True}).json()
        assert {result["index"]: result["document"] for result in body["results"]} == {
            0: DOCUMENTS[0], 1: DOCUMENTS[1], 2: DOCUMENTS[2]["text"]}
        assert all(result["reasoning"] == "thinking." for result in body["results"])


def test_a_model_name_carries_the_settings_of_clients_that_send_no_fields(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, scripted_model("assessor", tokenizer))
    client = client_of(reranker_on(engine))
    try:
        body = client.post("/v1/rerank", json={
            "model": "scripted?reranker=assessor&budget=5&instruction=no+gas+giants", "query": "q",
            "documents": ["one", "two"]}).json()
        ours = body["meta"]["explainable_search"]
        assert (ours["reranker"], ours["budget"], ours["instruction"]) == ("assessor", 5, "no gas giants")
        assert all("grade" in result for result in body["results"])
        same = client.post("/v1/rerank", json={"model": "?reranker=assessor", "reranker": "assessor", "query": "q",
                                               "documents": ["one"]})
        assert same.status_code == 200 and same.json()["meta"]["explainable_search"]["reranker"] == "assessor"
        for model, named in [("scripted?depth=3", "unknown setting 'depth'"),
                             ("scripted?budget=many", "budget='many' is not a whole number"),
                             ("scripted?evidence=perhaps", "evidence='perhaps' is not true or false"),
                             ("scripted?budget=3&budget=4", "budget is given twice"),
                             ("scripted?reranker=oracle", "reranker"),
                             ("other?budget=3", "'other' is not served here")]:
            refused = client.post("/v1/rerank", json={"model": model, "query": "q", "documents": ["one"]})
            assert refused.status_code in (404, 422) and named in refused.json()["message"], (model, refused.text)
        clash = client.post("/v1/rerank", json={"model": "scripted?budget=5", "budget": 6, "query": "q",
                                                "documents": ["one"]})
        assert clash.status_code == 422 and "budget=5" in clash.json()["message"]
    finally:
        engine.close()


BAD_NUMBERS = ["²", "١٢", "１２", "৫", "½", "+5", "-5", " 5", "5 ", "5e2", "1_000", "0x10", "5.0", "",
               "5" * 5000, "9" * 40]
"""Whole numbers as a model name might carry them wrongly: Unicode digits (which ``str.isdigit`` accepts), signs,
spaces, exponents, separators, nothing, and numbers past what ``int`` reads or any context holds."""
BAD_SETTINGS = [("budget", value) for value in BAD_NUMBERS] + [
    ("evidence", value) for value in ["²", "truе", "ｔｒｕｅ", " true", "1e0", "", "2", "true" * 2000]] + [
    ("reranker", value) for value in ["²", "rank1 ", "ｒａｎｋ１", "", "+rank1", "r" * 5000]]


@pytest.mark.parametrize(("key", "value"), BAD_SETTINGS,
                         ids=[f"{key}={value[:8]!a}+{len(value)}" for key, value in BAD_SETTINGS])
def test_a_malformed_setting_in_the_model_name_is_a_422_that_names_it(judge: ScriptedEngine, key: str,
                                                                       value: str) -> None:
    client = client_of(reranker_on(judge))
    refused = client.post("/v1/rerank", json={"model": f"scripted?{key}={quote(value)}", "query": "q",
                                              "documents": ["a good one"]})
    assert refused.status_code == 422, refused.text
    message = refused.json()["message"]
    assert f"{key}=" in message or message.startswith(f"{key}:") or f"'{key}'" in message, message
    assert len(message) < 400  # a 5,000-character value is not echoed whole


@pytest.mark.parametrize("value", ["²", "١٢ + ½", " spaced ", "5e2", "5" * 500], ids=ascii)
def test_any_text_is_an_instruction_in_the_model_name(judge: ScriptedEngine, value: str) -> None:
    answer = client_of(reranker_on(judge)).post("/v1/rerank", json={
        "model": f"scripted?instruction={quote(value)}", "query": "q", "documents": ["a good one"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["meta"]["explainable_search"]["instruction"] == value


def test_a_body_that_holds_a_number_past_jsons_digit_limit_is_a_400_that_says_so(judge: ScriptedEngine) -> None:
    client = client_of(reranker_on(judge))
    for body in (b'{"query": "q", "documents": ["a"], "ignored": ' + b"7" * 5000 + b"}",
                 b'{"query": "q", "documents": ["a"], "budget": ' + b"7" * 4301 + b"}"):
        refused = client.post("/v1/rerank", content=body, headers={"Content-Type": "application/json"})
        assert refused.status_code == 400, refused.text
        assert "more than 4,300 digits" in refused.json()["message"]
    huge = client.post("/v1/rerank", json={"query": "q", "documents": ["a"], "budget": 10 ** 300})
    assert huge.status_code == 400 and huge.json()["message"].startswith("budget: "), huge.text


@pytest.mark.parametrize(("request_body", "named"), [
    ({"query": "q", "documents": ["x" * 99_000] * 50}, "4,950,001 bytes of text"),
    ({"query": "moons " * 1_000_000, "documents": ["a"]}, "6,000,001 bytes of text"),
])
def test_a_request_past_the_text_limit_is_a_413_that_names_it(judge: ScriptedEngine, request_body: dict,
                                                             named: str) -> None:
    refused = client_of(reranker_on(judge)).post("/v1/rerank", json=request_body)
    assert refused.status_code == 413, refused.text
    message = refused.json()["message"]
    assert named in message and "the limit is 4,194,304 bytes of text per request (api_max_text_bytes)" in message


GATE = "gated"


class GatedTokenizer:
    """The demo model's tokenizer, except that tokenizing a text with ``GATE`` in it waits until ``opened`` is set:
    where tokenizing runs on the event loop, every other client waits with it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, text: str, *args: Any, **kwargs: Any) -> Any:
        if GATE in text:
            self.entered.set()
            assert self.opened.wait(timeout=60)
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("request_body", [
    {"query": "which planets have no moons", "documents": ["a good one", f"a good {GATE} one"]},  # a document's
    {"query": f"which {GATE} planets have no moons", "documents": ["a good one"]},  # the query's
])
def test_health_answers_while_a_request_is_being_tokenized(tokenizer: Any, request_body: dict) -> None:
    gated = GatedTokenizer(tokenizer)
    engine = ScriptedEngine(gated, Judge(VerdictTokens.of(tokenizer)))
    answers: list[httpx.Response] = []
    with serving(engine) as url:
        sender = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/v1/rerank", json=request_body,
                                                                           timeout=60)))
        sender.start()
        try:
            assert gated.entered.wait(timeout=60)  # the request is being tokenized, and stays so until opened
            health = httpx.get(f"{url}/health", timeout=2)
            assert health.status_code == 200
        finally:
            gated.opened.set()
            sender.join(timeout=60)
    assert answers[0].status_code == 200, answers[0].text
    assert {result["status"] for result in answers[0].json()["results"]} == {"judged"}


def endless_on(tokenizer: Any) -> ScriptedEngine:
    """rank1 that judges "good" passages at once and never ends reasoning about "endless" ones."""
    judge = Judge(VerdictTokens.of(tokenizer))

    def script(request: Any) -> Any:
        if "endless" in request.prompt.split("Passage:")[-1]:
            return itertools.repeat(GenerationChunk(text="hmm ", token_ids=(11,), logprobs=({},)))
        return judge(request)

    return ScriptedEngine(tokenizer, script, pause_s=0.01)


def test_past_its_deadline_a_request_ends_with_what_is_judged_and_marks_the_rest(tokenizer: Any) -> None:
    engine = endless_on(tokenizer)
    client = client_of(reranker_on(engine), api_request_seconds=1)
    request = {"query": "q", "documents": ["a good one", "an endless one"]}
    try:
        plain = client.post("/v1/rerank", json=request).json()
        with client.stream("POST", "/v1/rerank", json={**request, "stream": True}) as streamed:
            events = server_sent_events(streamed.read().decode())
        assert events[-1][0] == "results"
        for body in (plain, events[-1][1]):
            by_index = {result["index"]: result for result in body["results"]}
            assert by_index[0]["status"] == "judged" and by_index[0]["failure"] is None
            unfinished = by_index[1]
            assert unfinished["status"] == "reasoning" and unfinished["relevance_score"] == 0
            assert unfinished["failure"] == ("unfinished: the request's deadline of 1 s (api_request_seconds) "
                                             "passed first")
            assert unfinished["reasoning"].startswith("hmm hmm")  # what it wrote so far is kept
            assert [result["index"] for result in body["results"]] == [0, 1]
            assert body["meta"]["explainable_search"]["unfinished"] == 1
            assert body["meta"]["warnings"] == ["1 of 2 documents unfinished: the request's deadline of 1 s "
                                                "(api_request_seconds) passed first"]
        wait_until(lambda: engine.running == 0)  # the endless requests were aborted
        assert sum("endless" in aborted.prompt for aborted in engine.aborted) == 2
    finally:
        engine.close()


def test_past_its_deadline_with_nothing_judged_the_answer_is_a_503_and_health_keeps_the_deadline(
        tokenizer: Any) -> None:
    """An all-zero list would read as a ranking to clients that ignore ``meta`` (TEI's bare list has none)."""
    engine = endless_on(tokenizer)
    client = client_of(reranker_on(engine), api_request_seconds=1)
    try:
        for body in ({"query": "q", "documents": ["an endless one", "another endless one"]},
                     {"query": "q", "texts": ["an endless one"]}):
            refused = client.post("/v1/rerank" if "documents" in body else "/rerank", json=body)
            assert refused.status_code == 503, refused.text
            assert refused.json()["message"] == ("no document was judged: the request's deadline of 1 s "
                                                 "(api_request_seconds) passed first")
        engine._unhealthy = "the transformers engine's worker stopped"
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["request_seconds"] == 1  # what a client waits for
    finally:
        engine.close()


def test_the_http_reranker_waits_as_long_as_the_server_promises(tokenizer: Any) -> None:
    from search.integrations.source import GRACE_S, HttpReranker

    with serving(endless_on(tokenizer), api_request_seconds=1) as url:
        reranker = HttpReranker(base_url=url)
        assert reranker.request_timeout_s() == 1 + GRACE_S
        assert HttpReranker(base_url=url, timeout_s=7).request_timeout_s() == 7
        results = reranker.rerank("q", ["an endless one", "a good one"])
    assert [(result.index, result.status) for result in results] == [(1, "judged"), (0, "reasoning")]
    assert "deadline of 1 s" in (results[1].failure or "")
    with serving(endless_on(tokenizer), api_request_seconds=5000) as url:
        assert HttpReranker(base_url=url).request_timeout_s() == 5000 + GRACE_S  # past any fixed 600 s


TEI_BODY = {"query": "which planets have no moons", "texts": ["Jupiter has many moons.", "Mercury: a good answer."],
            "raw_scores": False, "return_text": True, "truncate": False, "truncation_direction": "Right"}
"""What Text Embeddings Inference's clients (LiteLLM's ``huggingface/``, Haystack's ``HuggingFaceTEIRanker``)
post."""


def test_text_embeddings_inference_s_shape_is_answered_in_it(judge: ScriptedEngine) -> None:
    client = client_of(reranker_on(judge))
    answer = client.post("/rerank", json=TEI_BODY)
    assert answer.status_code == 200, answer.text
    results = answer.json()
    assert isinstance(results, list)
    assert [(result["index"], result["score"], result["text"]) for result in results] == [
        (1, pytest.approx(0.8), TEI_BODY["texts"][1]), (0, pytest.approx(0.2), TEI_BODY["texts"][0])]
    assert all(result["reasoning"] == "thinking." for result in results)  # ours after theirs
    bare = client.post("/rerank", json={**TEI_BODY, "return_text": False}).json()
    assert all("text" not in result for result in bare)
    refused = client.post("/rerank", json={**TEI_BODY, "texts": "one text"})
    assert refused.status_code == 422 and refused.json()["message"].startswith("texts: ")
