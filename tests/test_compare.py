"""Compare's pure logic against hand-computed cases: Kendall's tau, RBO, each reranker's disagreement rule and the
rule across rerankers, the pair's nDCG@10, links, and both sides streaming at once on one (scripted) engine; the
real engines run it in test_browser.py and test_cli.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import AsyncIterator
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
from search.engines.base import Engine, GenerationChunk, GenerationRequest
from search.engines.hf_engine import TransformersEngine
from search.pipeline import collect
from search.rerank.assessor import AssessorReranker
from search.rerank.cache import JudgmentCache
from search.rerank.events import Graded, Judged, RankingDone, Reasoning, WindowRanked, WindowStarted
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


def test_rank_biased_overlap_extrapolates_lists_of_different_lengths() -> None:
    """Webber, Moffat and Zobel (2010), eq. 32, with S the shorter list (s long), L the longer (l long) and
    X_d = |S[:min(d, s)] ∩ L[:d]|:
    (1−p)/p · (Σ_{d≤l} X_d/d·p^d + Σ_{s<d≤l} X_s·(d−s)/(s·d)·p^d) + ((X_l − X_s)/l + X_s/s)·p^l."""
    p = 0.9
    # [a b c d] against [c d]: X_1 = 0, X_2 = 0, X_3 = 1, X_4 = 2, so X_s = X_2 = 0 and the second sum is 0.
    first = (1 / 3) * p**3 + (2 / 4) * p**4  # 0.243 + 0.32805
    expected = (1 - p) / p * first + (2 - 0) / 4 * p**4  # 0.06345 + 0.32805 = 0.3915
    assert expected == pytest.approx(0.3915)
    assert rank_biased_overlap(list("abcd"), list("cd"), p=p) == pytest.approx(expected)
    assert rank_biased_overlap(list("cd"), list("abcd"), p=p) == pytest.approx(expected)  # either order
    # [a b c d] against [a c]: X_1 = 1, X_2 = 1, X_3 = 2, X_4 = 2; X_s = 1, so every term counts.
    first = 1 * p + (1 / 2) * p**2 + (2 / 3) * p**3 + (2 / 4) * p**4  # 0.9 + 0.405 + 0.486 + 0.32805
    second = 1 * (3 - 2) / (2 * 3) * p**3 + 1 * (4 - 2) / (2 * 4) * p**4  # 0.1215 + 0.164025
    expected = (1 - p) / p * (first + second) + ((2 - 1) / 4 + 1 / 2) * p**4  # 0.267175 + 0.492075
    assert expected == pytest.approx(0.75925)
    assert rank_biased_overlap(list("abcd"), list("ac"), p=p) == pytest.approx(expected)
    # Equal lengths are eq. 30 as before: X_k/k·p^k + (1−p)/p·Σ X_d/d·p^d.
    assert rank_biased_overlap(list("abcd"), list("bacd"), p=p) == pytest.approx(
        p**4 + (1 - p) / p * (0 + 1 * p**2 + 1 * p**3 + 1 * p**4))
    assert rank_biased_overlap(list("ab"), []) == 0.0


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


def test_against_a_listwise_side_ranks_among_the_documents_both_judged_decide() -> None:
    """ReasonRank's relevance is derived from its rank: against a probability it would disagree wherever the
    scores are not spread evenly (issue 37: 9 of 20 here), though both put the documents in the same order."""
    docs = [candidate(f"d{rank:02}", "text", rank=rank) for rank in range(1, 21)]
    ids = [item.passage.doc_id for item in docs]
    pointwise = Rank1Reranker.new_run("q", docs, settings=RerankSettings())
    for doc_id in ids:
        pointwise.apply(judged(doc_id, 0.95 if doc_id in ids[:5] else 0.03))

    def ranked(order: list[str], *, judged_ids: int = 20) -> object:
        run = ReasonRankReranker.new_run("q", docs, settings=RerankSettings(window=20, step=10))
        run.apply(WindowStarted(reranker="reasonrank", window=0, start=0, end=20, doc_ids=tuple(ids)))
        run.apply(WindowRanked(reranker="reasonrank", window=0, doc_ids=tuple(order), status="ok", reasoning="r",
                               answer="", tokens=4))
        run.apply(RankingDone(reranker="reasonrank", window=0, doc_ids=tuple(order)))
        return run

    for pair in (Comparison(pointwise, ranked(ids)), Comparison(ranked(ids), pointwise)):
        stats = pair.stats()
        assert (stats.kendall_tau, stats.rbo, stats.disagreements) == (pytest.approx(1.0), pytest.approx(1.0), 0)
    moved = [*ids[3:6], *ids[:3], *ids[6:]]  # d01–d03 down three places, d04–d06 up three
    pair = Comparison(pointwise, ranked(moved))
    assert pair.disagreements() == {**{ids[n]: f"rank #{n + 1} → #{n + 4}" for n in range(3)},
                                    **{ids[n]: f"rank #{n + 1} → #{n - 2}" for n in range(3, 6)}}
    # Ranks among the documents both have judged: with only d01–d04 judged by A, d04 moving from 4th to 1st is a
    # move of three among them, whatever the 16 others do.
    partial = Rank1Reranker.new_run("q", docs, settings=RerankSettings())
    for doc_id in ids[:4]:
        partial.apply(judged(doc_id, 0.95))
    reordered = [ids[3], *ids[4:], *ids[:3]]
    assert Comparison(partial, ranked(reordered)).disagreements() == {ids[3]: "rank #4 → #1"}


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


class HoldingEngine(ScriptedEngine):
    """Streams each request's first chunk, then holds the request open until it is aborted: a request in flight
    when the pair closes can end no other way. ``idle`` is set whenever the last request in flight ends."""

    def __init__(self, tokenizer: object, script: object) -> None:
        super().__init__(tokenizer, script)
        self.idle = threading.Event()

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        self.running += 1
        try:
            yield self.script(request)[0]
            await asyncio.get_running_loop().create_future()  # never done
        except asyncio.CancelledError:
            self.aborted.append(request)
            raise
        finally:
            self.running -= 1
            if not self.running:
                self.idle.set()


def test_closing_the_pair_ends_both_sides_engine_requests(tokenizer: object) -> None:
    """Closed once each side's engine has streamed reasoning (a request in flight there, which only an abort
    ends), not at the first events: those come before any engine request, which a loaded machine may not have
    started by then."""
    engines = [HoldingEngine(tokenizer, scripted_model(name, tokenizer)) for name in ("rank1", "assessor")]
    a = Rank1Reranker(engines[0], model_key="m", budget=64, settings=RerankSettings(judgment_cache=False))
    b = AssessorReranker(engines[1], model_key="m", budget=64, settings=RerankSettings(judgment_cache=False))

    async def until_both_reason() -> None:
        reasoning = set()
        async with contextlib.aclosing(stream_pair(a, b, "q", DOCS, instructions=("", "an instruction"))) as pair:
            async for side, event in pair:
                reasoning |= {side} if isinstance(event, Reasoning) else set()
                if reasoning == {"A", "B"}:
                    break

    asyncio.run(until_both_reason())
    assert all(engine.idle.wait(timeout=120) for engine in engines)  # each engine cancels on its own thread
    for engine in engines:
        assert engine.running == 0 and engine.aborted
        assert sorted(request.prompt for request in engine.aborted) == sorted(r.prompt for r in engine.requests)
    assert "an instruction" in engines[1].requests[0].prompt


def most_in_flight(engine: Engine) -> dict[str, int]:
    """Counts ``engine``'s requests as it runs them: the most each side (told by its instruction in the prompt) had
    in flight at once, kept up to date in the mapping returned."""
    most = {"side-a": 0, "side-b": 0}
    now = dict(most)
    generate = engine._generate

    async def counting(request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        side = "side-a" if "side-a" in request.prompt else "side-b"
        now[side] += 1
        most[side] = max(most[side], now[side])
        try:
            async for chunk in generate(request):
                yield chunk
        finally:
            now[side] -= 1

    engine._generate = counting
    return most


def evidence_against_none(engine: Engine, docs: list[object], *, budget: int) -> Comparison:
    """Rank1 with evidence (A) against rank1 without (B) on one engine, run to the end."""
    a, b = (Rank1Reranker(engine, model_key="m", budget=budget, settings=RerankSettings(judgment_cache=False,
                                                                                        evidence=evidence))
            for evidence in (True, False))
    pair = Comparison(a.start_run("q", docs, instruction="side-a"), b.start_run("q", docs, instruction="side-b"))

    async def run() -> None:
        async for side, event in stream_pair(a, b, "q", docs, instructions=("side-a", "side-b")):
            pair.apply(side, event)

    asyncio.run(run())
    return pair


FIVE_SENTENCES = "One fact. Two facts. Three facts. Four facts. Five facts."


def test_a_side_with_evidence_keeps_to_its_half_of_the_batch(tokenizer: object) -> None:
    """Evidence re-scores a judgment's passage once per sentence, all at once: each re-score is a request in flight
    and takes a slot of the side's half, as a judgment does."""
    docs = [candidate(doc_id, FIVE_SENTENCES, rank=rank) for rank, doc_id in enumerate("abcde", start=1)]
    engine = ScriptedEngine(tokenizer, scripted_model("rank1", tokenizer), pause_s=0.01)
    engine.decoding_together = 4
    most = most_in_flight(engine)
    pair = evidence_against_none(engine, docs, budget=64)
    assert pair.finished and pair.runs["A"].summary().explained == 5
    assert sum("side-a" in request.prompt for request in engine.requests) > 5 * 6  # judgments and re-scores
    assert most["side-a"] <= 2 and most["side-b"] <= 2


