"""Compare, links and examples on the Search tab: layout and wiring only; what a side runs, how two runs are
folded and what a link or an example says are decided in search/compare.py.

``ComparePage``'s methods are the handlers, callable without a browser, over the page the tab shares
(``SharedPage``, which ui/app.py's ``SearchPage`` is: its corpora, loaded models and streaming loop);
``lay_out_compare`` places the controls between the query row and the results, and ``wire_compare`` connects them
once the page's fields exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from html import escape
from typing import Any, Protocol, TypeVar

import gradio as gr

from search.compare import (
    B_PREFIX,
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
from search.engines import ENGINE_KINDS, EngineError
from search.pipeline import LoadedModel, memory_need
from search.rerank.base import Reranker, Run
from search.rerank.registry import RERANKERS
from search.settings import ModelAccess, RetrievalMethod, Settings, SettingsError
from search.uploads import CorpusLibrary, UploadError
from ui.checks import MAX_CANDIDATES, count_problem, instruction_problem, query_problem
from ui.compare_cards import render_pair_board, render_pair_summary
from ui.live import LiveRuns
from ui.model_key import SEPARATOR, Loading, ModelKey, ModelKeyError, name_problem
from ui.results import render_notice

Event = TypeVar("Event")
Update = TypeVar("Update")

LINK_FIELDS = 17
"""What ``ComparePage.sides_shown`` sets: query, instruction, Compare, the sides' row, 5 fields per side, and the
settings' reranker, budget and evidence."""
SideInputs = tuple[str, str, str, float | None, bool]
"""A side's fields on the page: reranker, model (a loaded model's key, or a name to load), instruction, budget,
evidence."""
COMPARE_FOCUS_JS = """(on) => { if (on) setTimeout(() => document.querySelector("#es-b-instruction textarea")?.focus(),
  150); }"""
FILTER_JS = """(only) => { document.querySelector("#es-results")?.classList.toggle("es-only-disagree", only); }"""
COPY_LINK_JS = """(query) => { const link = location.origin + location.pathname + query;
  navigator.clipboard?.writeText(link).catch(() => {}); return link; }"""
REFUSED_LINK_TAIL = (gr.skip(), gr.skip(), gr.update(visible=False))
"""A refused link's runs counters untouched and its examples folded away, so that its notice is in the first
screen (on a phone the examples would push it below)."""


class SharedPage(Protocol):
    """What Compare takes from the Search tab's page (``ui.app.SearchPage``), named here so that imports run one
    way: its corpora, the session's loaded models, their defaults and the page's one streaming loop."""

    library: CorpusLibrary
    models: dict[str, LoadedModel]
    default_key: str
    access: ModelAccess
    live: LiveRuns

    async def model_refusal(self, name: str, engine: str, keep: Collection[str] = ()) -> str | None: ...

    def budget_of(self, kind: str, key: str) -> int: ...

    def evidence_default(self, key: str) -> bool: ...

    def reranker_for(self, key: str, kind: str, budget: int | None = None, evidence: bool | None = None
                     ) -> Reranker | None: ...

    async def ensure_model(self, key: str, kind: str, keep: Collection[str] = ()) -> Loading: ...

    def stream(self, run: Run, events: Callable[[], AsyncIterator[Event]] | None, apply: Callable[[Event], None],
               update: Callable[[], Update], request: gr.Request | None,
               end: Callable[[], None] | None = None, stop: Callable[[], None] | None = None
               ) -> AsyncIterator[Update]: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class ShownPair:
    """A comparison as the page shows it: the two runs, with each side's budget (for its time left) and name."""

    pair: Comparison
    budgets: dict[SideName, int]
    names: dict[SideName, str]

    def shown(self, *, reranked: bool) -> tuple[str, str]:
        """The summary lines and the two-half cards."""
        return (render_pair_summary(self.pair, budgets=self.budgets, names=self.names),
                render_pair_board(self.pair, reranked=reranked))


