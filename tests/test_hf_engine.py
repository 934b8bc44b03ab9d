"""The transformers engine's own machinery, on the demo model: continuous batching (a late request does not wait for
the running ones; rows joining and leaving a running batch keep their own numbers), the prefix cache, float32
linear layers through oneDNN, and grouped-query attention that reads the shared key/value heads in place.
test_engines.py runs it beside vLLM through the rerankers."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from search.api import ReasoningReranker
from search.corpus import Passage
from search.engines import hf_engine, onednn
from search.engines.base import EngineError, GenerationChunk, GenerationRequest
from search.engines.grouped_attention import NAME, grouped_sdpa_forward, use_grouped_attention
from search.engines.hf_batching import BatchRow, PrefixCache, RunningBatch
from search.engines.hf_engine import TransformersEngine
from search.models import ResolvedModel
from search.pipeline import LoadedModel
from search.rerank.events import Event, Failed, Judged
from search.rerank.rank1 import Rank1Reranker
from search.retrieval.ranking import Candidate, Hit
from search.server import ApiState, headless_app
from search.settings import ApiSettings, RerankSettings

T = TypeVar("T")
TOLERANCE = 1e-3
WATCHED = (1, 2, 330, 1489)
STORY = "Write a long story about a cat who sails around the world.\n\nOnce upon a time,"
PROMPTS = ("The planets of the solar system, from the Sun outwards, are",
           "Question: which planets have no moons?\nAnswer:",
           "A recipe for bread, step by step:\n1.",
           "Mercury has no moons. Venus has none either. Earth has one, the Moon. Mars has two small moons, "
           "Phobos and Deimos, probably captured asteroids. Summary:")


@pytest.fixture(scope="module")
def engine(demo_model: Path) -> Iterator[TransformersEngine]:
    engine = TransformersEngine(model="demo", location=str(demo_model), max_model_len=2048, batch_size=4)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(demo_model: Path) -> tuple[object, object]:
    """The demo model as transformers loads it, in float32 with PyTorch's own linear layers."""
    return (AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(demo_model))


def reference_logprobs(reference: tuple[object, object], text: str, generated: list[int] = ()) -> torch.Tensor:
    """The next token's log-probabilities after ``text``'s tokens and then ``generated``."""
    model, tokenizer = reference
    with torch.inference_mode():
        ids = torch.tensor([tokenizer(text).input_ids + list(generated)])
        return torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)


async def collect(engine: TransformersEngine, request: GenerationRequest, delay_s: float = 0.0
                  ) -> list[GenerationChunk]:
    await asyncio.sleep(delay_s)
    return [chunk async for chunk in engine.generate(request)]


def tokens(chunks: list[GenerationChunk]) -> list[int]:
    return [token for chunk in chunks for token in chunk.token_ids]


BOUND_S = 300
"""The longest a test of the worker may take: a regression that leaves a reader waiting fails instead of hanging."""


def bounded(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, BOUND_S))


def queued(engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch, *requests: GenerationRequest | None
           ) -> threading.Event:
    """Set once every one of ``requests`` is on the engine's queue (None: once the engine is closing)."""
    event = threading.Event()
    waiting = list(requests)
    put = engine._pending.put

    def put_and_tell(item: Any, *args: Any, **kwargs: Any) -> None:
        put(item, *args, **kwargs)
        request = item.row.request if item is not None else None
        if any(request is each for each in waiting):
            waiting.remove(request)
            if not waiting:
                event.set()

    monkeypatch.setattr(engine._pending, "put", put_and_tell)
    return event


@dataclass(kw_only=True, slots=True)
class Hold:
    """Where the running batch held its decoding: ``reached`` once it did, with these ``rows``."""

    reached: threading.Event
    rows: list[Any]


def hold_decoding(engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch, *, until: threading.Event,
                  once: Callable[[list[Any]], bool] = lambda rows: True) -> Hold:
    """The first time its rows are ``once`` the running batch decodes no step until ``until`` is set: what a test
    needs running still runs when the next thing happens, however fast or slow the machine."""
    batch = engine._batch
    decode = batch.decode
    hold = Hold(reached=threading.Event(), rows=[])

    def held() -> Any:
        if not hold.reached.is_set() and once(batch.rows):
            hold.rows[:] = batch.rows
            hold.reached.set()
            until.wait(BOUND_S)
        return decode()

    monkeypatch.setattr(batch, "decode", held)
    return hold


