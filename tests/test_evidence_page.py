"""Evidence on the page and in the workbench, in a real browser (Chromium). The engine is scripted so that every
number on screen is known in advance: its verdict's log-odds are a sum over key phrases of the passage the prompt
holds (the real engines run the same evidence code in test_engines.py). Checked: shaded sentences with their
numbers, the legend above the fold, the "why" line, quotes underlined, the faithfulness badge, hostile text shown
as text, and the model's evidence taken as an annotator's span with one key, then compared in Agreement."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import shoot, write
from playwright.sync_api import Page, expect
from scripted import ScriptedEngine, tokens_of
from transformers import AutoTokenizer

from search.annotation.store import AnnotationStore
from search.engines.base import GenerationChunk, GenerationRequest
from search.models import ResolvedModel
from search.pipeline import LoadedModel
from search.rerank.rank1 import STOP_TRUE, VerdictTokens
from search.retrieval.first_stage import open_first_stage
from search.settings import Settings
from search.uploads import CorpusLibrary
from ui.app import CSS, JS, ModelStatus, build_app

SUPPORT = "Caffeine blocks adenosine receptors in the brain."
COUNTER = "Decaf coffee has most of the caffeine removed."
WEIGHTS = {"blocks adenosine": 2.5, "Decaf": -1.5}
"""The scripted verdict's log-odds: the sum over these phrases of the passage in the prompt."""
REASONING = f'It says "{SUPPORT[:-1]}", so it is relevant.'
HOSTILE_TITLE = "<script>window.hacked = 1</script> Caffeine"
DOCUMENTS = [
    {"_id": "ev-caffeine", "title": "Caffeine and sleep",
     "text": f"{SUPPORT} Tea is grown on hillsides in Asia. {COUNTER} Many people drink coffee in the morning. "
             "The effect lasts several hours."},
    {"_id": "ev-tea", "title": "Tea",
     "text": "Tea is grown on hillsides in Asia. It is picked by hand. Green tea is steamed. Black tea is "
             "oxidised. Both come from one plant."},
    {"_id": "ev-hostile", "title": HOSTILE_TITLE,
     "text": 'Caffeine blocks adenosine <img src=x onerror="window.hacked = 2"> here. ${window.hacked = 3} Tea '
             "is grown on hillsides in Asia. It is picked by hand. Green tea is steamed."},
]
QUERY = "what does caffeine do to sleep"


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def log_odds(prompt: str) -> float:
    passage = prompt.split("\nPassage: ", 1)[1].split("\n<think>", 1)[0]
    return sum(weight for phrase, weight in WEIGHTS.items() if phrase in passage)


def weighing(tokenizer: Any) -> Any:
    verdict = VerdictTokens.of(tokenizer)

    def logprobs(prompt: str) -> dict[int, float]:
        margin = log_odds(prompt)
        return {verdict.true_id: -math.log1p(math.exp(-margin)), verdict.false_id: -math.log1p(math.exp(margin))}

    def script(request: GenerationRequest) -> Sequence[GenerationChunk]:
        if request.allowed_token_ids:
            return [GenerationChunk(text="", token_ids=(verdict.true_id,), logprobs=(logprobs(request.prompt),),
                                    finish_reason="length")]
        return [*tokens_of(tokenizer, REASONING),
                GenerationChunk(text="", token_ids=(verdict.true_id,), logprobs=(logprobs(request.prompt),),
                                finish_reason="stop", stop_reason=STOP_TRUE)]

    return script


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory, index_dir: Path, demo_model: Path) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("evidence")
    corpus = write(folder / "corpus.jsonl", "".join(json.dumps(record) + "\n" for record in DOCUMENTS))
    settings = Settings().replace(corpus=corpus, index_dir=index_dir, judgment_cache=False, top_k=3, evidence=True,
                                  budget=64, uploads=folder / "uploads")
    library = CorpusLibrary(settings, ("hybrid",), store=settings.uploads)
    library.add("evidence", open_first_stage(settings, ("hybrid",)))
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    engine = ScriptedEngine(tokenizer, weighing(tokenizer))
    loaded = LoadedModel(engine=engine, model=ResolvedModel(name="scripted", location="", key="scripted",
                                                            is_demo=False))
    app = build_app(library, ModelStatus(loaded=loaded, settings=settings),
                    annotations=AnnotationStore(folder / "annotations.sqlite3"))
    _, url, _ = app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=CSS, js=JS)
    yield url
    app.close()
    engine.close()


def card(page: Page, doc_id: str) -> Any:
    return page.locator(f'.es-rcard[data-doc="{doc_id}"]')


