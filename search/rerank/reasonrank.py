"""ReasonRank, the listwise reasoning reranker: one reasoning chain per window of passages, answering a
permutation. It gives ranks, never probabilities.

Prompt, decoding and windows follow the reference exactly (see ``tests/test_reasonrank.py`` for the pinned
prompt). Where the reference is sloppy we are exact instead: the answer is read only from ``<answer>…</answer>``
after ``</think>`` (never from digits in the reasoning); without one the window keeps its order and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search.engines.base import EngineError, GenerationRequest
from search.rerank.base import Reranker, RerankerDefaults, query_text
from search.rerank.cache import judgment_key
from search.rerank.events import Event, RankingDone, WindowRanked, WindowReasoning, WindowStarted, WindowStatus
from search.rerank.listwise import ListwiseRun
from search.retrieval.ranking import Candidate

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from search.settings import RerankSettings

SYSTEM = (
    "You are RankLLM, an intelligent assistant that can rank passages based on their relevance to the query. "
    "Given a query and a passage list, you first thinks about the reasoning process in the mind and then provides "
    "the answer (i.e., the reranked passage list). The reasoning process and answer are enclosed within <think> "
    "</think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> "
    "answer here </answer>."
)
RECIPE = "reasonrank-v1"
"""Changes whenever the prompt or decoding changes, so cached window responses of another recipe are not
read again."""
ANSWER_ROOM = 100
"""New tokens allowed beyond the reasoning budget, for the answer (as the reference)."""
ANSWER_END = "</answer>"
ANSWER = re.compile(r"</think>\s*<answer>(.*?)</answer>", re.DOTALL)
BRACKETED_NUMBER = re.compile(r"\[(\d+)\]")


def clean(text: str) -> str:
    """ftfy-fixed text with bracketed numbers rewritten, ``[3]`` → ``(3)``, so that passages and the query
    cannot be mistaken for identifiers."""
    from ftfy import fix_text

    return BRACKETED_NUMBER.sub(r"(\1)", fix_text(text))


def passage_content(tokenizer: PreTrainedTokenizerBase, title: str, text: str, max_tokens: int) -> str:
    """``Title: … Content: …`` (just the text when there is no title), cleaned, cut to its first
    ``max_tokens`` tokens."""
    content = clean(f"Title: {title} Content: {text}" if title else text)
    tokens = tokenizer.tokenize(content)
    return content if len(tokens) <= max_tokens else tokenizer.convert_tokens_to_string(tokens[:max_tokens])


def user_message(query: str, contents: Sequence[str]) -> str:
    """The reference's prefix, blank line, ``[n]`` passage lines and post prompt."""
    num = len(contents)
    query = clean(query)
    prefix = (f"I will provide you with {num} passages, each indicated by a numerical identifier []. Rank the "
              f"passages based on their relevance to the search query: {query}.\n")
    lines = "".join(f"[{rank}] {content}\n" for rank, content in enumerate(contents, start=1))
    post = (f"Search Query: {query}.\nRank the {num} passages above based on their relevance to the search query. "
            "All the passages should be included and listed using identifiers, in descending order of relevance. "
            "The format of the answer should be [] > [], e.g., [2] > [1].")
    return f"{prefix}\n{lines}{post}"


def render_prompt(tokenizer: PreTrainedTokenizerBase, query: str, contents: Sequence[str]) -> str:
    """The window's prompt through the model's chat template, ready for generation."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_message(query, contents)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def window_spans(count: int, size: int, step: int) -> list[tuple[int, int]]:
    """The reference's sliding windows over ``count`` candidates, from the back of the list to the front:
    (start, end) positions, end excluded."""
    spans = []
    end, start = count, count - size
    while end > 0 and start + step != 0:
        start = max(start, 0)
        spans.append((start, end))
        end, start = end - step, start - step
    return spans


@dataclass(frozen=True, kw_only=True, slots=True)
class ParsedAnswer:
    """A window's new order as 0-based positions into the window, and how it was read."""

    order: tuple[int, ...]
    status: WindowStatus
    answer: str = ""
    missing: tuple[int, ...] = ()
    duplicates: tuple[int, ...] = ()
    out_of_range: tuple[int, ...] = ()


def parse_answer(response: str, size: int) -> ParsedAnswer:
    """Read the permutation of a window of ``size`` passages from the model's response: only from the answer
    after the reasoning; duplicates and out-of-range identifiers dropped, missing ones appended in their prior
    order. No answer: the window keeps its order, ``truncated``."""
    match = ANSWER.search(response)
    if match is None:
        return ParsedAnswer(order=tuple(range(size)), status="truncated")
    order: list[int] = []
    duplicates: list[int] = []
    out_of_range: list[int] = []
    for number in (int(digits) for digits in re.findall(r"\d+", match.group(1))):
        if not 1 <= number <= size:
            out_of_range.append(number)
        elif number - 1 in order:
            duplicates.append(number)
        else:
            order.append(number - 1)
    missing = [position for position in range(size) if position not in order]
    repaired = bool(missing or duplicates or out_of_range)
    return ParsedAnswer(order=tuple(order + missing), status="repaired" if repaired else "ok",
                        answer=match.group(1).strip(), missing=tuple(position + 1 for position in missing),
                        duplicates=tuple(duplicates), out_of_range=tuple(out_of_range))


