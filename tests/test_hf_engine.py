"""The transformers engine's own machinery, on the demo model: continuous batching (a late request does not wait for
the running ones; rows joining and leaving a running batch keep their own numbers), the prefix cache, float32
linear layers through oneDNN, and grouped-query attention that reads the shared key/value heads in place.
test_engines.py runs it beside vLLM through the rerankers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from search.engines import onednn
from search.engines.base import GenerationChunk, GenerationRequest
from search.engines.grouped_attention import NAME, use_grouped_attention
from search.engines.hf_engine import TransformersEngine

TOLERANCE = 1e-3
WATCHED = (1, 2, 330, 1489)
STORY = "Write a long story about a cat who sails around the world.\n\nOnce upon a time,"
PROMPTS = ("The planets of the solar system, from the Sun outwards, are",
           "Question: which planets have no moons?\nAnswer:",
           "A recipe for bread, step by step:\n1.",
           "Mercury has no moons. Venus has none either. Earth has one, the Moon. Mars has two small moons, "
           "Phobos and Deimos, probably captured asteroids. Summary:")


@pytest.fixture(scope="module")
def engine(demo_model: Path) -> Iterator[TransformersEngine]:
    engine = TransformersEngine(model="demo", location=str(demo_model), max_model_len=2048, batch_size=4)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(demo_model: Path) -> tuple[object, object]:
    """The demo model as transformers loads it, in float32 with PyTorch's own linear layers."""
    return (AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(demo_model))


def reference_logprobs(reference: tuple[object, object], text: str, generated: list[int] = ()) -> torch.Tensor:
    """The next token's log-probabilities after ``text``'s tokens and then ``generated``."""
    model, tokenizer = reference
    with torch.inference_mode():
        ids = torch.tensor([tokenizer(text).input_ids + list(generated)])
        return torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)


async def collect(engine: TransformersEngine, request: GenerationRequest, delay_s: float = 0.0
                  ) -> list[GenerationChunk]:
    await asyncio.sleep(delay_s)
    return [chunk async for chunk in engine.generate(request)]


def tokens(chunks: list[GenerationChunk]) -> list[int]:
    return [token for chunk in chunks for token in chunk.token_ids]


def test_a_late_request_finishes_while_a_long_one_is_still_generating(engine: TransformersEngine) -> None:
    """With static batches the short request waited for the long one's whole budget."""
    finished: list[str] = []

    async def run(name: str, request: GenerationRequest, delay_s: float) -> None:
        chunks = await collect(engine, request, delay_s)
        assert chunks[-1].finish_reason is not None
        finished.append(name)

    async def both() -> None:
        await asyncio.gather(run("long", GenerationRequest(prompt=STORY, max_tokens=120), 0.0),
                             run("short", GenerationRequest(prompt=PROMPTS[0], max_tokens=3), 1.0))

    asyncio.run(both())
    assert finished == ["short", "long"]


def test_rows_that_join_and_leave_a_running_batch_keep_their_own_numbers(
        engine: TransformersEngine, reference: tuple[object, object]) -> None:
    """Prompts of different lengths arriving at different times share the batch (left-padded, masked): each row's
    watched log-probabilities are its own, as a model run on its text alone gives them."""
    requests = [GenerationRequest(prompt=prompt, max_tokens=8 + 6 * number, watch_token_ids=WATCHED)
                for number, prompt in enumerate(PROMPTS)]

    async def together() -> list[list[GenerationChunk]]:
        return await asyncio.gather(*(collect(engine, request, 0.4 * number)
                                      for number, request in enumerate(requests)))

    for request, chunks in zip(requests, asyncio.run(together()), strict=True):
        generated = tokens(chunks)
        assert len(generated) == request.max_tokens or chunks[-1].finish_reason == "stop"
        logprobs = [entry for chunk in chunks for entry in chunk.logprobs]
        for position in range(len(generated)):
            expected = reference_logprobs(reference, request.prompt, generated[:position])
            assert [logprobs[position][token] for token in WATCHED] == pytest.approx(
                [expected[token].item() for token in WATCHED], abs=TOLERANCE), (request.prompt, position)


def test_a_prompt_that_begins_like_a_finished_one_is_served_from_the_prefix_cache(
        engine: TransformersEngine, reference: tuple[object, object]) -> None:
    """rank1's forced verdict step repeats its whole prompt and reasoning: only what differs is computed."""
    first = asyncio.run(collect(engine, GenerationRequest(prompt=PROMPTS[3], max_tokens=12)))
    continued = PROMPTS[3] + "".join(chunk.text for chunk in first) + "\n</think>"
    request = GenerationRequest(prompt=continued, max_tokens=1, watch_token_ids=WATCHED, allowed_token_ids=(1, 2))
    [chunk] = asyncio.run(collect(engine, request))
    prompt_tokens = len(engine.tokenizer(PROMPTS[3]).input_ids)
    assert prompt_tokens <= chunk.cached_tokens < len(engine.tokenizer(continued).input_ids)
    expected = reference_logprobs(reference, continued)
    assert [chunk.logprobs[0][token] for token in WATCHED] == pytest.approx(
        [expected[token].item() for token in WATCHED], abs=TOLERANCE)
    assert chunk.token_ids[0] == (1 if expected[1] > expected[2] else 2)  # the allowed token the model prefers
    assert asyncio.run(collect(engine, GenerationRequest(prompt="Unrelated: " + STORY, max_tokens=1)))[
        -1].cached_tokens == 0


def test_packed_linear_layers_compute_what_pytorchs_do(demo_model: Path, reference: tuple[object, object]) -> None:
    model, tokenizer = reference
    packed = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval()
    linear = sum(isinstance(module, torch.nn.Linear) for module in packed.modules())
    assert onednn.available() and onednn.pack_linear_layers(packed) == linear > 0
    assert not any(isinstance(module, torch.nn.Linear) for module in packed.modules())
    inputs = tokenizer(list(PROMPTS), return_tensors="pt", padding=True) if tokenizer.pad_token else None
    inputs = inputs or tokenizer(PROMPTS[3], return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(packed(**inputs).logits, model(**inputs).logits, atol=1e-3)


def test_grouped_attention_computes_what_sdpa_does_on_a_left_padded_batch(
        demo_model: Path, reference: tuple[object, object], engine: TransformersEngine) -> None:
    """The engine's attention (key/value heads shared in place, with a padding mask) against transformers' SDPA
    (heads repeated), every real position of a left-padded batch."""
    model, tokenizer = reference
    assert engine._model.config._attn_implementation == NAME
    grouped = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval()
    assert grouped.config.num_key_value_heads < grouped.config.num_attention_heads  # the demo model groups heads
    assert use_grouped_attention(grouped) and grouped.config._attn_implementation == NAME
    rows = [tokenizer(prompt).input_ids for prompt in PROMPTS]
    width = max(len(row) for row in rows)
    ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    with torch.inference_mode():
        expected, got = (each(input_ids=ids, attention_mask=mask).logits for each in (model, grouped))
    assert torch.allclose(got[mask.bool()], expected[mask.bool()], atol=1e-4)
