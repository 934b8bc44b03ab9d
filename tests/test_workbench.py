"""The annotator workbench as annotators use it: the real app process (app.py), a real browser, the keyboard,
restarts, and a server killed with SIGKILL in the middle of a burst of judgments."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest
from conftest import shoot
from gradio_client import Client
from playwright.sync_api import Browser, Page, expect
from servers import app_process, free_port

from search.annotation.exchange import import_jsonl, jsonl_text
from search.annotation.store import AnnotationStore, Project, StoredCandidate
from search.settings import REPO_ROOT, SAMPLE_CORPUS
from search.uploads import CorpusLibrary
from ui.annotate import AnnotateTab, AnnotationContext

QUERIES = "q01\twhat are the health effects of caffeine\nq02\twhich planets have no moons"
PROJECT = "caffeine & planets"
STORED_TIMEOUT_S = 60
"""How long an acknowledged edit may take to be seen in the store (it is committed before the page hears back)."""
# Key presses delivered in one task, before the page can show anything they cause: typed faster than it renders.
TYPE_AT_ONCE = """keys => { for (const key of keys) {
  document.dispatchEvent(new KeyboardEvent("keydown", {key, bubbles: true, cancelable: true})); } }"""
# The annotator's grade of each listed document, by its id (the "you" column).
YOUR_GRADES_BY_ID = """() => Object.fromEntries([...document.querySelectorAll(".es-list tr[data-doc]")]
  .map((row) => [row.dataset.doc, row.cells[4].textContent]))"""
AGREEMENT_TIMEOUT_MS = 90_000
"""How long an agreement may take to show on a loaded machine (a process's first one imports scikit-learn)."""


def expect_your_grades(page: Page, grades: list[str]) -> None:
    """The "you" column of the candidate list, in rank order (the list follows edits within a timer tick)."""
    expect(page.locator(".es-list tr td:nth-child(5)")).to_have_text(grades, timeout=10_000)


def stored_grades(annotations: Path, annotator: str = "ada") -> dict[str, int]:
    store = AnnotationStore(annotations)
    try:
        return {item.doc_id: item.grade for item in store.judgments(PROJECT, annotator=annotator)}
    finally:
        store.close()


def wait_until_stored(annotations: Path, expected: dict[str, int]) -> None:
    """Until the store holds exactly ``expected`` (doc id → grade) for ada; what it held last, if it never does."""
    deadline, found = time.monotonic() + STORED_TIMEOUT_S, {}
    while time.monotonic() < deadline:
        found = stored_grades(annotations)
        if found == expected:
            return
        time.sleep(0.1)
    assert found == expected


def shown_document(page: Page, doc_id: str, timeout_ms: int = 15_000) -> None:
    """Until the workbench shows ``doc_id`` (what the next key is for)."""
    expect(page.locator("#annotate-document [data-doc-id]")).to_have_attribute("data-doc-id", doc_id,
                                                                             timeout=timeout_ms)


def open_annotate(page: Page, url: str) -> None:
    # Not "load": once, on a busy machine, a restarted app's page did not reach it within 30 s; the locators
    # below wait for what they need.
    page.goto(url, wait_until="domcontentloaded")
    # The click waits until the page's load events (which reopen the project after a restart) no longer cover
    # the tabs with their progress: on a loaded machine that took over 30 s once.
    page.get_by_role("tab", name="Annotate").click(timeout=300_000)


def download(page: Page, suffix: str) -> str:
    link = page.locator(f"a[download$='{suffix}']").first
    expect(link).to_be_visible(timeout=15_000)
    return page.request.get(link.get_attribute("href")).text()


def typed(doc_id: str, seq: int, query_id: str = "q1") -> dict[str, object]:
    """What the page's script sends with an edit: the document on screen when it was typed, and its number."""
    return {"query_id": query_id, "doc_id": doc_id, "seq": seq}


def test_an_edit_lands_on_the_document_it_was_typed_for_whatever_the_current_one(
        tmp_path: Path, library: CorpusLibrary) -> None:
    """Keys typed before the page shows the next document, and requests that reach the server out of order: each
    edit names its document and its place in the order of typing, and lands there."""
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    store.create_project(Project(name="fast", corpus="sample_corpus"), [("q1", "a query"), ("q2", "another")])
    store.add_candidates("fast", [StoredCandidate(query_id=query_id, doc_id=f"{query_id}-d{rank}", rank=rank,
                                                  passage_id="p", title="", passage="some passage text")
                                  for query_id in ("q1", "q2") for rank in range(1, 5)])
    tab = AnnotateTab(AnnotationContext(store=store, library=library, reranker_for=lambda key, kind: None, top_k=4))
    ada = gr.Request(session_hash="ada")
    tab.open_project("ada", "fast", "", "rank1", ada)
    bench = tab.bench_of(ada)

    def grades() -> dict[str, int]:
        return {item.doc_id: item.grade for item in store.judgments("fast", annotator="ada")}

    # "2" then "0" pressed while q1-d1 is on screen: both are for q1-d1. The first moves on to q1-d2; the
    # second lands on q1-d1 all the same (no longer current) and moves nothing.
    tab.grade(2)("", -1, -1, typed("q1-d1", 1), ada)
    assert bench.doc_id == "q1-d2"
    _, document, *_ = tab.grade(0)("", -1, -1, typed("q1-d1", 2), ada)
    assert grades() == {"q1-d1": 0} and bench.doc_id == "q1-d2"
    assert 'data-doc-id="q1-d2"' in document  # the answer shows the current document
    # Typed 3 then 1 for q1-d2, the requests arriving in the other order: the later typed stands.
    tab.grade(1)("", -1, -1, typed("q1-d2", 4), ada)
    tab.grade(3)("", -1, -1, typed("q1-d2", 3), ada)
    assert grades() == {"q1-d1": 0, "q1-d2": 1} and bench.doc_id == "q1-d3"
    # A move first keeps the note typed for the document shown: q1-d3 has no grade to keep it with, so nothing
    # moves and the annotator is told.
    with pytest.raises(gr.Error, match="note: grade this document"):
        tab.navigate(lambda bench: bench.move(1))("typed for d3", -1, -1, typed("q1-d3", 5), ada)
    assert bench.doc_id == "q1-d3"
    # The next query opened, then a note, evidence, a clear and a grade typed for q1's documents still land there.
    tab.navigate(lambda bench: bench.move_query(1))("", -1, -1, typed("q1-d3", 6), ada)
    assert (bench.query.query_id, bench.doc_id) == ("q2", "q2-d1")
    tab.save("kept with d1", 0, 4, typed("q1-d1", 7), ada)
    tab.mark("", 5, 12, typed("q1-d2", 8), ada)
    tab.grade(3)("", -1, -1, typed("q1-d4", 9), ada)
    tab.edit(lambda bench, doc: bench.clear(doc=doc))(typed("q1-d2", 10), ada)
    assert (bench.query.query_id, bench.doc_id) == ("q2", "q2-d1")
    mine = {item.doc_id: (item.grade, item.note, item.span and (item.span.start, item.span.end))
            for item in store.judgments("fast", annotator="ada")}
    assert mine == {"q1-d1": (0, "kept with d1", (0, 4)), "q1-d4": (3, "", None)}
    assert [grade for _, grade in store.history("fast", "ada", "q1", "q1-d2")] == [1, 1, None]  # span, clear
    # An edit that names no document, or one that is not a candidate, is refused, never applied to the current.
    for bad in (None, {"doc_id": "q2-d1"}, typed("nowhere", 11)):
        with pytest.raises(gr.Error, match=r"reload the page|'nowhere' is not a candidate of query 'q1'"):
            tab.grade(1)("", -1, -1, bad, ada)
    assert "q2-d1" not in grades()
    store.close()


def test_keyboard_judgments_survive_a_restart_and_exports_round_trip(
        browser: Browser, tmp_path: Path, index_dir: Path, demo_model: Path) -> None:
    annotations, log = tmp_path / "annotations.sqlite3", tmp_path / "app.log"
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    page = context.new_page()
    port = free_port()  # the same after the restart: what the browser remembers is kept per address
    with app_process(annotations, index_dir, log, port=port) as (url, _):
        open_annotate(page, url)
        page.get_by_label("Annotator (your name)").fill("ada")
        page.get_by_label("Project name").fill(PROJECT)
        page.get_by_label(re.compile("or type queries")).fill(QUERIES)
        page.locator("#annotate-qrels input[type=file]").set_input_files(str(SAMPLE_CORPUS / "qrels.tsv"))
        # Landed once its download link is there (the name's text splits stem and extension: "qrels .tsv").
        expect(page.locator("#annotate-qrels a[href$='/qrels.tsv']")).to_be_visible(timeout=15_000)
        page.get_by_label("Annotation guideline (shown to annotators)").fill("Relevant <b>means</b> it answers.")
        page.get_by_role("button", name="Create project").click()
        # A header and 4 candidates. Generous: a loaded machine once took over 60 s (the app's first search).
        expect(page.locator(".es-list tr")).to_have_count(5, timeout=300_000)
        expect(page.locator(".es-list tr").first).to_contain_text("existing qrels")
        assert "2" in page.locator(".es-list tr td:nth-child(7)").all_inner_texts()  # from sample qrels
        expect(page.get_by_text("Guideline: Relevant <b>means</b> it answers.")).to_be_visible()
        # The model's reasoning streams in while the annotator reads.
        expect(page.locator(".es-list")).to_contain_text(re.compile(r"0\.\d\d"), timeout=120_000)

        # Judgments with the keyboard, typed faster than the page can show the next document ("2 0 3" in one
        # task): each key names the document it acts on, and the keys after a grade wait for its answer, so each
        # grade lands on the document it was typed for, #1, #2 and #3, whatever order the requests arrive in.
        ids = [item.doc_id for item in AnnotationStore(annotations).candidates(PROJECT, "q01")]
        page.locator("h1").click()
        shown_document(page, ids[0])
        page.evaluate(TYPE_AT_ONCE, ["2", "0", "3"])
        shown_document(page, ids[3], 60_000)  # three answers, one after another, on a loaded machine
        typed = {ids[0]: 2, ids[1]: 0, ids[2]: 3}
        wait_until_stored(annotations, typed)
        expect(page.locator(".es-list tr.es-current td:nth-child(2)")).to_have_text("#4", timeout=15_000)
        expect_your_grades(page, ["2", "0", "3", ""])
        # Agreement counts those three, once the model has judged them.
        expect(page.locator(".es-list tr td:nth-child(4)")).to_have_text([re.compile(r"\d\.\d\d")] * 4,
                                                                         timeout=120_000)
        page.get_by_role("button", name=re.compile("Agreement")).filter(has_text="▼").first.click()
        page.get_by_role("button", name="Compute agreement").click()
        # Run J (beside the vLLM tests) did not show the first agreement within 15 s: that one also imports
        # scikit-learn (2.0 s idle, 3.5 s beside three busy loops), and the whole machine was loaded.
        expect(page.get_by_text(re.compile(r"You vs the model \(rank1\) on 3 documents"))).to_be_visible(
            timeout=AGREEMENT_TIMEOUT_MS)
        # Marking evidence: select words of the passage and press s; a note; the grade saves all three.
        page.locator("#annotate-passage").evaluate("""element => {
            const text = element.firstChild; const range = document.createRange();
            range.setStart(text, 0); range.setEnd(text, 12);
            window.getSelection().removeAllRanges(); window.getSelection().addRange(range); }""")
        page.keyboard.press("s")
        expect(page.locator("#annotate-passage mark")).to_have_count(1, timeout=10_000)
        page.get_by_label("Note (saved with the grade)").fill("only partly <i>answers</i>")
        page.locator("h1").click()
        page.keyboard.press("1")
        expect(page.locator("#annotate-document")).to_contain_text("You: 1 · related", timeout=10_000)
        typed[ids[3]] = 1
        wait_until_stored(annotations, typed)
        expect_your_grades(page, ["2", "0", "3", "1"])
        shoot(page, "annotate-judged")

    # The app process is gone; a new one on the same file, and the page reloaded: the browser remembers the
    # annotator and project, and the workbench returns to the same document with every judgment.
    with app_process(annotations, index_dir, log, port=port) as (url, _):
        open_annotate(page, url)
        expect(page.locator(".es-list tr.es-current td:nth-child(2)")).to_have_text("#4", timeout=60_000)
        expect_your_grades(page, ["2", "0", "3", "1"])
        # No grade has moved to another document: each is on the document it was typed for, by id.
        assert stored_grades(annotations) == typed
        assert page.evaluate(YOUR_GRADES_BY_ID) == {doc_id: str(grade) for doc_id, grade in typed.items()}
        expect(page.get_by_label("Annotator (your name)")).to_have_value("ada")
        expect(page.locator("#annotate-passage mark")).to_have_count(1)
        expect(page.get_by_label("Note (saved with the grade)")).to_have_value("only partly <i>answers</i>")
        page.keyboard.press("k")  # back to #3 and on again
        expect(page.locator(".es-list tr.es-current td:nth-child(2)")).to_have_text("#3", timeout=15_000)
        page.keyboard.press("j")
        expect(page.locator(".es-list tr.es-current td:nth-child(2)")).to_have_text("#4", timeout=15_000)
        # A second annotator judges through the API; ada sees bob's grades when she asks, and the agreement.
        candidates = AnnotationStore(annotations).candidates(PROJECT, "q01")
        client = Client(url, verbose=False)
        for item, grade in zip(candidates, (3, 0, 1, 1), strict=True):
            client.predict(PROJECT, "bob", "q01", item.doc_id, grade, "", api_name="/judge")
        page.get_by_label("Show other annotators' grades").check()
        expect(page.locator(".es-list")).to_contain_text("bob: 3", timeout=10_000)
        page.get_by_role("button", name=re.compile("Agreement")).filter(has_text="▼").first.click()
        page.get_by_role("button", name="Compute agreement").click()
        # ada 2 0 3 1 vs bob 3 0 1 1: kappa on grades (2/4 - 4/16) / (1 - 4/16) = 1/3.
        expect(page.get_by_text(re.compile(r"You vs the model \(rank1\) on 4 documents .* Cohen's kappa .* The model "
                                           r"vs the existing qrels on [1-4] documents"))).to_be_visible(
            timeout=AGREEMENT_TIMEOUT_MS)
        expect(page.locator("#annotate-pairs")).to_contain_text("ada · bob")
        expect(page.locator("#annotate-pairs")).to_contain_text("0.333")
        shoot(page, "annotate-agreement")
        page.keyboard.press("n")
        expect(page.locator("h3")).to_contain_text("which planets have no moons", timeout=30_000)
        shoot(page, "annotate-restarted")

        page.locator("#annotate-tab").get_by_role("button", name=re.compile("Export")).filter(has_text="▼").click()
        page.get_by_role("button", name="Export my qrels and the project's JSONL").click()
        exported = download(page, ".jsonl")
        qrels = download(page, ".qrels")
        assert [line.split()[-1] for line in qrels.splitlines()] == ["2", "0", "3", "1"]
        assert '"note": "only partly <i>answers</i>"' in exported and '"span": {"start": 0, "end": 12' in exported

        # Import through the page as a copy, export the copy: the same bytes.
        copy = exported.replace(f'"name": "{PROJECT}"', '"name": "copy"', 1)
        (tmp_path / "copy.jsonl").write_text(copy, encoding="utf-8")
        page.get_by_role("button", name=re.compile("Import a project")).click()
        page.locator("#annotate-import input[type=file]").set_input_files(str(tmp_path / "copy.jsonl"))
        expect(page.get_by_text("Imported project 'copy' from copy.jsonl")).to_be_visible(timeout=15_000)
    elsewhere = AnnotationStore(tmp_path / "elsewhere.sqlite3")
    import_jsonl(elsewhere, exported)
    assert jsonl_text(elsewhere, PROJECT) == exported
    assert jsonl_text(AnnotationStore(annotations), "copy") == copy


def test_the_annotate_tab_says_where_annotations_are_kept_and_warns_on_a_space_without_storage(
        page: Page, tmp_path: Path, index_dir: Path, demo_model: Path) -> None:
    annotations = tmp_path / "annotations.sqlite3"
    space = {"SPACE_ID": "someone/explainable-search",
             "EXPLAINABLE_SEARCH_PERSISTENT_STORAGE": str(tmp_path / "no-persistent-storage")}
    for env, warned in (({}, False), (space, True)):
        with app_process(annotations, index_dir, tmp_path / "app.log", env=env) as (url, _):
            open_annotate(page, url)
            notice = page.locator("#annotate-storage")
            expect(notice).to_contain_text(f"Annotations are kept in {annotations}", timeout=30_000)
            expect(notice).to_be_in_viewport()
            if warned:
                expect(notice).to_contain_text("Annotations are lost when this Space restarts: they are not on "
                                               "persistent storage.")
                shoot(page, "annotate-ephemeral-space")
            else:
                expect(notice).not_to_contain_text("lost")


def test_a_blind_project_with_the_assessor_shows_its_grades_only_after_yours(
        page: Page, tmp_path: Path, index_dir: Path, demo_model: Path) -> None:
    page.set_viewport_size({"width": 1280, "height": 1600})
    with app_process(tmp_path / "annotations.sqlite3", index_dir, tmp_path / "app.log") as (url, _):
        open_annotate(page, url)
        page.get_by_label("Annotator (your name)").fill("ada")
        page.get_by_label("Project name").fill("graded")
        page.get_by_label(re.compile("or type queries")).fill("q02\twhich planets have no moons")
        page.locator("#annotate-reranker").get_by_label("Assessor (UMBRELA): graded 0–3, expected grade per document"
                                                        ).check()
        page.get_by_label(re.compile("Blind: hide the model's judgment")).check()
        page.get_by_role("button", name="Create project").click()
        expect(page.locator(".es-list tr")).to_have_count(5, timeout=60_000)
        expect(page.locator(".es-list tr").first).to_contain_text("model (assessor)")
        # Blind: the assessor judges meanwhile, but nothing of it shows before the annotator's own grade.
        expect(page.get_by_text(re.compile("hidden until you grade this document"))).to_be_visible(timeout=30_000)
        expect(page.locator(".es-list tr td:nth-child(4)")).to_have_text(["hidden"] * 4)
        # The Search tab's rank1 runs on the same demo model: judging its rankings with it would be circular.
        expect(page.get_by_text(re.compile("Circularity: .* they are the same model"))).to_be_visible()
        shoot(page, "annotate-blind")
        page.locator("h1").click()
        page.keyboard.press("2")
        page.keyboard.press("k")
        expect(page.locator(".es-list tr.es-current td:nth-child(2)")).to_have_text("#1", timeout=15_000)
        # Graded, the document shows the assessor's grade, its expected grade and its reasoning.
        # Generous: late in a run this app's assessor shares the two cores with the other worker's vLLM tests.
        expect(page.get_by_text(re.compile(r"grade [0-3] \(p 0\.\d\d\) · expected grade [0-3]\.\d\d"))).to_be_visible(
            timeout=300_000)
        expect(page.locator(".es-list tr td:nth-child(4)").first).to_have_text(re.compile(r"[0-3] \([0-3]\.\d\d\)"))
        expect(page.locator(".es-list tr td:nth-child(4)").nth(1)).to_have_text("hidden")
        shoot(page, "annotate-assessor")
        page.get_by_role("button", name=re.compile("Agreement")).filter(has_text="▼").first.click()
        page.get_by_role("button", name="Compute agreement").click()
        expect(page.get_by_text(re.compile(r"You vs the model \(assessor\) on 1 documents, grade for grade: Cohen's "
                                           r"kappa \(quadratic weights\)"))).to_be_visible(timeout=AGREEMENT_TIMEOUT_MS)


def test_sigkill_in_a_burst_loses_no_acknowledged_judgment(tmp_path: Path, index_dir: Path, demo_model: Path
                                                             ) -> None:
    annotations = tmp_path / "annotations.sqlite3"
    store = AnnotationStore(annotations)
    store.create_project(Project(name="burst", corpus="sample_corpus"), [("q1", "a query")])
    store.add_candidates("burst", [StoredCandidate(query_id="q1", doc_id=f"d{rank}", rank=rank, passage_id="p",
                                                   title="", passage="text") for rank in range(1, 6)])
    store.close()
    acknowledged: list[str] = []
    with app_process(annotations, index_dir, tmp_path / "app.log") as (url, process):
        client = Client(url, verbose=False)

        def burst() -> None:
            with contextlib.suppress(Exception):  # the server dies under it
                for number in range(10_000):
                    client.predict("burst", f"annotator-{number}", "q1", f"d{number % 5 + 1}", number % 4, "",
                                   api_name="/judge")
                    acknowledged.append(f"annotator-{number}")

        sender = threading.Thread(target=burst, daemon=True)
        sender.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        sender.join(timeout=30)
    assert len(acknowledged) >= 30
    kept = {item.annotator for item in AnnotationStore(annotations).judgments("burst")}
    assert set(acknowledged) <= kept


def test_signed_in_users_judge_under_their_own_name(tmp_path: Path, index_dir: Path, demo_model: Path) -> None:
    annotations = tmp_path / "annotations.sqlite3"
    store = AnnotationStore(annotations)
    store.create_project(Project(name="auth", corpus="sample_corpus"), [("q1", "a query")])
    store.add_candidates("auth", [StoredCandidate(query_id="q1", doc_id="d1", rank=1, passage_id="p", title="",
                                                  passage="text")])
    with app_process(annotations, index_dir, tmp_path / "app.log", "--auth", "ada:secret1,bob:secret2") as (url, _):
        with pytest.raises(Exception):  # noqa: B017 - gradio_client's error for a refused login varies
            Client(url, auth=("ada", "wrong"), verbose=False)
        saved = Client(url, auth=("bob", "secret2"), verbose=False).predict(
            "auth", "ada", "q1", "d1", 1, "", api_name="/judge")
        # Sign-in guards the page alone, so without an API key the rerank API is not served beside it.
        assert httpx.post(f"{url}v1/rerank", json={"query": "q", "documents": ["d"]}).status_code == 404
    assert saved["annotator"] == "bob"  # the signed-in user, whatever name the request gives
    assert [item.annotator for item in AnnotationStore(annotations).judgments("auth")] == ["bob"]


def test_bad_sign_in_and_annotation_settings_are_named(tmp_path: Path, index_dir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    cases = {("--auth", "ada"): "error: --auth: expected user:password, got 'ada'",
             ("--annotations", str(blocker / "annotations.sqlite3")):
                 f"error: --annotations {blocker / 'annotations.sqlite3'}: cannot open it"}
    for flags, message in cases.items():
        result = subprocess.run([sys.executable, "app.py", "--corpus", str(SAMPLE_CORPUS), "--index-dir",
                                 str(index_dir), *flags], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
