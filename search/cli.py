"""The command line: ``python -m search index | query | eval | rerank | compare | rerank-run | serve``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, get_args

from search.batch import (
    BatchInputs,
    BatchProgress,
    BatchSpec,
    BatchStore,
    BatchStoreError,
    load_batch,
    run_batch,
    view_batch,
    write_outputs,
)
from search.batch.report import REPORT_FILE
from search.batch.store import STATE_FILE
from search.cluster import ClusterError, connect
from search.compare import SIDES, Comparison, Side, judgments_for, side_values, stream_pair
from search.corpus import NOT_REGULAR, Corpus, CorpusError, Qrels, load_corpus
from search.engines import EngineError, close_engines, stop_on_sigterm
from search.engines.demo_model import DemoModelError
from search.evaluation import evaluate, read_qrels, retrieve_run
from search.irds import irds_id
from search.pipeline import (
    Choice,
    LoadedModel,
    build_reranker,
    choose,
    memory_need,
    open_model,
    planned_model_key,
    reranker_budget,
)
from search.progress import console_progress
from search.rerank.base import Reranker
from search.rerank.cache import JudgmentCache
from search.rerank.events import event_to_json
from search.rerank.registry import RERANKERS, SETTING_CHOICES
from search.retrieval.first_stage import FirstStage, open_first_stage
from search.retrieval.ranking import Candidate
from search.settings import (
    ENV_PREFIX,
    CorpusSettings,
    RetrievalMethod,
    Settings,
    SettingsError,
    add_arguments,
    from_arguments,
)
from search.trec import read_run, write_trec_run

METHODS: tuple[RetrievalMethod, ...] = get_args(RetrievalMethod)
BATCH_TOP_K = 100
"""rerank-run's depth unless --top-k (or its variable) says otherwise: the published rank1 runs rerank 100."""
TOP_K_VARIABLE = f"{ENV_PREFIX}TOP_K"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _queries_or_qrels(text: str) -> Path:
    """A file that must exist, or an ir_datasets collection (``irds:<id>``, read when it is loaded)."""
    return Path(text) if irds_id(text) is not None else _existing_file(text)


def _existing_file(text: str) -> Path:
    """A file that must exist: refused as a usage error (exit 2, one line) before anything starts."""
    path = Path(text)
    if not path.is_file():
        why = "is a folder, not a file" if path.is_dir() else NOT_REGULAR if path.exists() else "no such file"
        raise argparse.ArgumentTypeError(f"{text}: {why}")
    return path


def _report_load(corpus: Corpus, passage_count: int) -> None:
    for problem in corpus.problems:
        print(f"warning: {problem}", file=sys.stderr)
    dropped = f", {corpus.dropped} record(s) dropped" if corpus.dropped else ""
    print(f"{corpus.source}: {len(corpus.documents)} documents, {passage_count} passages{dropped}", file=sys.stderr)


def _open(settings: Settings, methods: Sequence[RetrievalMethod]) -> FirstStage:
    first_stage = open_first_stage(settings, methods, console_progress())
    _report_load(first_stage.corpus, len(first_stage.passages))
    return first_stage


def _candidate_json(candidate: Candidate) -> dict:
    passage = candidate.passage
    return {
        "rank": candidate.rank, "score": candidate.score, "passage_id": passage.passage_id, "doc_id": passage.doc_id,
        "title": passage.title, "text": passage.text,
        "provenance": {stage: {"rank": hit.rank, "score": hit.score} for stage, hit in candidate.provenance.items()},
    }


def _candidate_line(candidate: Candidate) -> str:
    stages = "  ".join(f"{stage} #{hit.rank} ({hit.score:.3f})" for stage, hit in candidate.provenance.items())
    snippet = " ".join(candidate.passage.contents.split())[:100]
    return f"{candidate.rank:>3}. {candidate.passage.passage_id}  [{stages}]\n     {snippet}"


def command_index(args: argparse.Namespace, settings: Settings) -> int:
    first_stage = _open(settings, ("bm25", "dense"))
    print(f"indexes ready in {settings.index_dir} ({', '.join(first_stage.retrievers)})")
    return 0


def command_query(args: argparse.Namespace, settings: Settings) -> int:
    first_stage = _open(settings, (settings.fusion.method,))
    ranking = first_stage.search(args.text, args.k)
    for candidate in ranking.candidates:
        print(json.dumps(_candidate_json(candidate), ensure_ascii=False) if args.json else _candidate_line(candidate))
    if not ranking.candidates and not args.json:
        print("no document matches this query", file=sys.stderr)
    return 0


