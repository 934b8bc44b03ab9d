"""Rerank any documents for a query, reasoning included: the Python API, and the request and result shapes that the
HTTP API (``search.server``: Cohere's ``/v1/rerank``) shares with it.

    from search import open_reranker

    with open_reranker("demo", engine="transformers", budget=16) as reranker:
        for result in reranker.rerank("which planets have no moons", ["Mercury has no moon.", "Mars has two."]):
            print(result.index, round(result.relevance_score, 3), result.reasoning[:60])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from search.corpus import Passage
from search.engines import EngineError, close_engine
from search.pipeline import LoadedModel, build_reranker, open_model
from search.rerank.base import Reranker, Run, Status
from search.rerank.events import Event
from search.rerank.registry import SETTING_CHOICES, reranker_class
from search.retrieval.ranking import Candidate, Hit
from search.settings import DEFAULT_RERANKER, RerankSettings, Settings

T = TypeVar("T")
REQUEST_STAGE = "request"
"""The stage the documents come from: the caller's order, with no score of its own."""
ROW_ENVELOPE = ("rank", "doc_id", "passage_id", "first_stage_rank", "score", "status", "failure", "reasoning")
"""The row fields a result carries as attributes of its own (the rest are the reranker's: ``details``)."""
RESULT_ENVELOPE = ("index", "relevance_score", "document", "id", "status", "reasoning", "failure")
"""The fields of a result's JSON that are not the reranker's own."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RerankDocument:
    """A document to rerank: the model reads the title, a space, then the text. ``id`` is the caller's, echoed."""

    text: str
    title: str = ""
    id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RerankRequest:
    """One query's documents to rerank, and how; None means the settings the model was opened with."""

    query: str
    documents: tuple[RerankDocument, ...]
    top_n: int | None = None
    instruction: str = ""
    reranker: str | None = None
    budget: int | None = None
    evidence: bool | None = None
    belief: bool | None = None
    early_verdict: bool | None = None

    def settings(self, base: RerankSettings) -> RerankSettings:
        """``base`` with what this request asks for instead; the server's own belief probes and early verdicts only
        for a reranker that has them (a request that asks for them from one that has none is refused)."""
        reranker = self.reranker or base.reranker
        probed = reranker_class(reranker).probes_belief
        return dataclasses.replace(
            base, reranker=reranker, budget=self.budget or base.budget,
            evidence=base.evidence if self.evidence is None else self.evidence,
            belief=base.belief and probed if self.belief is None else self.belief,
            early_verdict=base.early_verdict and probed if self.early_verdict is None else self.early_verdict)


@dataclass(frozen=True, kw_only=True, slots=True)
class RerankResult:
    """One document's outcome, best first. ``relevance_score`` is on 0–1, as the reranker's ``relevance_meaning``
    says; a document that failed has 0 and ``failure`` says why. ``details`` holds the reranker's own fields (its
    run's ``details``: rank1's ``p_true``, ``verdict``…, the assessor's ``grade``, ``distribution``…) and
    ``evidence``; with belief probes, ``belief`` (its ``BeliefPoint`` fields, by tokens)."""

    index: int
    """The document's place in the request, from 0."""
    document: RerankDocument
    relevance_score: float
    status: Status
    reasoning: str
    failure: str | None
    details: Mapping[str, Any]

    def to_json(self, *, return_documents: bool = False) -> dict[str, Any]:
        """Cohere's result (``index``, ``relevance_score``, ``document`` when asked) and our fields after it."""
        document = {"text": self.document.text, **({"title": self.document.title} if self.document.title else {})}
        return {"index": self.index, "relevance_score": self.relevance_score,
                **({"document": document} if return_documents else {}),
                **({"id": self.document.id} if self.document.id is not None else {}),
                "status": self.status, "reasoning": self.reasoning, "failure": self.failure, **self.details}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], documents: Sequence[RerankDocument]) -> RerankResult:
        """The result ``to_json`` wrote (one of an HTTP answer's ``results``) for the ``documents`` sent."""
        return cls(index=data["index"], document=documents[data["index"]], relevance_score=data["relevance_score"],
                   status=data["status"], reasoning=data["reasoning"], failure=data["failure"],
                   details={name: value for name, value in data.items() if name not in RESULT_ENVELOPE})