class ComparePage:
    """Compare's, the links' and the examples' handlers, one method each."""

    def __init__(self, page: SharedPage) -> None:
        self.page = page

    def model_name(self, key: str) -> str:
        """The model's name in a key (what links and ``Side.model`` carry); empty when no model is loaded."""
        return ModelKey.parse(key).name if key else ""

    def model_choices(self) -> list[str]:
        """A side's model picker: the loaded models by key, then the other models visitors may load."""
        loaded = {self.model_name(key) for key in self.page.models}
        return [*self.page.models, *(name for name in self.page.access.names if name not in loaded)]

    def side_key(self, value: str) -> str:
        """A side's model field as a key: a loaded model's, a key picked from the list, or a name to load on the
        engine of the session's model. ModelKeyError: none of these, or a name no model may have here
        (``name_problem``: only the operator's own, loaded already, may)."""
        models, default_key = self.page.models, self.page.default_key
        value = value.strip()
        if not value or value in models:
            return value or default_key
        match = next((key for key in models if self.model_name(key) == value), None)
        if match is not None:
            return match
        if SEPARATOR in value:
            key = ModelKey.parse(value)
            if key.engine not in ENGINE_KINDS:
                raise ModelKeyError(f"{value!r}: {key.engine!r} is not an engine ({', '.join(ENGINE_KINDS)})")
        else:
            engine = ModelKey.parse(default_key).engine if default_key else "transformers"
            key = ModelKey(name=value, engine=engine)
        if (problem := name_problem(key.name)) is not None:
            raise ModelKeyError(problem)
        return str(key)

    async def memory_note(self, value: str) -> str:
        """Before a model is loaded beside the others: why it may not be, or the memory it needs and the memory
        free (measured on a thread, as ``SharedPage.model_refusal``)."""
        try:
            key = self.side_key(value)
        except ModelKeyError as error:
            return render_notice(f"This side's model: {error}")
        if key in self.page.models:
            return ""
        model = ModelKey.parse(key)
        if (refusal := await self.page.model_refusal(model.name, model.engine)) is not None:
            return render_notice(f"This side's model: {refusal}")
        need = (await asyncio.to_thread(memory_need, model.name, model.engine)).describe(model.name, room=True)
        return render_notice(f"Chosen: {need} It loads when the comparison runs.")

    def side_problem(self, side: SideName, fields: SideInputs) -> str | None:
        kind, _, instruction, budget, _ = fields
        if kind not in RERANKERS:
            return f"Side {side}: choose a reranker."
        return (instruction_problem(instruction.strip(), f"Side {side}'s")
                or count_problem(budget, f"Side {side}'s reasoning budget", 10**7))

    async def compare(self, query: str, method: RetrievalMethod, candidates: int, reranked: bool, corpus_name: str,
                      a_kind: str, a_model: str, a_instruction: str, a_budget: float | None, a_evidence: bool,
                      b_kind: str, b_model: str, b_instruction: str, b_budget: float | None, b_evidence: bool,
                      request: gr.Request | None = None) -> AsyncIterator[tuple[str, str, ShownPair | None]]:
        """Both sides on the same first-stage candidates, streaming at once on the session's engines; B is A's
        work when its settings are A's."""
        page = self.page
        query = query.strip()
        sides: dict[SideName, SideInputs] = {
            "A": (a_kind, a_model, a_instruction.strip(), a_budget, a_evidence),
            "B": (b_kind, b_model, b_instruction.strip(), b_budget, b_evidence)}
        problem = (query_problem(query) or count_problem(candidates, "Candidates", MAX_CANDIDATES)
                   or next((found for side, fields in sides.items() if (found := self.side_problem(side, fields))),
                           None))
        if problem:
            yield render_notice(problem), "", None
            return
        keys = {}
        for side, fields in sides.items():
            try:
                keys[side] = self.side_key(fields[1])
            except ModelKeyError as error:
                yield render_notice(f"Side {side}'s model: {error}"), "", None
                return
            if keys[side] and keys[side] not in page.models:
                model = ModelKey.parse(keys[side])
                if (refusal := await page.model_refusal(model.name, model.engine, keys.values())) is not None:
                    yield render_notice(f"Side {side}'s model: {refusal}"), "", None
                    return
        for side, key in keys.items():
            if key not in page.models:
                yield render_notice(f"Loading {self.model_name(key)} for side {side} …"), "", None
                loading = await page.ensure_model(key, sides[side][0], keep=keys.values())
                if loading.problem is not None:
                    yield render_notice(f"Side {side}'s model: {loading.problem} {loading.released}".strip()), "", None
                    return
                if loading.released:
                    yield render_notice(f"Loaded {self.model_name(key)} for side {side}. {loading.released}"), "", None
        try:
            found = page.library.get(corpus_name).search(query, int(candidates), method).candidates
            rerankers = {side: page.reranker_for(keys[side], fields[0], int(fields[3]), fields[4])
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
        corpus = page.library.get(corpus_name).corpus
        view = ShownPair(pair=Comparison(runs["A"], runs["B"], shared=shared, judged=judgments_for(corpus, query)),
                         budgets={side: reranker.budget for side, reranker in rerankers.items()}, names=names)

        def events() -> AsyncIterator[tuple[SideName, Any]]:
            return stream_pair(rerankers["A"], None if shared else rerankers["B"], query, found,
                               instructions=(sides["A"][2], sides["B"][2]))

        async for update in page.stream(runs["A"], events if found else None,
                                        lambda tagged: view.pair.apply(*tagged),
                                        lambda: (*view.shown(reranked=reranked), view), request,
                                        end=view.pair.end, stop=view.pair.stop):
            yield update

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
                    side.budget or self.page.budget_of(side.reranker, model), side.evidence]

        b = link.b or link.a
        return [link.query, gr.update(visible=link.b is None, value=link.a.instruction), link.b is not None,
                gr.update(visible=link.b is not None, open=False), *fields(link.a), *fields(b),
                link.a.reranker, link.a.budget or budget, link.a.evidence]

    async def from_link(self, kind: str, key: str, budget: float | None, evidence: bool, runs: int,
                        compare_runs: int, request: gr.Request) -> list[Any]:
        """The search the page's address asks for (``?q=…``, see ``search.compare.link_query``), set up and run;
        a wrong parameter is named and nothing runs."""
        names = self.page.library.names()
        unchanged = [gr.skip()] * (LINK_FIELDS + 2)  # and the corpus and the session's model
        try:
            link = parse_link(dict(request.query_params), Side(reranker=kind, evidence=bool(evidence)))
        except SettingsError as error:
            return [*unchanged, render_notice(f"This link cannot be opened: {error}"), *REFUSED_LINK_TAIL]
        if link is None:
            return [*unchanged, *(gr.skip(),) * 4]
        corpus = link.corpus or gr.skip()
        if link.corpus and link.corpus not in names:
            return [*unchanged, render_notice(f"This link names the corpus {link.corpus!r}, which is not here; "
                                              f"the corpora are {', '.join(names)}."),
                    *REFUSED_LINK_TAIL]
        if (problem := await self.link_model_problem(link)) is not None:  # the query stays, to run on another model
            return [link.query, *unchanged[1:], render_notice(problem), *REFUSED_LINK_TAIL]
        selected, released = key, ""
        if link.b is None and link.a.model:
            selected = self.side_key(link.a.model)
            loading = await self.page.ensure_model(selected, link.a.reranker)
            if loading.problem is not None:
                return [*unchanged, render_notice(f"This link's model: {loading.problem} {loading.released}".strip()),
                        *REFUSED_LINK_TAIL]
            released = loading.released
        shown = self.sides_shown(link, kind, selected, budget, evidence)
        self.page.live.begin(request.session_hash or "")
        return [*shown, corpus, selected, render_notice(f"Opened from a link. {released}".strip()),
                runs + (link.b is None), compare_runs + (link.b is not None), gr.update(visible=False)]

    async def link_model_problem(self, link: Link) -> str | None:
        """Why a model a link names (``model``, ``b_model``) may not be opened, checked for both sides before
        either is: not a model name, or not one this page may load now (``SharedPage.model_refusal``)."""
        for parameter, side in (("model", link.a), (f"{B_PREFIX}model", link.b)):
            if side is None or not side.model:
                continue
            loaded = any(self.model_name(key) == side.model for key in self.page.models)  # the operator's own
            problem = None if loaded else name_problem(side.model)
            if problem is None:
                key = ModelKey.parse(self.side_key(side.model))
                if str(key) in self.page.models:
                    continue
                problem = await self.page.model_refusal(key.name, key.engine)
            if problem is not None:
                return f"This link cannot be opened: its {parameter}: {problem}"
        return None

    def link(self, query: str, corpus_name: str, on: bool, kind: str, key: str, instruction: str,
             budget: float | None, evidence: bool, *sides: Any) -> str:
        """The current search (or comparison) as a link's query string: the page turns it into the address. A
        side's model that names none is refused by name (gr.Error)."""
        def side(name: str, fields: tuple[Any, ...]) -> Side:
            side_kind, model, side_instruction, side_budget, side_evidence = fields
            try:
                chosen = self.side_key(model)
            except ModelKeyError as error:
                raise gr.Error(f"{name}'s model: {error}") from None
            return Side(reranker=side_kind, model=self.model_name(chosen), instruction=side_instruction.strip(),
                        budget=int(side_budget or 0), evidence=bool(side_evidence))

        if on:
            link = Link(query=query.strip(), corpus=corpus_name, a=side("Side A", sides[:5]),
                        b=side("Side B", sides[5:]))
        else:
            link = Link(query=query.strip(), corpus=corpus_name,
                        a=side("The model", (kind, key, instruction, budget, evidence)))
        return link_query(link)

    def examples_of(self, corpus_name: str) -> list[Example]:
        try:
            return examples(self.page.library.get(corpus_name).corpus)
        except UploadError:
            return []

    def example_samples(self, corpus_name: str) -> dict[str, Any]:
        """The examples as the picker shows them: whole labels, escaped (a textbox sample is cut at 60 characters);
        hidden when the corpus has none (else an empty box)."""
        samples = [[escape(example.label)] for example in self.examples_of(corpus_name)]
        return {"samples": samples, "visible": bool(samples)}

    def examples_update(self, corpus_name: str) -> Any:
        return gr.Dataset(**self.example_samples(corpus_name))

    def run_example(self, index: int, corpus_name: str, kind: str, key: str, budget: float | None, evidence: bool,
                    runs: int, compare_runs: int, request: gr.Request | None = None) -> list[Any]:
        """An example clicked: its query (and instruction) set, and run; a comparison example runs side A with the
        instruction against side B without it."""
        example = self.examples_of(corpus_name)[index]
        self.page.live.begin(request.session_hash if request else "")
        a = Side(reranker=kind, instruction=example.instruction, evidence=bool(evidence))
        link = Link(query=example.query, a=a, b=dataclasses.replace(a, instruction="") if example.compare else None)
        return [*self.sides_shown(link, kind, key, budget, evidence), runs + (not example.compare),
                compare_runs + example.compare, gr.update(visible=False)]