def command_eval_runs(args: argparse.Namespace) -> int:
    """Any run files, measured on the same judged queries."""
    if args.qrels is None and args.dataset is None:
        raise CorpusError("eval --run needs judgments: give --qrels FILE or a BEIR folder with qrels")
    qrels = read_qrels(args.qrels) if args.qrels else load_corpus(CorpusSettings(corpus=args.dataset)).qrels
    if not qrels:
        raise CorpusError(f"{args.dataset}: no qrels.tsv (or qrels/test.tsv); give --qrels FILE")
    width = max(len(str(path)) for path in args.run)
    print(f"{'run':<{width}} {'nDCG@10':>8} {'Recall@100':>11} {'MRR@10':>8}   ({len(qrels)} judged queries)")
    for path in args.run:
        scores = evaluate(qrels, read_run(path))
        print(f"{path!s:<{width}} {scores['nDCG@10']:>8.4f} {scores['Recall@100']:>11.4f} {scores['MRR@10']:>8.4f}")
    return 0


def command_eval(args: argparse.Namespace, settings: Settings) -> int:
    if args.run:
        return command_eval_runs(args)
    if args.dataset is None:
        raise CorpusError("eval needs a BEIR folder (to evaluate the first stages) or --run FILE")
    settings = settings.replace(corpus=args.dataset)
    methods = (args.method,) if args.method else METHODS
    first_stage = _open(settings, methods)
    corpus = first_stage.corpus
    queries = [query for query in corpus.queries if query.query_id in corpus.qrels]
    if not queries:
        raise CorpusError(f"{args.dataset}: needs queries.jsonl and qrels.tsv (or qrels/test.tsv) with matching ids")
    print(f"{'method':<8} {'nDCG@10':>8} {'Recall@100':>11} {'MRR@10':>8}   ({len(queries)} judged queries)")
    for method in methods:
        run = retrieve_run(first_stage.retrievers[method], queries, args.k)
        scores = evaluate(corpus.qrels, run)
        print(f"{method:<8} {scores['nDCG@10']:>8.4f} {scores['Recall@100']:>11.4f} {scores['MRR@10']:>8.4f}")
        if args.run_out and method == (args.method or settings.fusion.method):
            write_trec_run(run, args.run_out, tag=f"explainable-search-{method}")
            print(f"{method} run written to {args.run_out}", file=sys.stderr)
    return 0


def _open_model(settings: Settings, choice: Choice | None = None) -> LoadedModel:
    """The engine the settings choose, saying what was chosen."""
    choice = choice or choose(settings.serving, settings.rerank.reranker)
    for note in choice.notes:
        print(f"model: {note}", file=sys.stderr)
    print(f"starting {choice.engine} with {choice.model.name or 'the served model'} …", file=sys.stderr)
    return open_model(settings.serving, settings.rerank.reranker, choice)


def _open_reranker(settings: Settings, cache: JudgmentCache | None = None, choice: Choice | None = None
                   ) -> Reranker:
    """The reranker the settings name on the engine they choose, saying what was chosen."""
    return build_reranker(settings.rerank, _open_model(settings, choice), cache)


def command_rerank(args: argparse.Namespace, settings: Settings) -> int:
    """Stream the reranker's events (one line for each worth one, or every event as JSON), then the ranking."""
    first_stage = _open(settings, (settings.fusion.method,))
    candidates = first_stage.search(args.query, settings.rerank.top_k).candidates
    reranker = _open_reranker(settings)
    print(f"reranking {len(candidates)} documents with {reranker.describe()}", file=sys.stderr)
    run = reranker.start_run(args.query, candidates, instruction=args.instruction)

    async def watch() -> None:
        async for event in reranker.stream(args.query, candidates, instruction=args.instruction,
                                           template=args.template):
            run.apply(event)
            line = json.dumps(event_to_json(event), ensure_ascii=False) if args.jsonl else run.describe(event)
            if line is not None:
                print(line, flush=True)

    try:
        asyncio.run(watch())
    finally:
        close_engines()
    if not args.jsonl:
        print(f"\nreranked by {run.score_name}:")
        for position, candidate in enumerate(run.ordered(), start=1):
            score = run.score(candidate.passage.doc_id)
            shown = f"{score:.3f}" if score is not None else "no score"
            print(f"{position:>3}. (first stage #{candidate.rank:>3}) {candidate.passage.doc_id}  {shown}")
    return 0


