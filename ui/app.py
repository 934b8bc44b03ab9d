"""The Gradio page: layout and wiring only; every decision is made in search/.

Typing a query shows the first-stage list at once; then the chosen reranker's events stream in (every
candidate's reasoning and judgment, or ReasonRank's windows) and the list re-sorts as they land.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, TypeVar, get_args

import gradio as gr
from gradio.utils import get_upload_folder

from search.annotation.store import AnnotationStore
from search.compare import corpus_query_id
from search.corpus import CorpusError
from search.engines import EngineError, EngineShelf
from search.engines.demo_model import DemoModelError
from search.evidence import evidence_by_default
from search.pipeline import LoadedModel, build_reranker, memory_need, model_access, open_model, reranker_budget
from search.rerank.base import Reranker, Run
from search.rerank.registry import RERANKERS, reranker_class
from search.settings import DEFAULT_RERANKER, STORAGE, RetrievalMethod, Settings
from search.streams import read_until
from search.trec import UNNAMED_QUERY_ID
from search.uploads import MAX_UPLOAD_BYTES, UPLOAD_SUFFIXES, CorpusLibrary, UploadError
from ui.annotate import AnnotationContext, build_annotate_tab, remembered_state
from ui.annotation_cards import ANNOTATION_CSS, KEYS_JS
from ui.belief import BELIEF_CSS
from ui.cards import CARDS_CSS, KEEP_OPEN_JS
from ui.checks import MAX_CANDIDATES, MAX_QUERY_CHARS, count_problem, instruction_problem, query_problem
from ui.compare import ComparePage, PageFields, ShownPair, lay_out_compare, wire_compare
from ui.compare_cards import COMPARE_CSS
from ui.evaluate import build_evaluate_tab
from ui.evidence import EVIDENCE_CSS
from ui.header import HEADER_CSS, render_header
from ui.live import LiveRuns
from ui.model_key import Loading, ModelKey, ModelKeyError, name_problem
from ui.renderers import renderer_for
from ui.results import CSS as RESULTS_CSS
from ui.results import render_notice, render_ranking
from ui.window_cards import WINDOW_CSS

MAX_RESULTS = 1000
UPDATE_EVERY_S = 0.3
SWEEP_EVERY_S = 60.0
"""How often the models visitors opened are checked for having been unused for ``--model-idle-seconds`` (more
often when that is shorter)."""
"""Streaming updates are batched: the page gets at most about three per second, whatever the token rate."""
EVIDENCE_LABEL = "Evidence: which passage sentences each verdict rests on"
EVIDENCE_INFO = ("rank1 and the assessor: after each judgment, the verdict is re-scored with each sentence removed "
                 "(the reasoning held fixed). On by default with vLLM on a GPU and with OpenAI-compatible servers; "
                 "on a CPU it adds about as much time as the judgments took (docs/benchmarks.md).")
MAX_PROBLEMS_LISTED = 10
PAGE_CSS = """
#es-header { min-width: min(100%, 24em) !important; }
#es-panel:not(.open) > .sidebar-content { visibility: hidden; transition: visibility 0s 0.3s; }
#es-panel:not(.open) > .toggle-button { display: none; }
@media (max-width: 480px) {
  #es-ask .form > .block { flex-basis: 100% !important; }
  #es-ask > .column { flex-direction: row; }
  #es-ask > .column > button { flex: 1 1 0%; }
}
"""
"""The page's own layout. The header keeps room for its title, so that on a narrow screen the panel's button goes
below it instead of over it. The closed side panel lies off screen: its controls are hidden, so that no Tab stop
lies where the focus cannot be seen, and so is its chevron (the panel's button opens it; the chevron closes it).
On a phone the query and the instruction take the whole width, one above the other."""
CSS = (RESULTS_CSS + CARDS_CSS + BELIEF_CSS + COMPARE_CSS + EVIDENCE_CSS + WINDOW_CSS + ANNOTATION_CSS + HEADER_CSS
       + PAGE_CSS)
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
FOCUS_JS = """
() => {
  const until = performance.now() + 10000;  // a page without the box stops looking after 10 s
  const focus = () => {
    const box = document.querySelector("#es-query textarea");
    if (!box) { if (performance.now() < until) requestAnimationFrame(focus); return; }
    if (document.activeElement === document.body || !document.activeElement) box.focus({preventScroll: true});
  };
  focus();
}
"""
"""The query box has the focus once the page is there (unless the reader has put it elsewhere): the first keys
typed are the query, and the first Tab leads on from it."""
JS = f"() => {{ ({KEEP_OPEN_JS})(); ({KEYS_JS})(); ({COUNTER_JS})(); ({FOCUS_JS})(); }}"
Event = TypeVar("Event")
Update = TypeVar("Update")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelStatus:
    """What the page says about the model the rerankers run on: the one loaded, or why none is."""

    loaded: LoadedModel | None
    problem: str = ""
    settings: Settings = field(default_factory=Settings)

    def header(self) -> str:
        return render_header(self.loaded, self.problem)


def model_key(loaded: LoadedModel) -> str:
    """How the Model panel names a loaded model."""
    return str(ModelKey(name=loaded.model.name or loaded.engine.model, engine=loaded.engine.kind))


def _describe(library: CorpusLibrary, name: str) -> str:
    first_stage = library.get(name)
    return f"{name}: {len(first_stage.corpus.documents)} documents, {len(first_stage.passages)} passages."


def no_results() -> tuple[Any, ...]:
    """The summary, cards, shown run and rows emptied, and the examples shown: the page with no results."""
    return "", "", None, None, gr.update(visible=True)


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
    ``ModelKey`` text; each session picks one and builds any reranker on it), the slots that bound rerank runs and
    the runs that stream. Each can be called without a browser; ``build_app`` lays the page out and wires them
    (Compare's, the links' and the examples' handlers are ``ComparePage``'s, in ui/compare.py)."""

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
        started = ModelKey.parse(self.default_key) if self.default_key else None
        self.access = model_access(self.settings.serving, started.name if started else "",
                                   started.engine if started else "")
        """The models visitors may load (``--models``)."""
        self.shelf = EngineShelf(idle_s=self.settings.serving.model_idle_seconds)
        """The engines opened for visitors, closed when idle or when another needs their room."""
        self.opening = asyncio.Lock()
        """Held while a model is checked against the memory free, room is made and it opens, and while idle ones
        close: two visitors never both count the same free memory."""
        self.sweeper: asyncio.Task[None] | None = None
        """Closes the idle models while some are open (``sweep``), without waiting for another to load."""

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
        if loaded is None and key:
            raise EngineError(f"{key} was closed to free its memory (unused for a while, or another model needed "
                              "its room); load it again in the Model panel")
        if loaded is None:
            return None
        self.shelf.touch(key)
        if (waiting := loaded.engine.waiting()) is not None:
            raise EngineError(f"{waiting}; retrying every {loaded.engine.retry_every_s:g} s: reranking works as soon "
                              "as a server answers")
        rerank = self.settings.rerank
        probed = reranker_class(kind).probes_belief  # the page asks no belief of a reranker without one
        chosen = dataclasses.replace(self.settings.rerank, reranker=kind, budget=budget or self.settings.rerank.budget,
                                     evidence=self.settings.rerank.evidence if evidence is None else evidence,
                                     belief=probed and (rerank.belief or rerank.page_belief),
                                     early_verdict=probed and rerank.early_verdict)
        return build_reranker(chosen, loaded)

    def header_now(self, key: str) -> str:
        """The header as the engine is now (a server that went away or came back since the page was built)."""
        loaded = self.models.get(key)
        return render_header(loaded, self.status.problem if loaded is None else "")

    def search(self, query: str, method: RetrievalMethod, k: int, corpus_name: str) -> str:
        query = query.strip()
        problem = query_problem(query) or count_problem(k, "k (results)", MAX_RESULTS)
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

    def cleared(self, request: gr.Request | None = None) -> tuple[Any, ...]:
        """Another corpus is chosen (picked, uploaded, or the one shown removed): the results on screen are the old
        corpus's, so they go (summary, cards, the run Stop and Export read, its rows) and the session's run ends;
        the examples come back, the new corpus's (a corpus with none shows none: ``ComparePage.example_samples``)."""
        self.live.forget(request.session_hash if request else "")
        return no_results()

    def kept(self) -> tuple[Any, ...]:
        """What ``cleared`` changes, left as it is (an upload refused, a removal refused)."""
        return tuple(gr.skip() for _ in no_results())

    def load_upload(self, file: str | None, skip_bad: bool, progress: gr.Progress, request: gr.Request | None
                    ) -> tuple[Any, ...]:
        """(picker, corpus line, upload message, pending upload, "Load the N good documents", remove, file box,
        then ``cleared``'s outputs)."""
        if not file:
            return gr.skip(), gr.skip(), "", None, gr.update(visible=False), gr.skip(), gr.skip(), *self.kept()
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
                    gr.skip(), None, *self.kept())
        forget_upload(path)  # the library keeps its own copy
        dropped = self.library.get(name).corpus.dropped
        note = f" {dropped} bad record(s) were dropped." if dropped else ""
        return (*self.corpus_choices(name)[:2], render_notice(f"Loaded {_describe(self.library, name)}{note}"), None,
                gr.update(visible=False), gr.update(visible=True), None, *self.cleared(request))

    def upload(self, file: str | None, progress: gr.Progress = gr.Progress(),  # noqa: B008
               request: gr.Request | None = None) -> tuple[Any, ...]:
        return self.load_upload(file, False, progress, request)

    def load_good(self, file: str | None, progress: gr.Progress = gr.Progress(),  # noqa: B008
                  request: gr.Request | None = None) -> tuple[Any, ...]:
        return self.load_upload(file, True, progress, request)

    def remove_corpus(self, name: str, request: gr.Request | None = None) -> tuple[Any, ...]:
        """(picker, corpus line, remove button, message, then ``cleared``'s outputs)."""
        try:
            self.library.remove(name)
        except UploadError as error:
            return gr.skip(), gr.skip(), gr.skip(), render_notice(str(error)), *self.kept()
        return (*self.corpus_choices(self.library.names()[0]), render_notice(f"Removed {name}."),
                *self.cleared(request))

    async def load_model(self, name: str, engine: str, kind: str, progress: gr.Progress = gr.Progress()  # noqa: B008
                         ) -> tuple[Any, Any, str, Any, Any]:
        """The Model panel's Load: the same checks as a link's or Compare's model (``ensure_model``)."""
        try:
            if (problem := name_problem(name.strip())) is not None:
                raise ModelKeyError(problem)
            key = str(ModelKey(name=name.strip(), engine=engine))
        except ModelKeyError as error:
            return gr.update(), gr.update(), render_notice(f"Model: {error}"), gr.skip(), gr.skip()
        if key not in self.models:
            progress(0, desc=f"starting {engine} with {name}")
        loading = await self.ensure_model(key, kind)
        if loading.problem is not None:
            return (gr.update(), gr.update(), render_notice(f"Model: {loading.problem} {loading.released}".strip()),
                    gr.skip(), gr.skip())
        loaded = self.models[key]
        demo = " Its verdicts are not meaningful (demo model)." if loaded.model.is_demo else ""
        return (key, self.budget_of(kind, key),
                render_notice(f"Reranking with {loaded.engine.description}.{demo} {loading.released}".strip()),
                render_header(loaded), self.evidence_default(key))

    def shown(self, run: Run, budget: int, *, reranked: bool) -> tuple[str, str]:
        """The summary line and the results, as the run's reranker renders them."""
        renderer = renderer_for(run)
        return renderer.summary(run.shown_summary(budget), budget), renderer.cards(run, reranked)

    async def rerank(self, query: str, instruction: str, method: RetrievalMethod, candidates: int, budget: int,
                     reranked: bool, corpus_name: str, kind: str = DEFAULT_RERANKER, key: str | None = None,
                     evidence: bool = False, request: gr.Request | None = None
                     ) -> AsyncIterator[tuple[str, str, Run | None, list[dict[str, Any]]]]:
        query, instruction = query.strip(), instruction.strip()
        key = self.default_key if key is None else key
        problem = (query_problem(query) or instruction_problem(instruction, "The")
                   or count_problem(candidates, "Candidates", MAX_CANDIDATES)
                   or count_problem(budget, "The reasoning budget", 10**7))
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
        # The reranker's settings say whether evidence follows each judgment: then the run is done once it has come.
        run = (reranker.start_run(query, found, instruction=instruction) if reranker is not None
               else reranker_class(kind).new_run(query, found, instruction=instruction, settings=self.settings.rerank))
        events = ((lambda: reranker.stream(query, found, instruction=instruction))
                  if reranker is not None and found else None)
        async for update in self.stream(run, events, run.apply,
                                        lambda: (*self.shown(run, budget, reranked=reranked), run, run.rows()),
                                        request):
            yield update

    async def stream(self, run: Run, events: Callable[[], AsyncIterator[Event]] | None,
                     apply: Callable[[Event], None], update: Callable[[], Update], request: gr.Request | None,
                     end: Callable[[], None] | None = None, stop: Callable[[], None] | None = None
                     ) -> AsyncIterator[Update]:
        """The page's one streaming loop, for a single run and a comparison (``run`` its side A): ``update()`` at
        once, then as ``apply`` folds each of ``events()`` in (at most every UPDATE_EVERY_S), and at the end. The
        run is the session's live run meanwhile and holds one of ``slots``; it ends at once when Stop, a newer query
        or the page's closing replaces it, even while it waits for the next event. Closing the events ends their
        engine requests. Once the events have all come, ``end`` (default ``run.end``) says so: what is still awaited
        will not come. Ended by Stop (``stop``, default ``run.stop``), even one pressed before the run began, it
        shows itself stopped."""
        session = request.session_hash if request else ""
        halt = stop or run.stop
        loop, ended = asyncio.get_running_loop(), asyncio.Event()
        if not self.live.start(session, run, lambda: loop.call_soon_threadsafe(ended.set)):
            halt()
            yield update()
            return
        try:
            yield update()
            if events is None:
                return
            last = time.monotonic()
            stream = events()
            try:
                async with contextlib.aclosing(read_until(stream, ended, self.slots)) as arriving:
                    async for event in arriving:
                        apply(event)
                        if time.monotonic() - last >= UPDATE_EVERY_S:
                            last = time.monotonic()
                            yield update()
            finally:
                await stream.aclose()  # ends the engine requests, and a stream that never began
            if not ended.is_set():  # every event came
                (end or run.end)()
            if self.live.halted(session, run):
                halt()
            if self.live.current(session, run) or self.live.halted(session, run):  # not replaced or cleared
                yield update()
        finally:
            self.live.end(session, run)

    def started(self, compare: bool, runs: int, compare_runs: int, request: gr.Request | None = None
                ) -> tuple[Any, ...]:
        """Enter: the next single run or comparison is asked for (a Stop from now on stops it), and the examples
        and sides fold away to give the cards the screen (the summary lines say what each side runs; the Examples
        button brings the examples back)."""
        self.live.begin(request.session_hash if request else "")
        counts = (runs, compare_runs + 1) if compare else (runs + 1, compare_runs)
        return *counts, gr.update(visible=False), gr.update(open=False)

    def resort(self, run: Run | ShownPair | None, reranked: bool, budget: int) -> str:
        if isinstance(run, ShownPair):
            return run.shown(reranked=reranked)[1]
        return self.shown(run, int(budget), reranked=reranked)[1] if run else ""

    def stopped(self, request: gr.Request) -> None:
        """Stop: the session's run ends at once and draws itself stopped, every unfinished card (both halves of a
        comparison's) keeping its partial reasoning; a run asked for and not begun yet begins stopped. The run's
        own loop draws it, never this handler: until the run's first update, the run shown is the one before."""
        self.live.stop(request.session_hash or "")

    async def model_refusal(self, name: str, engine: str, keep: Collection[str] = ()) -> str | None:
        """Why a visitor may not open ``name`` on ``engine`` now, before anything is opened: not among the models
        this page may load, or its memory need unknown or more than is free even once the models ``keep`` does not
        name have made room (``EngineShelf.room``); None when it may. Measured on a thread (``memory_need`` reads
        weights' headers, maybe from the Hub): the page's other visitors go on meanwhile."""
        if (refusal := self.access.refusal(name, engine)) is not None:
            return refusal
        need = await asyncio.to_thread(memory_need, name, engine)
        if need.fits or (need.needed_gb is not None and need.free_gb is not None
                         and self.shelf.room(need.needed_gb, need.free_gb, keep) is not None):
            return None
        return need.describe(name)

    async def ensure_model(self, key: str, kind: str, keep: Collection[str] = ()) -> Loading:
        """Load the model ``key`` names beside the others when it may be loaded (``model_refusal``), first closing
        the models visitors opened that have been unused for ``--model-idle-seconds``, then the least recently used
        while it needs their room (never the page's own, one serving requests, or one ``keep`` names). The memory
        free is measured, room made and the model opened under ``opening``, one model at a time."""
        if key in self.models:
            self.shelf.touch(key)
            return Loading()
        model = ModelKey.parse(key)
        if (refusal := self.access.refusal(model.name, model.engine)) is not None:
            return Loading(problem=refusal)
        async with self.opening:
            if key in self.models:  # another visitor opened it meanwhile
                self.shelf.touch(key)
                return Loading()
            loading = await self.open_beside(key, model, kind, {*keep, key})
        if self.shelf.idle_s and (self.sweeper is None or self.sweeper.done()):
            self.sweeper = asyncio.get_running_loop().create_task(self.sweep())
        return loading

    async def open_beside(self, key: str, model: ModelKey, kind: str, keep: set[str]) -> Loading:
        """``ensure_model``'s work under ``opening``."""
        idle = self.shelf.idle(keep)
        need = await asyncio.to_thread(memory_need, model.name, model.engine)
        room: list[str] | None = []
        if not need.fits and need.needed_gb is not None and need.free_gb is not None:
            freed = sum(self.shelf.need_gb(stale) for stale in idle)
            room = self.shelf.room(need.needed_gb, need.free_gb + freed, {*keep, *idle})
        closed = [f"{stale} (unused for {self.shelf.idle_s:g} s)" for stale in idle if await self.release(stale)]
        if room is None or (need.needed_gb is None and need.free_gb is not None):
            return Loading(problem=need.describe(model.name), released=closed_note(closed))
        closed += [f"{old} (the least recently used, to make room)" for old in room if await self.release(old)]
        serving = dataclasses.replace(self.settings.serving, model=model.name, engine=model.engine)
        try:
            loaded = await asyncio.to_thread(open_model, serving, kind)
        except (EngineError, DemoModelError) as error:
            return Loading(problem=f"Could not load {model.name} on {model.engine}: {error}",
                           released=closed_note(closed))
        if all(other.engine is not loaded.engine for other in self.models.values()):  # else it is another's engine
            self.shelf.hold(key, loaded.engine, need.needed_gb or 0.0)
        self.models[key] = loaded
        return Loading(released=closed_note(closed))

    async def sweep(self) -> None:
        """Close the models visitors opened once unused for ``--model-idle-seconds`` (checked every
        SWEEP_EVERY_S, or as often as that setting when shorter), so that an idle one goes even when no one loads
        another; ends once none is open (``ensure_model`` starts it again)."""
        while self.shelf.held():
            await asyncio.sleep(min(SWEEP_EVERY_S, self.shelf.idle_s))
            async with self.opening:
                for stale in self.shelf.idle():
                    await self.release(stale)

    async def release(self, key: str) -> bool:
        """Close the engine of ``key`` (``EngineShelf.release``) and forget every model on it."""
        engine = await asyncio.to_thread(self.shelf.release, key)
        for other in [other for other, loaded in self.models.items() if loaded.engine is engine]:
            del self.models[other]
        return engine is not None

    def left(self, request: gr.Request) -> None:
        """The session closed the page: its run ends at once and is forgotten."""
        self.live.forget(request.session_hash or "")

    def export(self, run: Run | ShownPair | None, corpus_name: str) -> list[str]:
        """The TREC run(s) and JSONL traces, filed under the query's id in ``corpus_name`` when it is one of its
        queries (so that the run joins with its judgments)."""
        if run is None:
            raise gr.Error("Run a query first; there is nothing to export yet.")
        folder = Path(tempfile.mkdtemp(dir=self.exports))
        try:
            query_id = corpus_query_id(self.library.get(corpus_name).corpus,
                                       (run.pair.runs["A"] if isinstance(run, ShownPair) else run).query)
        except UploadError:  # the corpus was removed since
            query_id = None
        if isinstance(run, ShownPair):
            written = []
            for side, text in run.pair.trec_runs(query_id=query_id or UNNAMED_QUERY_ID).items():
                written.append(folder / f"rerank-{side}.trec")
                written[-1].write_text(text, encoding="utf-8")
            written.append(folder / "compare.jsonl")
            written[-1].write_text(run.pair.jsonl(query_id=query_id), encoding="utf-8")
            return [str(path) for path in written]
        run_file, traces = folder / "rerank.trec", folder / "rerank.jsonl"
        run_file.write_text(run.trec_run(query_id=query_id or UNNAMED_QUERY_ID), encoding="utf-8")
        traces.write_text(run.jsonl(query_id=query_id), encoding="utf-8")
        return [str(run_file), str(traces)]


