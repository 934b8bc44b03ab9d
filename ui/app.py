"""The Gradio page: layout and wiring only; every decision is made in search/.

Typing a query shows the first-stage list at once; then the chosen reranker's events stream in (every
candidate's reasoning and judgment, or ReasonRank's windows) and the list re-sorts as they land.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, get_args

import gradio as gr
from gradio.utils import get_upload_folder

from search.annotation.store import AnnotationStore
from search.compare import (
    MAX_INSTRUCTION_CHARS,
    SIDES,
    Comparison,
    Example,
    Link,
    Side,
    SideName,
    examples,
    judgments_for,
    link_query,
    parse_link,
    stream_pair,
)
from search.corpus import CorpusError
from search.engines import ENGINE_KINDS, EngineError
from search.engines.demo_model import DemoModelError
from search.evidence import evidence_by_default
from search.models import REGISTRY
from search.pipeline import LoadedModel, build_reranker, memory_need, open_model, reranker_budget
from search.rerank.base import Reranker, Run
from search.rerank.registry import RERANKERS, reranker_class
from search.settings import DEFAULT_RERANKER, STORAGE, RetrievalMethod, Settings, SettingsError
from search.uploads import MAX_UPLOAD_BYTES, UPLOAD_SUFFIXES, CorpusLibrary, UploadError
from ui.annotate import AnnotationContext, build_annotate_tab, remembered_state
from ui.annotation_cards import ANNOTATION_CSS, KEYS_JS
from ui.cards import CARDS_CSS, KEEP_OPEN_JS
from ui.compare_cards import COMPARE_CSS, render_pair_board, render_pair_summary
from ui.evaluate import build_evaluate_tab
from ui.evidence import EVIDENCE_CSS
from ui.header import HEADER_CSS, render_header
from ui.live import LiveRuns
from ui.renderers import renderer_for
from ui.results import CSS as RESULTS_CSS
from ui.results import render_notice, render_ranking
from ui.window_cards import WINDOW_CSS

MAX_QUERY_CHARS = 2_000
MAX_CANDIDATES = 50
MAX_RESULTS = 1000
UPDATE_EVERY_S = 0.3
"""Streaming updates are batched: the page gets at most about three per second, whatever the token rate."""
EVIDENCE_LABEL = "Evidence: which passage sentences each verdict rests on"
EVIDENCE_INFO = ("rank1 and the assessor: after each judgment, the verdict is re-scored with each sentence removed "
                 "(the reasoning held fixed). On by default with vLLM on a GPU and with OpenAI-compatible servers; "
                 "on a CPU it adds about as much time as the judgments took (docs/benchmarks.md).")
MAX_PROBLEMS_LISTED = 10
CSS = RESULTS_CSS + CARDS_CSS + COMPARE_CSS + EVIDENCE_CSS + WINDOW_CSS + ANNOTATION_CSS + HEADER_CSS
COUNTER_JS = f"""
() => {{
  const limit = {MAX_QUERY_CHARS}, n = (value) => value.toLocaleString("en");
  document.addEventListener("input", (event) => {{
    const box = event.target.closest && event.target.closest("#es-query");
    const counter = document.querySelector("#es-counter .es-counter");
    if (!box || !counter) return;
    const count = [...event.target.value].length;
    counter.classList.toggle("es-over", count > limit);
    counter.textContent = `${{n(count)}} / ${{n(limit)}} characters` + (count > limit
      ? `: ${{n(count - limit)}} over the limit. Shorten the query; nothing is cut.` : "");
  }}, true);
}}
"""
"""Counts the query's characters as they are typed, in the browser (a round trip per keystroke would be
wasteful); the server refuses a query over the limit with the same numbers, and never cuts it."""
JS = f"() => {{ ({KEEP_OPEN_JS})(); ({KEYS_JS})(); ({COUNTER_JS})(); }}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ShownPair:
    """A comparison as the page shows it: the two runs, with each side's budget (for its time left) and name."""

    pair: Comparison
    budgets: dict[SideName, int]
    names: dict[SideName, str]


LINK_FIELDS = 17
"""What ``SearchPage.sides_shown`` sets: query, instruction, Compare, the sides' row, 5 fields per side, and the
settings' reranker, budget and evidence."""
SideInputs = tuple[str, str, str, float | None, bool]
"""A side's fields on the page: reranker, model (a loaded model's key, or a name to load), instruction, budget,
evidence."""
COMPARE_FOCUS_JS = """(on) => { if (on) setTimeout(() => document.querySelector("#es-b-instruction textarea")?.focus(),
  150); }"""
FILTER_JS = """(only) => { document.querySelector("#es-results")?.classList.toggle("es-only-disagree", only); }"""
COPY_LINK_JS = """(query) => { const link = location.origin + location.pathname + query;
  navigator.clipboard?.writeText(link).catch(() => {}); return link; }"""


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelStatus:
    """What the page says about the model the rerankers run on: the one loaded, or why none is."""

    loaded: LoadedModel | None
    problem: str = ""
    settings: Settings = field(default_factory=Settings)

    def header(self) -> str:
        return render_header(self.loaded, self.problem)


def model_key(loaded: LoadedModel) -> str:
    """How the Model panel names a loaded model: "name · engine"."""
    return f"{loaded.model.name or loaded.engine.model} · {loaded.engine.kind}"


