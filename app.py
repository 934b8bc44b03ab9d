"""Start the Explainable Search page: ``python app.py [--corpus PATH] [--model NAME] [--engine KIND] ...``.

Also the Hugging Face Spaces entry point (``app_file``); Spaces sets GRADIO_SERVER_NAME and the port. Every
setting also comes from its EXPLAINABLE_SEARCH_* environment variable, as Spaces users set them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from search.annotation.store import AnnotationStore
from search.api import ReasoningReranker
from search.corpus import CorpusError
from search.engines import EngineError, close_engines, stop_on_sigterm
from search.engines.demo_model import DemoModelError
from search.pipeline import build_reranker, open_model, warm_up
from search.progress import console_progress
from search.rerank.registry import SETTING_CHOICES
from search.retrieval.first_stage import open_first_stage
from search.server import ApiState, api_routes
from search.settings import RetrievalMethod, Settings, SettingsError, add_arguments, from_arguments
from search.uploads import MAX_UPLOAD_BYTES, CorpusLibrary
from ui.app import CSS, JS, ModelStatus, build_app


def open_status(settings: Settings) -> ModelStatus:
    """The model the machine can run for the settings' reranker, or why there is none (the page then serves the
    first stage)."""
    try:
        loaded = open_model(settings.serving, settings.rerank.reranker)
        if (waiting := loaded.engine.waiting()) is not None:
            # Servers that are not up yet: the engine keeps probing, and reranking works once one answers.
            print(f"warning: {waiting}", file=sys.stderr)
            return ModelStatus(loaded=loaded, settings=settings)
        build_reranker(settings.rerank, loaded)  # refuses a budget the context cannot hold
    except (EngineError, DemoModelError) as error:
        print(f"warning: no reranker: {error}", file=sys.stderr)
        return ModelStatus(loaded=None, problem=str(error), settings=settings)
    for note in loaded.notes:
        print(f"model: {note}", file=sys.stderr)
    return ModelStatus(loaded=loaded, settings=settings)


def parse_auth(text: str) -> list[tuple[str, str]]:
    """``user:password,user:password`` as Gradio's launch takes it."""
    pairs = []
    for item in (item.strip() for item in text.split(",") if item.strip()):
        user, colon, password = item.partition(":")
        if not colon or not user or not password:
            raise SettingsError(f"--auth: expected user:password, got {user + ':…' if colon else item!r}")
        pairs.append((user, password))
    return pairs


def browser_secret(annotations: Path) -> str:
    """The key the page encrypts what the browser remembers with; kept beside the annotations so that a
    restarted app can still read it."""
    path = annotations.with_name(annotations.name + ".browser-key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32), encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def serve(argv: Sequence[str] | None = None) -> int:
    """Open the corpus, the annotation store and the model, then serve the page until interrupted."""
    parser = argparse.ArgumentParser(description="Explainable Search: the web page.")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1, or GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default 7860, or GRADIO_SERVER_PORT)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="rerank runs served at once, the page's and the API's (/v1/rerank) together; more wait "
                             "(default 8)")
    parser.add_argument("--auth", default=os.environ.get("EXPLAINABLE_SEARCH_AUTH", ""),
                        help="sign-in: user:password[,user:password...]; each annotator judges under their user "
                             "name (env EXPLAINABLE_SEARCH_AUTH)")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="do not send the engine one short request at start (in the background) to spare the "
                             "first visitor its cold start; benchmarks/page.py --cold measures both")
    # --concurrency is rerank-run's; the page has its own above
    add_arguments(parser, skip=("concurrency",), choices=SETTING_CHOICES)
    args = parser.parse_args(argv)
    try:
        settings = from_arguments(args, choices=SETTING_CHOICES)
        auth = parse_auth(args.auth)
        default = settings.fusion.method
        methods = (default, *(method for method in get_args(RetrievalMethod) if method != default))
        first_stage = open_first_stage(settings, methods, console_progress())
    except (CorpusError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in first_stage.corpus.problems:
        print(f"warning: {problem}", file=sys.stderr)
    library = CorpusLibrary(settings, methods, store=settings.uploads)
    library.add(first_stage.corpus.source.name, first_stage)
    library.restore_in_background(lambda problem: print(f"warning: {problem}", file=sys.stderr), console_progress())
    try:
        annotations = AnnotationStore(settings.annotations)
        secret = browser_secret(settings.annotations)
    except (OSError, sqlite3.Error) as error:
        print(f"error: --annotations {settings.annotations}: cannot open it: {error}", file=sys.stderr)
        return 2
    status = open_status(settings)
    if args.warm_up and status.loaded is not None and status.loaded.engine.waiting() is None:
        warm_up(status.loaded.engine)  # on its own thread: the page is served meanwhile
    slots = asyncio.Semaphore(args.concurrency)  # rerank runs at once, the page's and the API's together
    api = ApiState(reranker=ReasoningReranker(status.loaded, settings.rerank) if status.loaded else None,
                   limits=settings.api, slots=slots, problem=status.problem)
    app = build_app(library, status, concurrency=args.concurrency, annotations=annotations, browser_secret=secret,
                    auth=bool(auth), batches=settings.batches, slots=slots)
    routes = api_routes(api)
    if auth and not settings.api.api_key:  # sign-in guards the page only: the API would be open beside it
        print("warning: the rerank API (/v1/rerank) is off because the page asks for sign-in; give --api-key to "
              "serve it too", file=sys.stderr)
        routes = []
    # Blocks until KeyboardInterrupt (Ctrl-C, or SIGTERM: see main), then closes the server and returns. The rerank
    # API's routes come first in the server's app, beside Gradio's own.
    app.queue().launch(server_name=args.host, server_port=args.port, css=CSS, js=JS, max_file_size=MAX_UPLOAD_BYTES,
                       auth=auth or None, app_kwargs={"routes": routes})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``serve``, with SIGTERM handled as Ctrl-C and the engines closed however it ends."""
    stop_on_sigterm()
    try:
        return serve(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        close_engines()


# Guarded: vLLM starts its engine processes with spawn, which imports this module again.
if __name__ == "__main__":
    sys.exit(main())
