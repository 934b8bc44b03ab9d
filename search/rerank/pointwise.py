"""What every pointwise reranker shares (rank1, the assessor): all candidates judged at once on one engine with
their events merged into one stream, passages cut to fit the context, judgments cached, engine failures turned
into ``Failed``; and ``PointwiseRun``, the state of such a run. A subclass gives the prompt and reads one
candidate's judgment from the engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from search.engines.base import EngineError, measured, one_step
from search.evidence.attribution import explain
from search.rerank.base import Reranker, Run, Status, Summary, query_text
from search.rerank.belief import BeliefPath, BeliefProbes, cleaned_end
from search.rerank.cache import judgment_key
from search.rerank.events import (
    Belief,
    BeliefPoint,
    EndReason,
    Event,
    Evidence,
    Failed,
    Graded,
    Measured,
    Outcome,
    Reasoning,
    Started,
    event_from_json,
)
from search.rerank.probe import EarlyRule, Probe
from search.retrieval.ranking import Candidate

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from search.corpus import Passage
    from search.settings import RerankSettings

Emit = Callable[[Event | None], None]
logger = logging.getLogger(__name__)
EVIDENCE_RECIPE = "evidence-v1"
"""Changes whenever how evidence is measured changes, so cached evidence of another recipe is not replayed."""


def clean_reasoning(text: str) -> str:
    """The reference's cleaning before a forced verdict or grade (rank1's code, which UMBRELA-style forcing
    reuses), to the letter: trailing whitespace off; cut after the last ``.``, ``!`` or ``?`` unless the text
    ends with one (kept whole when it has none); then leading whitespace off too. Whitespace matters: rank1's
    reasoning usually starts with a newline, and the forced step must read the reference's exact prompt."""
    return text[:cleaned_end(text)].strip()


@dataclass(frozen=True, kw_only=True, slots=True)
class PreparedPrompt:
    prompt: str
    passage: str
    """The passage as the prompt holds it (cut when ``truncated_passage``)."""
    truncated_passage: bool
    prompt_tokens: int


def prepare_prompt(tokenizer: PreTrainedTokenizerBase, render: Callable[[str, str], str], query: str, passage: str,
                   *, max_model_len: int, budget: int, reserve: int) -> PreparedPrompt:
    """``render(query, passage)``, its passage cut by tokens when prompt + reasoning budget + ``reserve`` (room for
    a forced step's additions) would overflow the context. Raises ValueError when even an empty passage does not
    fit."""
    prompt = render(query, passage)
    room = max_model_len - budget - reserve

    def length(text: str) -> int:
        return len(tokenizer(text).input_ids)

    prompt_tokens = length(prompt)
    if prompt_tokens <= room:
        return PreparedPrompt(prompt=prompt, passage=passage, truncated_passage=False, prompt_tokens=prompt_tokens)
    excess = prompt_tokens - room
    passage_ids = tokenizer(passage, add_special_tokens=False).input_ids
    keep = len(passage_ids) - excess
    while keep > 0:
        cut = tokenizer.decode(passage_ids[:keep])
        prompt = render(query, cut)
        prompt_tokens = length(prompt)
        excess = prompt_tokens - room
        if excess <= 0:
            return PreparedPrompt(prompt=prompt, passage=cut, truncated_passage=True, prompt_tokens=prompt_tokens)
        keep -= excess
    raise ValueError(
        f"the query leaves no room for the passage: max model length {max_model_len} tokens minus reasoning "
        f"budget {budget} is less than the prompt without its passage"
    )


class Turn:
    """One candidate's place in the order its engine request goes in: after the candidate before it, first-stage
    order. Tokenizing on threads finishes in any order, and the engine (or a semaphore of ``slots``) admits
    requests as they come: without turns the top of the list can wait behind documents far below it (on a busy
    machine, side B of a comparison sent its first ten for first-stage #1-5, 7, 8, 10, 11 and 13, and #6 waited for
    one of them to end). The price: a passage slow to tokenize (a long one, cut to fit) holds back those below it."""

    __slots__ = ("_before", "_gone")

    def __init__(self, before: Turn | None) -> None:
        self._before = before
        self._gone = asyncio.Event()

    @classmethod
    def chain(cls, count: int) -> list[Turn]:
        turns: list[Turn] = []
        for _ in range(count):
            turns.append(cls(turns[-1] if turns else None))
        return turns

    async def wait(self) -> None:
        """Until every candidate before has sent its request, been replayed, or failed (one replayed at once must
        not let the next go before a slower one above it)."""
        turn = self._before
        while turn is not None:
            await turn._gone.wait()
            turn = turn._before

    def pass_on(self) -> None:
        """This candidate's request has gone in (or none will): the next one may go."""
        self._gone.set()