def _compare_sides(args: argparse.Namespace, settings: Settings) -> tuple[Side, Side]:
    a = Side.of(settings.rerank).with_text(side_values(args.a, flag="--a"), source="--a ")
    return a, a.with_text(side_values(args.b, flag="--b"), source="--b ")


def _side_model(models: dict[str, LoadedModel], settings: Settings, side: Side) -> LoadedModel:
    """The side's model: one already open when the name matches, else opened beside them (when it fits)."""
    name = side.model or settings.serving.model
    if name not in models:
        if models:
            need = memory_need(name, choose(settings.serving).engine)
            print(f"model: {need.describe(name)}", file=sys.stderr)
            if not need.fits:
                raise EngineError(need.describe(name))
        models[name] = _open_model(settings.replace(model=name, reranker=side.reranker))
    return models[name]


def command_compare(args: argparse.Namespace, settings: Settings) -> int:
    """Two judges on the same candidates at once: each side's events as they land (or every event as JSON with its
    side), then both rankings side by side, the disagreements with both reasonings, and the pair's numbers."""
    first_stage = _open(settings, (settings.fusion.method,))
    candidates = first_stage.search(args.query, settings.rerank.top_k).candidates
    a, b = _compare_sides(args, settings)
    models: dict[str, LoadedModel] = {}
    rerankers = {side: build_reranker(chosen.rerank_settings(settings.rerank), _side_model(models, settings, chosen))
                 for side, chosen in zip(SIDES, (a, b), strict=True)}
    shared = a == b
    for side, chosen in zip(SIDES, (a, b), strict=True):
        instruction = f", instruction {chosen.instruction!r}" if chosen.instruction else ""
        same = " (A's settings: A's judgments, reasoned once)" if shared and side == "B" else ""
        print(f"{side}: {rerankers[side].describe()}{instruction}{same}", file=sys.stderr)
    pair = Comparison(rerankers["A"].start_run(args.query, candidates, instruction=a.instruction),
                      rerankers["B"].start_run(args.query, candidates, instruction=b.instruction), shared=shared,
                      judged=judgments_for(first_stage.corpus, args.query))

    async def watch() -> None:
        async with contextlib.aclosing(stream_pair(rerankers["A"], None if shared else rerankers["B"], args.query,
                                                   candidates, instructions=(a.instruction, b.instruction))) as events:
            async for side, event in events:
                pair.apply(side, event)
                line = (json.dumps({"side": side, **event_to_json(event)}, ensure_ascii=False) if args.jsonl
                        else pair.runs[side].describe(event))
                if line is not None and not (shared and side == "B" and not args.jsonl):
                    print(line if args.jsonl else f"{side} │ {line}", flush=True)

    asyncio.run(watch())
    if not args.jsonl:
        print(render_comparison(pair))
    return 0


def render_comparison(pair: Comparison) -> str:
    """Both rankings side by side, each disagreement with both sides' reasoning, and the pair's numbers."""
    runs = pair.runs
    orders = {side: run.ordered() for side, run in runs.items()}
    width = 44
    lines = ["", "".join(f"{side}: {run.reranker} by {run.score_name}"[:width].ljust(width + 6)
                         for side, run in runs.items())]
    for place in range(len(pair.candidates)):
        cells = []
        for side, run in runs.items():
            doc_id = orders[side][place].passage.doc_id
            score = run.score(doc_id)
            cells.append(f"{place + 1:>3}. {doc_id[:width - 16]:<{width - 16}} "
                         f"{f'{score:.3f}' if score is not None else 'no score':>8}".ljust(width + 6))
        lines.append("".join(cells).rstrip())
    disagreements = pair.disagreements()
    lines.append(f"\n{len(disagreements)} disagreement{'s' if len(disagreements) != 1 else ''}")
    for doc_id, reason in disagreements.items():
        lines.append(f"\n{doc_id}: {reason}")
        lines += [f"  {side}: {' '.join(run.reasoning_about(doc_id).split()) or '(no reasoning)'}"
                  for side, run in runs.items()]
    stats = pair.stats()
    tau = "n/a" if stats.kendall_tau is None else f"{stats.kendall_tau:.3f}"
    ndcg = "" if stats.ndcg is None else " · nDCG@10 " + ", ".join(
        f"{name} {'n/a' if value is None else f'{value:.3f}'}" for name, value in stats.ndcg.items())
    rbo = "n/a" if stats.rbo is None else f"{stats.rbo:.3f}"
    lines.append(f"\npair: Kendall's tau {tau} · RBO {rbo} · {stats.disagreements} disagreements{ndcg}")
    return "\n".join(lines)


