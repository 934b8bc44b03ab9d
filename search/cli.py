"""The command line: ``python -m search index | query | eval | rerank | rerank-run``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from search.batch import (
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
from search.corpus import Corpus, CorpusError, load_corpus
from search.engines import Choice, EngineError, choose, close_engines
from search.engines.demo_model import DemoModelError
from search.evaluation import evaluate, passage_depth, read_qrels, read_run, retrieve_run, write_trec_run
from search.pipeline import (
    open_batch_reranker,
    open_listwise_reranker,
    open_reranker,
    rerank_candidates,
    reranked,
)
from search.progress import console_progress
from search.rerank.cache import JudgmentCache
from search.rerank.events import (
    Failed,
    Judged,
    ListwiseEvent,
    RankingDone,
    RerankEvent,
    WindowRanked,
    WindowStarted,
    event_to_json,
)
from search.rerank.reasonrank import ReasonRankReranker
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

METHODS: tuple[RetrievalMethod, ...] = get_args(RetrievalMethod)
BATCH_TOP_K = 100
"""rerank-run's depth unless --top-k (or its variable) says otherwise: the published rank1 runs rerank 100."""
TOP_K_VARIABLE = f"{ENV_PREFIX}TOP_K"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
        print("no passage matches this query", file=sys.stderr)
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
    depth = passage_depth(args.k, len(first_stage.passages), len(corpus.documents))
    print(f"{'method':<8} {'nDCG@10':>8} {'Recall@100':>11} {'MRR@10':>8}   ({len(queries)} judged queries)")
    for method in methods:
        run = retrieve_run(first_stage.retrievers[method], queries, args.k, depth)
        scores = evaluate(corpus.qrels, run)
        print(f"{method:<8} {scores['nDCG@10']:>8.4f} {scores['Recall@100']:>11.4f} {scores['MRR@10']:>8.4f}")
        if args.run_out and method == (args.method or settings.fusion.method):
            write_trec_run(run, args.run_out, tag=f"explainable-search-{method}")
            print(f"{method} run written to {args.run_out}", file=sys.stderr)
    return 0


def _event_line(event: RerankEvent) -> str | None:
    if isinstance(event, Judged):
        flags = ", ".join(name for name in ("forced", "truncated_passage", "from_cache") if getattr(event, name))
        return (f"{'true ' if event.verdict else 'false'} P(true)={event.p_true:.3f}  {event.doc_id}  "
                f"({event.tokens} tokens, {event.end_reason.replace('_', ' ')}{', ' + flags if flags else ''})")
    if isinstance(event, Failed):
        return f"failed             {event.doc_id}  {event.reason}"
    return None


def _window_line(event: ListwiseEvent) -> str | None:
    if isinstance(event, WindowStarted):
        return f"window {event.window + 1}: positions {event.start + 1}–{event.end}"
    if isinstance(event, WindowRanked):
        details = [f"{name.replace('_', ' ')} {list(getattr(event, name))}"
                   for name in ("missing", "duplicates", "out_of_range") if getattr(event, name)]
        reason = f": {event.failure}" if event.failure else (f" ({', '.join(details)})" if details else "")
        return f"window {event.window + 1}: {event.status}{reason} ({event.tokens} tokens)"
    return None


def _print_stream(events: AsyncIterator[Any], *, jsonl: bool, line_of: Callable[[Any], str | None]) -> list[Any]:
    """Print a reranker's events as they come (JSON lines, or a line for those worth one) and return them all;
    the engines are closed at the end."""
    async def run() -> list[Any]:
        seen = []
        async for event in events:
            seen.append(event)
            line = json.dumps(event_to_json(event), ensure_ascii=False) if jsonl else line_of(event)
            if line is not None:
                print(line, flush=True)
        return seen

    try:
        return asyncio.run(run())
    finally:
        close_engines()


def _print_ranking(title: str, doc_ids: Sequence[str], candidates: Sequence[Candidate]) -> None:
    first_rank = {candidate.passage.doc_id: candidate.rank for candidate in candidates}
    print(f"\n{title}:")
    for position, doc_id in enumerate(doc_ids, start=1):
        print(f"{position:>3}. (first stage #{first_rank[doc_id]:>3}) {doc_id}")