def test_sentences_are_shaded_by_their_measured_effect_with_a_why_line_and_a_legend(page: Page, app_url: str
                                                                                    ) -> None:
    page.goto(app_url)
    box = page.get_by_label("Query")
    box.fill(QUERY)
    box.press("Enter")
    expect(page.locator(".es-why")).to_have_count(3, timeout=60_000)
    legend = page.locator(".es-ev-legend")
    expect(legend).to_contain_text("supports the score")
    expect(legend).to_contain_text("counts against it")
    assert legend.bounding_box()["y"] + legend.bounding_box()["height"] <= 800  # above the fold at 1280×800
    full, without_support, without_counter = sigmoid(1.0), sigmoid(-1.5), sigmoid(2.5)
    caffeine = card(page, "ev-caffeine")
    expect(caffeine.locator(".es-why")).to_have_text(
        f"P(true) {full:.2f} — without {SUPPORT} it would be {without_support:.2f}")
    shaded = caffeine.locator(".es-snippet .es-ev span[style]")
    expect(shaded.filter(has_text=SUPPORT[:20]).first).to_have_attribute(
        "title", f"Δ +{full - without_support:.2f}: without this sentence P(true) would be {without_support:.2f} "
                 f"(with it {full:.2f})")
    assert "rgba(33, 102, 172" in shaded.filter(has_text=SUPPORT[:20]).first.get_attribute("style")  # blue
    caffeine.locator("details.es-open summary").click()
    against = caffeine.locator(".es-passage .es-ev span[style]").filter(has_text=COUNTER)
    assert "rgba(230, 97, 1" in against.get_attribute("style")  # orange
    assert against.get_attribute("title").startswith(f"Δ {full - without_counter:+.2f}")
    expect(caffeine.locator(".es-passage .es-ev u").first).to_have_text(SUPPORT[:-1])  # quoted in the reasoning
    # Nothing moves the tea document's score: its top sentence moves it no more than random ones.
    tea = card(page, "ev-tea")
    expect(tea.locator(".es-unfaithful")).to_have_text("reasoning not supported")
    expect(tea.locator(".es-why")).to_contain_text("no single sentence moves it")
    expect(caffeine.locator(".es-unfaithful")).to_have_count(0)
    hostile = card(page, "ev-hostile")
    hostile.locator("details.es-open summary").click()
    expect(hostile.locator(".es-passage")).to_contain_text('<img src=x onerror="window.hacked = 2">')
    expect(hostile.locator(".es-passage")).to_contain_text(HOSTILE_TITLE)
    assert page.evaluate("window.hacked") is None
    shoot(page, "evidence")


def test_the_annotator_takes_the_model_s_evidence_with_one_key_and_agreement_compares_spans(
        page: Page, app_url: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 1600})
    page.goto(app_url)
    page.get_by_role("tab", name="Annotate").click()
    page.get_by_label("Annotator (your name)").fill("ada")
    page.get_by_label("Project name").fill("evidence")
    page.get_by_label(re.compile("or type queries")).fill(f"q1\t{QUERY}")
    page.get_by_role("button", name="Create project").click()
    expect(page.locator(".es-list tr")).to_have_count(4, timeout=60_000)  # a header and the three documents
    for _ in range(2):  # to the document with evidence to take, wherever the first stage put it
        if "Caffeine and sleep" in page.locator(".es-list tr.es-current").inner_text():
            break
        page.locator("h1").click()
        page.keyboard.press("j")
        page.wait_for_timeout(1000)
    expect(page.locator(".es-list tr.es-current")).to_contain_text("Caffeine and sleep")
    evidence = page.locator(".es-model-evidence")
    expect(evidence).to_contain_text(f"Evidence: {SUPPORT} (without it P(true) drops by "
                                     f"{sigmoid(1.0) - sigmoid(-1.5):.2f})", timeout=30_000)
    page.locator("h1").click()
    page.keyboard.press("e")
    expect(page.locator("#annotate-passage mark")).to_have_text(SUPPORT, timeout=15_000)
    page.keyboard.press("2")  # the grade saves the span with it
    expect(page.locator(".es-list tr", has_text="Caffeine and sleep").locator("td:nth-child(5)")).to_have_text(
        "2", timeout=15_000)
    page.get_by_role("button", name=re.compile("Agreement")).filter(has_text="▼").first.click()
    page.get_by_role("button", name="Compute agreement").click()
    overlap = page.locator("#annotate-overlap")
    expect(overlap.get_by_role("row", name="annotator: ada 1 1")).to_be_visible(timeout=15_000)  # F1 1: same span
    shoot(page, "evidence-workbench")
