"""ReasonRank's logic over a scripted engine: the pinned prompt, honest parsing, the reference's windows, events
and scheduling. What every reranker must do is checked in test_rerankers.py, also on the real engine."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from scripted import ScriptedEngine, candidate, reversing

from search.engines.base import EngineError, GenerationChunk, GenerationRequest
from search.rerank.cache import JudgmentCache
from search.rerank.events import Event, RankingDone, WindowRanked, WindowReasoning, WindowStarted
from search.rerank.listwise import Move
from search.rerank.reasonrank import (
    SYSTEM,
    ReasonRankReranker,
    parse_answer,
    passage_content,
    render_prompt,
    user_message,
    window_spans,
)
from search.settings import RerankSettings
from ui.window_cards import linked_reasoning, render_windows

REFERENCE_SYSTEM = (
    "You are RankLLM, an intelligent assistant that can rank passages based on their relevance to the query. Given "
    "a query and a passage list, you first thinks about the reasoning process in the mind and then provides the "
    "answer (i.e., the reranked passage list). The reasoning process and answer are enclosed within <think> </think> "
    "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>."
)


def test_prompt_matches_the_reference_byte_for_byte(tokenizer: object) -> None:
    contents = [passage_content(tokenizer, "Mars", "Phobos and Deimos [1] orbit Mars.", 512),
                passage_content(tokenizer, "", "The Moon is Earth\u2019s only natural satellite.", 512)]
    user = user_message("moons of [2] mars", contents)
    assert SYSTEM == REFERENCE_SYSTEM
    assert user == (
        "I will provide you with 2 passages, each indicated by a numerical identifier []. Rank the passages based on "
        "their relevance to the search query: moons of (2) mars.\n\n"
        "[1] Title: Mars Content: Phobos and Deimos (1) orbit Mars.\n"
        "[2] The Moon is Earth's only natural satellite.\n"
        "Search Query: moons of (2) mars.\nRank the 2 passages above based on their relevance to the search query. "
        "All the passages should be included and listed using identifiers, in descending order of relevance. The "
        "format of the answer should be [] > [], e.g., [2] > [1]."
    )
    assert render_prompt(tokenizer, "moons of [2] mars", contents) == (
        f"<|im_start|>system\n{REFERENCE_SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n")  # the demo model's chat template; a real model's template is its own


def test_passages_are_cleaned_and_cut_to_their_first_tokens(tokenizer: object) -> None:
    assert passage_content(tokenizer, "", "cafÃ© [12] menu", 512) == "café (12) menu"  # ftfy, brackets
    cut = passage_content(tokenizer, "Title", "one two three four five six seven", 6)
    assert cut == "Title: Title Content: one" and len(tokenizer.tokenize(cut)) == 6


@pytest.mark.parametrize(("response", "status", "order", "missing", "duplicates", "out_of_range"), [
    ("<think>2 beats 1</think> <answer>[2] > [3] > [1]</answer>", "ok", (1, 2, 0), (), (), ()),
    ("<think>x</think>\n<answer>2 > 3 > 1</answer>", "ok", (1, 2, 0), (), (), ()),
    ("<think>[3] is best</think> <answer>[3] > [3] > [1]</answer>", "repaired", (2, 0, 1), (2,), (3,), ()),
    ("<think>x</think><answer>[7] > [2] > [0]</answer>", "repaired", (1, 0, 2), (1, 3), (), (7, 0)),
    ("<think>x</think><answer>[\uff12] > [\u0663] > [1]</answer>", "ok", (1, 2, 0), (), (), ()),  # unicode digits
    ("<think>clearly [3] > [2] > [1] and then the budget ran ou", "truncated", (0, 1, 2), (), (), ()),
    ("<think>x</think> <answer>[3] > [2", "truncated", (0, 1, 2), (), (), ()),  # answer cut off
    ("[3] > [2] > [1]", "truncated", (0, 1, 2), (), (), ()),  # no tags: digits are never guessed from text
    ("<answer>[3] > [2] > [1]</answer>", "truncated", (0, 1, 2), (), (), ()),  # no reasoning closed before it
])
def test_the_answer_is_read_only_from_the_answer_tag(response: str, status: str, order: tuple[int, ...],
                                                      missing: tuple[int, ...], duplicates: tuple[int, ...],
                                                      out_of_range: tuple[int, ...]) -> None:
    parsed = parse_answer(response, 3)
    assert (parsed.status, parsed.order, parsed.missing, parsed.duplicates, parsed.out_of_range) == (
        status, order, missing, duplicates, out_of_range)


def test_windows_slide_from_the_back_as_the_reference() -> None:
    assert window_spans(100, 20, 10) == [(80, 100), (70, 90), (60, 80), (50, 70), (40, 60), (30, 50), (20, 40),
                                         (10, 30), (0, 20)]
    assert window_spans(25, 20, 10) == [(5, 25), (0, 15)]
    assert window_spans(20, 20, 10) == [(0, 20)]
    assert window_spans(3, 20, 10) == [(0, 3)]
    assert window_spans(0, 20, 10) == []
    assert window_spans(10, 4, 2) == [(6, 10), (4, 8), (2, 6), (0, 4)]


def numbers_in(prompt: str) -> list[str]:
    """The passages of a window in the order the prompt lists them (their texts are their doc ids)."""
    return re.findall(r"^\[\d+\] (\S+)$", prompt, re.MULTILINE)


def reasonrank(engine: ScriptedEngine, *, window: int = 4, step: int = 2, cache: JudgmentCache | None = None
               ) -> ReasonRankReranker:
    return ReasonRankReranker(engine, model_key="scripted", budget=32,
                              settings=RerankSettings(window=window, step=step), cache=cache)


def run(engine: ScriptedEngine, count: int, *, window: int = 4, step: int = 2) -> list[Event]:
    reranker = reasonrank(engine, window=window, step=step)
    candidates = [candidate(f"d{number}", f"d{number}", number + 1) for number in range(count)]

    async def events() -> list[Event]:
        return [event async for event in reranker.stream("moons", candidates)]

    return asyncio.run(events())


def test_each_window_reorders_what_the_previous_left(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, reversing)
    events = run(engine, 6)
    started = [event for event in events if isinstance(event, WindowStarted)]
    ranked = [event for event in events if isinstance(event, WindowRanked)]
    assert [(event.start, event.end) for event in started] == [(2, 6), (0, 4)]
    assert started[0].doc_ids == ("d2", "d3", "d4", "d5")
    assert ranked[0].doc_ids == ("d5", "d4", "d3", "d2") and ranked[0].status == "ok"
    assert started[1].doc_ids == ("d0", "d1", "d5", "d4")  # the first window's result, in place
    assert [numbers_in(request.prompt) for request in engine.requests] == [list(event.doc_ids) for event in started]
    assert events[-1] == RankingDone(reranker="reasonrank", window=2, doc_ids=("d4", "d5", "d1", "d0", "d3", "d2"))
    assert [event.type for event in events] == ["window_started", "window_reasoning", "window_reasoning",
                                                "window_ranked"] * 2 + ["ranking_done"]
    assert all(request.max_tokens == 32 + 100 and request.stop == ("</answer>",) for request in engine.requests)
    assert "".join(event.text for event in events if isinstance(event, WindowReasoning) and event.window == 0) == \
        ranked[0].reasoning


def test_windows_without_an_answer_or_with_an_engine_error_keep_their_order(tokenizer: object) -> None:
    def script(request: GenerationRequest) -> list[GenerationChunk] | Exception:
        if "d5" in request.prompt:
            return [GenerationChunk(text="<think>I think [4] > [1] but", token_ids=(1,), logprobs=({},),
                                    finish_reason="length")]
        return EngineError("connection refused")

    events = run(ScriptedEngine(tokenizer, script), 6)
    ranked = [event for event in events if isinstance(event, WindowRanked)]
    assert [(event.status, event.doc_ids) for event in ranked] == [
        ("truncated", ("d2", "d3", "d4", "d5")), ("failed", ("d0", "d1", "d2", "d3"))]
    assert ranked[1].failure == "engine error: connection refused"
    assert events[-1] == RankingDone(reranker="reasonrank", window=2,
                                     doc_ids=tuple(f"d{number}" for number in range(6)))


def test_a_window_too_long_for_the_context_fails_with_the_reason(tokenizer: object) -> None:
    events = run(ScriptedEngine(tokenizer, reversing, max_model_len=200), 3)
    [ranked] = [event for event in events if isinstance(event, WindowRanked)]
    assert ranked.status == "failed" and "do not fit the 200-token context" in ranked.failure


def test_queries_interleave_and_each_query_s_windows_run_in_order(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, reversing, pause_s=0.05)
    starts: list[tuple[str, float]] = []
    ends: list[tuple[str, float]] = []

    async def one(query: str) -> None:
        reranker = reasonrank(engine)
        candidates = [candidate(f"{query}{number}", f"{query}{number}", number + 1) for number in range(8)]
        async for event in reranker.stream(query, candidates):
            if isinstance(event, WindowStarted):
                starts.append((query, time.monotonic()))
            elif isinstance(event, WindowRanked):
                ends.append((query, time.monotonic()))

    async def both() -> None:
        await asyncio.gather(one("a"), one("b"))

    asyncio.run(both())
    for query in "ab":
        begun = [moment for who, moment in starts if who == query]
        done = [moment for who, moment in ends if who == query]
        assert len(begun) == len(done) == 3
        assert all(done[index] <= begun[index + 1] for index in range(2))  # the next after the previous
    first_b = min(moment for who, moment in starts if who == "b")
    last_a = max(moment for who, moment in starts if who == "a")
    assert first_b < last_a  # b did not wait for all of a's windows


def test_cached_windows_replay_so_a_query_cut_off_mid_way_resumes_without_redoing_them(
        tokenizer: object, tmp_path: Path) -> None:
    cache = JudgmentCache(tmp_path / "cache.sqlite3")
    engine = ScriptedEngine(tokenizer, reversing)
    reranker = reasonrank(engine, cache=cache)
    candidates = [candidate(f"d{number}", f"d{number}", number + 1) for number in range(8)]

    async def cut_after_first_window() -> None:
        stream = reranker.stream("moons", candidates)
        async for event in stream:
            if isinstance(event, WindowRanked):
                break
        await stream.aclose()

    async def all_events() -> list[Event]:
        return [event async for event in reranker.stream("moons", candidates)]

    asyncio.run(cut_after_first_window())
    assert len(engine.requests) == 1
    events = asyncio.run(all_events())
    ranked = [event for event in events if isinstance(event, WindowRanked)]
    assert len(engine.requests) == 3  # the first window came from the cache; the other two were generated
    assert [event.from_cache for event in ranked] == [True, False, False]
    assert [event.text for event in events if isinstance(event, WindowReasoning) and event.window == 0] == [
        "<think>reversing</think> <answer>[4] > [3] > [2] > [1]"]
    fresh = run(ScriptedEngine(tokenizer, reversing), 8)
    assert events[-1] == fresh[-1]  # the same final order as a run that was never cut
    assert [event.doc_ids for event in ranked] == [event.doc_ids for event in fresh if isinstance(event, WindowRanked)]


def test_each_document_s_moves_name_the_windows_that_made_them_and_references_link_to_cards(
        tokenizer: object) -> None:
    candidates = [candidate(f"d{number}", f"d{number}", number + 1, title=f"<b>T{number}</b>") for number in range(6)]
    events = run(ScriptedEngine(tokenizer, reversing), 6)
    folded = ReasonRankReranker.new_run("moons", candidates, settings=RerankSettings(window=4, step=2))
    for event in events:
        folded.apply(event)
    # d5 was [4] of window 1 (places 3–6) and went from #6 to #3; then [3] of window 2, from #3 to #2.
    assert folded.moves("d5") == [Move(window=0, label=4, before=6, after=3), Move(window=1, label=3, before=3,
                                                                                     after=2)]
    assert folded.moves("d0") == [Move(window=1, label=1, before=1, after=4)]
    assert folded.trajectory["d5"] == [6, 3, 2]
    state = folded.windows[1]
    state.reasoning = "[3] beats [1] <i>; [9] is no passage."
    html = linked_reasoning(state, folded)
    assert html == ('<a class="es-ref" href="#es-card-6" title="&lt;b&gt;T5&lt;/b&gt;">[3]</a> beats '
                    '<a class="es-ref" href="#es-card-1" title="&lt;b&gt;T0&lt;/b&gt;">[1]</a> &lt;i&gt;; [9] is no '
                    "passage.")
    page = render_windows(folded, reranked=True)
    assert 'id="es-card-6"' in page and 'href="#es-window-1">window 2</a> (as [3]): #3 → #2' in page