@dataclass(frozen=True, kw_only=True, slots=True)
class PageFields:
    """The Search tab's components that Compare, links and examples read or set."""

    query: gr.Textbox
    instruction: gr.Textbox
    method: gr.Radio
    candidates: gr.Slider
    sort_reranked: gr.Checkbox
    corpus_name: gr.Dropdown
    reranker_kind: gr.Radio
    selected: gr.State
    budget: gr.Number
    evidence: gr.Checkbox
    runs: gr.Number
    compare_runs: gr.Number
    summary: gr.HTML
    results: gr.HTML
    shown_run: gr.State


@dataclass(frozen=True, kw_only=True, slots=True)
class CompareControls:
    """Compare's components, laid out by ``lay_out_compare``."""

    compare: gr.Checkbox
    only_disagreements: gr.Checkbox
    link_button: gr.Button
    examples_button: gr.Button
    link_box: gr.Textbox
    sides_row: gr.Accordion
    sides: dict[SideName, list[Any]]
    """Each side's fields, in ``SideInputs``' order."""
    side_note: gr.HTML
    examples_row: gr.Column
    examples_box: gr.Dataset


def lay_out_compare(handlers: ComparePage, settings: Settings, *, default_corpus: str) -> CompareControls:
    """The toolbar (Compare, Only disagreements, Copy link, Examples, and the query's character counter at its end),
    the link box, the sides' rows and the examples, in the page's current layout block."""
    page = handlers.page
    with gr.Row(equal_height=True, elem_id="es-toolbar"):
        compare = gr.Checkbox(label="Compare: two judges side by side", value=False, container=False,
                              elem_id="es-compare", scale=0, min_width=260)
        only_disagreements = gr.Checkbox(label="Only disagreements", value=False, container=False, visible=False,
                                         elem_id="es-only-disagreements", scale=0, min_width=180)
        link_button = gr.Button("Copy link", size="sm", elem_id="es-copy-link", scale=0, min_width=110)
        examples_button = gr.Button("Examples", size="sm", scale=0, min_width=110)
        gr.HTML('<div class="es-counter"></div>', elem_id="es-counter", padding=False, scale=1)
    link_box = gr.Textbox(label="Link to this search (copied)", visible=False, interactive=False, elem_id="es-link")
    with gr.Accordion("Sides A and B", open=True, visible=False, elem_id="es-sides") as sides_row:
        sides: dict[SideName, list[Any]] = {}
        for side in SIDES:
            with gr.Row(equal_height=True):
                sides[side] = [
                    gr.Dropdown([(cls.label, name) for name, cls in RERANKERS.items()],
                                value=settings.rerank.reranker, label=f"{side} · reranker", scale=3, min_width=180),
                    gr.Dropdown(handlers.model_choices(), value=page.default_key, allow_custom_value=True,
                                label=f"{side} · model", scale=2, min_width=140),
                    gr.Textbox(label=f"{side} · instruction", scale=4, elem_id=f"es-{side.lower()}-instruction"),
                    gr.Number(value=page.budget_of(settings.rerank.reranker, page.default_key), minimum=1, step=1,
                              label=f"{side} · budget", scale=1, min_width=90),
                    gr.Checkbox(value=page.evidence_default(page.default_key), label="evidence", scale=1,
                                min_width=90)]
        side_note = gr.HTML(padding=False)
    with gr.Column(elem_id="es-examples") as examples_row:
        examples_box = gr.Dataset(components=[gr.HTML(visible=False)], label="Examples: one click runs it",
                                  **handlers.example_samples(default_corpus), type="index", samples_per_page=12)
    return CompareControls(compare=compare, only_disagreements=only_disagreements, link_button=link_button,
                           examples_button=examples_button, link_box=link_box, sides_row=sides_row, sides=sides,
                           side_note=side_note, examples_row=examples_row, examples_box=examples_box)