class PointwiseReranker(Reranker):
    """Judges every candidate of a query at once on one engine and merges their events into one stream."""

    recipe: ClassVar[str]
    """Changes whenever the prompt, decoding or scoring changes, so cached judgments of another recipe are not
    replayed."""
    outcome: ClassVar[type[Measured]]
    row_fields: ClassVar[tuple[str, ...]]
    """The outcome's fields each row carries (None until the document is judged)."""
    judges_documents = True
    reserve: ClassVar[int] = 8
    """Context kept free beyond the budget, for a forced step's additions."""
    answer: ClassVar[tuple[str, str]]
    """What its forced step reads and which tokens: ("verdict", "both verdict tokens"), for failures' reasons."""
    belief_every: ClassVar[int] = 64
    """Reasoning tokens between belief probes unless the settings say otherwise: chosen by measurement, the most
    probes whose cost stays within 1.15× judging without them (docs/benchmarks.md, "Belief probes")."""
    early_rule: ClassVar[EarlyRule]
    """When ``--early-verdict`` finds its belief settled; benchmarks/early_verdict.py measures a rule against the
    full reasoning and replays the alternatives (docs/benchmarks.md, "Early verdict")."""
    probes_belief = True

    @abstractmethod
    def render_prompt(self, query: str, passage: str) -> str:
        """The prompt for one passage, exactly as the model was trained or instructed to read it."""

    @abstractmethod
    async def judge(self, prepared: PreparedPrompt, ids: dict[str, str], reasoning: Callable[[str, int], None]
                    ) -> Measured | Failed:
        """Generate and read one candidate's judgment, giving each new piece of reasoning to ``reasoning`` with
        the number of new tokens it came from."""

    @property
    @abstractmethod
    def forced_tokens(self) -> tuple[int, ...]:
        """The tokens a forced step reads, in the order ``forced_outcome`` takes their log-probabilities."""

    @abstractmethod
    def forced_prompt(self, prepared: PreparedPrompt, reasoning: str) -> str:
        """The reference's forced step after ``reasoning`` (cleaned, ``clean_reasoning``): the prompt ends where the
        verdict or grade is read."""

    @abstractmethod
    def forced_outcome(self, ids: dict[str, str], prepared: PreparedPrompt, values: tuple[float, ...], token: int,
                       reasoning: str, tokens: int, *, end_reason: EndReason) -> Measured:
        """The judgment a forced step measured: ``values`` are ``forced_tokens``' log-probabilities, ``token`` the one
        it chose."""

    async def forced(self, ids: dict[str, str], prepared: PreparedPrompt, reasoning: str, tokens: int, *,
                     end_reason: EndReason) -> Measured | Failed:
        """The verdict or grade read in one step after closing ``reasoning``; ``Failed`` with the reason when the
        engine gives no token of the answer or not all their log-probabilities."""
        step = await one_step(self.engine, self.forced_prompt(prepared, reasoning), self.forced_tokens)
        values = measured(step.logprobs, self.forced_tokens)
        if step.token not in self.forced_tokens or values is None:
            what, tokens_read = self.answer
            return Failed(**ids, reasoning=reasoning, reason=(
                f"no {what} after {end_reason.replace('_', ' ')}: the forced {what} step returned token {step.token} "
                f"and log-probabilities for {sorted(step.logprobs) or 'no tokens'}, not {tokens_read}"))
        return self.forced_outcome(ids, prepared, values, step.token, reasoning, tokens, end_reason=end_reason)

    @property
    def judgment_recipe(self) -> str:
        """``recipe``, and what probes and the early-verdict rule change: a judgment made with them is another."""
        recipe = self.recipe
        if self.settings.probes_belief:
            recipe += f"+belief{self.probe_interval(self.settings)}"
        if self.settings.early_verdict:
            recipe += f"+{self.early_rule.key()}"
        return recipe

    @abstractmethod
    def probe(self, query: str, outcome: Measured) -> Probe:
        """How to re-score ``outcome`` on a changed passage with its reasoning held fixed: the prompt the judgment's
        verdict was read at (the forced one's, when it was forced), and its score scaled to 0–1."""

    @classmethod
    def probe_interval(cls, settings: RerankSettings) -> int:
        """Reasoning tokens between belief probes: the settings', else this reranker's measured default."""
        return settings.belief_every or cls.belief_every

    @classmethod
    def fingerprint(cls, settings: RerankSettings) -> dict[str, Any]:
        return {**({"evidence": True} if settings.evidence else {}),
                **({"belief": True, "belief_every": cls.probe_interval(settings)} if settings.probes_belief else {}),
                **({"early_verdict": True} if settings.early_verdict else {})}

    def requests_per_query(self, candidates: int) -> int:
        return candidates

    def query_problem(self, query: str, *, instruction: str = "", candidates: int = 1) -> str | None:
        try:
            prepare_prompt(self.engine.tokenizer, self.render_prompt, query_text(query, instruction), "",
                           max_model_len=self.engine.max_model_len, budget=self.budget, reserve=self.reserve)
        except ValueError as error:
            return str(error)
        return None

    @classmethod
    def new_run(cls, query: str, candidates: Sequence[Candidate], *, instruction: str = "",
                settings: RerankSettings) -> PointwiseRun:
        return PointwiseRun(reranker=cls.name, query=query, instruction=instruction, candidates=candidates,
                            fields=cls.row_fields, score_name=cls.score_name, evidence=settings.evidence,
                            belief=settings.probes_belief)

    async def stream(self, query: str, candidates: Sequence[Candidate], *, instruction: str = "", template: str = "",
                     slots: asyncio.Semaphore | None = None) -> AsyncIterator[Event]:
        text = query_text(query, instruction, template)
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        tasks = [asyncio.create_task(self._judge_into(queue.put_nowait, text, candidate, slots, turn))
                 for candidate, turn in zip(candidates, Turn.chain(len(candidates)), strict=True)]
        try:
            remaining = len(tasks)
            while remaining:
                event = await queue.get()
                if event is None:
                    remaining -= 1
                else:
                    yield event
            for task in tasks:
                task.result()  # a crash in our own code must not pass silently
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _judge_into(self, emit: Emit, query: str, candidate: Candidate, slots: asyncio.Semaphore | None,
                          turn: Turn) -> None:
        try:
            await self._judge(emit, query, candidate, slots or contextlib.nullcontext(), turn)
        finally:
            turn.pass_on()
            emit(None)

    async def _judge(self, emit: Emit, query: str, candidate: Candidate,
                     slot: contextlib.AbstractAsyncContextManager, turn: Turn) -> None:
        passage = candidate.passage
        ids = {"reranker": self.name, "doc_id": passage.doc_id, "passage_id": passage.passage_id}
        emit(Started(**ids, first_stage_rank=candidate.rank))
        try:  # tokenizing a long passage takes a while: on a thread, so the event loop keeps serving the others
            prepared = await asyncio.to_thread(prepare_prompt, self.engine.tokenizer, self.render_prompt, query,
                                               passage.contents, max_model_len=self.engine.max_model_len,
                                               budget=self.budget, reserve=self.reserve)
        except ValueError as error:
            emit(Failed(**ids, reason=str(error)))
            return
        outcome = await self._judgment(emit, prepared, ids, slot, turn)
        if self.settings.evidence and isinstance(outcome, Measured):
            await self._evidence(emit, query, passage, prepared, outcome, slot)

    async def _judgment(self, emit: Emit, prepared: PreparedPrompt, ids: dict[str, str],
                        slot: contextlib.AbstractAsyncContextManager, turn: Turn) -> Outcome:
        """The candidate's judgment, replayed from the cache or measured (its request sent in its ``turn``), and
        emitted with its reasoning."""
        key = judgment_key(model=self.model_key, recipe=self.judgment_recipe, budget=self.budget,
                           prompt=prepared.prompt)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            turn.pass_on()
            if cached["reasoning"]:
                emit(Reasoning(reranker=self.name, doc_id=ids["doc_id"], text=cached["reasoning"]))
            outcome = event_from_json({**cached, **ids, "type": self.outcome.type, "from_cache": True})
            emit(outcome)
            return outcome  # type: ignore[return-value]
        parts: list[str] = []
        probes = self._probes(emit, prepared, ids)

        def reasoning(text: str, tokens: int) -> None:
            parts.append(text)
            emit(Reasoning(reranker=self.name, doc_id=ids["doc_id"], text=text, tokens=tokens))
            if probes is not None:
                probes.reasoned(text, tokens)

        await turn.wait()
        turn.pass_on()  # the request joins the slots' queue (first come, first served) before the next one can
        try:
            async with slot:
                outcome = await (self.judge(prepared, ids, reasoning) if probes is None
                                 else self._judge_probed(probes, prepared, ids, reasoning))
            if isinstance(outcome, Measured):
                outcome = dataclasses.replace(outcome, prompt_tokens=prepared.prompt_tokens)
        except EngineError as error:
            outcome = Failed(**ids, reason=f"engine error: {error}", reasoning="".join(parts))
        finally:
            if probes is not None:
                await probes.close()
        if self.cache is not None and not isinstance(outcome, Failed):
            self.cache.put(key, dataclasses.asdict(outcome), model=self.model_key, recipe=self.judgment_recipe,
                           budget=self.budget, prompt=prepared.prompt)
        emit(outcome)
        return outcome

    def _probes(self, emit: Emit, prepared: PreparedPrompt, ids: dict[str, str]) -> BeliefProbes | None:
        """The document's belief probes when the settings ask for them (or for early verdicts), else None."""
        if not self.settings.probes_belief:
            return None

        def measure(text: str, tokens: int) -> Awaitable[Measured | Failed]:
            return self.forced(ids, prepared, text, tokens, end_reason="early")

        def point(belief: BeliefPoint) -> None:
            emit(Belief(reranker=self.name, doc_id=ids["doc_id"], point=belief))

        return BeliefProbes(every=self.probe_interval(self.settings), measure=measure,
                            reads=cleaned_end, emit=point,
                            rule=self.early_rule if self.settings.early_verdict else None)

    async def _judge_probed(self, probes: BeliefProbes, prepared: PreparedPrompt, ids: dict[str, str],
                            reasoning: Callable[[str, int], None]) -> Measured | Failed:
        """``judge`` with its belief probed as it reasons: the judgment carries the probes; an early verdict (the
        belief settled) ends the reasoning and is the judgment."""
        judging = asyncio.create_task(self.judge(prepared, ids, reasoning))
        probes.start(stop=judging.cancel, running=lambda: not judging.done())
        try:
            outcome = await judging
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if probes.settled is None or (task is not None and task.cancelling()):
                raise
            return dataclasses.replace(probes.settled, belief=await probes.finish())
        points = await probes.finish()
        return dataclasses.replace(outcome, belief=points) if isinstance(outcome, Measured) else outcome

    async def _evidence(self, emit: Emit, query: str, passage: Passage, prepared: PreparedPrompt, outcome: Measured,
                        slot: contextlib.AbstractAsyncContextManager) -> None:
        """The judgment's evidence, replayed from the cache or measured; none when the engine fails meanwhile (the
        judgment stands, and the terminal says why). Each re-score holds a ``slot`` of its own while in flight: they
        go to the engine all at once, and under the judgment's one slot they would flood a shared engine's queue."""
        key = judgment_key(model=self.model_key, recipe=f"{self.judgment_recipe}+{EVIDENCE_RECIPE}", budget=self.budget,
                           prompt=prepared.prompt + outcome.reasoning)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            emit(Evidence.from_fields({**cached, "doc_id": passage.doc_id, "from_cache": True}))
            return

        try:
            evidence = await explain(self.engine, self.probe(query, outcome), reranker=self.name, doc_id=passage.doc_id,
                                     passage=prepared.passage, title=passage.title, reasoning=outcome.reasoning,
                                     slot=slot)
        except EngineError as error:
            logger.warning("no evidence for %s: %s", passage.doc_id, error)
            return
        if self.cache is not None:
            self.cache.put(key, dataclasses.asdict(evidence), model=self.model_key,
                           recipe=f"{self.judgment_recipe}+{EVIDENCE_RECIPE}", budget=self.budget,
                           prompt=prepared.prompt)
        emit(evidence)