def candidates_of(documents: Sequence[RerankDocument]) -> tuple[Candidate, ...]:
    """The documents as candidates in the caller's order, each named by its index (ids need not be unique)."""
    return tuple(Candidate(passage=Passage(passage_id=str(index), doc_id=str(index), index=0, title=document.title,
                                           text=document.text),
                           stage=REQUEST_STAGE, provenance={REQUEST_STAGE: Hit(rank=index + 1, score=0.0)})
                 for index, document in enumerate(documents))


UNFINISHED: tuple[Status, ...] = ("waiting", "reasoning")
"""The statuses of a document not yet judged nor failed."""


class Reranking:
    """One request on its way: iterate ``events()`` (each is folded into ``run`` as it passes), then read
    ``results()``; ``cut_short`` ends it early with what is judged so far."""

    def __init__(self, reranker: Reranker, request: RerankRequest) -> None:
        self.request = request
        self.reranker = reranker
        self.candidates = candidates_of(request.documents)
        self.run: Run = reranker.start_run(request.query, self.candidates, instruction=request.instruction)
        self.stopped_because = ""
        """Why the run was cut short (empty: it was not): each unfinished document's ``failure`` says it."""

    def cut_short(self, reason: str) -> None:
        """Stop the run (its events must be closed already) with what is judged so far, each unfinished document
        marked with ``reason``."""
        self.run.stop()
        self.stopped_because = reason

    def unfinished(self) -> int:
        """Documents neither judged nor failed: none once the run is over, those left when it was cut short."""
        return sum(self.run.status(candidate.passage.doc_id) in UNFINISHED for candidate in self.candidates)

    async def events(self) -> AsyncIterator[Event]:
        """Every event as the model writes; closing this early aborts the engine requests."""
        stream = self.reranker.stream(self.request.query, self.candidates, instruction=self.request.instruction)
        try:
            async for event in stream:
                self.run.apply(event)
                yield event
        finally:
            await stream.aclose()

    def results(self) -> list[RerankResult]:
        """The documents best first (failures last), cut to ``top_n``; when the run was cut short, each unfinished
        one has relevance 0 and ``failure`` saying why."""
        results = []
        for row in self.run.rows()[:self.request.top_n]:
            index = int(row["doc_id"])
            relevance = self.run.relevance(row["doc_id"])
            failure = row["failure"]
            if self.stopped_because and row["status"] in UNFINISHED:
                failure = f"unfinished: {self.stopped_because}"
            results.append(RerankResult(
                index=index, document=self.request.documents[index],
                relevance_score=0.0 if relevance is None else relevance, status=row["status"],
                reasoning=row.get("reasoning") or "", failure=failure,
                details={name: value for name, value in row.items() if name not in ROW_ENVELOPE
                         and (name != "evidence" or self.reranker.settings.evidence)}))
        return results


def as_documents(documents: Sequence[str | RerankDocument | Mapping[str, Any]]) -> tuple[RerankDocument, ...]:
    """Plain strings, ``RerankDocument``s or mappings with ``text`` (and ``title``, ``id``)."""
    converted = []
    for index, document in enumerate(documents):
        if isinstance(document, str):
            converted.append(RerankDocument(text=document))
        elif isinstance(document, RerankDocument):
            converted.append(document)
        elif isinstance(document, Mapping) and isinstance(document.get("text"), str):
            title, key = document.get("title"), document.get("id")
            if title is not None and not isinstance(title, str):
                raise TypeError(f"documents[{index}].title: expected a string, got {type(title).__name__}")
            if key is not None and (not isinstance(key, str | int) or isinstance(key, bool)):
                raise TypeError(f"documents[{index}].id: expected a string or an integer, got {type(key).__name__}")
            converted.append(RerankDocument(text=document["text"], title=title or "",
                                            id=None if key is None else str(key)))
        else:
            raise TypeError(f"documents[{index}]: expected a string or a mapping with a 'text' string, "
                            f"got {type(document).__name__}")
    return tuple(converted)


