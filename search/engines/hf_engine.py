"""transformers: the CPU fallback (and Spaces ZeroGPU). Requests are batched as they arrive; each row of a
batch streams its own text, stops on its own stop string, and reports the verdict tokens' log-probabilities
from the logits at every position it generates."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from search.engines.base import Engine, EngineError, GenerationChunk, GenerationRequest, cpu_dtype

BATCH_WAIT_S = 0.05
"""How long the worker waits for more requests to fill a batch once the first one arrives."""
WORKER_JOIN_S = 60
"""The longest a closing engine waits for the batch in progress."""


@dataclass(kw_only=True, slots=True, eq=False)
class _Row:
    """One request's state inside a batch; written by the worker thread, read by the engine loop."""

    request: GenerationRequest
    deliver: Any
    token_ids: list[int] = field(default_factory=list)
    pending_logprobs: dict[int, float] = field(default_factory=dict)
    sent_chars: int = 0
    done: bool = False
    cancelled: bool = False


class TransformersEngine(Engine):
    kind = "transformers"

    def __init__(self, *, model: str, location: str, max_model_len: int, dtype: str = "auto",
                 batch_size: int = 16) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__()
        self.model = model
        self.max_model_len = max_model_len
        self.batch_size = batch_size
        self.capacity = 2 * batch_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self._model = AutoModelForCausalLM.from_pretrained(location, dtype=cpu_dtype(dtype, self.device)).to(
                self.device).eval()
        except (OSError, ValueError) as error:
            self.close()
            raise EngineError(f"transformers could not load {location}: {error}") from error
        self._batch_tokenizer = AutoTokenizer.from_pretrained(location, padding_side="left")
        if self._batch_tokenizer.pad_token is None:
            self._batch_tokenizer.pad_token = self._batch_tokenizer.eos_token
        self._pending: queue.Queue[_Row | None] = queue.Queue()
        self._running: list[_Row] = []
        self._worker = threading.Thread(target=self._work, name="transformers-batches", daemon=True)
        self._worker.start()

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        chunks: asyncio.Queue[GenerationChunk | Exception] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        row = _Row(request=request, deliver=lambda item: loop.call_soon_threadsafe(chunks.put_nowait, item))
        self._pending.put(row)
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            row.cancelled = True

    def active_requests(self) -> int:
        return self._pending.qsize() + sum(not row.done and not row.cancelled for row in self._running)

    async def _shutdown(self) -> None:
        """Stop the worker and wait for its batch to end: a process that exits while the worker is still inside
        generate() aborts ("terminate called without an active exception", seen in CI)."""
        self._pending.put(None)
        await asyncio.to_thread(self._worker.join, WORKER_JOIN_S)

    def _work(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            rows = [first]
            while len(rows) < self.batch_size:
                try:
                    row = self._pending.get(timeout=BATCH_WAIT_S)
                except queue.Empty:
                    break
                if row is None:
                    self._pending.put(None)
                    break
                rows.append(row)
            rows = [row for row in rows if not row.cancelled]
            if rows:
                self._run_batch(rows)

    def _run_batch(self, rows: list[_Row]) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        self._running = rows
        try:
            inputs = self._batch_tokenizer([row.request.prompt for row in rows], return_tensors="pt",
                                           padding=True).to(self.device)
            with torch.inference_mode():
                self._model.generate(
                    **inputs, do_sample=False, max_new_tokens=max(row.request.max_tokens for row in rows),
                    pad_token_id=self._batch_tokenizer.pad_token_id,
                    logits_processor=LogitsProcessorList([_WatchAndRestrict(rows)]),
                    stopping_criteria=StoppingCriteriaList([_RowsDone(rows)]),
                    streamer=_RowStreamer(rows, self.tokenizer),
                )
        except Exception as error:
            for row in rows:
                if not row.done:
                    row.done = True
                    row.deliver(EngineError(f"transformers generation failed: {error}"))
        finally:
            self._running = []


class _WatchAndRestrict:
    """Records each row's watched log-probabilities from the raw logits, then masks rows with allowed tokens."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logprobs = torch.log_softmax(scores.float(), dim=-1)
        for index, row in enumerate(self.rows):
            row.pending_logprobs = {token: logprobs[index, token].item() for token in row.request.watch_token_ids}
            if row.request.allowed_token_ids:
                allowed = list(row.request.allowed_token_ids)
                kept = scores[index, allowed].clone()
                scores[index, :] = float("-inf")
                scores[index, allowed] = kept
        return scores


class _RowsDone:
    """Tells ``generate`` which rows are finished (stop string, budget, end of sequence, or cancelled)."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.tensor([row.done or row.cancelled for row in self.rows], device=input_ids.device)


class _RowStreamer:
    """Receives each step's new tokens for the whole batch and turns them into per-row chunks."""

    def __init__(self, rows: list[_Row], tokenizer: Any) -> None:
        self.rows = rows
        self.tokenizer = tokenizer
        self.prompt_seen = False
        self.eos_ids = {tokenizer.eos_token_id}

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.tolist(), strict=True):
            if not (row.done or row.cancelled):
                self._advance(row, token)

    def end(self) -> None:
        for row in self.rows:
            if not (row.done or row.cancelled):
                self._finish(row, "length", None, self._text(row))

    def _text(self, row: _Row) -> str:
        return self.tokenizer.decode(row.token_ids, skip_special_tokens=False)

    def _advance(self, row: _Row, token: int) -> None:
        logprobs = row.pending_logprobs
        if token in self.eos_ids:
            row.token_ids.append(token)
            self._finish(row, "stop", None, self.tokenizer.decode(row.token_ids[:-1], skip_special_tokens=False),
                         new_tokens=(token,), logprobs=(logprobs,))
            return
        row.token_ids.append(token)
        text = self._text(row)
        stops = [(text.find(stop), stop) for stop in row.request.stop if stop in text]
        if stops:
            at, stop = min(stops)
            self._finish(row, "stop", stop, text[:at], new_tokens=(token,), logprobs=(logprobs,))
        elif len(row.token_ids) >= row.request.max_tokens:
            self._finish(row, "length", None, text, new_tokens=(token,), logprobs=(logprobs,))
        else:
            # Hold back what could be the start of a stop string, and half-decoded characters.
            hold = max((len(stop) - 1 for stop in row.request.stop), default=0)
            visible = len(text) - hold
            while visible > row.sent_chars and text[visible - 1] == "\ufffd":
                visible -= 1
            new_text = text[row.sent_chars:visible] if visible > row.sent_chars else ""
            row.sent_chars = max(row.sent_chars, visible)
            row.deliver(GenerationChunk(text=new_text, token_ids=(token,), logprobs=(logprobs,)))

    def _finish(self, row: _Row, reason: Any, stop: str | None, text: str, *, new_tokens: tuple[int, ...] = (),
                logprobs: tuple[dict[int, float], ...] = ()) -> None:
        row.done = True
        row.deliver(GenerationChunk(text=text[row.sent_chars:], token_ids=new_tokens, logprobs=logprobs,
                                    finish_reason=reason, stop_reason=stop))