@dataclass(kw_only=True, slots=True)
class Keeps:
    """The requests the running batch kept each time rows left it, as the worker dropped them."""

    kept: list[list[GenerationRequest]]
    first: threading.Event
    """Set once rows have left."""


def batch_keeps(engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch) -> Keeps:
    keeps = Keeps(kept=[], first=threading.Event())
    batch = engine._batch
    keep = batch.keep

    def recorded(rows: list[Any]) -> None:
        keep(rows)
        keeps.kept.append([row.waiting.row.request for row in rows])
        keeps.first.set()

    monkeypatch.setattr(batch, "keep", recorded)
    return keeps


class InjectedError(RuntimeError):
    """The failure a test injects into the engine."""


def failing_once(original: Callable[..., Any], hits: Callable[..., bool]) -> Callable[..., Any]:
    """``original``, but raising ``InjectedError`` the first time it is called with arguments that ``hits``."""
    fired: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired and hits(*args, **kwargs):
            fired.append(True)
            raise InjectedError("injected failure")
        return original(*args, **kwargs)

    return wrapper


async def outcome(engine: TransformersEngine, request: GenerationRequest, started: asyncio.Event | None = None
                  ) -> list[GenerationChunk] | EngineError:
    """The request's chunks, or the error it failed with; ``started`` is set once its first chunk is read."""
    chunks = []
    try:
        async for chunk in engine.generate(request):
            chunks.append(chunk)
            if started is not None:
                started.set()
    except EngineError as error:
        return error
    return chunks