def command_rerank_listwise(args: argparse.Namespace, settings: Settings, choice: Choice,
                            candidates: tuple[Candidate, ...]) -> int:
    """ReasonRank: window by window, then the final order (ranks; no probabilities)."""
    reranker, _ = open_listwise_reranker(settings.rerank, choice)
    print(f"reranking {len(candidates)} documents in windows of {reranker.window} (step {reranker.step}) with "
          f"{reranker.engine.description}, budget {reranker.budget} tokens", file=sys.stderr)
    events = _print_stream(reranker.stream(args.query, candidates, instruction=args.instruction), jsonl=args.jsonl,
                           line_of=_window_line)
    done = [event for event in events if isinstance(event, RankingDone)]
    if not args.jsonl and done:
        _print_ranking("reranked (ReasonRank gives ranks, not probabilities)", done[-1].doc_ids, candidates)
    return 0


def command_rerank(args: argparse.Namespace, settings: Settings) -> int:
    first_stage = _open(settings, (settings.fusion.method,))
    choice = choose(settings.rerank)
    for note in choice.notes:
        print(f"model: {note}", file=sys.stderr)
    print(f"starting {choice.engine} with {choice.model.name or 'the served model'} …", file=sys.stderr)
    candidates = rerank_candidates(first_stage, args.query, settings.rerank.top_k)
    if settings.rerank.reranker == "reasonrank":
        return command_rerank_listwise(args, settings, choice, candidates)
    reranker, _ = open_reranker(settings.rerank, choice)
    print(f"reranking {len(candidates)} documents with {reranker.engine.description}, "
          f"budget {reranker.budget} tokens", file=sys.stderr)
    events = _print_stream(reranker.stream(args.query, candidates, instruction=args.instruction,
                                           template=args.template), jsonl=args.jsonl, line_of=_event_line)
    if not args.jsonl:
        judgments = {event.doc_id: event for event in events if isinstance(event, Judged | Failed)}
        ranking = reranked(args.query, candidates, judgments)
        _print_ranking("reranked", [candidate.passage.doc_id for candidate in ranking.candidates], candidates)
    return 0


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
    choice = choose(settings.rerank)
    for note in choice.notes:
        print(f"model: {note}", file=sys.stderr)
    print(f"starting {choice.engine} with {choice.model.name or 'the served model'} …", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    reranker = open_batch_reranker(settings.rerank, choice, JudgmentCache(args.out / STATE_FILE))
    rerank = settings.rerank
    listwise = isinstance(reranker, ReasonRankReranker)
    spec = BatchSpec(inputs=inputs.digest(), top_k=rerank.top_k, reranker=rerank.reranker, model=reranker.model_key,
                     budget=reranker.budget, window=rerank.window if listwise else 0,
                     step=rerank.step if listwise else 0, passage_tokens=rerank.passage_tokens if listwise else 0)
    sources = {"corpus": str(corpus.source), "queries": str(args.queries or corpus.source / "queries.jsonl"),
               "run": str(args.run)}
    store = BatchStore.open(args.out, spec, inputs, sources=sources, qrels=qrels)
    concurrency = rerank.concurrency or reranker.engine.capacity
    print(f"reranking with {reranker.engine.description}, {concurrency} at once, budget {reranker.budget} tokens",
          file=sys.stderr)
    try:
        progress = asyncio.run(run_batch(inputs, store, reranker, concurrency=concurrency, report=_batch_bar()))
        for line in reranker.engine.report():
            print(line)
    except KeyboardInterrupt:
        print("\ninterrupted: every finished judgment is kept; run the same command to resume", file=sys.stderr)
        return 130
    finally:
        close_engines()
    view = view_batch(store)
    written = write_outputs(args.out, view, store.qrels())
    print((args.out / REPORT_FILE).read_text(encoding="utf-8"))
    print(f"reasoned {progress.documents_done - progress.resumed - progress.replayed} documents in this run "
          f"({progress.resumed} judged before, {progress.replayed} replayed from the cache)")
    print("written: " + ", ".join(path.name for path in written), file=sys.stderr)
    return 1 if view.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m search",
        description="Explainable Search: hybrid first-stage retrieval (BM25 + dense, fused), reasoning "
                    "reranking with rank1, and evaluation.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="build (or load) the BM25 and dense indexes of a corpus")
    add_arguments(index)
    index.set_defaults(handler=command_index)

    query = commands.add_parser("query", help="search a corpus and print the fused ranking with provenance")
    query.add_argument("text", help="the query")
    query.add_argument("-k", type=_positive, default=10, help="how many passages to print (default 10)")
    query.add_argument("--json", action="store_true", help="one JSON object per passage instead of text")
    add_arguments(query)
    query.set_defaults(handler=command_query)

    evaluation = commands.add_parser(
        "eval", help="nDCG@10, Recall@100 and MRR@10 of BM25, dense and hybrid on a BEIR folder, or of any run files",
        description="Without --run, the first stages are evaluated (all three without --method). With --run, the "
                    "given TREC run files are measured against --qrels (or the BEIR folder's qrels).",
    )
    evaluation.add_argument("dataset", type=Path, nargs="?", metavar="BEIR_DIR",
                            help="folder with corpus, queries and qrels")
    evaluation.add_argument("--run", type=Path, action="append", metavar="FILE",
                            help="a TREC run file to measure (repeat to compare several)")
    evaluation.add_argument("--qrels", type=Path, metavar="FILE", help="judgments for --run (BEIR TSV or TREC qrels)")
    evaluation.add_argument("--run-out", type=Path, metavar="FILE",
                            help="write the TREC run (top 100 per query) of --method (default: hybrid)")
    evaluation.add_argument("-k", type=_positive, default=100, help="documents per query in the run (default 100)")
    add_arguments(evaluation, skip=("corpus",))
    evaluation.set_defaults(handler=command_eval)

    rerank = commands.add_parser(
        "rerank", help="rerank a query's first-stage candidates with rank1 (or --reranker reasonrank), streaming "
                       "the reasoning",
        description="Each candidate document (its best passage) is judged by the reasoning model; --jsonl prints "
                    "every event (started, reasoning, judged, failed) as one JSON object per line.",
    )
    rerank.add_argument("--query", required=True, help="the query")
    rerank.add_argument("--instruction", default="", help="relevance instruction appended to the query")
    rerank.add_argument("--template", default="",
                        help="dataset prompt whose FILL_QUERY_HERE becomes the query (as in rank1's BRIGHT runs)")
    rerank.add_argument("--jsonl", action="store_true", help="print the event stream as JSON lines")
    add_arguments(rerank)
    rerank.set_defaults(handler=command_rerank)

    batch = commands.add_parser(
        "rerank-run", help="rerank every query of a TREC run file (resumable), with a report before/after",
        description="Reranks each query's top-k documents (--top-k, default 100) of --run into --out: the state "
                    "(batch.sqlite3), the reranked run.trec, traces.jsonl and, with qrels, report.md, metrics.json, "
                    "per_query.tsv and plots. Killed and started again with the same arguments, it goes on where it "
                    "stopped. With --endpoints URL,URL,… every server is kept busy.",
    )
    batch.add_argument("--run", type=Path, required=True, metavar="RUN", help="first-stage TREC run file")
    batch.add_argument("--queries", type=Path, metavar="FILE",
                       help="queries (JSONL or TSV; default: the corpus folder's queries.jsonl)")
    batch.add_argument("--qrels", type=Path, metavar="FILE",
                       help="judgments for the report (default: the corpus folder's qrels, if any)")
    batch.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (resumed if it exists)")
    add_arguments(batch)
    batch.set_defaults(handler=command_rerank_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = from_arguments(args)
        return args.handler(args, settings)
    except (CorpusError, SettingsError, EngineError, DemoModelError, BatchStoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