def _batch_bar() -> Callable[[BatchProgress], None]:
    """A tqdm bar over documents (its rate and ETA count only this process's work) with queries, failures
    and tokens/s beside it."""
    from tqdm import tqdm

    bar: list[tqdm] = []

    def report(progress: BatchProgress) -> None:
        if not bar:
            bar.append(tqdm(total=progress.documents, initial=progress.documents_done, desc="reranking", unit="doc",
                            dynamic_ncols=True))
        bar[0].set_postfix_str(f"queries {progress.queries_done}/{progress.queries}, "
                               f"{progress.tokens_per_s:.0f} tok/s" + (f", {progress.failed} failed"
                                                                        if progress.failed else ""), refresh=False)
        bar[0].update(progress.documents_done - bar[0].n)
        if progress.documents_done + progress.failed >= progress.documents:
            bar[0].refresh()

    return report


def command_rerank_run(args: argparse.Namespace, settings: Settings) -> int:
    """Rerank every query of a run file into ``--out``, resuming whatever an earlier run there left."""
    if args.top_k is None and not os.environ.get(TOP_K_VARIABLE):
        settings = settings.replace(top_k=BATCH_TOP_K)
    if args.out.exists() and not args.out.is_dir():
        raise BatchStoreError(f"--out {args.out}: is a file, not a folder")
    corpus = load_corpus(settings.loading)
    for problem in corpus.problems:
        print(f"warning: {problem}", file=sys.stderr)
    inputs = load_batch(corpus, args.queries, args.run, settings.rerank.top_k, skip_bad=settings.loading.skip_bad)
    for problem in inputs.problems:
        print(f"left out: {problem}", file=sys.stderr)
    qrels = read_qrels(args.qrels) if args.qrels else (corpus.qrels or None)
    print(f"{len(inputs.queries)} queries, {inputs.document_count} documents to rerank", file=sys.stderr)
    own_queries = corpus.source if irds_id(corpus.source) is not None else corpus.source / "queries.jsonl"
    sources = {"corpus": str(corpus.source), "queries": str(args.queries or own_queries), "run": str(args.run)}
    try:
        if settings.cluster.ray:
            store, progress = _rerank_run_on_ray(args, settings, inputs, sources, qrels)
        else:
            store, progress = _rerank_run_here(args, settings, corpus, inputs, sources, qrels)
    except KeyboardInterrupt:
        print("\ninterrupted: every finished judgment is kept; run the same command to resume", file=sys.stderr)
        return 130
    view = view_batch(store)
    written = write_outputs(args.out, view, store.qrels())
    print((args.out / REPORT_FILE).read_text(encoding="utf-8"))
    print(f"judged {progress.documents_done - progress.resumed} documents in this run ({progress.resumed} judged "
          f"before, {progress.replayed} outcomes replayed from the cache)")
    print("written: " + ", ".join(path.name for path in written), file=sys.stderr)
    return 1 if view.failed else 0


def _rerank_run_here(args: argparse.Namespace, settings: Settings, corpus: Corpus, inputs: BatchInputs,
                     sources: dict[str, str], qrels: Qrels | None) -> tuple[BatchStore, BatchProgress]:
    """The batch on this machine's engine."""
    rerank = settings.rerank
    choice = choose(settings.serving, rerank.reranker)
    model_key = planned_model_key(settings.serving, choice)
    if model_key is not None:  # else no server answers, and the engine says so
        budget = reranker_budget(rerank, choice.model, on_cpu=choice.on_cpu)
        planned = BatchSpec.planned(inputs.digest(), rerank, model=model_key, budget=budget)
        BatchStore.refuse_other(args.out, planned, lambda top_k: load_batch(
            corpus, args.queries, args.run, top_k, skip_bad=settings.loading.skip_bad).digest())
    args.out.mkdir(parents=True, exist_ok=True)
    reranker = _open_reranker(settings, JudgmentCache(args.out / STATE_FILE), choice)
    store = BatchStore.open(args.out, BatchSpec.of(inputs.digest(), rerank, reranker), inputs, sources=sources,
                            qrels=qrels)
    concurrency = rerank.concurrency or reranker.engine.capacity
    print(f"reranking with {reranker.describe()}, {concurrency} requests at once", file=sys.stderr)
    try:
        progress = asyncio.run(run_batch(inputs, store, reranker, concurrency=concurrency, report=_batch_bar()))
        for line in reranker.engine.report():
            print(line)
    finally:
        close_engines()
    return store, progress