@dataclass(kw_only=True, slots=True)
class DocumentState:
    """One candidate document: its first-stage place and what the reranker has said so far."""

    candidate: Candidate
    status: Status = "waiting"
    reasoning: str = ""
    tokens: int = 0
    """New tokens streamed so far (the outcome's count replaces it once judged)."""
    outcome: Measured | None = None
    failure: str = ""
    evidence: Evidence | None = None
    belief: list[BeliefPoint] = dataclasses.field(default_factory=list)
    """The belief probes so far, by tokens (the judgment's own once judged)."""

    @property
    def doc_id(self) -> str:
        return self.candidate.passage.doc_id

    @property
    def first_stage_rank(self) -> int:
        return self.candidate.rank


COUNTED = ("judged", "failed", "tokens", "explained", "explaining", "prompt_tokens")
"""The ``Summary`` fields a pointwise run sums over its documents."""


def _unfinished(state: DocumentState) -> bool:
    return state.status in ("waiting", "reasoning")


def _writing(state: DocumentState) -> int:
    return int(_unfinished(state) and state.tokens > 0)


def _measured(state: DocumentState) -> Measured | None:
    """The document's judgment when it was made here (not replayed)."""
    return state.outcome if state.outcome is not None and not state.outcome.from_cache else None


def _counts(state: DocumentState, *, evidence: bool) -> tuple[int, ...]:
    """One document's share of each ``COUNTED`` sum: new tokens are the outcome's (unless replayed) and, until
    judged or after failing, those streamed so far; with ``evidence`` on, a judged document awaits its evidence."""
    measured = _measured(state)
    tokens = (measured.tokens if measured else 0) + (state.tokens if state.status != "judged" else 0)
    judged, explained = state.status == "judged", state.evidence is not None
    awaited = evidence and judged and not explained
    return (int(judged), int(state.status == "failed"), tokens, int(explained), int(awaited),
            measured.prompt_tokens if measured else 0)


