"""Continuous batching for the transformers engine: sequences join and leave a running batch between decoding
steps, so a request that arrives while others generate (a forced verdict step, the next candidates) starts at once
instead of waiting for a whole static batch, and the first candidate's text shows after its own prefill.

One key/value cache holds the running batch, left-padded so that every row's newest token is in the last column;
rows joining together are prefilled in one pass (each padded) and padded in, a row leaving is dropped and the
padding no row needs is trimmed. Finished rows' caches are kept (least recently used first out, up to a memory
budget), and running rows' are read, so that a prompt sharing a prefix with one (rank1's forced step shares its
whole passage prompt, a belief probe its running reasoning, evidence's re-scores the text before the removed
sentence) prefills only the rest. The arithmetic per row is the model's own: padding is masked out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

PREFIX_CACHE_BYTES = 512 * 2**20
"""Memory for finished rows' caches kept for reuse (for rank1-0.5b in float32, about 21,000 tokens)."""
MIN_SHARED_PREFIX = 8
"""Shorter shared prefixes are prefilled again rather than copied."""

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]
"""One (keys, values) pair per layer, each [batch, heads, positions, head size]."""


@dataclass(kw_only=True, slots=True)
class Prefilled:
    """A prompt run through the model: its cache, the logits after its last token, and how many of its tokens
    came from the prefix cache instead."""

    cache: KeyValues
    logits: torch.Tensor
    cached_tokens: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Held:
    """A prompt's tokens and the prefix of them (``shared`` tokens, their ``cache``) that needs no computing."""

    tokens: list[int]
    shared: int
    cache: KeyValues | None

    @property
    def new(self) -> int:
        """The tokens a prefill computes."""
        return len(self.tokens) - self.shared


class PrefixCache:
    """Finished sequences' caches by their tokens, for prompts that begin the same way."""

    def __init__(self, budget_bytes: int = PREFIX_CACHE_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[int, ...], KeyValues] = OrderedDict()
        self._bytes = 0

    def add(self, tokens: tuple[int, ...], cache: KeyValues) -> None:
        size = _bytes(cache)
        if not tokens or size > self.budget_bytes or tokens in self._entries:
            return
        self._entries[tokens] = cache
        self._bytes += size
        while self._bytes > self.budget_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= _bytes(dropped)

    def longest(self, tokens: list[int]) -> tuple[int, KeyValues | None]:
        """The longest shared prefix with a kept sequence, up to all but the last of ``tokens`` (the model must see
        at least one to give logits), and that sequence's cache; (0, None) below ``MIN_SHARED_PREFIX``."""
        best, found = 0, None
        wanted = torch.tensor(tokens[:-1], dtype=torch.long)
        for kept, cache in self._entries.items():
            if min(len(kept), len(wanted)) > best and (shared := _shared(kept, wanted)) > best:
                best, found = shared, (kept, cache)
        if found is None or best < MIN_SHARED_PREFIX:
            return 0, None
        self._entries.move_to_end(found[0])
        return best, [(keys[:, :, :best], values[:, :, :best]) for keys, values in found[1]]


def _shared(kept: Sequence[int], wanted: torch.Tensor) -> int:
    """How many tokens ``kept`` and ``wanted`` share from the start."""
    length = min(len(kept), len(wanted))
    differs = torch.nonzero(torch.tensor(kept[:length], dtype=torch.long) != wanted[:length])
    return int(differs[0]) if len(differs) else length


def _bytes(cache: KeyValues) -> int:
    return sum(keys.numel() * keys.element_size() + values.numel() * values.element_size() for keys, values in cache)


@dataclass(kw_only=True, slots=True, eq=False)
class BatchRow:
    """A sequence decoding in the running batch (the engine's rows extend it with their requests)."""

    next_token: int
    """The token it feeds at the next step."""
    length: int = 0
    """Positions it holds in the cache (the rest of its columns, on the left, are padding); set by ``join``."""

    def held_tokens(self) -> Sequence[int]:
        """The tokens whose positions it holds in the cache (``length`` of them)."""
        raise NotImplementedError


Row = TypeVar("Row", bound=BatchRow)