def _rerank_run_on_ray(args: argparse.Namespace, settings: Settings, inputs: BatchInputs, sources: dict[str, str],
                       qrels: Qrels | None) -> tuple[BatchStore, BatchProgress]:
    """The batch on a Ray cluster's workers (search/batch/cluster.py); the store and outputs stay here."""
    connect(settings.cluster.ray)  # Ray is there, and so is the cluster
    from search.batch.cluster import run_batch_on_ray, start_workers, stop_workers

    workers = start_workers(settings.replace(judgment_cache=False))  # the batch's store keeps what they send
    try:
        first = workers[0].spec
        args.out.mkdir(parents=True, exist_ok=True)
        spec = BatchSpec.planned(inputs.digest(), settings.rerank, model=first.model_key, budget=first.budget)
        store = BatchStore.open(args.out, spec, inputs, sources=sources, qrels=qrels)
        where = ", ".join(f"pid {worker.spec.pid} on {worker.spec.node}" for worker in workers)
        print(f"reranking on Ray: {len(workers)} workers ({where}), each {first.description}, "
              f"{first.concurrency} requests at once", file=sys.stderr)
        progress = asyncio.run(run_batch_on_ray(inputs, store, settings, workers, report=_batch_bar(), lost=lambda
                                                retry: print(f"\nretrying {retry.describe()}", file=sys.stderr)))
    finally:
        stop_workers(workers)
    return store, progress