def wire_compare(app: gr.Blocks, handlers: ComparePage, controls: CompareControls, fields: PageFields, *,
                 concurrency: int) -> None:
    """Compare's, the links' and the examples' events."""
    page = handlers.page
    a_fields, b_fields = controls.sides["A"], controls.sides["B"]
    compare, sides_row, examples_row = controls.compare, controls.sides_row, controls.examples_row
    fields.compare_runs.change(
        handlers.compare, inputs=[fields.query, fields.method, fields.candidates, fields.sort_reranked,
                                  fields.corpus_name, *a_fields, *b_fields],
        outputs=[fields.summary, fields.results, fields.shown_run], api_visibility="private",
        concurrency_limit=concurrency, trigger_mode="multiple", show_progress="hidden")
    compare.input(handlers.open_compare, inputs=[compare, fields.reranker_kind, fields.selected, fields.instruction,
                                                 fields.budget, fields.evidence, a_fields[2]],
                  outputs=[sides_row, fields.instruction, *a_fields, *b_fields], api_visibility="private").then(
        None, inputs=compare, js=COMPARE_FOCUS_JS)
    compare.change(lambda on: gr.update(visible=on, value=False), inputs=compare,
                   outputs=controls.only_disagreements, api_visibility="private")
    controls.only_disagreements.change(None, inputs=controls.only_disagreements, js=FILTER_JS)
    for side_fields in (a_fields, b_fields):
        side_fields[0].input(page.budget_of, inputs=[side_fields[0], side_fields[1]], outputs=side_fields[3],
                             api_visibility="private")
        side_fields[1].input(handlers.memory_note, inputs=side_fields[1], outputs=controls.side_note,
                             api_visibility="private")
    link_setup = [fields.query, fields.instruction, compare, sides_row, *a_fields, *b_fields, fields.reranker_kind,
                  fields.budget, fields.evidence]
    app.load(handlers.from_link, inputs=[fields.reranker_kind, fields.selected, fields.budget, fields.evidence,
                                         fields.runs, fields.compare_runs],
             outputs=[*link_setup, fields.corpus_name, fields.selected, fields.summary, fields.runs,
                      fields.compare_runs, examples_row], api_visibility="private")
    controls.link_button.click(
        handlers.link, inputs=[fields.query, fields.corpus_name, compare, fields.reranker_kind, fields.selected,
                               fields.instruction, fields.budget, fields.evidence, *a_fields, *b_fields],
        outputs=controls.link_box, api_visibility="private").then(
        None, inputs=controls.link_box, outputs=controls.link_box, js=COPY_LINK_JS).then(
        lambda: gr.update(visible=True), outputs=controls.link_box, api_visibility="private")
    controls.examples_box.click(
        handlers.run_example, inputs=[controls.examples_box, fields.corpus_name, fields.reranker_kind,
                                      fields.selected, fields.budget, fields.evidence, fields.runs,
                                      fields.compare_runs],
        outputs=[*link_setup, fields.runs, fields.compare_runs, examples_row], api_visibility="private")
    controls.examples_button.click(lambda: gr.update(visible=True), outputs=examples_row, api_visibility="private")
    fields.corpus_name.change(handlers.examples_update, inputs=fields.corpus_name, outputs=controls.examples_box,
                              api_visibility="private")
