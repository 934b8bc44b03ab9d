"""The Gradio page: layout and wiring only; every decision is made in search/.

Typing a query shows the first-stage list at once; then every candidate's card streams the reranker's
reasoning and ends with its verdict and P(true), and the list re-sorts as judgments land.
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
from search.engines import EngineError
from search.engines.demo_model import DemoModelError
from search.engines.models import REGISTRY, Choice
from search.pipeline import open_reranker, rerank_candidates
from search.rerank.board import Board
from search.rerank.list_board import ListBoard
from search.rerank.rank1 import Rank1Reranker
from search.rerank.reasonrank import ReasonRankReranker, window_spans
from search.settings import RerankerKind, RerankSettings, RetrievalMethod
from search.uploads import MAX_UPLOAD_BYTES, UPLOAD_SUFFIXES, CorpusLibrary, UploadError, unpack_upload
from ui.annotate import AnnotationContext, build_annotate_tab, remembered_state
from ui.annotation_cards import ANNOTATION_CSS, KEYS_JS
from ui.cards import CARDS_CSS, KEEP_OPEN_JS, render_board, render_summary
from ui.evaluate import build_evaluate_tab
from ui.results import CSS as RESULTS_CSS
from ui.results import render_notice, render_ranking
from ui.window_cards import WINDOW_CSS, render_list_board, render_list_summary

MAX_QUERY_CHARS = 2_000
MAX_CANDIDATES = 50
UPDATE_EVERY_S = 0.3
"""Streaming updates are batched: the page gets at most about three per second, whatever the token rate."""
CSS = RESULTS_CSS + CARDS_CSS + WINDOW_CSS + ANNOTATION_CSS
JS = f"() => {{ ({KEEP_OPEN_JS})(); ({KEYS_JS})(); }}"


@dataclass(frozen=True, kw_only=True, slots=True)
class RerankerStatus:
    """What the page says about the reranker: the one that runs, or why none does."""

    reranker: Rank1Reranker | None
    choice: Choice | None
    problem: str = ""
    settings: RerankSettings = field(default_factory=RerankSettings)

    def notices(self) -> list[str]:
        if self.reranker is None or self.choice is None:
            return [f"The reasoning reranker is not available: {self.problem} The first-stage results still work."]
        notices = [f"Reranker: {self.reranker.engine.description}, reasoning budget {self.reranker.budget} tokens."]
        if self.choice.model.is_demo:
            notices.append(
                "Demo model: SmolLM2-135M runs offline so that every part of the page works, but it is not a "
                "trained reranker and its verdicts are not meaningful. For real rank1 judgments run on a GPU with "
                "vLLM (rank1-7b is chosen automatically there), or point --endpoints at an OpenAI-compatible "
                "server running a rank1 model."
            )
        notices.append(
            "Every P(true) is measured from the model's two verdict tokens. \"forced verdict\" marks a judgment "
            "where the model gave no verdict itself and one was read after closing its reasoning; a document "
            "with no measurable verdict is marked failed, never given a made-up score."
        )
        return notices


def _validate(query: str) -> str | None:
    if not query:
        return "Type a query to search."
    if len(query) > MAX_QUERY_CHARS:
        return f"The query is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}."
    return None


def _describe(library: CorpusLibrary, name: str) -> str:
    first_stage = library.get(name)
    return f"{name}: {len(first_stage.corpus.documents)} documents, {len(first_stage.passages)} passages."


def build_app(library: CorpusLibrary, status: RerankerStatus | None = None, *, top_k: int = 20,
              concurrency: int = 8, annotations: AnnotationStore | None = None, browser_secret: str = "",
              auth: bool = False, batches: Path | None = None) -> gr.Blocks:
    """The page over the corpora in ``library`` (the first is shown first; users can upload more), reranking
    with ``status.reranker`` when there is one; at most ``concurrency`` rerank runs at a time share the engine
    (more wait in Gradio's queue). With an ``annotations`` store it has the annotator workbench too, where the
    signed-in user is the annotator when ``auth`` is on. With ``batches`` (a folder of rerank-run outputs) it
    has the Evaluation tab."""
    default_corpus = library.names()[0]
    corpus = library.get(default_corpus).corpus
    status = status or RerankerStatus(reranker=None, choice=None, problem="none was configured.")
    exports = Path(tempfile.mkdtemp(prefix="explainable-search-"))
    # Rerankers by "model · engine"; engines are shared by the whole process, each session picks one.
    rerankers: dict[str, Rank1Reranker] = {}
    default_key = ""
    if status.reranker is not None and status.choice is not None:
        default_key = f"{status.choice.model.name or status.reranker.engine.model} · {status.reranker.engine.kind}"
        rerankers[default_key] = status.reranker
    reranker = status.reranker

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

    async def load_model(name: str, engine: str, progress: gr.Progress = gr.Progress()  # noqa: B008
                         ) -> tuple[Any, Any, str]:
        key = f"{name} · {engine}"
        if key not in rerankers:
            progress(0, desc=f"starting {engine} with {name}")
            settings = dataclasses.replace(status.settings, model=name, engine=engine)
            try:
                rerankers[key], _ = await asyncio.to_thread(open_reranker, settings)
            except (EngineError, DemoModelError) as error:
                return gr.update(), gr.update(), render_notice(f"Could not load {name} on {engine}: {error}")
        loaded = rerankers[key]
        demo = " Its verdicts are not meaningful (demo model)." if name == "demo" else ""
        return key, loaded.budget, render_notice(f"Reranking with {loaded.engine.description}.{demo}")

    # The run each session shows. Stop and a new query replace it, and a replaced run ends at its next event:
    # Gradio's cancel alone has been seen to miss a run that had only just started.
    current_runs: dict[str, Board | ListBoard | None] = {}

    def shown(board: Board | ListBoard, *, sorted_: bool, stopped: bool = False) -> tuple[str, str]:
        """The summary line and the results of either kind of run."""
        if isinstance(board, ListBoard):
            return (render_list_summary(board.summary(), stopped=stopped),
                    render_list_board(board, reranked=sorted_))
        return render_summary(board.summary(), stopped=stopped), render_board(board, by_probability=sorted_)

    def listwise(chosen: Rank1Reranker, budget: int) -> ReasonRankReranker:
        """ReasonRank on the engine of the session's model (a ReasonRank model, or the demo model)."""
        rerank_settings = status.settings
        return ReasonRankReranker(chosen.engine, model_key=chosen.model_key, budget=budget,
                                  window=rerank_settings.window, step=rerank_settings.step,
                                  passage_tokens=rerank_settings.passage_tokens, cache=chosen.cache)

    async def rerank(query: str, instruction: str, method: RetrievalMethod, candidates: int, budget: int,
                     by_probability: bool, corpus_name: str, kind: RerankerKind = "rank1",
                     reranker_key: str = default_key, request: gr.Request | None = None
                     ) -> AsyncIterator[tuple[str, str, Board | ListBoard | None, list[dict[str, Any]]]]:
        query, instruction = query.strip(), instruction.strip()
        problem = _validate(query)
        if problem:
            yield render_notice(problem), "", None, []
            return
        first_stage = library.get(corpus_name)
        found = rerank_candidates(first_stage, query, int(candidates), method)
        chosen = rerankers.get(reranker_key)
        board: Board | ListBoard
        if kind == "reasonrank":
            windows = window_spans(len(found), status.settings.window, status.settings.step)
            board = ListBoard(query=query, instruction=instruction, candidates=found, window_count=len(windows))
        else:
            board = Board(query=query, instruction=instruction, candidates=found)
        session = request.session_hash if request else ""
        current_runs[session] = board
        yield (*shown(board, sorted_=by_probability), board, board.rows())
        if chosen is None or not found:
            return
        last = time.monotonic()
        events = listwise(chosen, int(budget)).stream(query, found, instruction=instruction) if isinstance(
            board, ListBoard) else chosen.with_budget(int(budget)).stream(query, found, instruction=instruction)
        try:
            async for event in events:
                if current_runs.get(session) is not board:
                    return  # stopped, or replaced by a newer query
                board.apply(event)
                if time.monotonic() - last >= UPDATE_EVERY_S:
                    last = time.monotonic()
                    yield (*shown(board, sorted_=by_probability), board, board.rows())
        finally:
            await events.aclose()  # ends the engine requests
        yield (*shown(board, sorted_=by_probability), board, board.rows())

    def resort(board: Board | ListBoard | None, by_probability: bool) -> str:
        return shown(board, sorted_=by_probability)[1] if board else ""

    def stopped(board: Board | ListBoard | None, request: gr.Request | None = None) -> str:
        current_runs[request.session_hash if request else ""] = None
        return shown(board, sorted_=True, stopped=True)[0] if board else ""

    def export(board: Board | ListBoard | None) -> list[str]:
        if board is None:
            raise gr.Error("Run a query first; there is nothing to export yet.")
        folder = Path(tempfile.mkdtemp(dir=exports))
        run_file, traces = folder / "rerank.trec", folder / "rerank.jsonl"
        run_file.write_text(board.trec_run(), encoding="utf-8")
        traces.write_text(board.jsonl(), encoding="utf-8")
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
                candidates = gr.Slider(1, MAX_CANDIDATES, value=top_k, step=1, label="Candidates to rerank")
                budget = gr.Number(value=reranker.budget if reranker else 1, precision=0, minimum=1,
                                   label="Reasoning budget (tokens)")
                reranker_kind = gr.Radio([("rank1: pointwise, P(true) per document", "rank1"),
                                          ("ReasonRank: listwise windows, ranks only", "reasonrank")],
                                         value=status.settings.reranker, label="Reranker")
            with gr.Accordion("Model", open=False), gr.Row():
                current = default_key.split(" · ") if default_key else ["demo", "transformers"]
                model_name = gr.Dropdown(sorted({*REGISTRY, current[0]}), value=current[0], allow_custom_value=True,
                                         label="Model (registry name, hub id or local folder)", scale=2)
                engine_kind = gr.Radio(["vllm", "openai", "transformers"], value=current[1], label="Engine", scale=2)
                load_button = gr.Button("Load", scale=1)
            model_status = gr.HTML(render_notice(f"Reranking with {reranker.engine.description}.") if reranker else "")
            selected = gr.State(default_key)
            by_probability = gr.Checkbox(value=True, label="Sort by the reranker (off: first-stage order)")
            summary = gr.HTML()
            results = gr.HTML()
            board = gr.State(None)
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

        load_button.click(load_model, inputs=[model_name, engine_kind], outputs=[selected, budget, model_status],
                          api_visibility="private")
        run = runs.change(rerank, inputs=[query, instruction, method, candidates, budget, by_probability, corpus_name,
                                          reranker_kind, selected],
                          outputs=[summary, results, board, rows], api_name="rerank", concurrency_limit=concurrency,
                          trigger_mode="multiple")
        # A new query starts the next run at once; the run it replaces ends at its next event (current_runs).
        # Seen: cancelling the old run with Gradio's cancel at the same moment sometimes landed on the new run
        # instead (about one time in eight), which then never showed. Stop cancels both the run and a start still
        # on its way, so that a run cannot begin just after Stop.
        start = gr.on([query.submit, run_button.click], lambda count: count + 1, inputs=runs, outputs=runs,
                      api_visibility="private")
        stop_button.click(None, cancels=[run, start]).then(stopped, inputs=board, outputs=summary,
                                                           api_visibility="private")
        by_probability.change(resort, inputs=[board, by_probability], outputs=results)
        export_button.click(export, inputs=board, outputs=files)
        if annotations is not None and remembered is not None:
            with gr.Tab("Annotate", id="annotate"):
                context = AnnotationContext(store=annotations, library=library, reranker_for=rerankers.get,
                                            top_k=top_k)
                build_annotate_tab(app, context, selected, remembered, auth=auth, concurrency=concurrency)
        if batches is not None:
            with gr.Tab("Evaluation", id="evaluation"):
                build_evaluate_tab(app, batches)
    return app
