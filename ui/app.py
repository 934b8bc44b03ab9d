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
from pathlib import Path
from typing import Any, get_args

import gradio as gr

from search.annotation.store import AnnotationStore
from search.corpus import CorpusError
from search.engines import ENGINE_KINDS, EngineError
from search.engines.demo_model import DemoModelError
from search.models import REGISTRY
from search.pipeline import LoadedModel, open_model, open_reranker, rerank_candidates
from search.rerank import RERANKERS, Reranker, Run
from search.settings import RerankerName, RetrievalMethod, Settings
from search.uploads import MAX_UPLOAD_BYTES, UPLOAD_SUFFIXES, CorpusLibrary, UploadError, unpack_upload
from ui.annotate import AnnotationContext, build_annotate_tab, remembered_state
from ui.annotation_cards import ANNOTATION_CSS, KEYS_JS
from ui.cards import CARDS_CSS, KEEP_OPEN_JS
from ui.evaluate import build_evaluate_tab
from ui.renderers import RENDERERS
from ui.results import CSS as RESULTS_CSS
from ui.results import render_notice, render_ranking
from ui.window_cards import WINDOW_CSS

MAX_QUERY_CHARS = 2_000
MAX_CANDIDATES = 50
UPDATE_EVERY_S = 0.3
"""Streaming updates are batched: the page gets at most about three per second, whatever the token rate."""
CSS = RESULTS_CSS + CARDS_CSS + WINDOW_CSS + ANNOTATION_CSS
JS = f"() => {{ ({KEEP_OPEN_JS})(); ({KEYS_JS})(); }}"
MEASURED = (
    "Every score is measured, never made up: rank1's P(true) from its two verdict tokens; the assessor's grade "
    "distribution from its four grade tokens (UMBRELA's reference reads a digit from the text and silently gives "
    "0 when there is none; here the expected grade Σ g·p(g) ranks); ReasonRank gives ranks only, read from its "
    "answer, never from digits in its reasoning. \"forced\" marks a judgment the model did not give on its own, "
    "read in one extra step after closing its reasoning; a document with nothing measurable is marked failed."
)


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelStatus:
    """What the page says about the model the rerankers run on: the one loaded, or why none is."""

    loaded: LoadedModel | None
    problem: str = ""
    settings: Settings = field(default_factory=Settings)

    def notices(self) -> list[str]:
        if self.loaded is None:
            return [f"The reasoning reranker is not available: {self.problem} The first-stage results still work."]
        notices = [f"Model: {self.loaded.engine.description}."]
        if self.loaded.model.is_demo:
            notices.append(
                "Demo model: SmolLM2-135M runs offline so that every part of the page works, but it is not a "
                "trained reranker and its verdicts are not meaningful. For real rank1 judgments run on a GPU with "
                "vLLM (rank1-7b is chosen automatically there), or point --endpoints at an OpenAI-compatible "
                "server running a rank1 model."
            )
        notices.append(MEASURED)
        return notices


def model_key(loaded: LoadedModel) -> str:
    """How the Model panel names a loaded model: "name · engine"."""
    return f"{loaded.model.name or loaded.engine.model} · {loaded.engine.kind}"


def _validate(query: str) -> str | None:
    if not query:
        return "Type a query to search."
    if len(query) > MAX_QUERY_CHARS:
        return f"The query is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}."
    return None


def _describe(library: CorpusLibrary, name: str) -> str:
    first_stage = library.get(name)
    return f"{name}: {len(first_stage.corpus.documents)} documents, {len(first_stage.passages)} passages."