def _validate(query: str) -> str | None:
    if not query:
        return "Type a query to search."
    if len(query) > MAX_QUERY_CHARS:
        return (f"The query is {len(query):,} characters long; the limit is {MAX_QUERY_CHARS:,}. Shorten it: "
                "nothing was cut.")
    return None


def _instruction_problem(instruction: str, whose: str) -> str | None:
    """Why ``instruction`` is too long (the limit links and ``--a``/``--b`` keep too), or None."""
    if len(instruction) <= MAX_INSTRUCTION_CHARS:
        return None
    return f"{whose} instruction is {len(instruction):,} characters long; the limit is {MAX_INSTRUCTION_CHARS:,}."


def _count_problem(value: float | None, name: str, high: int) -> str | None:
    """Why ``value`` is not a whole number from 1 to ``high`` (the API takes any JSON number), or None."""
    if value is None or isinstance(value, bool) or value != int(value) or not 1 <= value <= high:
        return f"{name} must be a whole number from 1 to {high:,}; got {value!r}."
    return None


def _describe(library: CorpusLibrary, name: str) -> str:
    first_stage = library.get(name)
    return f"{name}: {len(first_stage.corpus.documents)} documents, {len(first_stage.passages)} passages."


def forget_upload(path: Path) -> None:
    """Delete an uploaded file from Gradio's upload folder (and nothing outside it)."""
    if path.resolve().is_relative_to(Path(get_upload_folder()).resolve()):
        path.unlink(missing_ok=True)


def upload_failure(name: str, error: UploadError | CorpusError) -> str:
    """Why an upload was not loaded: a short list of ``file:line — reason`` (the file inside an archive named as
    such), and whether some documents could load without them."""
    problems = error.problems if isinstance(error, CorpusError) else ()
    if not problems:
        return render_notice(f"{name} was not loaded: {error}")
    good = error.good if isinstance(error, CorpusError) else 0
    items = "".join(
        f"<li>{escape(str(problem.path))}{f':{problem.line}' if problem.line is not None else ''} — "
        f"{escape(problem.message)}</li>" for problem in problems[:MAX_PROBLEMS_LISTED])
    more = len(problems) - MAX_PROBLEMS_LISTED
    tail = f"<p>and {more} more</p>" if more > 0 else ""
    verdict = (f"{good} good document{'s' if good != 1 else ''} can load without them." if good
               else "No document in it can be loaded.")
    return (f'<div class="es-notice es-error"><b>{escape(name)} was not loaded: {len(problems)} '
            f"problem{'s' if len(problems) != 1 else ''}.</b> {verdict}<ul>{items}</ul>{tail}</div>")


