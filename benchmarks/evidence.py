"""What evidence costs and whether it means anything, on the demo model: rank1 over the sample corpus's queries
with evidence off, then on, per engine (vLLM in process with its prefix cache, transformers), and the sentence
splitters it could use.

    .venv/bin/python benchmarks/evidence.py [--engines vllm transformers] [--budget 64 128 256] [--queries 3]
    .venv/bin/python benchmarks/evidence.py --splitters   # pysbd against blingfire (pip install blingfire)
    .venv/bin/python benchmarks/evidence.py --surrogate 12 --engines transformers   # surrogate vs ablation

Per engine and reasoning budget, in a fresh process: every query reranked with evidence off, then again with it on
(the judgments replayed from a cache filled by the first pass, so that the second pass's time is the evidence
alone; the judgment cache never holds evidence here); and in another fresh process, every query reranked with
evidence on from the start, as the page runs it (evidence overlapping the other documents' judgments). Printed:
the evidence's time alone and the extra time of a run with it, each as a fraction of judging's own, prompt
tokens sent for evidence and how many the prefix cache served, and faithfulness: mean |Δscore| from
removing the top-attributed sentences ÷ mean |Δscore| from removing as many random ones (above 1: the attribution
picks sentences that matter more than chance).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import in_fresh_process, print_table

from search.engines.demo_model import ensure_demo_model
from search.evidence import split_sentences
from search.pipeline import open_model
from search.rerank.cache import JudgmentCache
from search.rerank.events import Evidence, Judged
from search.rerank.rank1 import Rank1Reranker
from search.retrieval.first_stage import open_first_stage
from search.settings import SAMPLE_CORPUS, EngineSettings, RerankSettings, Settings


def engine_case(engine: str, queries: int, candidates: int, budget: int, end_to_end: bool = False) -> dict:
    """Judging with evidence off, then the evidence alone (judgments replayed); or, with ``end_to_end``, judging
    with evidence on from the start, as a page run does (its own process: nothing in vLLM's prefix cache from
    another pass)."""
    ensure_demo_model()
    settings = Settings().replace(corpus=SAMPLE_CORPUS, index_dir=Path(tempfile.mkdtemp()) / "indexes")
    first_stage = open_first_stage(settings, ("hybrid",))
    loaded = open_model(EngineSettings(model="demo", engine=engine))
    texts = [query.text for query in first_stage.corpus.queries[:queries + 1]]
    workloads = [(text, first_stage.search(text, candidates).candidates) for text in texts[1:]]
    warm_up = [(texts[0], first_stage.search(texts[0], 2).candidates)]

    def timed(evidence: bool, cache: JudgmentCache | None = None, work: list | None = None) -> tuple[float, list]:
        reranker = Rank1Reranker(loaded.engine, model_key=loaded.model.key, budget=budget,
                                 settings=RerankSettings(evidence=evidence), cache=cache)

        async def events() -> list:
            return [event for text, found in work or workloads async for event in reranker.stream(text, found)]

        start = time.perf_counter()
        seen = asyncio.run(events())
        return time.perf_counter() - start, seen

    timed(True, work=warm_up)  # the first requests pay for start-up work: another query, no shared prefix
    if end_to_end:
        with_evidence_s, _ = timed(True)
        loaded.engine.close()
        return {"with evidence s": with_evidence_s}
    cache = JudgmentCache(Path(tempfile.mkdtemp()) / "judgments.sqlite3")
    judging_s, judged = timed(False, cache)
    evidence_s, explained = timed(True, cache)  # the judgments replay from the cache: what remains is evidence
    loaded.engine.close()
    evidence = [event for event in explained if isinstance(event, Evidence)]
    top = [abs(event.score - event.faithfulness.top_removed) for event in evidence]
    random = [abs(event.score - event.faithfulness.random_removed) for event in evidence]
    prefill = sum(event.cost.prefill_tokens for event in evidence)
    cached = sum(event.cost.cached_tokens for event in evidence)
    return {
        "engine": loaded.engine.description, "budget": budget,
        "judgments": sum(isinstance(event, Judged) for event in judged),
        "judging s": f"{judging_s:.1f}", "evidence alone s": f"{evidence_s:.1f}",
        "alone ÷ judging": f"{evidence_s / judging_s:.2f}",
        "sentences/doc": f"{statistics.fmean(len(event.sentences) for event in evidence):.1f}",
        "prefill tokens": prefill, "cached": f"{cached} ({cached / max(prefill, 1):.0%})",
        "top/random |Δ|": f"{statistics.fmean(top) / max(statistics.fmean(random), 1e-12):.2f}",
        "supported/not/too short": "/".join(str(sum(event.faithfulness.supported is value for event in evidence))
                                            for value in (True, False, None)),
        "judging_s": judging_s,
    }


def cost_row(engine: str, queries: int, candidates: int, budget: int) -> dict:
    """Both measures of what evidence costs: alone, and as the extra time of a run with it on."""
    row = in_fresh_process(engine_case, engine, queries, candidates, budget)
    with_evidence_s = in_fresh_process(engine_case, engine, queries, candidates, budget, True)["with evidence s"]
    judging_s = row.pop("judging_s")
    row["with evidence s"] = f"{with_evidence_s:.1f}"
    row["extra ÷ judging"] = f"{(with_evidence_s - judging_s) / judging_s:.2f}"
    return row


def surrogate_case(engine: str, documents: int, budget: int) -> dict:
    """One long passage (the sample corpus's first ``documents`` documents of a topic, joined), attributed both
    ways: one sentence at a time, and by the surrogate; how far they agree and what each cost."""
    from scipy.stats import spearmanr

    from search.corpus import Passage
    from search.evidence import explain
    from search.retrieval.ranking import Candidate, Hit

    ensure_demo_model()
    settings = Settings().replace(corpus=SAMPLE_CORPUS, index_dir=Path(tempfile.mkdtemp()) / "indexes")
    corpus = open_first_stage(settings, ("bm25",)).corpus
    chosen = [document for document in corpus.documents if document.doc_id.startswith("bev-")][:documents]
    passage = Passage(passage_id="long", doc_id="long", index=0, title="",
                      text=" ".join(document.text for document in chosen))
    query = "what are the health effects of caffeine"
    loaded = open_model(EngineSettings(model="demo", engine=engine))
    reranker = Rank1Reranker(loaded.engine, model_key=loaded.model.key, budget=budget,
                             settings=RerankSettings(evidence=False))

    async def both() -> tuple:
        candidate = Candidate(passage=passage, stage="bm25", provenance={"bm25": Hit(rank=1, score=1.0)})
        [judged] = [event async for event in reranker.stream(query, (candidate,)) if isinstance(event, Judged)]
        common = {"reranker": "rank1", "doc_id": "long", "passage": passage.contents, "title": "",
                  "reasoning": judged.reasoning}
        exact = await explain(loaded.engine, reranker.probe(query, judged), **common, exact_limit=10**6)
        fitted = await explain(loaded.engine, reranker.probe(query, judged), **common, exact_limit=0)
        return exact, fitted

    exact, fitted = asyncio.run(both())
    loaded.engine.close()
    deltas = [[sentence.delta for sentence in evidence.sentences] for evidence in (exact, fitted)]
    top = [{number for number, _ in sorted(enumerate(values), key=lambda item: -abs(item[1]))[:3]}
           for values in deltas]
    return {"engine": loaded.engine.description, "sentences": len(exact.sentences),
            "exact requests": exact.cost.requests, "exact s": f"{exact.cost.seconds:.1f}",
            "surrogate requests": fitted.cost.requests, "surrogate s": f"{fitted.cost.seconds:.1f}",
            "Spearman": f"{spearmanr(*deltas).statistic:.2f}", "top-3 shared": len(top[0] & top[1])}


def splitters() -> None:
    import blingfire

    texts = []
    for path in (SAMPLE_CORPUS / "corpus.jsonl", Path("../shared/data/cranfield/corpus.jsonl")):
        if path.exists():
            texts += [f"{record.get('title', '')} {record['text']}".strip()
                      for record in map(json.loads, path.read_text(encoding="utf-8").splitlines())]
    rows = []
    start = time.perf_counter()
    counted = sum(len(split_sentences(text)) for text in texts)
    rows.append({"splitter": "pysbd", "documents": len(texts), "sentences": counted,
                 "seconds": f"{time.perf_counter() - start:.2f}", "failures": 0})
    start, counted, failures = time.perf_counter(), 0, 0
    for text in texts:
        try:
            counted += len(blingfire.text_to_sentences_and_offsets(text)[1])
        except AssertionError:  # blingfire asserts on empty text
            failures += 1
    rows.append({"splitter": "blingfire", "documents": len(texts), "sentences": counted,
                 "seconds": f"{time.perf_counter() - start:.2f}", "failures": failures})
    print_table(rows, ["splitter", "documents", "sentences", "seconds", "failures"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["vllm", "transformers"])
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--budget", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--splitters", action="store_true", help="compare sentence splitters instead")
    parser.add_argument("--surrogate", type=int, metavar="DOCUMENTS", default=0,
                        help="compare the surrogate with one-at-a-time ablation on this many documents joined")
    args = parser.parse_args()
    if args.splitters:
        splitters()
        return
    if args.surrogate:
        rows = [in_fresh_process(surrogate_case, engine, args.surrogate, args.budget[0]) for engine in args.engines]
        print_table(rows, list(rows[0]))
        return
    rows = [cost_row(engine, args.queries, args.candidates, budget) for engine in args.engines
            for budget in args.budget]
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