def test_on_the_transformers_engine_evidence_keeps_to_its_half_too(demo_model: Path) -> None:
    engine = TransformersEngine(model="demo", location=str(demo_model), max_model_len=2048, batch_size=4)
    try:
        most = most_in_flight(engine)
        docs = [candidate(doc_id, FIVE_SENTENCES, rank=rank) for rank, doc_id in enumerate("abc", start=1)]
        pair = evidence_against_none(engine, docs, budget=8)
    finally:
        engine.close()
    assert engine.decoding_together == 4 and pair.finished
    assert pair.runs["A"].summary().explained + pair.runs["A"].documents_failed() == 3
    assert 1 <= most["side-a"] <= 2 and 1 <= most["side-b"] <= 2


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


class FirstSlowest:
    """The demo tokenizer, slowest on the first documents' prompts: on threads, tokenizing finishes last first."""

    def __init__(self, tokenizer: object, delays: dict[str, float]) -> None:
        self.tokenizer, self.delays = tokenizer, delays

    def __call__(self, text: str, **kwargs: object) -> object:
        time.sleep(max((delay for marker, delay in self.delays.items() if marker in text), default=0.0))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self.tokenizer, name)


def test_requests_go_to_the_engine_in_first_stage_order_however_tokenizing_ends(tokenizer: object,
                                                                                 tmp_path: Path) -> None:
    """A single run and each side of a pair (on its half of a shared batch) send the top documents first, though
    the top ones' prompts take longest to tokenize; one replayed from the cache lets none below it jump ahead."""
    engine = ScriptedEngine(tokenizer, scripted_model("rank1", tokenizer), pause_s=0.01)
    engine.decoding_together = 4
    cache = JudgmentCache(tmp_path / "cache.sqlite3")
    sides = [Rank1Reranker(engine, model_key="m", budget=64, settings=RerankSettings(), cache=cache)
             for _ in range(2)]
    asyncio.run(collect(sides[0], "q", DOCS[2:3], instruction="replayed"))  # c's judgment is in the cache now
    engine.tokenizer = FirstSlowest(tokenizer, {"passage a": 0.4, "passage b": 0.3, "passage c": 0.2})

    def sent(instruction: str) -> list[str]:
        return [next(doc for doc in "abcde" if f"passage {doc}" in request.prompt)
                for request in engine.requests if instruction in request.prompt and "passage" in request.prompt]

    asyncio.run(collect(sides[0], "q", DOCS, instruction="alone"))
    assert sent("alone") == list("abcde")
    engine.tokenizer.delays = {"passage a": 0.4, "passage b": 0.3}
    asyncio.run(collect(sides[0], "q", DOCS, instruction="replayed"))
    assert sent("replayed") == list("cabde")  # c's one request is the one that filled the cache

    async def run() -> None:
        async for _ in stream_pair(*sides, "q", DOCS, instructions=("side-a", "side-b")):
            pass

    asyncio.run(run())
    assert sent("side-a") == list("abcde") and sent("side-b") == list("abcde")


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