class PointwiseRun(Run):
    """Every candidate's state for one query, updated event by event."""

    def __init__(self, *, reranker: str, query: str, instruction: str, candidates: Sequence[Candidate],
                 fields: tuple[str, ...], score_name: str, evidence: bool = False, belief: bool = False) -> None:
        super().__init__(reranker=reranker, query=query, instruction=instruction, candidates=candidates)
        self.fields = fields
        self.score_name = score_name
        self.evidence = evidence
        """Evidence follows each judgment: the run is not done until it has arrived."""
        self.belief = belief
        """Belief probes were asked for: rows carry them."""
        self.documents = {candidate.passage.doc_id: DocumentState(candidate=candidate)
                          for candidate in self.candidates}
        self.counts: tuple[int, ...] = (0,) * len(COUNTED)
        """The sums over the documents of what ``_counts`` gives, kept by ``apply`` (a summary per event is
        then no pass over the candidates)."""
        self.writing = 0
        """Unfinished documents that have written tokens, kept by ``apply`` too."""

    def apply(self, event: Event) -> None:
        state = self.documents[event.doc_id]
        before = _counts(state, evidence=self.evidence)
        self.writing -= _writing(state)
        if isinstance(event, Started):
            state.status = "reasoning"
        elif isinstance(event, Reasoning):
            state.reasoning += event.text
            state.tokens += event.tokens
        elif isinstance(event, Belief):
            state.belief.append(event.point)
        elif isinstance(event, Failed):
            state.status, state.failure, state.reasoning = "failed", event.reason, event.reasoning or state.reasoning
        elif isinstance(event, Measured):
            state.status, state.outcome, state.failure, state.reasoning = "judged", event, "", event.reasoning
            state.belief = list(event.belief)
        elif isinstance(event, Evidence):
            state.evidence = event
        self.counts = tuple(total - old + new for total, old, new in zip(
            self.counts, before, _counts(state, evidence=self.evidence), strict=True))
        self.writing += _writing(state)
        counted = Summary(total=len(self.documents), elapsed_s=0.0, **dict(zip(COUNTED, self.counts, strict=True)))
        self.settle(tokens=counted.tokens, writing=self.writing, finished=counted.finished,
                    done=counted.done)  # no pass over the documents

    def states(self, *, reranked: bool = True) -> list[DocumentState]:
        """Judged documents by score (ties in first-stage order), then those still reasoning or waiting, then
        failures, each group in first-stage order; or simply first-stage order."""
        states = sorted(self.documents.values(), key=lambda state: state.first_stage_rank)
        if not reranked:
            return states
        group = {"judged": 0, "reasoning": 1, "waiting": 1, "failed": 2}
        return sorted(states, key=lambda state: (group[state.status],
                                                 -(state.outcome.score if state.outcome else 0.0)))

    def ordered(self, *, reranked: bool = True) -> list[Candidate]:
        return [state.candidate for state in self.states(reranked=reranked)]

    def reranked_positions(self) -> dict[str, int]:
        """Each judged document's place among the judged, from 1."""
        judged = [state for state in self.states() if state.outcome is not None]
        return {state.doc_id: position for position, state in enumerate(judged, start=1)}

    def summary(self) -> Summary:
        counts = dict(zip(COUNTED, self.counts, strict=True))
        if self.ended:  # evidence not come by the end of the stream never will
            counts["explaining"] = 0
        states = self.documents.values()
        recent, per_unit = self.pace()
        return Summary(total=len(self.documents), stopped=self.stopped, elapsed_s=self.elapsed_s(),
                       writing=tuple(state.tokens for state in states if _writing(state)),
                       lengths=tuple(measured.tokens for state in states if (measured := _measured(state))),
                       recent_tokens_per_s=recent, unit_tokens_per_s=per_unit, **counts)

    def documents_done(self) -> int:
        return self.counts[COUNTED.index("judged")]

    def documents_failed(self) -> int:
        return self.counts[COUNTED.index("failed")]

    def status(self, doc_id: str) -> Status:
        return self.documents[doc_id].status

    def score(self, doc_id: str) -> float | None:
        outcome = self.documents[doc_id].outcome
        return outcome.score if outcome is not None else None

    def relevance(self, doc_id: str) -> float | None:
        outcome = self.documents[doc_id].outcome
        return outcome.relevance if outcome is not None else None

    def failure(self, doc_id: str) -> str:
        return self.documents[doc_id].failure

    def reasoning_about(self, doc_id: str) -> str:
        return self.documents[doc_id].reasoning

    def details(self, doc_id: str) -> dict[str, Any]:
        state = self.documents[doc_id]
        return {**{name: getattr(state.outcome, name) if state.outcome else None for name in self.fields},
                "reasoning": state.reasoning, "evidence": evidence_fields(state.evidence),
                **({"belief": [dataclasses.asdict(point) for point in state.belief]} if self.belief else {})}

    def grades(self) -> dict[str, int]:
        return {doc_id: state.outcome.grade for doc_id, state in self.documents.items()
                if isinstance(state.outcome, Graded)}

    def belief_path(self, doc_id: str) -> BeliefPath | None:
        state = self.documents[doc_id]
        return BeliefPath.of(state.belief, state.outcome)

    def describe(self, event: Event) -> str | None:
        return event.describe() if isinstance(event, Measured | Failed | Evidence) else None

    def durable(self, event: Event) -> tuple[Outcome | Evidence, ...]:
        return (event,) if isinstance(event, Measured | Failed | Evidence) else ()

    def unfinished(self) -> tuple[Candidate, ...]:
        return tuple(state.candidate for state in self.states(reranked=False) if state.status != "judged")


def evidence_fields(evidence: Evidence | None) -> dict[str, Any] | None:
    """A row's ``evidence``: the event's fields but the envelope (None without evidence)."""
    if evidence is None:
        return None
    fields = dataclasses.asdict(evidence)
    return {name: value for name, value in fields.items() if name not in ("reranker", "doc_id")}
