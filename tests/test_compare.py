"""Compare's pure logic against hand-computed cases: Kendall's tau, RBO, each reranker's disagreement rule and the
rule across rerankers, the pair's nDCG@10, links, and both sides streaming at once on one (scripted) engine; the
real engines run it in test_browser.py and test_cli.py."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from scripted import ScriptedEngine, candidate, scripted_model

from search.compare import (
    Comparison,
    Link,
    Side,
    examples,
    kendall_tau,
    link_query,
    parse_link,
    rank_biased_overlap,
    side_values,
    stream_pair,
)
from search.corpus import Corpus, Query, load_corpus
from search.pipeline import collect
from search.rerank.assessor import AssessorReranker
from search.rerank.cache import JudgmentCache
from search.rerank.events import Graded, Judged, RankingDone, WindowRanked, WindowStarted
from search.rerank.rank1 import Rank1Reranker
from search.rerank.reasonrank import ReasonRankReranker
from search.settings import SAMPLE_CORPUS, CorpusSettings, RerankSettings, SettingsError

DOCS = [candidate(doc_id, f"passage {doc_id}", rank=rank) for rank, doc_id in enumerate("abcde", start=1)]


def judged(doc_id: str, p_true: float) -> Judged:
    return Judged(reranker="rank1", doc_id=doc_id, passage_id=f"{doc_id}#0", verdict=p_true > 0.5, p_true=p_true,
                  logprob_true=math.log(p_true), logprob_false=math.log(1 - p_true), reasoning="r", tokens=3,
                  end_reason="answered", forced=False, truncated_passage=False)


def graded(doc_id: str, grade: int) -> Graded:
    distribution = tuple(0.7 if index == grade else 0.1 for index in range(4))
    return Graded(reranker="assessor", doc_id=doc_id, passage_id=f"{doc_id}#0", grade=grade,
                  expected_grade=sum(index * share for index, share in enumerate(distribution)),
                  distribution=distribution, logprobs=tuple(math.log(share) for share in distribution), reasoning="r",
                  tokens=3, end_reason="answered", forced=False, truncated_passage=False)


def rank1_run(scores: dict[str, float]) -> Rank1Reranker:
    run = Rank1Reranker.new_run("q", DOCS, settings=RerankSettings())
    for doc_id, p_true in scores.items():
        run.apply(judged(doc_id, p_true))
    return run


def listwise(order: str) -> object:
    """A ReasonRank run whose one window put the documents in ``order``."""
    run = ReasonRankReranker.new_run("q", DOCS, settings=RerankSettings(window=5, step=5))
    run.apply(WindowStarted(reranker="reasonrank", window=0, start=0, end=5, doc_ids=tuple("abcde")))
    run.apply(WindowRanked(reranker="reasonrank", window=0, doc_ids=tuple(order), status="ok", reasoning="r", answer="",
                           tokens=4))
    run.apply(RankingDone(reranker="reasonrank", window=0, doc_ids=tuple(order)))
    return run


def test_rank_biased_overlap_matches_hand_computed_values() -> None:
    assert rank_biased_overlap(list("abc"), list("abc")) == pytest.approx(1.0)
    # A_1 = 0, A_2 = 1, A_3 = 1: 1·0.5³ + (0.5/0.5)·(0·0.5 + 1·0.25 + 1·0.125) = 0.5
    assert rank_biased_overlap(list("abc"), list("bac"), p=0.5) == pytest.approx(0.5)
    # A_1 = 0, A_2 = 1/2, A_3 = 1: 0.125 + (0 + 0.5·0.25 + 1·0.125) = 0.375
    assert rank_biased_overlap(list("abc"), list("cba"), p=0.5) == pytest.approx(0.375)
    assert rank_biased_overlap([], []) == 1.0


def test_kendall_tau_matches_hand_computed_values() -> None:
    assert kendall_tau(list("abcd"), list("abcd")) == pytest.approx(1.0)
    assert kendall_tau(list("abcd"), list("dcba")) == pytest.approx(-1.0)
    assert kendall_tau(list("abcd"), list("abdc")) == pytest.approx(4 / 6)  # 5 concordant pairs, 1 discordant
    assert kendall_tau(["a"], ["a"]) is None


def test_rank1_disagrees_on_a_flipped_verdict_or_a_large_move_in_p_true() -> None:
    a = rank1_run({"a": 0.9, "b": 0.95, "c": 0.8, "d": 0.4})
    b = rank1_run({"a": 0.3, "b": 0.6, "c": 0.7})
    assert Rank1Reranker.disagreement(a, b, "a") == "verdict flipped: relevant → not relevant"
    assert Rank1Reranker.disagreement(a, b, "b") == "P(true) 0.95 → 0.60"  # same verdict, |Δ| 0.35 ≥ 0.3
    assert Rank1Reranker.disagreement(a, b, "c") is None  # |Δ| 0.1
    assert Rank1Reranker.disagreement(a, b, "d") is None  # B has not judged it yet


def test_the_assessor_disagrees_when_grades_differ() -> None:
    a = AssessorReranker.new_run("q", DOCS, settings=RerankSettings())
    b = AssessorReranker.new_run("q", DOCS, settings=RerankSettings())
    for run, grades in ((a, {"a": 2, "b": 3}), (b, {"a": 1, "b": 3})):
        for doc_id, grade in grades.items():
            run.apply(graded(doc_id, grade))
    assert AssessorReranker.disagreement(a, b, "a") == "grade 2 → 1"
    assert AssessorReranker.disagreement(a, b, "b") is None


def test_reasonrank_disagrees_when_a_rank_moves_by_three_or_more() -> None:
    a, b = listwise("abcde"), listwise("ebcda")
    assert ReasonRankReranker.disagreement(a, b, "a") == "rank #1 → #5"
    assert ReasonRankReranker.disagreement(a, b, "e") == "rank #5 → #1"
    assert ReasonRankReranker.disagreement(a, b, "b") is None
    assert ReasonRankReranker.disagreement(listwise("abcde"), listwise("bcdae"), "a") == "rank #1 → #4"
    assert ReasonRankReranker.disagreement(listwise("abcde"), listwise("bcade"), "a") is None  # moved 2


def test_across_rerankers_the_0_to_1_relevance_decides() -> None:
    a = rank1_run({"a": 0.9, "b": 0.5})
    b = AssessorReranker.new_run("q", DOCS, settings=RerankSettings())
    b.apply(graded("a", 1))  # expected grade 0.7 + 2·0.1 + 3·0.1 = 1.2: relevance 0.4
    b.apply(graded("b", 1))
    pair = Comparison(a, b)
    assert pair.disagreement("a") == "relevance 0.90 → 0.40"
    assert pair.disagreement("b") is None  # 0.50 against 0.40
    assert pair.disagreements() == {"a": "relevance 0.90 → 0.40"}


def test_pair_stats_with_judgments_give_ndcg_of_first_stage_a_and_b() -> None:
    a = rank1_run({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.9})  # e first, a last
    b = rank1_run({"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5})  # first-stage order
    stats = Comparison(a, b, judged={"a": 2, "e": 0}).stats()
    assert stats.ndcg["first stage"] == pytest.approx(1.0)
    assert stats.ndcg["B"] == pytest.approx(1.0)
    assert stats.ndcg["A"] == pytest.approx(1 / math.log2(6))  # a at rank 5: (2²−1)/log2(6) ÷ (2²−1)/log2(2)
    assert stats.kendall_tau == pytest.approx(-1.0)
    assert stats.judged_by_both == 5 and stats.final
    assert stats.disagreements == 5  # a, b and d flip; c (0.3 → 0.7) and e (0.9 → 0.5) too
    assert Comparison(a, a, shared=True).stats().disagreements == 0


def test_exports_carry_each_side() -> None:
    pair = Comparison(rank1_run({"a": 0.9}), rank1_run({"a": 0.2}))
    lines = [json.loads(line) for line in pair.jsonl().splitlines()]
    assert {line["side"] for line in lines} == {"A", "B"}
    assert {(line["side"], line["score"]) for line in lines if line["doc_id"] == "a"} == {("A", 0.9), ("B", 0.2)}
    runs = pair.trec_runs()
    assert runs["A"].split()[-1] == "explainable-search-rank1-A" and "explainable-search-rank1-B" in runs["B"]


def test_a_link_reproduces_a_comparison_and_names_a_bad_parameter() -> None:
    a = Side(reranker="rank1", model="demo", instruction="only numbers count", budget=64)
    link = Link(query="solar panel efficiency", corpus="sample_corpus", a=a, b=Side(reranker="rank1", model="demo",
                                                                                    budget=64))
    text = link_query(link)
    params = dict(parse_qsl(urlsplit(text).query, keep_blank_values=True))
    assert params["b_instruction"] == "" and "b_reranker" not in params  # only what B changes
    assert parse_link(params, Side()) == link
    single = Link(query="q", a=Side(reranker="assessor"))
    assert parse_link(dict(parse_qsl(link_query(single)[1:])), Side()) == single
    assert parse_link({"q": ""}, Side()) is None
    assert parse_link({"q": "x", "b_budget": "12"}, Side()).b.budget == 12  # any b_ parameter makes a comparison
    with pytest.raises(SettingsError, match="link parameter b_budget must be int; got 'many'"):
        parse_link({"q": "x", "b_budget": "many"}, Side())
    with pytest.raises(SettingsError, match="link parameter colour: unknown"):
        parse_link({"q": "x", "colour": "red"}, Side())
    with pytest.raises(SettingsError, match="link parameter reranker must be one of"):
        parse_link({"q": "x", "reranker": "bm25"}, Side())
    assert side_values(["reranker=assessor", "instruction=a=b"], flag="--b") == {"reranker": "assessor",
                                                                                  "instruction": "a=b"}
    with pytest.raises(SettingsError, match="--b 'assessor': write name=value"):
        side_values(["assessor"], flag="--b")


def test_both_sides_stream_at_once_and_the_same_settings_reason_once(tokenizer: object) -> None:
    docs = DOCS[:3]

    def run(same: bool) -> tuple[Comparison, ScriptedEngine, list[str]]:
        engine = ScriptedEngine(tokenizer, scripted_model("rank1", tokenizer), pause_s=0.001)
        a = Rank1Reranker(engine, model_key="m", budget=64, settings=RerankSettings(judgment_cache=False))
        b = a if same else AssessorReranker(ScriptedEngine(tokenizer, scripted_model("assessor", tokenizer)),
                                            model_key="m", budget=64, settings=RerankSettings(judgment_cache=False))
        pair = Comparison(a.start_run("q", docs), b.start_run("q", docs), shared=same)
        sides = []

        async def watch() -> None:
            async for side, event in stream_pair(a, None if same else b, "q", docs, instructions=("", "")):
                pair.apply(side, event)
                sides.append(side)

        asyncio.run(watch())
        return pair, engine, sides

    pair, engine, sides = run(same=False)
    assert pair.finished and {side for side in sides} == {"A", "B"}
    assert sides.index("B") < len(sides) - sides[::-1].index("A") - 1  # interleaved, not one side after the other
    assert {doc: pair.runs["B"].score(doc) for doc in "abc"} == pytest.approx(dict.fromkeys("abc", 1.7))
    pair, engine, _ = run(same=True)
    assert len(engine.requests) == 3  # B is A's work: one request per document, not two
    assert [pair.runs["B"].score(doc) for doc in "abc"] == [pair.runs["A"].score(doc) for doc in "abc"]


def test_closing_the_pair_ends_both_sides_engine_requests(tokenizer: object) -> None:
    engines = [ScriptedEngine(tokenizer, scripted_model(name, tokenizer), pause_s=0.05)
               for name in ("rank1", "assessor")]
    a = Rank1Reranker(engines[0], model_key="m", budget=64, settings=RerankSettings(judgment_cache=False))
    b = AssessorReranker(engines[1], model_key="m", budget=64, settings=RerankSettings(judgment_cache=False))

    async def first_events() -> None:
        pair = stream_pair(a, b, "q", DOCS, instructions=("", "an instruction"))
        seen = set()
        async for side, _ in pair:
            seen.add(side)
            if seen == {"A", "B"}:
                break
        await pair.aclose()

    asyncio.run(first_events())
    deadline = time.monotonic() + 10  # each engine cancels on its own thread, soon after
    while any(engine.running for engine in engines) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(engine.running == 0 and engine.aborted for engine in engines)
    assert "an instruction" in engines[1].requests[0].prompt


def test_on_one_engine_each_side_keeps_half_its_batch_so_both_decode_at_once(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, scripted_model("rank1", tokenizer), pause_s=0.01)
    engine.decoding_together = 4
    sides = [Rank1Reranker(engine, model_key="m", budget=64, settings=RerankSettings(judgment_cache=False))
             for _ in range(2)]

    async def run() -> None:
        async for _ in stream_pair(*sides, "q", DOCS, instructions=("side-a", "side-b")):
            pass

    asyncio.run(run())
    first = ["side-a" in request.prompt for request in engine.requests[:4]]
    assert sorted(first) == [False, False, True, True]  # two of each side in the first batch, not four of A's
    assert len(engine.requests) == 10


def test_a_side_replayed_from_the_cache_does_not_hold_the_other_back(tokenizer: object, tmp_path: Path) -> None:
    engine = ScriptedEngine(tokenizer, scripted_model("rank1", tokenizer))
    engine.decoding_together = 4
    cache = JudgmentCache(tmp_path / "cache.sqlite3")
    sides = [Rank1Reranker(engine, model_key="m", budget=64, settings=RerankSettings(), cache=cache)
             for _ in range(2)]
    asyncio.run(collect(sides[1], "q", DOCS, instruction="side-b"))  # B's judgments are all in the cache now
    engine.requests.clear()
    pair = Comparison(sides[0].start_run("q", DOCS, instruction="side-a"),
                      sides[1].start_run("q", DOCS, instruction="side-b"))

    async def run() -> None:
        async for side, event in stream_pair(*sides, "q", DOCS, instructions=("side-a", "side-b")):
            pair.apply(side, event)

    asyncio.run(asyncio.wait_for(run(), 30))
    assert pair.finished and len(engine.requests) == 5 and all("side-a" in r.prompt for r in engine.requests)


def test_examples_come_from_the_corpus_queries(tmp_path: Path) -> None:
    sample = examples(load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS)))
    assert [example.query for example in sample if example.compare] == [
        "solar panel efficiency", "how to sleep better", "fixed or variable rate mortgage",
        "sources of mercury exposure for people"]
    assert all(example.instruction for example in sample if example.compare)
    assert "which migraine treatments do NOT involve medication · negation" in [example.label for example in sample]
    # A corpus that marks no showcase offers its queries with instructions, then its first others, nine at most.
    queries = tuple(Query(query_id=f"q{number}", text=f"query {number}", instruction="only x" if number == 7 else "")
                    for number in range(20))
    plain = examples(Corpus(source=tmp_path, documents=(), queries=queries))
    assert [example.query for example in plain] == ["query 7", *(f"query {number}" for number in (*range(7), 8))]
    assert plain[0].label == "query 7 · with vs without its instruction" and plain[0].compare