def closed_note(closed: list[str]) -> str:
    """The models ``SearchPage.ensure_model`` closed, as a sentence for the page ("" when none)."""
    return f"Closed {', '.join(closed)}." if closed else ""


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
    compare_page = ComparePage(page)
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
                # No precision: Gradio would round 2.5 to 2 where the handler must refuse it (count_problem).
                budget = gr.Number(value=page.budget_of(settings.rerank.reranker, default_key), minimum=1, step=1,
                                   label="Reasoning budget (tokens)")
                reranker_kind = gr.Radio([(cls.label, name) for name, cls in RERANKERS.items()],
                                         value=settings.rerank.reranker, label="Reranker")
                sort_reranked = gr.Checkbox(value=True, label="Sort by the reranker (off: first-stage order)")
                evidence = gr.Checkbox(value=page.evidence_default(default_key), label=EVIDENCE_LABEL,
                                       info=EVIDENCE_INFO)
            with gr.Accordion("Model", open=False):
                current = ModelKey.parse(default_key) if default_key else ModelKey(name="demo", engine="transformers")
                model_name = gr.Dropdown(list(dict.fromkeys([current.name, *page.access.names])),
                                         value=current.name, allow_custom_value=True,
                                         label="Model (registry name, hub id or local folder)")
                engine_kind = gr.Radio(list(dict.fromkeys([current.engine, *page.access.engines])),
                                       value=current.engine, label="Engine")
                load_button = gr.Button("Load", size="sm")
                model_status = gr.HTML(render_notice(f"Reranking with {status.loaded.engine.description}.")
                                       if status.loaded else "")
            with gr.Accordion("Export this run", open=False):
                export_button = gr.Button("Export TREC run and JSONL traces", size="sm")
                files = gr.File(label="Exports", file_count="multiple", interactive=False)
        selected = gr.State(default_key)
        with gr.Tab("Search", id="search"):
            with gr.Row(equal_height=True, elem_id="es-ask"):
                query = gr.Textbox(label="Query", placeholder="which migraine treatments do not involve medication?",
                                   scale=6, elem_id="es-query")
                instruction = gr.Textbox(label="Instruction (optional): what counts as relevant", scale=3)
                with gr.Column(scale=1, min_width=160):
                    run_button = gr.Button("Search and rerank", variant="primary", size="sm")
                    stop_button = gr.Button("Stop", variant="stop", size="sm")
            controls = lay_out_compare(compare_page, settings, default_corpus=default_corpus)
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
        # Another corpus chosen by the user clears the results of the old one (not a link's: it sets the corpus
        # and starts its run at once).
        cleared = [summary, results, shown_run, rows, controls.examples_row]
        upload_outputs = [corpus_name, corpus_status, upload_status, pending_upload, load_good_button, remove_button,
                          corpus_file, *cleared]
        corpus_file.upload(page.upload, inputs=corpus_file, outputs=upload_outputs, api_visibility="private")
        load_good_button.click(page.load_good, inputs=pending_upload, outputs=upload_outputs, api_visibility="private")
        remove_button.click(page.remove_corpus, inputs=corpus_name, outputs=[*corpus_panel, upload_status, *cleared],
                            api_visibility="private")
        corpus_name.input(page.corpus_choices, inputs=corpus_name, outputs=corpus_panel, api_visibility="private")
        corpus_name.input(page.cleared, outputs=cleared, api_visibility="private")
        app.load(page.corpus_choices, inputs=corpus_name, outputs=corpus_panel, api_visibility="private")
        app.load(page.header_now, inputs=selected, outputs=header, api_visibility="private")
        app.unload(page.left)

        load_button.click(page.load_model, inputs=[model_name, engine_kind, reranker_kind],
                          outputs=[selected, budget, model_status, header, evidence], api_visibility="private")
        # .input, not .change: a link or an example sets reranker and budget together, and keeps its budget.
        reranker_kind.input(page.budget_of, inputs=[reranker_kind, selected], outputs=budget,
                            api_visibility="private")
        runs.change(page.rerank, inputs=[query, instruction, method, candidates, budget, sort_reranked, corpus_name,
                                         reranker_kind, selected, evidence],
                    outputs=[summary, results, shown_run, rows], api_name="rerank", concurrency_limit=concurrency,
                    trigger_mode="multiple", show_progress="hidden")
        fields = PageFields(query=query, instruction=instruction, method=method, candidates=candidates,
                            sort_reranked=sort_reranked, corpus_name=corpus_name, reranker_kind=reranker_kind,
                            selected=selected, budget=budget, evidence=evidence, runs=runs, compare_runs=compare_runs,
                            summary=summary, results=results, shown_run=shown_run)
        wire_compare(app, compare_page, controls, fields, concurrency=concurrency)
        # A new query starts the next run at once; the run it replaces ends at once (LiveRuns). Stop, too, goes
        # through LiveRuns, not Gradio's cancel: cancelling the old run at a new query's moment sometimes landed on
        # the new run instead (about one time in eight), which then never showed; cancelling a run within its first
        # second left it queued for good, let it go on, or blanked the results (a new user's walk).
        sides_submit = [side[2].submit for side in controls.sides.values()]
        gr.on([query.submit, run_button.click, *sides_submit], page.started,
              inputs=[controls.compare, runs, compare_runs],
              outputs=[runs, compare_runs, controls.examples_row, controls.sides_row], api_visibility="private")
        stop_button.click(page.stopped, api_visibility="private")
        sort_reranked.change(page.resort, inputs=[shown_run, sort_reranked, budget], outputs=results)
        export_button.click(page.export, inputs=[shown_run, corpus_name], outputs=files)
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