class RunningBatch(Generic[Row]):
    """The model's cache for the rows decoding together, left-padded to a common width, and those rows in the
    cache's order: one list, so that the two cannot disagree.

    ``join`` and ``keep`` build the new cache before they change anything, so that a failure (out of memory, say)
    leaves the batch as it was. ``decode`` runs the model, which extends the cache layer by layer in place: after
    it fails the batch cannot be trusted."""

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.device = device
        self.past: Any = None
        """The ``DynamicCache`` the model reads and extends at every step (None while no row runs)."""
        self.rows: list[Row] = []

    @property
    def cache(self) -> KeyValues:
        return [(layer.keys, layer.values) for layer in self.past.layers] if self.past is not None else []

    @cache.setter
    def cache(self, cache: KeyValues) -> None:
        from transformers import DynamicCache

        if not cache:
            self.past = None
        elif self.past is None:
            self.past = DynamicCache(ddp_cache_data=cache)
        else:
            for layer, (keys, values) in zip(self.past.layers, cache, strict=True):
                layer.keys, layer.values = keys, values

    @property
    def width(self) -> int:
        return self.past.layers[0].keys.shape[2] if self.past is not None else 0

    def __len__(self) -> int:
        return len(self.rows)

    def held(self, tokens: list[int], prefix: PrefixCache) -> Held:
        """``tokens`` and the longest prefix of them (up to all but the last) that ``prefix`` or a running row
        holds: a belief probe's prompt is its reasoning request's prompt and reasoning so far, still decoding here."""
        shared, kept = prefix.longest(tokens)
        wanted = torch.tensor(tokens[:-1], dtype=torch.long)
        source = None
        for row in self.rows:
            if (length := _shared(row.held_tokens(), wanted)) > max(shared, MIN_SHARED_PREFIX - 1):
                shared, source = length, row
        if source is not None:
            kept = self.row_cache(source, shared)
        return Held(tokens=tokens, shared=shared, cache=kept)

    @torch.inference_mode()
    def prefill(self, prompts: list[Held]) -> list[Prefilled]:
        """Run prompts in one pass, each after the prefix of it already held: requests that arrive together (the
        probes of documents reasoning in step) cost one pass over the weights, not one each. Row ``i`` is
        [padding, its held cache, padding, its new tokens], masked, so its numbers are its own; each comes out as a
        batch of one."""
        from transformers import DynamicCache

        width = max(held.shared for held in prompts)
        new = max(held.new for held in prompts)
        template = next((held.cache for held in prompts if held.cache is not None), None)
        past = DynamicCache()
        if template is not None:
            def column(held: Held, layer: int, part: int) -> torch.Tensor:
                kept = held.cache[layer][part] if held.cache is not None else template[layer][part][:, :, :0]
                return _pad_left(kept, width)

            past = DynamicCache(ddp_cache_data=[(torch.cat([column(held, layer, 0) for held in prompts]),
                                                 torch.cat([column(held, layer, 1) for held in prompts]))
                                                for layer in range(len(template))])
        input_ids = torch.zeros(len(prompts), new, dtype=torch.long, device=self.device)
        attention_mask = torch.zeros(len(prompts), width + new, dtype=torch.long, device=self.device)
        positions = torch.zeros(len(prompts), new, dtype=torch.long, device=self.device)
        for index, held in enumerate(prompts):
            input_ids[index, new - held.new:] = torch.tensor(held.tokens[held.shared:], device=self.device)
            attention_mask[index, width - held.shared:width] = 1
            attention_mask[index, width + new - held.new:] = 1
            positions[index, new - held.new:] = torch.arange(held.shared, len(held.tokens), device=self.device)
        output = self.model(input_ids=input_ids, past_key_values=past, attention_mask=attention_mask,
                            position_ids=positions, cache_position=torch.arange(width, width + new, device=self.device),
                            use_cache=True, logits_to_keep=1)
        layers = [(layer.keys, layer.values) for layer in output.past_key_values.layers]
        return [Prefilled(cache=[tuple(torch.cat([part[index:index + 1, :, width - held.shared:width],
                                                  part[index:index + 1, :, width + new - held.new:]], dim=2)
                                       for part in layer) for layer in layers],
                          logits=output.logits[index, -1].float(), cached_tokens=held.shared)
                for index, held in enumerate(prompts)]

    def join(self, row: Row, cache: KeyValues) -> None:
        """Add ``row``, prefilled into ``cache`` (a batch of one), as the last row."""
        length = cache[0][0].shape[2]
        width = max(self.width, length)
        self.cache = [(torch.cat([_pad_left(keys, width), _pad_left(new_keys, width)]),
                       torch.cat([_pad_left(values, width), _pad_left(new_values, width)]))
                      for (keys, values), (new_keys, new_values) in zip(self.cache, cache, strict=True)
                      ] if self.rows else cache
        row.length = length
        self.rows.append(row)

    def row_cache(self, row: Row, length: int | None = None) -> KeyValues:
        """A copy of one row's cache without its padding: its first ``length`` positions (default all)."""
        index = self.rows.index(row)
        start = self.width - row.length
        end = self.width if length is None else start + length
        return [(keys[index:index + 1, :, start:end].clone(), values[index:index + 1, :, start:end].clone())
                for keys, values in self.cache]

    def keep(self, rows: list[Row]) -> None:
        """Keep only these rows, in this order, and drop the columns that are padding in all of them."""
        if not rows:
            self.cache, self.rows = [], []
            return
        start = self.width - max(row.length for row in rows)
        chosen = torch.tensor([self.rows.index(row) for row in rows], device=self.device)
        self.cache = [(keys.index_select(0, chosen)[:, :, start:], values.index_select(0, chosen)[:, :, start:])
                      for keys, values in self.cache]
        self.rows = list(rows)

    @torch.inference_mode()
    def decode(self) -> torch.Tensor:
        """Feed each row its next token; returns the logits after it, [rows, vocabulary], in float32."""
        width = self.width
        lengths = torch.tensor([row.length for row in self.rows], device=self.device)
        columns = torch.arange(width + 1, device=self.device)
        attention_mask = (columns[None, :] >= (width - lengths)[:, None]).long()
        output = self.model(input_ids=torch.tensor([[row.next_token] for row in self.rows], device=self.device),
                            past_key_values=self.past, attention_mask=attention_mask, position_ids=lengths[:, None],
                            cache_position=torch.tensor([width], device=self.device), use_cache=True,
                            logits_to_keep=1)
        self.past = output.past_key_values
        for row in self.rows:
            row.length += 1
        return output.logits[:, -1].float()


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[2]
    if missing <= 0:
        return tensor
    padding = tensor.new_zeros(tensor.shape[0], tensor.shape[1], missing, tensor.shape[3])
    return torch.cat([padding, tensor], dim=2)