def test_a_late_request_finishes_while_a_long_one_is_still_generating(engine: TransformersEngine,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With static batches the short request waited for the long one's whole budget. The long one decodes no step
    until the short one is queued, so that it is still running when the short one arrives on any machine; the
    worker's own record says that the short one left the batch while the long one stayed."""
    long = GenerationRequest(prompt=STORY, max_tokens=120)
    short = GenerationRequest(prompt=PROMPTS[0], max_tokens=3)
    hold_decoding(engine, monkeypatch, until=queued(engine, monkeypatch, short))
    kept = batch_keeps(engine, monkeypatch)

    async def both() -> tuple[list[GenerationChunk] | EngineError, ...]:
        started = asyncio.Event()
        reading = asyncio.create_task(outcome(engine, long, started))
        await started.wait()
        return await collect(engine, short), await reading

    for chunks in bounded(both()):
        assert isinstance(chunks, list) and chunks[-1].finish_reason is not None, chunks
    assert kept.kept[0] == [long]  # the first row to leave was the short one's


def test_rows_that_join_and_leave_a_running_batch_keep_their_own_numbers(
        engine: TransformersEngine, reference: tuple[object, object]) -> None:
    """Prompts of different lengths arriving at different times share the batch (left-padded, masked): each row's
    watched log-probabilities are its own, as a model run on its text alone gives them."""
    requests = [GenerationRequest(prompt=prompt, max_tokens=8 + 6 * number, watch_token_ids=WATCHED)
                for number, prompt in enumerate(PROMPTS)]

    async def together() -> list[list[GenerationChunk]]:
        return await asyncio.gather(*(collect(engine, request, 0.4 * number)
                                      for number, request in enumerate(requests)))

    for request, chunks in zip(requests, asyncio.run(together()), strict=True):
        generated = tokens(chunks)
        assert len(generated) == request.max_tokens or chunks[-1].finish_reason == "stop"
        logprobs = [entry for chunk in chunks for entry in chunk.logprobs]
        for position in range(len(generated)):
            expected = reference_logprobs(reference, request.prompt, generated[:position])
            assert [logprobs[position][token] for token in WATCHED] == pytest.approx(
                [expected[token].item() for token in WATCHED], abs=TOLERANCE), (request.prompt, position)


def test_a_prompt_that_begins_like_a_finished_one_is_served_from_the_prefix_cache(
        engine: TransformersEngine, reference: tuple[object, object]) -> None:
    """rank1's forced verdict step repeats its whole prompt and reasoning: only what differs is computed."""
    first = asyncio.run(collect(engine, GenerationRequest(prompt=PROMPTS[3], max_tokens=12)))
    continued = PROMPTS[3] + "".join(chunk.text for chunk in first) + "\n</think>"
    request = GenerationRequest(prompt=continued, max_tokens=1, watch_token_ids=WATCHED, allowed_token_ids=(1, 2))
    [chunk] = asyncio.run(collect(engine, request))
    prompt_tokens = len(engine.tokenizer(PROMPTS[3]).input_ids)
    assert prompt_tokens <= chunk.cached_tokens < len(engine.tokenizer(continued).input_ids)
    expected = reference_logprobs(reference, continued)
    assert [chunk.logprobs[0][token] for token in WATCHED] == pytest.approx(
        [expected[token].item() for token in WATCHED], abs=TOLERANCE)
    assert chunk.token_ids[0] == (1 if expected[1] > expected[2] else 2)  # the allowed token the model prefers
    assert asyncio.run(collect(engine, GenerationRequest(prompt="Unrelated: " + STORY, max_tokens=1)))[
        -1].cached_tokens == 0


def test_a_prompt_that_begins_like_a_running_request_is_served_from_its_rows_cache(
        engine: TransformersEngine, reference: tuple[object, object], monkeypatch: pytest.MonkeyPatch) -> None:
    """A belief probe asks for the verdict after its reasoning request's prompt and reasoning so far, while that
    request still decodes: the shared part comes from the running row's cache (a copy: the row decodes on as if
    nothing happened), and both give what the model gives on their text alone."""
    prompt = "Probe: " + STORY
    long = GenerationRequest(prompt=prompt, max_tokens=60, watch_token_ids=WATCHED)
    probe_queued = threading.Event()
    hold = hold_decoding(engine, monkeypatch, until=probe_queued,
                         once=lambda rows: bool(rows) and len(rows[0].waiting.row.token_ids) >= 12)
    asked: list[str] = []

    async def both() -> tuple[list[GenerationChunk] | EngineError, list[GenerationChunk] | EngineError]:
        reading = asyncio.create_task(outcome(engine, long))
        await asyncio.to_thread(hold.reached.wait, BOUND_S)
        so_far = engine.tokenizer.decode(hold.rows[0].waiting.row.token_ids[:-1])
        asked.append(prompt + so_far + "\n</think>")
        probing = asyncio.create_task(outcome(engine, GenerationRequest(prompt=asked[0], max_tokens=1,
                                                                        watch_token_ids=WATCHED)))
        while engine._pending.empty():  # the worker waits in its held step: the probe stays queued till then
            await asyncio.sleep(0.01)
        probe_queued.set()
        return await probing, await reading

    probed, whole = bounded(both())
    assert isinstance(probed, list) and isinstance(whole, list), (probed, whole)
    assert len(tokens(whole)) == 60  # still running when the probe came, and to its end after
    assert probed[-1].cached_tokens > len(engine.tokenizer(prompt).input_ids)
    expected = reference_logprobs(reference, asked[0])
    assert [probed[0].logprobs[0][token] for token in WATCHED] == pytest.approx(
        [expected[token].item() for token in WATCHED], abs=TOLERANCE)
    generated = tokens(whole)
    logprobs = [entry for chunk in whole for entry in chunk.logprobs]
    for position in (11, 12, 59):
        expected = reference_logprobs(reference, prompt, generated[:position])
        assert [logprobs[position][token] for token in WATCHED] == pytest.approx(
            [expected[token].item() for token in WATCHED], abs=TOLERANCE), position


def test_prompts_prefilled_together_each_get_what_the_model_gives_on_their_text_alone(
        engine: TransformersEngine, reference: tuple[object, object]) -> None:
    """Requests that arrive together (the probes of documents reasoning in step) share one pass, each left-padded
    after its own held prefix (one from the prefix cache, two with none): each row's next-token numbers, and the
    cache it joins the batch with, are what the model gives on its text alone."""
    batch, prefixes, tokenizer = RunningBatch(engine._model, engine.device), PrefixCache(), engine.tokenizer
    story = tokenizer(STORY).input_ids
    [alone] = batch.prefill([batch.held(story, prefixes)])
    prefixes.add(tuple(story), alone.cache)
    texts = (STORY + " there lived a small grey cat called", PROMPTS[1], PROMPTS[3])
    held = [batch.held(tokenizer(text).input_ids, prefixes) for text in texts]
    assert [item.shared for item in held] == [len(story), 0, 0]
    decoding: RunningBatch = RunningBatch(engine._model, engine.device)
    for text, item, result in zip(texts, held, batch.prefill(held), strict=True):
        assert result.cached_tokens == item.shared and result.cache[0][0].shape[2] == len(item.tokens)
        expected = reference_logprobs(reference, text)
        assert torch.log_softmax(result.logits, dim=-1)[list(WATCHED)].tolist() == pytest.approx(
            expected[list(WATCHED)].tolist(), abs=TOLERANCE), text
        decoding.join(BatchRow(next_token=int(expected.argmax())), result.cache)
    for text, logits, row in zip(texts, decoding.decode(), decoding.rows, strict=True):
        expected = reference_logprobs(reference, text, [row.next_token])
        assert torch.log_softmax(logits, dim=-1)[list(WATCHED)].tolist() == pytest.approx(
            expected[list(WATCHED)].tolist(), abs=TOLERANCE), text


def test_requests_that_arrive_together_are_prefilled_in_one_pass(
        engine: TransformersEngine, reference: tuple[object, object], monkeypatch: pytest.MonkeyPatch) -> None:
    """Three one-step requests queued while a long one decodes (as the documents' probes arrive in the same step)
    join in one pass over the weights, not three, and each gets its own numbers."""
    long = GenerationRequest(prompt=STORY, max_tokens=40)
    shorts = [GenerationRequest(prompt=prompt, max_tokens=1, watch_token_ids=WATCHED) for prompt in PROMPTS[:3]]
    hold_decoding(engine, monkeypatch, until=queued(engine, monkeypatch, *shorts))
    passes: list[int] = []
    prefill = engine._batch.prefill

    def counted(prompts: list[Any]) -> Any:
        passes.append(len(prompts))
        return prefill(prompts)

    monkeypatch.setattr(engine._batch, "prefill", counted)

    async def together() -> tuple[list[list[GenerationChunk] | EngineError], list[GenerationChunk] | EngineError]:
        started = asyncio.Event()
        reading = asyncio.create_task(outcome(engine, long, started))
        await started.wait()
        return list(await asyncio.gather(*(outcome(engine, request) for request in shorts))), await reading

    answers, whole = bounded(together())
    assert isinstance(whole, list) and len(tokens(whole)) == 40
    assert passes == [1, 3]  # the long one alone, then the three together
    for request, chunks in zip(shorts, answers, strict=True):
        assert isinstance(chunks, list), chunks
        expected = reference_logprobs(reference, request.prompt)
        assert [chunks[0].logprobs[0][token] for token in WATCHED] == pytest.approx(
            [expected[token].item() for token in WATCHED], abs=TOLERANCE), request.prompt


def test_packed_linear_layers_compute_what_pytorchs_do(demo_model: Path, reference: tuple[object, object]) -> None:
    model, tokenizer = reference
    packed = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval()
    linear = sum(isinstance(module, torch.nn.Linear) for module in packed.modules())
    assert onednn.available() and onednn.pack_linear_layers(packed) == linear > 0
    assert not any(isinstance(module, torch.nn.Linear) for module in packed.modules())
    inputs = tokenizer(list(PROMPTS), return_tensors="pt", padding=True) if tokenizer.pad_token else None
    inputs = inputs or tokenizer(PROMPTS[3], return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(packed(**inputs).logits, model(**inputs).logits, atol=1e-3)


def test_grouped_attention_computes_what_sdpa_does_on_a_left_padded_batch(
        demo_model: Path, reference: tuple[object, object], engine: TransformersEngine) -> None:
    """The engine's attention (key/value heads shared in place, with a padding mask) against transformers' SDPA
    (heads repeated), every real position of a left-padded batch."""
    model, tokenizer = reference
    assert engine._model.config._attn_implementation == NAME
    grouped = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval()
    assert grouped.config.num_key_value_heads < grouped.config.num_attention_heads  # the demo model groups heads
    assert use_grouped_attention(grouped) and grouped.config._attn_implementation == NAME
    rows = [tokenizer(prompt).input_ids for prompt in PROMPTS]
    width = max(len(row) for row in rows)
    ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    with torch.inference_mode():
        expected, got = (each(input_ids=ids, attention_mask=mask).logits for each in (model, grouped))
    assert torch.allclose(got[mask.bool()], expected[mask.bool()], atol=1e-4)


# The worker never leaves a reader waiting ----------------------------------------------------------------------

OTHER = GenerationRequest(prompt=PROMPTS[0], max_tokens=24)
"""Already running when the ``TARGET`` arrives, and running still when it fails (``hold_decoding``)."""
TARGET = GenerationRequest(prompt=PROMPTS[2], max_tokens=8)
"""The request a failure is injected into."""


class FailingTokenizer:
    """The engine's tokenizer, failing once to tokenize ``TARGET``'s prompt."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokenize = failing_once(tokenizer, lambda text, *args, **kwargs: text == TARGET.prompt)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenize(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def of_target(row: Any, *args: Any) -> bool:
    return row.waiting.row.request is TARGET


def inject(engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """One failure at ``point`` of the worker's loop, the first time it touches ``TARGET`` (its batch, for the
    batch's own steps)."""
    batch = engine._batch
    target_ids = engine.tokenizer(TARGET.prompt).input_ids
    target_in_batch = lambda *args: any(of_target(row) for row in batch.rows)  # noqa: E731
    if point == "tokenizing the prompt":
        monkeypatch.setattr(engine, "tokenizer", FailingTokenizer(engine.tokenizer))
    elif point == "prefill":
        monkeypatch.setattr(batch, "prefill", failing_once(
            batch.prefill, lambda prompts: any(held.tokens == target_ids for held in prompts)))
    elif point in ("choosing the first token", "choosing the next token"):
        calls: list[GenerationRequest] = []

        def hits(logits: Any, request: GenerationRequest) -> bool:
            calls.append(request)
            return request is TARGET and calls.count(TARGET) == (1 if point.endswith("first token") else 2)

        monkeypatch.setattr(hf_engine, "watched_and_chosen", failing_once(hf_engine.watched_and_chosen, hits))
    elif point == "joining the running batch":
        monkeypatch.setattr(batch, "join", failing_once(batch.join, of_target))
    elif point == "a decoding step":
        monkeypatch.setattr(batch, "decode", failing_once(batch.decode, target_in_batch))
    elif point == "dropping rows from the running batch":
        monkeypatch.setattr(batch, "keep", failing_once(batch.keep, target_in_batch))
    else:
        monkeypatch.setattr(engine._prefixes, "add", failing_once(engine._prefixes.add, lambda *args: True))


POINTS = {  # each point, and which of (OTHER, TARGET) its failure fails
    "tokenizing the prompt": (False, True),
    "prefill": (False, True),
    "choosing the first token": (False, True),
    "choosing the next token": (False, True),
    "joining the running batch": (False, True),
    "a decoding step": (True, True),  # the cache may be extended in some layers only: the batch starts again
    "dropping rows from the running batch": (True, False),  # TARGET finished first: its leaving failed
    "keeping a finished sequence's cache": (False, False),  # only a saving: the answers stand
}


@pytest.mark.parametrize("point", POINTS)
def test_a_failure_fails_the_requests_it_touched_by_name_and_the_engine_keeps_serving(
        engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Before, only prefill was guarded: a failure anywhere else ended the worker thread, and every reader waited
    for its next chunk for ever."""
    inject(engine, monkeypatch, point)
    prefixes = engine._prefixes
    hold_decoding(engine, monkeypatch, until=queued(engine, monkeypatch, TARGET))

    async def both() -> tuple[list[GenerationChunk] | EngineError, ...]:
        started = asyncio.Event()
        other = asyncio.create_task(outcome(engine, OTHER, started))
        await started.wait()
        target = await outcome(engine, TARGET)  # OTHER decodes no step until TARGET is queued
        return await other, target

    for result, fails in zip(bounded(both()), POINTS[point], strict=True):
        if fails:
            assert isinstance(result, EngineError), result
            assert f"transformers engine: {point} failed: InjectedError: injected failure" in str(result)
        else:
            assert isinstance(result, list) and result[-1].finish_reason is not None, result
    assert (engine._prefixes is not prefixes) == (point == "keeping a finished sequence's cache")
    later = bounded(collect(engine, GenerationRequest(prompt=PROMPTS[3], max_tokens=4)))
    assert later[-1].finish_reason is not None and engine.unhealthy() is None


def test_a_failed_request_shows_as_failed_on_its_card(engine: TransformersEngine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """rank1 over two documents, the engine failing on one's first token: that one's outcome is a failure naming
    the step, the other is judged."""
    candidates = tuple(Candidate(passage=Passage(passage_id=doc_id, doc_id=doc_id, index=0, title="", text=text),
                                 stage="bm25", provenance={"bm25": Hit(rank=rank, score=1.0)})
                       for rank, (doc_id, text) in enumerate((("fine", PROMPTS[0]), ("failing", PROMPTS[2])), 1))
    monkeypatch.setattr(hf_engine, "watched_and_chosen", failing_once(
        hf_engine.watched_and_chosen, lambda logits, request: PROMPTS[2] in request.prompt))
    reranker = Rank1Reranker(engine, model_key="demo", budget=8, settings=RerankSettings(evidence=False))

    async def events() -> list[Event]:
        return [event async for event in reranker.stream("which planets have no moons", candidates)]

    outcomes = {event.doc_id: event for event in bounded(events()) if isinstance(event, Judged | Failed)}
    assert isinstance(outcomes["fine"], Judged)
    assert isinstance(outcomes["failing"], Failed)
    assert "choosing the first token failed: InjectedError" in outcomes["failing"].reason


@pytest.fixture
def own_engine(demo_model: Path) -> Iterator[TransformersEngine]:
    """An engine of one row at a time, for a test that breaks or closes it: a second request waits in its queue."""
    engine = TransformersEngine(model="demo", location=str(demo_model), max_model_len=2048, batch_size=1)
    yield engine
    engine.close()


def running_and_queued(engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch, then: Callable[[], Any]
                       ) -> tuple[list[GenerationChunk] | EngineError, list[GenerationChunk] | EngineError]:
    """OTHER running and TARGET queued behind it when ``then`` runs (on a thread of its own): what each heard."""
    on_queue = queued(engine, monkeypatch, TARGET)

    async def run() -> tuple[list[GenerationChunk] | EngineError, list[GenerationChunk] | EngineError]:
        started = asyncio.Event()
        other = asyncio.create_task(outcome(engine, dataclasses.replace(OTHER, max_tokens=1000), started))
        await started.wait()
        target = asyncio.create_task(outcome(engine, TARGET))
        await asyncio.to_thread(on_queue.wait, BOUND_S)
        await asyncio.to_thread(then)
        return await other, await target

    return bounded(run())


def test_a_worker_that_cannot_go_on_fails_everyone_and_the_engine_says_it_is_unhealthy(
        own_engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure outside the guarded steps (here the step itself) stops the worker: the request running and the one
    queued hear why, later requests fail at once with the same reason, and the API's /health answers 503."""
    client = TestClient(headless_app(ApiState(
        reranker=ReasoningReranker(LoadedModel(engine=own_engine, model=ResolvedModel(
            name="demo", location="", key="demo", is_demo=True)), RerankSettings(reranker="rank1")),
        limits=ApiSettings(), slots=asyncio.Semaphore(1))))
    assert client.get("/health").status_code == 200
    broken = threading.Event()
    monkeypatch.setattr(own_engine, "_step", failing_once(own_engine._step, lambda: broken.wait(BOUND_S)))
    results = running_and_queued(own_engine, monkeypatch, broken.set)
    reason = "the transformers engine stopped: InjectedError: injected failure"
    assert own_engine.unhealthy() == reason
    assert all(isinstance(result, EngineError) and str(result) == reason for result in results), results
    with pytest.raises(EngineError, match=reason):
        bounded(collect(own_engine, TARGET))
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["reason"] == reason


def test_closing_answers_the_requests_running_and_queued(own_engine: TransformersEngine,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the worker returned on the close and left both readers waiting. OTHER decodes no step until the
    engine is closing, so that it is still running then."""
    hold_decoding(own_engine, monkeypatch, until=queued(own_engine, monkeypatch, None))
    results = running_and_queued(own_engine, monkeypatch, own_engine.close)
    assert all(isinstance(result, EngineError) and "closed" in str(result) for result in results), results
    with pytest.raises(EngineError, match="closed"):
        bounded(collect(own_engine, TARGET))


def test_a_request_that_reaches_the_engine_loop_after_the_close_began_is_refused_there(
        own_engine: TransformersEngine) -> None:
    """``generate`` checks on the caller's loop; the close can begin before the request reaches the engine's loop,
    where the worker may already have left: there it is refused, never queued for no one."""
    own_engine._unhealthy = "the transformers engine was closed"

    async def first_chunk() -> GenerationChunk | None:
        async for chunk in own_engine._generate(TARGET):
            return chunk
        return None

    with pytest.raises(EngineError, match="was closed"):
        own_engine._on_loop(asyncio.wait_for(first_chunk(), BOUND_S))
    assert own_engine.active_requests() == 0


def test_the_batch_drops_the_rows_of_requests_whose_readers_left(engine: TransformersEngine,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``active_requests`` leaves cancelled rows out by definition: what shows a cancel works is the worker's batch
    dropping them before their budget. Once all three run, the batch decodes no step until their readers have
    left, so that none can finish first."""
    stories = [GenerationRequest(prompt=STORY + " " * index, max_tokens=400) for index in range(3)]
    left = threading.Event()
    all_in = hold_decoding(engine, monkeypatch, until=left, once=lambda rows: len(rows) == len(stories))
    hold_decoding(engine, monkeypatch, until=queued(engine, monkeypatch, *stories))  # the first row waits for them
    kept = batch_keeps(engine, monkeypatch)

    async def read_a_little() -> None:
        streams = [engine.generate(request) for request in stories]
        await asyncio.gather(*(anext(stream) for stream in streams))
        await asyncio.to_thread(all_in.reached.wait, BOUND_S)
        for stream in streams:
            await stream.aclose()
        while not all(row.waiting.row.cancelled for row in all_in.rows):  # the engine's loop hears of it
            await asyncio.sleep(0.01)
        left.set()
        await asyncio.to_thread(kept.first.wait, BOUND_S)

    bounded(read_a_little())
    assert sorted(id(row.waiting.row.request) for row in all_in.rows) == sorted(map(id, stories))
    assert kept.kept == [[]]  # all three left at once, at the end of the step the batch was holding
    assert all(not row.waiting.row.done and len(row.waiting.row.token_ids) < 400 for row in all_in.rows)


@pytest.mark.parametrize("unsupported", ["cache", "position_bias"])
def test_grouped_attention_refuses_what_it_does_not_implement(unsupported: str) -> None:
    """It implements the part of transformers' SDPA path the engine takes: handed a cache to update itself (a paged
    cache, as transformers' own continuous batching passes it) or a position bias, it says so instead of attending
    to stale keys or leaving the bias out."""
    query, key = torch.zeros(1, 4, 3, 8), torch.zeros(1, 2, 3, 8)
    with pytest.raises(NotImplementedError, match="supports caches the model updates itself, such as DynamicCache"):
        grouped_sdpa_forward(torch.nn.Module(), query, key, key, None, **{unsupported: torch.zeros(1)})