class ReasonRankReranker(Reranker):
    """Reranks a query's candidates window by window on one engine. Each query's windows run one after the
    other (each reorders what the previous left); different queries' streams share the engine concurrently."""

    name = "reasonrank"
    label = "ReasonRank: listwise windows, ranks only"
    defaults = RerankerDefaults(budget=3072, max_model_len=32768, model_on_gpu="reasonrank-7b",
                                model_elsewhere="reasonrank-7b")
    score_name = ListwiseRun.score_name
    relevance_meaning = "(count − rank + 1) ÷ count: ReasonRank gives ranks, no scores"
    renderer = "windows"
    ranks_only = True

    @property
    def window(self) -> int:
        return self.settings.window

    @property
    def step(self) -> int:
        return self.settings.step

    def requests_per_query(self, candidates: int) -> int:
        return 1

    @classmethod
    def new_run(cls, query: str, candidates: Sequence[Candidate], *, instruction: str = "",
                settings: RerankSettings) -> ListwiseRun:
        return ListwiseRun(reranker=cls.name, query=query, instruction=instruction, candidates=candidates,
                           window_count=len(window_spans(len(candidates), settings.window, settings.step)))

    @classmethod
    def fingerprint(cls, settings: RerankSettings) -> dict[str, Any]:
        return {"window": settings.window, "step": settings.step, "passage_tokens": settings.passage_tokens}

    def describe(self) -> str:
        return f"{super().describe()}, windows of {self.window} (step {self.step})"

    def prompt(self, query: str, candidates: Sequence[Candidate]) -> str:
        tokenizer = self.engine.tokenizer
        contents = [passage_content(tokenizer, item.passage.title, item.passage.text, self.settings.passage_tokens)
                    for item in candidates]
        return render_prompt(tokenizer, query, contents)

    def query_problem(self, query: str, *, instruction: str = "", candidates: int = 1) -> str | None:
        empty = [""] * min(self.window, max(candidates, 1))
        try:
            self._check_room(render_prompt(self.engine.tokenizer, query_text(query, instruction), empty))
        except ValueError as error:
            return f"even with empty passages, {error}"
        return None

    def _check_room(self, prompt: str) -> int:
        """The prompt's length in tokens, or ValueError when it and the new tokens do not fit the context."""
        length = len(self.engine.tokenizer(prompt, add_special_tokens=False).input_ids)
        if length + self.budget + ANSWER_ROOM > self.engine.max_model_len:
            raise ValueError(f"the window's prompt ({length} tokens) and {self.budget + ANSWER_ROOM} new tokens do "
                              f"not fit the {self.engine.max_model_len}-token context; lower the window, the "
                              "passage tokens or the budget")
        return length

    async def stream(self, query: str, candidates: Sequence[Candidate], *, instruction: str = "", template: str = "",
                     slots: asyncio.Semaphore | None = None) -> AsyncIterator[Event]:
        """Every window's events as they happen, then the final order. Closing the stream early cancels the
        engine request of the window in progress."""
        text = query_text(query, instruction, template)
        order = list(candidates)
        spans = window_spans(len(order), self.window, self.step)
        for number, (start, end) in enumerate(spans):
            window = order[start:end]
            doc_ids = tuple(item.passage.doc_id for item in window)
            yield WindowStarted(reranker=self.name, window=number, start=start, end=end, doc_ids=doc_ids)
            parts: list[str] = []
            tokens = prompt_tokens = 0
            cached = None
            try:
                # tokenizing long passages takes a while: on a thread, so the event loop keeps serving the others
                prompt = await asyncio.to_thread(self.prompt, text, window)
                prompt_tokens = await asyncio.to_thread(self._check_room, prompt)
                key = judgment_key(model=self.model_key, recipe=RECIPE, budget=self.budget, prompt=prompt)
                cached = self.cache.get(key) if self.cache is not None else None
                if cached is not None:
                    parts, tokens, stop = [cached["reasoning"]], cached["tokens"], cached["stop"]
                    yield WindowReasoning(reranker=self.name, window=number, text=cached["reasoning"])
                else:
                    request = GenerationRequest(prompt=prompt, max_tokens=self.budget + ANSWER_ROOM,
                                                stop=(ANSWER_END,))
                    finish = stop = None
                    async with slots or contextlib.nullcontext(), contextlib.aclosing(
                            self.engine.generate(request)) as chunks:  # closing the stream aborts it now
                        async for chunk in chunks:
                            if chunk.text:
                                parts.append(chunk.text)
                                yield WindowReasoning(reranker=self.name, window=number, text=chunk.text,
                                                      tokens=len(chunk.token_ids))
                            tokens += len(chunk.token_ids)
                            finish, stop = chunk.finish_reason or finish, chunk.stop_reason or stop
                    if finish is None or finish == "abort":
                        raise EngineError("the engine aborted the request" if finish else "the stream ended unfinished")
                    if self.cache is not None:
                        self.cache.put(key, {"reasoning": "".join(parts), "tokens": tokens, "stop": stop},
                                       model=self.model_key, recipe=RECIPE, budget=self.budget, prompt=prompt)
            except (EngineError, ValueError) as error:
                failure = f"engine error: {error}" if isinstance(error, EngineError) else str(error)
                yield WindowRanked(reranker=self.name, window=number, status="failed", doc_ids=doc_ids, answer="",
                                   reasoning="".join(parts), tokens=tokens, failure=failure,
                                   prompt_tokens=prompt_tokens)
                continue
            response = "".join(parts) + (ANSWER_END if stop == ANSWER_END else "")
            parsed = parse_answer(response, len(window))
            order[start:end] = [window[position] for position in parsed.order]
            yield WindowRanked(reranker=self.name, window=number, status=parsed.status,
                               doc_ids=tuple(item.passage.doc_id for item in order[start:end]), answer=parsed.answer,
                               missing=parsed.missing, duplicates=parsed.duplicates,
                               out_of_range=parsed.out_of_range, reasoning="".join(parts), tokens=tokens,
                               from_cache=cached is not None, prompt_tokens=prompt_tokens)
        yield RankingDone(reranker=self.name, window=len(spans), doc_ids=tuple(item.passage.doc_id for item in order))