class SearchPage:
    """The page's handlers, one method each, over what the whole process shares: the corpora, the loaded models (by
    "model · engine"; each session picks one and builds any reranker on it), the slots that bound rerank runs and
    the runs that stream. Each can be called without a browser; ``build_app`` lays the page out and wires them."""

    def __init__(self, library: CorpusLibrary, status: ModelStatus, *, slots: asyncio.Semaphore,
                 live: LiveRuns | None = None) -> None:
        self.library = library
        self.status = status
        self.settings = status.settings
        self.slots = slots
        self.live = LiveRuns() if live is None else live
        self.exports = Path(tempfile.mkdtemp(prefix="explainable-search-"))
        self.models: dict[str, LoadedModel] = {}
        self.default_key = ""
        if status.loaded is not None:
            self.default_key = model_key(status.loaded)
            self.models[self.default_key] = status.loaded

    def budget_of(self, kind: str, key: str) -> int:
        """The budget a run of ``kind`` on the model ``key`` gets unless the user changes it (with no model loaded:
        its default for a CPU, where a model-less page is served)."""
        loaded = self.models.get(key)
        return reranker_budget(dataclasses.replace(self.settings.rerank, reranker=kind),
                               loaded.model if loaded else None, on_cpu=loaded is None or loaded.engine.on_cpu)

    def evidence_default(self, key: str) -> bool:
        """Evidence on unless the settings say so or the model's engine makes it too slow (evidence_by_default)."""
        loaded = self.models.get(key)
        return self.settings.rerank.evidence or (
            loaded is not None and evidence_by_default(loaded.engine.kind, loaded.engine.device))

    def reranker_for(self, key: str, kind: str, budget: int | None = None, evidence: bool | None = None
                     ) -> Reranker | None:
        """The reranker ``kind`` on the session's model ``key`` (None when no model is loaded)."""
        loaded = self.models.get(key)
        if loaded is None:
            return None
        if (waiting := loaded.engine.waiting()) is not None:
            raise EngineError(f"{waiting}; retrying every {loaded.engine.retry_every_s:g} s: reranking works as soon "
                              "as a server answers")
        chosen = dataclasses.replace(self.settings.rerank, reranker=kind, budget=budget or self.settings.rerank.budget,
                                     evidence=self.settings.rerank.evidence if evidence is None else evidence)
        return build_reranker(chosen, loaded)

    def header_now(self, key: str) -> str:
        """The header as the engine is now (a server that went away or came back since the page was built)."""
        loaded = self.models.get(key)
        return render_header(loaded, self.status.problem if loaded is None else "")

    def search(self, query: str, method: RetrievalMethod, k: int, corpus_name: str) -> str:
        query = query.strip()
        problem = _validate(query) or _count_problem(k, "k (results)", MAX_RESULTS)
        if problem:
            return render_notice(problem)
        try:
            first_stage = self.library.get(corpus_name)
        except UploadError as error:
            return render_notice(str(error))
        return render_ranking(first_stage.search(query, int(k), method))

    def corpus_choices(self, name: str) -> tuple[Any, str, Any]:
        """The picker listing every corpus (uploads by any session included), the chosen one described, and the
        remove button when it is an upload."""
        names = self.library.names()
        chosen = name if name in names else names[0]
        return (gr.update(choices=names, value=chosen), render_notice(_describe(self.library, chosen)),
                gr.update(visible=self.library.uploaded(chosen)))

    def load_upload(self, file: str | None, skip_bad: bool, progress: gr.Progress) -> tuple[Any, ...]:
        """(picker, corpus line, upload message, pending upload, "Load the N good documents", remove, file box)."""
        if not file:
            return gr.skip(), gr.skip(), "", None, gr.update(visible=False), gr.skip(), gr.skip()
        path = Path(file)
        try:
            name = self.library.upload(path, path.name, lambda task, done, total: progress(done / max(total, 1),
                                                                                        desc=task),
                                  skip_bad=skip_bad)
        except (UploadError, CorpusError) as error:
            good = error.good if isinstance(error, CorpusError) else 0
            if not good:  # nothing to offer: the refused file goes now (one kept for "Load the good" stays)
                forget_upload(path)
            return (gr.skip(), gr.skip(), upload_failure(path.name, error), file if good else None,
                    gr.update(visible=bool(good), value=f"Load the {good} good document{'s' if good != 1 else ''}"),
                    gr.skip(), None)
        forget_upload(path)  # the library keeps its own copy
        dropped = self.library.get(name).corpus.dropped
        note = f" {dropped} bad record(s) were dropped." if dropped else ""
        return (*self.corpus_choices(name)[:2], render_notice(f"Loaded {_describe(self.library, name)}{note}"), None,
                gr.update(visible=False), gr.update(visible=True), None)

    def upload(self, file: str | None, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        return self.load_upload(file, False, progress)

    def load_good(self, file: str | None, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        return self.load_upload(file, True, progress)

    def remove_corpus(self, name: str) -> tuple[Any, ...]:
        try:
            self.library.remove(name)
        except UploadError as error:
            return gr.skip(), gr.skip(), gr.skip(), render_notice(str(error))
        return (*self.corpus_choices(self.library.names()[0]), render_notice(f"Removed {name}."))

    async def load_model(self, name: str, engine: str, kind: str, progress: gr.Progress = gr.Progress()  # noqa: B008
                         ) -> tuple[Any, Any, str, Any, Any]:
        key = f"{name} · {engine}"
        if key not in self.models:
            progress(0, desc=f"starting {engine} with {name}")
            serving = dataclasses.replace(self.settings.serving, model=name, engine=engine)
            try:
                self.models[key] = await asyncio.to_thread(open_model, serving, kind)
            except (EngineError, DemoModelError) as error:
                return (gr.update(), gr.update(), render_notice(f"Could not load {name} on {engine}: {error}"),
                        gr.skip(), gr.skip())
        loaded = self.models[key]
        demo = " Its verdicts are not meaningful (demo model)." if loaded.model.is_demo else ""
        return (key, self.budget_of(kind, key), render_notice(f"Reranking with {loaded.engine.description}.{demo}"),
                render_header(loaded), self.evidence_default(key))

    def shown(self, run: Run, budget: int, *, reranked: bool) -> tuple[str, str]:
        """The summary line and the results, as the run's reranker renders them."""
        renderer = renderer_for(run)
        return renderer.summary(run.summary(), budget), renderer.cards(run, reranked)

    async def rerank(self, query: str, instruction: str, method: RetrievalMethod, candidates: int, budget: int,
                     reranked: bool, corpus_name: str, kind: str = DEFAULT_RERANKER, key: str | None = None,
                     evidence: bool = False, request: gr.Request | None = None
                     ) -> AsyncIterator[tuple[str, str, Run | None, list[dict[str, Any]]]]:
        query, instruction = query.strip(), instruction.strip()
        key = self.default_key if key is None else key
        problem = (_validate(query) or _instruction_problem(instruction, "The")
                   or _count_problem(candidates, "Candidates", MAX_CANDIDATES)
                   or _count_problem(budget, "The reasoning budget", 10**7))
        if problem:
            yield render_notice(problem), "", None, []
            return
        try:
            found = self.library.get(corpus_name).search(query, int(candidates), method).candidates
            reranker = self.reranker_for(key, kind, int(budget), evidence)
        except (EngineError, UploadError) as error:
            yield render_notice(str(error)), "", None, []
            return
        budget = reranker.budget if reranker is not None else int(budget)
        run = reranker_class(kind).new_run(query, found, instruction=instruction, settings=self.settings.rerank)
        session = request.session_hash if request else ""
        self.live.start(session, run)
        try:
            yield (*self.shown(run, budget, reranked=reranked), run, run.rows())
            if reranker is None or not found:
                return
            last = time.monotonic()
            events = reranker.stream(query, found, instruction=instruction)
            try:
                async with self.slots:
                    async for event in events:
                        if not self.live.current(session, run):
                            return  # stopped, replaced by a newer query, or the page was closed
                        run.apply(event)
                        if time.monotonic() - last >= UPDATE_EVERY_S:
                            last = time.monotonic()
                            yield (*self.shown(run, budget, reranked=reranked), run, run.rows())
            finally:
                await events.aclose()  # ends the engine requests
            yield (*self.shown(run, budget, reranked=reranked), run, run.rows())
        finally:
            self.live.end(session, run)

    def resort(self, run: Run | ShownPair | None, reranked: bool, budget: int) -> str:
        if isinstance(run, ShownPair):
            return self.shown_pair(run, reranked=reranked)[1]
        return self.shown(run, int(budget), reranked=reranked)[1] if run else ""

    def stopped(self, run: Run | ShownPair | None, reranked: bool, budget: int, request: gr.Request | None = None
                ) -> tuple[str, str]:
        """Every unfinished card (both halves of a comparison's) says stopped and keeps its partial reasoning."""
        self.live.stop(request.session_hash if request else "")
        if run is None:
            return "", gr.skip()
        if isinstance(run, ShownPair):
            run.pair.stop()
            return self.shown_pair(run, reranked=reranked)
        run.stop()
        return self.shown(run, int(budget), reranked=reranked)

    # Compare: two sides on the same candidates.

    def model_name(self, key: str) -> str:
        """The model's name in a "name · engine" key (what links and ``Side.model`` carry)."""
        return key.split(" · ")[0]

    def model_choices(self) -> list[str]:
        """A side's model picker: the loaded models by key, then catalogue names that would load beside them."""
        loaded = {self.model_name(key) for key in self.models}
        return [*self.models, *sorted(name for name in REGISTRY if name not in loaded)]

    def side_key(self, value: str) -> str:
        """A side's model field as a key: a loaded model's, or "name · engine" for a name to load on the engine of
        the session's model."""
        if not value or value in self.models:
            return value or self.default_key
        match = next((key for key in self.models if self.model_name(key) == value), None)
        engine = self.default_key.split(" · ")[1] if " · " in self.default_key else "transformers"
        return match or f"{value} · {engine}"

    def memory_note(self, value: str) -> str:
        """Before a model is loaded beside the others: the memory it needs and the memory free."""
        key = self.side_key(value)
        if key in self.models:
            return ""
        name, engine = key.split(" · ")
        return render_notice(f"Chosen: {memory_need(name, engine).describe(name)} It loads when the comparison runs.")

    async def ensure_model(self, key: str, kind: str) -> str | None:
        """Load the model ``key`` names beside the others when it fits; why not, or None."""
        if key in self.models:
            return None
        name, engine = key.split(" · ")
        need = memory_need(name, engine)
        if not need.fits:
            return need.describe(name)
        serving = dataclasses.replace(self.settings.serving, model=name, engine=engine)
        try:
            self.models[key] = await asyncio.to_thread(open_model, serving, kind)
        except (EngineError, DemoModelError) as error:
            return f"Could not load {name} on {engine}: {error}"
        return None

    def side_problem(self, side: SideName, fields: SideInputs) -> str | None:
        kind, _, instruction, budget, _ = fields
        if kind not in RERANKERS:
            return f"Side {side}: choose a reranker."
        return (_instruction_problem(instruction.strip(), f"Side {side}'s")
                or _count_problem(budget, f"Side {side}'s reasoning budget", 10**7))

    def shown_pair(self, view: ShownPair, *, reranked: bool) -> tuple[str, str]:
        return (render_pair_summary(view.pair, budgets=view.budgets, names=view.names),
                render_pair_board(view.pair, reranked=reranked))

    async def compare(self, query: str, method: RetrievalMethod, candidates: int, reranked: bool, corpus_name: str,
                      a_kind: str, a_model: str, a_instruction: str, a_budget: float | None, a_evidence: bool,
                      b_kind: str, b_model: str, b_instruction: str, b_budget: float | None, b_evidence: bool,
                      request: gr.Request | None = None) -> AsyncIterator[tuple[str, str, ShownPair | None]]:
        """Both sides on the same first-stage candidates, streaming at once on the session's engines; B is A's
        work when its settings are A's."""
        query = query.strip()
        sides: dict[SideName, SideInputs] = {
            "A": (a_kind, a_model, a_instruction.strip(), a_budget, a_evidence),
            "B": (b_kind, b_model, b_instruction.strip(), b_budget, b_evidence)}
        problem = (_validate(query) or _count_problem(candidates, "Candidates", MAX_CANDIDATES)
                   or next((found for side, fields in sides.items() if (found := self.side_problem(side, fields))),
                           None))
        if problem:
            yield render_notice(problem), "", None
            return
        keys = {side: self.side_key(fields[1]) for side, fields in sides.items()}
        for side, key in keys.items():
            if key not in self.models:
                yield render_notice(f"Loading {self.model_name(key)} for side {side} …"), "", None
                if (problem := await self.ensure_model(key, sides[side][0])) is not None:
                    yield render_notice(f"Side {side}: {problem}"), "", None
                    return
        try:
            found = self.library.get(corpus_name).search(query, int(candidates), method).candidates
            rerankers = {side: self.reranker_for(keys[side], fields[0], int(fields[3]), fields[4])
                         for side, fields in sides.items()}
        except (EngineError, UploadError) as error:
            yield render_notice(str(error)), "", None
            return
        if any(reranker is None for reranker in rerankers.values()):
            yield render_notice("No model is loaded: load one in ☰ Corpus, settings and model."), "", None
            return
        shared = sides["A"] == sides["B"] and keys["A"] == keys["B"]
        runs = {side: reranker.start_run(query, found, instruction=sides[side][2])
                for side, reranker in rerankers.items()}
        names = {side: f"{sides[side][0]} · {self.model_name(keys[side])} · budget {rerankers[side].budget}"
                       + (f" · instruction: {sides[side][2]}" if sides[side][2] else " · no instruction")
                 for side in SIDES}
        corpus = self.library.get(corpus_name).corpus
        view = ShownPair(pair=Comparison(runs["A"], runs["B"], shared=shared, judged=judgments_for(corpus, query)),
                         budgets={side: reranker.budget for side, reranker in rerankers.items()}, names=names)
        session = request.session_hash if request else ""
        self.live.start(session, runs["A"])
        try:
            yield (*self.shown_pair(view, reranked=reranked), view)
            if not found:
                return
            last = time.monotonic()
            events = stream_pair(rerankers["A"], None if shared else rerankers["B"], query, found,
                                 instructions=(sides["A"][2], sides["B"][2]))
            try:
                async with self.slots:
                    async for side, event in events:
                        if not self.live.current(session, runs["A"]):
                            return  # stopped, replaced by a newer query, or the page was closed
                        view.pair.apply(side, event)
                        if time.monotonic() - last >= UPDATE_EVERY_S:
                            last = time.monotonic()
                            yield (*self.shown_pair(view, reranked=reranked), view)
            finally:
                await events.aclose()  # ends both sides' engine requests
            yield (*self.shown_pair(view, reranked=reranked), view)
        finally:
            self.live.end(session, runs["A"])

    def open_compare(self, on: bool, kind: str, key: str, instruction: str, budget: float | None, evidence: bool,
                     a_instruction: str) -> tuple[Any, ...]:
        """Compare on: both sides start as the current settings (B's instruction field is focused next). Off: the
        query row's instruction is side A's."""
        if not on:
            return gr.update(visible=False), gr.update(visible=True, value=a_instruction), *(gr.skip(),) * 10
        side = (gr.update(value=kind), gr.update(choices=self.model_choices(), value=key), instruction, budget,
                evidence)
        return gr.update(visible=True, open=True), gr.update(visible=False), *side, *side

    def sides_shown(self, link: Link, kind: str, key: str, budget: float | None, evidence: bool) -> list[Any]:
        """The page's fields for ``link``: the query row, the Compare toggle, the sides' rows and the settings."""
        def fields(side: Side) -> list[Any]:
            model = self.side_key(side.model) if side.model else key
            return [side.reranker, gr.update(choices=self.model_choices(), value=model), side.instruction,
                    side.budget or self.budget_of(side.reranker, model), side.evidence]

        b = link.b or link.a
        return [link.query, gr.update(visible=link.b is None, value=link.a.instruction), link.b is not None,
                gr.update(visible=link.b is not None, open=False), *fields(link.a), *fields(b),
                link.a.reranker, link.a.budget or budget, link.a.evidence or evidence]

    async def from_link(self, kind: str, key: str, budget: float | None, evidence: bool, runs: int,
                        compare_runs: int, request: gr.Request) -> list[Any]:
        """The search the page's address asks for (``?q=…``, see ``search.compare.link_query``), set up and run;
        a wrong parameter is named and nothing runs."""
        unchanged = [gr.skip()] * (LINK_FIELDS + 2)  # and the corpus and the session's model
        try:
            link = parse_link(dict(request.query_params), Side(reranker=kind, evidence=bool(evidence)))
        except SettingsError as error:
            return [*unchanged, render_notice(f"This link cannot be opened: {error}"), *(gr.skip(),) * 3]
        if link is None:
            return [*unchanged, *(gr.skip(),) * 4]
        corpus = link.corpus or gr.skip()
        if link.corpus and link.corpus not in self.library.names():
            return [*unchanged, render_notice(f"This link names the corpus {link.corpus!r}, which is not here; "
                                              f"the corpora are {', '.join(self.library.names())}."),
                    *(gr.skip(),) * 3]
        selected = key
        if link.b is None and link.a.model:
            selected = self.side_key(link.a.model)
            if (problem := await self.ensure_model(selected, link.a.reranker)) is not None:
                return [*unchanged, render_notice(f"This link's model: {problem}"), *(gr.skip(),) * 3]
        shown = self.sides_shown(link, kind, selected, budget, evidence)
        return [*shown, corpus, selected, render_notice("Opened from a link."),
                runs + (link.b is None), compare_runs + (link.b is not None), gr.update(visible=False)]

    def link(self, query: str, corpus_name: str, on: bool, kind: str, key: str, instruction: str,
             budget: float | None, evidence: bool, *sides: Any) -> str:
        """The current search (or comparison) as a link's query string: the page turns it into the address."""
        def side(fields: tuple[Any, ...]) -> Side:
            side_kind, model, side_instruction, side_budget, side_evidence = fields
            return Side(reranker=side_kind, model=self.model_name(self.side_key(model)),
                        instruction=side_instruction.strip(), budget=int(side_budget or 0),
                        evidence=bool(side_evidence))

        if on:
            link = Link(query=query.strip(), corpus=corpus_name, a=side(sides[:5]), b=side(sides[5:]))
        else:
            link = Link(query=query.strip(), corpus=corpus_name,
                        a=side((kind, key, instruction, budget, evidence)))
        return link_query(link)

    def examples_of(self, corpus_name: str) -> list[Example]:
        try:
            return examples(self.library.get(corpus_name).corpus)
        except UploadError:
            return []

    def example_samples(self, corpus_name: str) -> dict[str, Any]:
        """The examples as the picker shows them: whole labels, escaped (a textbox sample is cut at 60 characters)."""
        return {"samples": [[escape(example.label)] for example in self.examples_of(corpus_name)]}

    def examples_update(self, corpus_name: str) -> Any:
        return gr.Dataset(**self.example_samples(corpus_name))

    def run_example(self, index: int, corpus_name: str, kind: str, key: str, budget: float | None, evidence: bool,
                    runs: int, compare_runs: int) -> list[Any]:
        """An example clicked: its query (and instruction) set, and run; a comparison example runs side A with the
        instruction against side B without it."""
        example = self.examples_of(corpus_name)[index]
        a = Side(reranker=kind, instruction=example.instruction, evidence=bool(evidence))
        link = Link(query=example.query, a=a, b=dataclasses.replace(a, instruction="") if example.compare else None)
        return [*self.sides_shown(link, kind, key, budget, evidence), runs + (not example.compare),
                compare_runs + example.compare, gr.update(visible=False)]

    def left(self, request: gr.Request) -> None:
        """The session closed the page: its run ends at its next event and is forgotten."""
        self.live.stop(request.session_hash or "")

    def export(self, run: Run | ShownPair | None) -> list[str]:
        if run is None:
            raise gr.Error("Run a query first; there is nothing to export yet.")
        folder = Path(tempfile.mkdtemp(dir=self.exports))
        if isinstance(run, ShownPair):
            written = []
            for side, text in run.pair.trec_runs().items():
                written.append(folder / f"rerank-{side}.trec")
                written[-1].write_text(text, encoding="utf-8")
            written.append(folder / "compare.jsonl")
            written[-1].write_text(run.pair.jsonl(), encoding="utf-8")
            return [str(path) for path in written]
        run_file, traces = folder / "rerank.trec", folder / "rerank.jsonl"
        run_file.write_text(run.trec_run(), encoding="utf-8")
        traces.write_text(run.jsonl(), encoding="utf-8")
        return [str(run_file), str(traces)]


def started(compare: bool, runs: int, compare_runs: int) -> tuple[Any, ...]:
    """Enter: the next single run or comparison starts, and the examples and sides fold away to give the cards the
    screen (the summary lines say what each side runs; the Examples button brings the examples back)."""
    counts = (runs, compare_runs + 1) if compare else (runs + 1, compare_runs)
    return *counts, gr.update(visible=False), gr.update(open=False)


def build_app(library: CorpusLibrary, status: ModelStatus | None = None, *, concurrency: int = 8,
              annotations: AnnotationStore | None = None, browser_secret: str = "", auth: bool = False,
              batches: Path | None = None, slots: asyncio.Semaphore | None = None, live: LiveRuns | None = None
              ) -> gr.Blocks:
    """The page over the corpora in ``library`` (the first is shown first; users can upload more), reranking on
    ``status.loaded`` when there is a model; at most ``concurrency`` rerank runs at a time share the engine (more
    wait in Gradio's queue). With an ``annotations`` store it has the annotator workbench too, where the signed-in
    user is the annotator when ``auth`` is on. With ``batches`` (a folder of rerank-run outputs) it has the
    Evaluation tab. ``slots``, when given, bounds rerank runs together with whoever else holds it (the API)."""
    slots = slots or asyncio.Semaphore(concurrency)
    default_corpus = library.names()[0]
    status = status or ModelStatus(loaded=None, problem="none was configured.")
    settings = status.settings
    page = SearchPage(library, status, slots=slots, live=live)
    default_key = page.default_key

    # Uploads left in Gradio's folder (a file kept for "Load the good documents" and never loaded) go after a day.
    with gr.Blocks(title="Explainable Search", fill_width=True, delete_cache=(3600, 86400)) as app:
        with gr.Row():
            header = gr.HTML(status.header(), elem_id="es-header", padding=False, scale=10)
            panel_button = gr.Button("☰ Corpus, settings and model", size="sm", scale=0, min_width=240,
                                     elem_id="es-panel-button")
        remembered = remembered_state(browser_secret) if annotations is not None else None
        with gr.Sidebar(label="Corpus, settings and model", open=False, width=400, elem_id="es-panel") as panel:
            corpus_name = gr.Dropdown(library.names(), value=default_corpus, label="Corpus", allow_custom_value=True)
            corpus_status = gr.HTML(render_notice(_describe(library, default_corpus)))
            remove_button = gr.Button("Remove this uploaded corpus", size="sm", variant="stop",
                                      visible=library.uploaded(default_corpus))
            corpus_file = gr.File(label=f"Add a corpus ({', '.join(UPLOAD_SUFFIXES)}; up to "
                                        f"{MAX_UPLOAD_BYTES // 2**20} MB; kept for every session until removed)",
                                  height=120)
            upload_status = gr.HTML()
            pending_upload = gr.State(None)
            load_good_button = gr.Button("Load the good documents", visible=False, variant="primary", size="sm")
            with gr.Accordion("Settings", open=True):
                method = gr.Radio(list(get_args(RetrievalMethod)), value=library.get(default_corpus).method,
                                  label="First stage")
                candidates = gr.Slider(1, MAX_CANDIDATES, value=settings.rerank.top_k, step=1,
                                       label="Candidates to rerank")
                # No precision: Gradio would round 2.5 to 2 where the handler must refuse it (_count_problem).
                budget = gr.Number(value=page.budget_of(settings.rerank.reranker, default_key), minimum=1, step=1,
                                   label="Reasoning budget (tokens)")
                reranker_kind = gr.Radio([(cls.label, name) for name, cls in RERANKERS.items()],
                                         value=settings.rerank.reranker, label="Reranker")
                sort_reranked = gr.Checkbox(value=True, label="Sort by the reranker (off: first-stage order)")
                evidence = gr.Checkbox(value=page.evidence_default(default_key), label=EVIDENCE_LABEL,
                                       info=EVIDENCE_INFO)
            with gr.Accordion("Model", open=False):
                current = default_key.split(" · ") if default_key else ["demo", "transformers"]
                model_name = gr.Dropdown(sorted({*REGISTRY, current[0]}), value=current[0], allow_custom_value=True,
                                         label="Model (registry name, hub id or local folder)")
                engine_kind = gr.Radio(list(ENGINE_KINDS), value=current[1], label="Engine")
                load_button = gr.Button("Load", size="sm")
                model_status = gr.HTML(render_notice(f"Reranking with {status.loaded.engine.description}.")
                                       if status.loaded else "")
            with gr.Accordion("Export this run", open=False):
                export_button = gr.Button("Export TREC run and JSONL traces", size="sm")
                files = gr.File(label="Exports", file_count="multiple", interactive=False)
        selected = gr.State(default_key)
        with gr.Tab("Search", id="search"):
            with gr.Row(equal_height=True):
                query = gr.Textbox(label="Query", placeholder="which migraine treatments do not involve medication?",
                                   scale=6, elem_id="es-query")
                instruction = gr.Textbox(label="Instruction (optional): what counts as relevant", scale=3)
                with gr.Column(scale=1, min_width=160):
                    run_button = gr.Button("Search and rerank", variant="primary", size="sm")
                    stop_button = gr.Button("Stop", variant="stop", size="sm")
            with gr.Row(equal_height=True, elem_id="es-toolbar"):
                compare = gr.Checkbox(label="Compare: two judges side by side", value=False, container=False,
                                      elem_id="es-compare", scale=0, min_width=260)
                only_disagreements = gr.Checkbox(label="Only disagreements", value=False, container=False,
                                                 visible=False, elem_id="es-only-disagreements", scale=0,
                                                 min_width=180)
                link_button = gr.Button("Copy link", size="sm", elem_id="es-copy-link", scale=0, min_width=110)
                examples_button = gr.Button("Examples", size="sm", scale=0, min_width=110)
                gr.HTML('<div class="es-counter"></div>', elem_id="es-counter", padding=False, scale=1)
            link_box = gr.Textbox(label="Link to this search (copied)", visible=False, interactive=False,
                                  elem_id="es-link")
            with gr.Accordion("Sides A and B", open=True, visible=False, elem_id="es-sides") as sides_row:
                side_inputs: dict[str, list[Any]] = {}
                for side in SIDES:
                    with gr.Row(equal_height=True):
                        side_inputs[side] = [
                            gr.Dropdown([(cls.label, name) for name, cls in RERANKERS.items()],
                                        value=settings.rerank.reranker, label=f"{side} · reranker", scale=3,
                                        min_width=180),
                            gr.Dropdown(page.model_choices(), value=default_key, allow_custom_value=True,
                                        label=f"{side} · model", scale=2, min_width=140),
                            gr.Textbox(label=f"{side} · instruction", scale=4,
                                       elem_id=f"es-{side.lower()}-instruction"),
                            gr.Number(value=page.budget_of(settings.rerank.reranker, default_key), minimum=1, step=1,
                                      label=f"{side} · budget", scale=1, min_width=90),
                            gr.Checkbox(value=page.evidence_default(default_key), label="evidence", scale=1,
                                        min_width=90)]
                side_note = gr.HTML(padding=False)
            with gr.Column(elem_id="es-examples") as examples_row:
                examples_box = gr.Dataset(components=[gr.HTML(visible=False)], label="Examples: one click runs it",
                                          **page.example_samples(default_corpus), type="index", samples_per_page=12)
            summary = gr.HTML(elem_id="es-summary", padding=False)
            results = gr.HTML(elem_id="es-results", padding=False)
            shown_run = gr.State(None)
            rows = gr.JSON(visible=False)
            with gr.Row(visible=False):
                k = gr.Number(value=10)
                first_stage_only = gr.HTML()
                search_button = gr.Button()
                runs = gr.Number(value=0, precision=0)
                compare_runs = gr.Number(value=0, precision=0)
        search_button.click(page.search, inputs=[query, method, k, corpus_name], outputs=first_stage_only,
                            api_name="search")
        panel_button.click(lambda: gr.Sidebar(open=True), outputs=panel, api_visibility="private")
        corpus_panel = [corpus_name, corpus_status, remove_button]
        upload_outputs = [corpus_name, corpus_status, upload_status, pending_upload, load_good_button, remove_button,
                          corpus_file]
        corpus_file.upload(page.upload, inputs=corpus_file, outputs=upload_outputs, api_visibility="private")
        load_good_button.click(page.load_good, inputs=pending_upload, outputs=upload_outputs, api_visibility="private")
        remove_button.click(page.remove_corpus, inputs=corpus_name, outputs=[*corpus_panel, upload_status],
                            api_visibility="private")
        corpus_name.input(page.corpus_choices, inputs=corpus_name, outputs=corpus_panel, api_visibility="private")
        app.load(page.corpus_choices, inputs=corpus_name, outputs=corpus_panel, api_visibility="private")
        app.load(page.header_now, inputs=selected, outputs=header, api_visibility="private")
        app.unload(page.left)

        load_button.click(page.load_model, inputs=[model_name, engine_kind, reranker_kind],
                          outputs=[selected, budget, model_status, header, evidence], api_visibility="private")
        # .input, not .change: a link or an example sets reranker and budget together, and keeps its budget.
        reranker_kind.input(page.budget_of, inputs=[reranker_kind, selected], outputs=budget,
                            api_visibility="private")
        run = runs.change(page.rerank, inputs=[query, instruction, method, candidates, budget, sort_reranked,
                                               corpus_name, reranker_kind, selected, evidence],
                          outputs=[summary, results, shown_run, rows], api_name="rerank",
                          concurrency_limit=concurrency, trigger_mode="multiple", show_progress="hidden")
        a_fields, b_fields = side_inputs["A"], side_inputs["B"]
        compare_run = compare_runs.change(
            page.compare, inputs=[query, method, candidates, sort_reranked, corpus_name, *a_fields, *b_fields],
            outputs=[summary, results, shown_run], api_visibility="private", concurrency_limit=concurrency,
            trigger_mode="multiple", show_progress="hidden")
        # A new query starts the next run at once; the run it replaces ends at its next event (LiveRuns).
        # Seen: cancelling the old run with Gradio's cancel at the same moment sometimes landed on the new run
        # instead (about one time in eight), which then never showed. Stop cancels both the run and a start still
        # on its way, so that a run cannot begin just after Stop.
        start = gr.on([query.submit, run_button.click, a_fields[2].submit, b_fields[2].submit], started,
                      inputs=[compare, runs, compare_runs], outputs=[runs, compare_runs, examples_row, sides_row],
                      api_visibility="private")
        stop_button.click(None, cancels=[run, compare_run, start]).then(
            page.stopped, inputs=[shown_run, sort_reranked, budget], outputs=[summary, results],
            api_visibility="private")
        compare.input(page.open_compare, inputs=[compare, reranker_kind, selected, instruction, budget, evidence,
                                                 a_fields[2]],
                      outputs=[sides_row, instruction, *a_fields, *b_fields], api_visibility="private").then(
            None, inputs=compare, js=COMPARE_FOCUS_JS)
        compare.change(lambda on: gr.update(visible=on, value=False), inputs=compare, outputs=only_disagreements,
                       api_visibility="private")
        only_disagreements.change(None, inputs=only_disagreements, js=FILTER_JS)
        for fields in (a_fields, b_fields):
            fields[0].input(page.budget_of, inputs=[fields[0], fields[1]], outputs=fields[3],
                            api_visibility="private")
            fields[1].input(page.memory_note, inputs=fields[1], outputs=side_note, api_visibility="private")
        link_setup = [query, instruction, compare, sides_row, *a_fields, *b_fields, reranker_kind, budget, evidence]
        app.load(page.from_link, inputs=[reranker_kind, selected, budget, evidence, runs, compare_runs],
                 outputs=[*link_setup, corpus_name, selected, summary, runs, compare_runs, examples_row],
                 api_visibility="private")
        link_button.click(page.link, inputs=[query, corpus_name, compare, reranker_kind, selected, instruction, budget,
                                             evidence, *a_fields, *b_fields], outputs=link_box,
                          api_visibility="private").then(
            None, inputs=link_box, outputs=link_box, js=COPY_LINK_JS).then(
            lambda: gr.update(visible=True), outputs=link_box, api_visibility="private")
        examples_box.click(page.run_example, inputs=[examples_box, corpus_name, reranker_kind, selected, budget,
                                                     evidence, runs, compare_runs],
                           outputs=[*link_setup, runs, compare_runs, examples_row], api_visibility="private")
        examples_button.click(lambda: gr.update(visible=True), outputs=examples_row, api_visibility="private")
        corpus_name.change(page.examples_update, inputs=corpus_name, outputs=examples_box, api_visibility="private")
        sort_reranked.change(page.resort, inputs=[shown_run, sort_reranked, budget], outputs=results)
        export_button.click(page.export, inputs=shown_run, outputs=files)
        if annotations is not None and remembered is not None:
            with gr.Tab("Annotate", id="annotate", elem_id="annotate-tab"):
                # The workbench's model gives evidence where the page would by default.
                context = AnnotationContext(store=annotations, library=library, top_k=settings.rerank.top_k,
                                            reranker_for=lambda key, kind: page.reranker_for(
                                                key, kind, evidence=page.evidence_default(key)),
                                            ephemeral=not STORAGE.outlives_restart(annotations.path))
                build_annotate_tab(app, context, selected, reranker_kind, remembered, auth=auth,
                                   concurrency=concurrency)
        if batches is not None:
            with gr.Tab("Evaluation", id="evaluation"):
                build_evaluate_tab(app, batches)
    return app