def build_app(library: CorpusLibrary, status: ModelStatus | None = None, *, concurrency: int = 8,
              annotations: AnnotationStore | None = None, browser_secret: str = "", auth: bool = False,
              batches: Path | None = None) -> gr.Blocks:
    """The page over the corpora in ``library`` (the first is shown first; users can upload more), reranking on
    ``status.loaded`` when there is a model; at most ``concurrency`` rerank runs at a time share the engine (more
    wait in Gradio's queue). With an ``annotations`` store it has the annotator workbench too, where the signed-in
    user is the annotator when ``auth`` is on. With ``batches`` (a folder of rerank-run outputs) it has the
    Evaluation tab."""
    default_corpus = library.names()[0]
    corpus = library.get(default_corpus).corpus
    status = status or ModelStatus(loaded=None, problem="none was configured.")
    settings = status.settings
    exports = Path(tempfile.mkdtemp(prefix="explainable-search-"))
    # Loaded models by "model · engine"; engines are shared by the whole process, each session picks one and
    # builds any reranker on it.
    models: dict[str, LoadedModel] = {}
    default_key = ""
    if status.loaded is not None:
        default_key = model_key(status.loaded)
        models[default_key] = status.loaded

    def budget_of(kind: RerankerName, key: str) -> int:
        """The budget a run of ``kind`` on the model ``key`` gets unless the user changes it."""
        loaded = models.get(key)
        return settings.rerank.budget or (loaded.model.budget if loaded else 0) or RERANKERS[kind].defaults.budget

    def reranker_for(key: str, kind: RerankerName, budget: int | None = None) -> Reranker | None:
        """The reranker ``kind`` on the session's model ``key`` (None when no model is loaded)."""
        loaded = models.get(key)
        if loaded is None:
            return None
        chosen = dataclasses.replace(settings.rerank, reranker=kind, budget=budget or settings.rerank.budget)
        return open_reranker(chosen, loaded)

    def search(query: str, method: RetrievalMethod, k: int, corpus_name: str) -> str:
        query = query.strip()
        problem = _validate(query)
        if problem:
            return render_notice(problem)
        return render_ranking(library.get(corpus_name).search(query, int(k), method))

    def upload(file: str | None, progress: gr.Progress = gr.Progress()) -> tuple[Any, str]:  # noqa: B008
        if not file:
            return gr.update(), ""
        path = Path(file)
        unpacked = Path(tempfile.mkdtemp(dir=exports))
        try:
            corpus_path = unpack_upload(path, unpacked)
            name = library.open(corpus_path, path.name,
                                lambda task, done, total: progress(done / max(total, 1), desc=task))
        except (UploadError, CorpusError) as error:
            # Name the user's file, not where the server keeps it.
            message = str(error).replace(f"{path.parent}/", "").replace(f"{unpacked}/", "")
            return gr.update(), render_notice(f"Upload not loaded: {message}")
        return gr.update(choices=library.names(), value=name), render_notice(f"Loaded {_describe(library, name)}")

    async def load_model(name: str, engine: str, kind: RerankerName, progress: gr.Progress = gr.Progress()  # noqa: B008
                         ) -> tuple[Any, Any, str]:
        key = f"{name} · {engine}"
        if key not in models:
            progress(0, desc=f"starting {engine} with {name}")
            serving = dataclasses.replace(settings.serving, model=name, engine=engine)
            try:
                models[key] = await asyncio.to_thread(open_model, serving, kind)
            except (EngineError, DemoModelError) as error:
                return gr.update(), gr.update(), render_notice(f"Could not load {name} on {engine}: {error}")
        loaded = models[key]
        demo = " Its verdicts are not meaningful (demo model)." if loaded.model.is_demo else ""
        return key, budget_of(kind, key), render_notice(f"Reranking with {loaded.engine.description}.{demo}")

    # The run each session shows. Stop and a new query replace it, and a replaced run ends at its next event:
    # Gradio's cancel alone has been seen to miss a run that had only just started.
    current_runs: dict[str, Run | None] = {}

    def shown(run: Run, *, reranked: bool, stopped: bool = False) -> tuple[str, str]:
        """The summary line and the results, as the run's reranker renders them."""
        renderer = RENDERERS[run.reranker]
        return renderer.summary(run.summary(), stopped), renderer.cards(run, reranked)

    async def rerank(query: str, instruction: str, method: RetrievalMethod, candidates: int, budget: int,
                     reranked: bool, corpus_name: str, kind: RerankerName = "rank1", key: str = default_key,
                     request: gr.Request | None = None
                     ) -> AsyncIterator[tuple[str, str, Run | None, list[dict[str, Any]]]]:
        query, instruction = query.strip(), instruction.strip()
        problem = _validate(query)
        if problem:
            yield render_notice(problem), "", None, []
            return
        found = rerank_candidates(library.get(corpus_name), query, int(candidates), method)
        try:
            reranker = reranker_for(key, kind, int(budget))
        except EngineError as error:
            yield render_notice(str(error)), "", None, []
            return
        run = RERANKERS[kind].new_run(query, found, instruction=instruction, settings=settings.rerank)
        session = request.session_hash if request else ""
        current_runs[session] = run
        yield (*shown(run, reranked=reranked), run, run.rows())
        if reranker is None or not found:
            return
        last = time.monotonic()
        events = reranker.stream(query, found, instruction=instruction)
        try:
            async for event in events:
                if current_runs.get(session) is not run:
                    return  # stopped, or replaced by a newer query
                run.apply(event)
                if time.monotonic() - last >= UPDATE_EVERY_S:
                    last = time.monotonic()
                    yield (*shown(run, reranked=reranked), run, run.rows())
        finally:
            await events.aclose()  # ends the engine requests
        yield (*shown(run, reranked=reranked), run, run.rows())

    def resort(run: Run | None, reranked: bool) -> str:
        return shown(run, reranked=reranked)[1] if run else ""

    def stopped(run: Run | None, request: gr.Request | None = None) -> str:
        current_runs[request.session_hash if request else ""] = None
        return shown(run, reranked=True, stopped=True)[0] if run else ""

    def export(run: Run | None) -> list[str]:
        if run is None:
            raise gr.Error("Run a query first; there is nothing to export yet.")
        folder = Path(tempfile.mkdtemp(dir=exports))
        run_file, traces = folder / "rerank.trec", folder / "rerank.jsonl"
        run_file.write_text(run.trec_run(), encoding="utf-8")
        traces.write_text(run.jsonl(), encoding="utf-8")
        return [str(run_file), str(traces)]

    with gr.Blocks(title="Explainable Search") as app:
        gr.Markdown("# Explainable Search")
        gr.HTML("".join(render_notice(text) for text in status.notices()))
        remembered = remembered_state(browser_secret) if annotations is not None else None
        with gr.Tab("Search", id="search"):
            with gr.Row():
                corpus_name = gr.Dropdown(library.names(), value=default_corpus, label="Corpus", scale=2)
                corpus_file = gr.File(label=f"Add a corpus ({', '.join(UPLOAD_SUFFIXES)}; up to "
                                            f"{MAX_UPLOAD_BYTES // 2**20} MB)", file_types=list(UPLOAD_SUFFIXES),
                                      scale=3)
            corpus_status = gr.HTML(render_notice(_describe(library, default_corpus)))
            with gr.Row():
                query = gr.Textbox(label="Query", placeholder="which migraine treatments do not involve medication?",
                                   scale=5, max_length=MAX_QUERY_CHARS)
                run_button = gr.Button("Search and rerank", variant="primary", scale=1)
                stop_button = gr.Button("Stop", variant="stop", scale=1)
            instruction = gr.Textbox(label="Instruction (optional): what counts as relevant", lines=1,
                                     max_length=MAX_QUERY_CHARS)
            with gr.Accordion("Settings", open=False), gr.Row():
                method = gr.Radio(list(get_args(RetrievalMethod)), value=library.get(default_corpus).method,
                                  label="First stage")
                candidates = gr.Slider(1, MAX_CANDIDATES, value=settings.rerank.top_k, step=1,
                                       label="Candidates to rerank")
                budget = gr.Number(value=budget_of(settings.rerank.reranker, default_key), precision=0, minimum=1,
                                   label="Reasoning budget (tokens)")
                reranker_kind = gr.Radio([(cls.label, name) for name, cls in RERANKERS.items()],
                                         value=settings.rerank.reranker, label="Reranker")
            with gr.Accordion("Model", open=False), gr.Row():
                current = default_key.split(" · ") if default_key else ["demo", "transformers"]
                model_name = gr.Dropdown(sorted({*REGISTRY, current[0]}), value=current[0], allow_custom_value=True,
                                         label="Model (registry name, hub id or local folder)", scale=2)
                engine_kind = gr.Radio(list(ENGINE_KINDS), value=current[1], label="Engine", scale=2)
                load_button = gr.Button("Load", scale=1)
            model_status = gr.HTML(render_notice(f"Reranking with {status.loaded.engine.description}.")
                                   if status.loaded else "")
            selected = gr.State(default_key)
            sort_reranked = gr.Checkbox(value=True, label="Sort by the reranker (off: first-stage order)")
            summary = gr.HTML()
            results = gr.HTML()
            shown_run = gr.State(None)
            rows = gr.JSON(visible=False)
            with gr.Row():
                export_button = gr.Button("Export TREC run and JSONL traces", size="sm")
                files = gr.File(label="Exports", file_count="multiple", interactive=False)
            examples = [item.text for item in corpus.queries[:6]]
            if examples:
                gr.Examples(examples, inputs=query)
            with gr.Row(visible=False):
                k = gr.Number(value=10, precision=0)
                first_stage_only = gr.HTML()
                search_button = gr.Button()
                runs = gr.Number(value=0, precision=0)
        search_button.click(search, inputs=[query, method, k, corpus_name], outputs=first_stage_only,
                            api_name="search")
        corpus_file.upload(upload, inputs=corpus_file, outputs=[corpus_name, corpus_status], api_visibility="private")
        corpus_name.change(lambda name: render_notice(_describe(library, name)), inputs=corpus_name,
                           outputs=corpus_status, api_visibility="private")

        load_button.click(load_model, inputs=[model_name, engine_kind, reranker_kind],
                          outputs=[selected, budget, model_status], api_visibility="private")
        reranker_kind.change(budget_of, inputs=[reranker_kind, selected], outputs=budget, api_visibility="private")
        run = runs.change(rerank, inputs=[query, instruction, method, candidates, budget, sort_reranked, corpus_name,
                                          reranker_kind, selected],
                          outputs=[summary, results, shown_run, rows], api_name="rerank",
                          concurrency_limit=concurrency, trigger_mode="multiple")
        # A new query starts the next run at once; the run it replaces ends at its next event (current_runs).
        # Seen: cancelling the old run with Gradio's cancel at the same moment sometimes landed on the new run
        # instead (about one time in eight), which then never showed. Stop cancels both the run and a start still
        # on its way, so that a run cannot begin just after Stop.
        start = gr.on([query.submit, run_button.click], lambda count: count + 1, inputs=runs, outputs=runs,
                      api_visibility="private")
        stop_button.click(None, cancels=[run, start]).then(stopped, inputs=shown_run, outputs=summary,
                                                           api_visibility="private")
        sort_reranked.change(resort, inputs=[shown_run, sort_reranked], outputs=results)
        export_button.click(export, inputs=shown_run, outputs=files)
        if annotations is not None and remembered is not None:
            with gr.Tab("Annotate", id="annotate"):
                context = AnnotationContext(store=annotations, library=library, reranker_for=reranker_for,
                                            top_k=settings.rerank.top_k)
                build_annotate_tab(app, context, selected, reranker_kind, remembered, auth=auth,
                                   concurrency=concurrency)
        if batches is not None:
            with gr.Tab("Evaluation", id="evaluation"):
                build_evaluate_tab(app, batches)
    return app
