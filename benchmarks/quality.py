"""Check the first stage's quality floors (graded nDCG@10) on a BEIR collection; exit 1 below any floor.

    .venv/bin/python benchmarks/quality.py ../shared/data/cranfield

The floors are what correct BM25 with stemming, all-MiniLM-L6-v2 and reciprocal rank fusion reach on
Cranfield; the defaults in search/settings.py are the settings that reach them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.evaluation import evaluate, retrieve_run
from search.progress import console_progress
from search.retrieval.first_stage import open_first_stage
from search.settings import Settings

FLOORS = {"bm25": 0.34, "dense": 0.37, "hybrid": 0.40}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="BEIR folder with queries and qrels")
    args = parser.parse_args()
    settings = Settings.from_env().replace(corpus=args.dataset, skip_bad=True)
    first_stage = open_first_stage(settings, FLOORS, console_progress())
    corpus = first_stage.corpus
    queries = [query for query in corpus.queries if query.query_id in corpus.qrels]
    failed = False
    print(f"{args.dataset}: {len(queries)} judged queries, {len(corpus.documents)} documents "
          f"({corpus.dropped} dropped), {len(first_stage.passages)} passages")
    for method, floor in FLOORS.items():
        run = retrieve_run(first_stage.retrievers[method], queries, 100)
        score = evaluate(corpus.qrels, run)["nDCG@10"]
        verdict = "ok" if score >= floor else "BELOW FLOOR"
        failed |= score < floor
        print(f"{method:<7} nDCG@10 {score:.4f}  floor {floor:.2f}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
