"""Start the Explainable Search page: ``python app.py [--corpus PATH] [--host H] [--port P]``.

Also the Hugging Face Spaces entry point (``app_file``); Spaces sets GRADIO_SERVER_NAME and the port.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import get_args

from search.corpus import CorpusError
from search.progress import console_progress
from search.retrieval.first_stage import open_first_stage
from search.settings import RetrievalMethod, SettingsError, add_arguments, from_arguments
from ui.app import build_app
from ui.results import CSS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Explainable Search: the web page.")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1, or GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default 7860, or GRADIO_SERVER_PORT)")
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
    build_app(first_stage).queue().launch(server_name=args.host, server_port=args.port, css=CSS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