class ReasoningReranker:
    """A model on its engine, reranking any documents for a query. ``open_reranker`` makes one."""

    def __init__(self, loaded: LoadedModel, settings: RerankSettings) -> None:
        self.loaded = loaded
        self.settings = settings

    @property
    def model(self) -> str:
        """The model's name as the catalogue knows it (``demo``, ``rank1-7b``, a hub id or folder)."""
        return self.loaded.model.name or self.loaded.engine.model

    def start(self, query: str, documents: Sequence[str | RerankDocument | Mapping[str, Any]], *,
              top_n: int | None = None, instruction: str = "", reranker: str | None = None,
              budget: int | None = None, evidence: bool | None = None, belief: bool | None = None,
              early_verdict: bool | None = None) -> Reranking:
        """A request ready to stream; raises ``EngineError`` when the engine cannot take it (its servers are out,
        or the budget does not fit its context), ``SettingsError`` when the reranker has no belief to probe."""
        return self.reranking(RerankRequest(query=query, documents=as_documents(documents), top_n=top_n,
                                            instruction=instruction, reranker=reranker, budget=budget,
                                            evidence=evidence, belief=belief, early_verdict=early_verdict))

    def reranking(self, request: RerankRequest) -> Reranking:
        """``request`` ready to stream (``start`` with the request made already)."""
        return Reranking(build_reranker(request.settings(self.settings), self.loaded), request)

    def names(self) -> set[str]:
        """Every name a request's ``model`` may give this model by."""
        return {name for name in (self.model, self.loaded.key, self.loaded.engine.model, self.loaded.model.location,
                                  getattr(self.loaded.engine, "served_model", "")) if name}

    async def astream(self, query: str, documents: Sequence[str | RerankDocument | Mapping[str, Any]],
                      **options: Any) -> AsyncIterator[Event]:
        """Every event of reranking ``documents`` (``options`` as for ``rerank``), as the model writes."""
        async for event in self.start(query, documents, **options).events():
            yield event

    async def arerank(self, query: str, documents: Sequence[str | RerankDocument | Mapping[str, Any]],
                      **options: Any) -> list[RerankResult]:
        reranking = self.start(query, documents, **options)
        async for _ in reranking.events():
            pass
        return reranking.results()

    def rerank(self, query: str, documents: Sequence[str | RerankDocument | Mapping[str, Any]], *,
               top_n: int | None = None, instruction: str = "", reranker: str | None = None,
               budget: int | None = None, evidence: bool | None = None, belief: bool | None = None,
               early_verdict: bool | None = None) -> list[RerankResult]:
        """The documents best first, each with its reasoning (and its belief probes, with ``belief``). Works inside a
        running event loop too (a notebook)."""
        return _run(self.arerank(query, documents, top_n=top_n, instruction=instruction, reranker=reranker,
                                 budget=budget, evidence=evidence, belief=belief, early_verdict=early_verdict))

    def close(self) -> None:
        """Stop the engine (vLLM's workers are separate processes)."""
        close_engine(self.loaded.engine)

    def __enter__(self) -> ReasoningReranker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, on a thread of its own when this thread already runs a loop (Jupyter's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def open_reranker(model: str = "auto", *, reranker: str = DEFAULT_RERANKER, engine: str = "auto",
                  **settings: Any) -> ReasoningReranker:
    """``model`` (``demo``, ``rank1-7b``, any hub id or folder; ``auto``: the best this machine runs) on ``engine``
    (``vllm``, ``openai`` with ``endpoints="http://…"``, ``transformers``; ``auto``: the best here), reranking with
    ``reranker``. Any other setting by its name (``budget=64``, ``evidence=True``, ``max_model_len=…``); the rest come
    from the ``EXPLAINABLE_SEARCH_*`` variables."""
    chosen = Settings.from_env(choices=SETTING_CHOICES).replace(model=model, engine=engine, reranker=reranker,
                                                                **settings)
    loaded = open_model(chosen.serving, chosen.rerank.reranker)
    if (problem := loaded.engine.waiting()) is not None:
        raise EngineError(problem)
    return ReasoningReranker(loaded, chosen.rerank)