def command_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The rerank API alone (no page), for RAG back ends, until interrupted."""
    import uvicorn

    from search.api import ReasoningReranker
    from search.server import ApiState, headless_app

    loaded = _open_model(settings)
    if (waiting := loaded.engine.waiting()) is not None:
        print(f"warning: {waiting}; requests get 503 until a server answers", file=sys.stderr)
    else:
        build_reranker(settings.rerank, loaded)  # refuses a budget the context cannot hold
    state = ApiState(reranker=ReasoningReranker(loaded, settings.rerank), limits=settings.api,
                     slots=asyncio.Semaphore(args.concurrency))
    print(f"serving {loaded.model.name or loaded.engine.model} ({settings.rerank.reranker} on "
          f"{loaded.engine.description}) at http://{args.host}:{args.port}/v1/rerank"
          + (", asking for the API key" if settings.api.api_key else ""), file=sys.stderr, flush=True)
    # Each request's line says the settings it reached us with (search.server.routes), in uvicorn's format.
    logs = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    logs["loggers"]["search"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    server = uvicorn.Server(uvicorn.Config(headless_app(state), host=args.host, port=args.port, log_config=logs,
                                           timeout_graceful_shutdown=5))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops on SIGINT and SIGTERM, then passes them on
        server.run()
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the option and what is wrong with it), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists every option)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m search",
        description="Explainable Search: hybrid first-stage retrieval (BM25 + dense, fused), reasoning "
                    f"reranking ({', '.join(RERANKERS)}), and evaluation.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="build (or load) the BM25 and dense indexes of a corpus")
    add_arguments(index, choices=SETTING_CHOICES)
    index.set_defaults(handler=command_index)

    query = commands.add_parser(
        "query", help="search a corpus and print its top documents (each by its best passage) with provenance")
    query.add_argument("text", help="the query")
    query.add_argument("-k", type=_positive, default=10, help="how many documents to print (default 10)")
    query.add_argument("--json", action="store_true",
                       help="one JSON object per document (its best passage) instead of text")
    add_arguments(query, choices=SETTING_CHOICES)
    query.set_defaults(handler=command_query)

    evaluation = commands.add_parser(
        "eval", help="nDCG@10, Recall@100 and MRR@10 of BM25, dense and hybrid on a BEIR folder, or of any run files",
        description="Without --run, the first stages are evaluated (all three without --method). With --run, the "
                    "given TREC run files are measured against --qrels (or the BEIR folder's qrels).",
    )
    evaluation.add_argument("dataset", type=Path, nargs="?", metavar="BEIR_DIR",
                            help="folder with corpus, queries and qrels")
    evaluation.add_argument("--run", type=_existing_file, action="append", metavar="FILE",
                            help="a TREC run file to measure (repeat to compare several)")
    evaluation.add_argument("--qrels", type=_queries_or_qrels, metavar="FILE",
                            help="judgments for --run (BEIR TSV, TREC qrels, or irds:<ir_datasets id>)")
    evaluation.add_argument("--run-out", type=Path, metavar="FILE",
                            help="write the TREC run (top 100 per query) of --method (default: hybrid)")
    evaluation.add_argument("-k", type=_positive, default=100, help="documents per query in the run (default 100)")
    add_arguments(evaluation, skip=("corpus",), choices=SETTING_CHOICES)
    evaluation.set_defaults(handler=command_eval)

    rerank = commands.add_parser(
        "rerank", help=f"rerank a query's first-stage candidates ({', '.join(RERANKERS)}), streaming the reasoning",
        description="The candidate documents (each one's best passage) are reranked by --reranker; --jsonl prints "
                    "every event (started, reasoning, judged, graded, failed; window_started, window_reasoning, "
                    "window_ranked, ranking_done) as one JSON object per line.",
    )
    rerank.add_argument("--query", required=True, help="the query")
    rerank.add_argument("--instruction", default="", help="relevance instruction appended to the query")
    rerank.add_argument("--template", default="",
                        help="dataset prompt whose FILL_QUERY_HERE becomes the query (as in rank1's BRIGHT runs)")
    rerank.add_argument("--jsonl", action="store_true", help="print the event stream as JSON lines")
    add_arguments(rerank, choices=SETTING_CHOICES)
    rerank.set_defaults(handler=command_rerank)

    compare = commands.add_parser(
        "compare", help="two judges on the same candidates at once: both rankings, their disagreements and why",
        description="Side A runs the settings (--reranker, --model, --budget, --evidence) changed by --a name=value; "
                    "side B runs A's changed by --b name=value. Names: reranker, model, instruction, budget, "
                    "evidence. Example: --a reranker=rank1 --b reranker=assessor, or --b instruction='…'. With the "
                    "same settings on both sides, B is A's work. --jsonl prints every event with its side.",
    )
    compare.add_argument("--query", required=True, help="the query")
    compare.add_argument("--a", action="append", default=[], metavar="NAME=VALUE", help="a setting of side A")
    compare.add_argument("--b", action="append", default=[], metavar="NAME=VALUE", help="a setting of side B")
    compare.add_argument("--jsonl", action="store_true", help="print both event streams as JSON lines with a side")
    add_arguments(compare, choices=SETTING_CHOICES)
    compare.set_defaults(handler=command_compare)

    batch = commands.add_parser(
        "rerank-run", help="rerank every query of a TREC run file (resumable), with a report before/after",
        description="Reranks each query's top-k documents (--top-k, default 100) of --run into --out: the state "
                    "(batch.sqlite3), the reranked run.trec, traces.jsonl and, with qrels, report.md, metrics.json, "
                    "per_query.tsv and plots. Killed and started again with the same arguments, it goes on where it "
                    "stopped. With --endpoints URL,URL,… every server is kept busy.",
    )
    batch.add_argument("--run", type=_existing_file, required=True, metavar="RUN", help="first-stage TREC run file")
    batch.add_argument("--queries", type=_queries_or_qrels, metavar="FILE",
                       help="queries (JSONL, TSV, or irds:<ir_datasets id>; default: the corpus's own)")
    batch.add_argument("--qrels", type=_queries_or_qrels, metavar="FILE",
                       help="judgments for the report (default: the corpus folder's qrels, if any)")
    batch.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (resumed if it exists)")
    add_arguments(batch, choices=SETTING_CHOICES)
    batch.set_defaults(handler=command_rerank_run)

    serve = commands.add_parser(
        "serve", help="serve the rerank API alone (Cohere's POST /v1/rerank, with reasoning), for RAG back ends",
        description="POST /v1/rerank (also /v2/rerank and /rerank), GET /v1/models and GET /health on the model the "
                    "settings choose; --api-key (or EXPLAINABLE_SEARCH_API_KEY) makes it ask for a bearer token. "
                    "See docs/api.md.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_positive, default=8080, help="port (default 8080)")
    serve.add_argument("--concurrency", type=_positive, default=8,
                       help="rerank requests served at once; more wait (default 8)")
    add_arguments(serve, skip=("concurrency", "top_k"), sections=("rerank", "serving", "api"), choices=SETTING_CHOICES)
    serve.set_defaults(handler=command_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stop_on_sigterm()
    try:
        settings = from_arguments(args, choices=SETTING_CHOICES)
        return args.handler(args, settings)
    except (CorpusError, SettingsError, EngineError, DemoModelError, BatchStoreError, ClusterError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        close_engines()
