"""Start the Explainable Search page: ``python app.py [--corpus PATH] [--model NAME] [--engine KIND] ...``.

Also the Hugging Face Spaces entry point (``app_file``); Spaces sets GRADIO_SERVER_NAME and the port. Every
setting also comes from its EXPLAINABLE_SEARCH_* environment variable, as Spaces users set them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import get_args

from search.corpus import CorpusError
from search.engines import EngineError
from search.engines.demo_model import DemoModelError
from search.pipeline import open_reranker
from search.progress import console_progress
from search.retrieval.first_stage import open_first_stage
from search.settings import RerankSettings, RetrievalMethod, SettingsError, add_arguments, from_arguments
from search.uploads import MAX_UPLOAD_BYTES, CorpusLibrary
from ui.app import CSS, JS, RerankerStatus, build_app


def open_status(settings: RerankSettings) -> RerankerStatus:
    """The reranker the machine can run, or why there is none (the page then serves the first stage)."""
    try:
        reranker, choice = open_reranker(settings)
    except (EngineError, DemoModelError) as error:
        print(f"warning: no reranker: {error}", file=sys.stderr)
        return RerankerStatus(reranker=None, choice=None, problem=str(error), settings=settings)
    for note in choice.notes:
        print(f"model: {note}", file=sys.stderr)
    return RerankerStatus(reranker=reranker, choice=choice, settings=settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Explainable Search: the web page.")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1, or GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default 7860, or GRADIO_SERVER_PORT)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="rerank runs served at once; more wait in the queue (default 8)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = from_arguments(args)
        default = settings.fusion.method
        methods = (default, *(method for method in get_args(RetrievalMethod) if method != default))
        first_stage = open_first_stage(settings, methods, console_progress())
    except (CorpusError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in first_stage.corpus.problems:
        print(f"warning: {problem}", file=sys.stderr)
    library = CorpusLibrary(settings, methods)
    library.add(first_stage.corpus.source.name, first_stage)
    status = open_status(settings.rerank)
    app = build_app(library, status, top_k=settings.rerank.top_k, concurrency=args.concurrency)
    app.queue().launch(server_name=args.host, server_port=args.port, css=CSS, js=JS, max_file_size=MAX_UPLOAD_BYTES)
    return 0


# Guarded: vLLM starts its engine processes with spawn, which imports this module again.
if __name__ == "__main__":
    sys.exit(main())
