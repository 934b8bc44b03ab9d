"""The page on a phone and from the keyboard (Chromium driven by Playwright, on the sample corpus with the demo
model): at 390 and 360 px wide nothing reaches past the screen's right edge, no label is clipped or squeezed to a
few letters a line, and the first result card starts on the first screen after Enter; the query box has the focus
on load and no Tab stop lies in the closed side panel. Screenshots go to test-artifacts/."""

from __future__ import annotations

import pytest
from conftest import shoot
from playwright.sync_api import Page, expect
from test_browser import loaded, sample_url  # noqa: F401  (the fixtures: the demo model, the page it serves)

QUERY = "what are the health effects of caffeine"
# Every visible element that reaches past the viewport's right edge (the closed side panel lies off the left edge).
PAST_THE_EDGE = """() => [...document.querySelectorAll('body *')].filter((element) => {
  const box = element.getBoundingClientRect();
  return box.width > 0 && box.height > 0 && getComputedStyle(element).visibility !== 'hidden'
    && box.right > innerWidth + 0.5;
}).map((element) => `${element.tagName}#${element.id}.${element.className} reaches ${
  element.getBoundingClientRect().right}`)"""
# Every visible label, button and badge on the page (outside the side panel), with how it reads: its text, whether
# its text is cut (wider than its own box where that hides the rest, or reaching out of an ancestor that clips or
# scrolls it) and how many lines it takes. Gradio's 1-pixel copy of the tab bar, kept for measuring, is not shown.
LABELS = """() => [...document.querySelectorAll(
    'main label span, main button, main summary, .es-counter, .es-state, .es-flag')].filter((element) => {
  const box = element.getBoundingClientRect();
  return box.width > 1 && box.height > 1 && getComputedStyle(element).visibility !== 'hidden'
    && !element.closest('#es-panel') && element.textContent.trim();
}).map((element) => {
  const style = getComputedStyle(element), box = element.getBoundingClientRect();
  const line = parseFloat(style.lineHeight) || 1.2 * parseFloat(style.fontSize);
  const text = element.textContent.trim();
  let clipped = false;
  for (let above = element.parentElement; above; above = above.parentElement) {
    if (getComputedStyle(above).overflowX === 'visible') continue;
    const frame = above.getBoundingClientRect();
    clipped ||= box.right > frame.right + 1 || box.left < frame.left - 1;
  }
  const hides = style.overflowX !== 'visible' && element.scrollWidth > element.clientWidth + 1;
  return {text, cut: clipped || hides,
          lines: Math.round((box.height - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom)) / line),
          words: text.split(/\\s+/).length};
})"""


def unreadable(page: Page) -> list[dict[str, object]]:
    """Labels whose text is cut, or squeezed to a word or less a line (more than two lines, and more lines than
    half its words): what a 390 px screen did to "evidence" and to Compare's label."""
    return [label for label in page.evaluate(LABELS)
            if label["cut"] or (label["lines"] > 2 and label["lines"] * 2 > label["words"])]


@pytest.mark.parametrize("width,height", [(390, 844), (360, 800)])
def test_on_a_phone_every_control_fits_reads_whole_and_the_first_card_is_on_the_first_screen(
        page: Page, sample_url: str, width: int, height: int) -> None:  # noqa: F811
    page.set_viewport_size({"width": width, "height": height})
    page.goto(sample_url)
    query = page.get_by_label("Query")
    query.fill(QUERY)
    query.press("Enter")
    expect(page.locator(".es-rcard")).to_have_count(20, timeout=20_000)
    expect(page.locator("#es-examples")).to_be_hidden()
    first = page.locator(".es-rcard").first.evaluate("card => card.getBoundingClientRect().top + scrollY")
    assert first < height, f"the first result card starts at {first:.0f} px, below the first screen ({height} px)"
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.evaluate(PAST_THE_EDGE) == []
    assert unreadable(page) == []
    header = page.locator("#es-header h1").bounding_box()
    button = page.locator("#es-panel-button").bounding_box()
    assert header and button and (button["y"] >= header["y"] + header["height"]
                                  or button["x"] >= header["x"] + header["width"]), (header, button)
    if width == 390:
        shoot(page, "phone-390x844")

    page.get_by_label("Compare: two judges side by side").check()
    expect(page.get_by_label("Only disagreements")).to_be_visible()
    expect(page.locator("#es-sides").get_by_label("evidence").first).to_be_visible()
    assert unreadable(page) == []
    for label in ("Compare: two judges side by side", "Only disagreements"):
        box = page.locator("#es-toolbar label", has_text=label).bounding_box()
        assert box and box["width"] > 100 and box["height"] < 60, (label, box)
    assert page.evaluate(PAST_THE_EDGE) == []
    if width == 390:
        shoot(page, "phone-390x844-compare")


# Where the focus is: a short description, and whether it lies inside the side panel.
FOCUSED = """() => { const element = document.activeElement;
  return {where: `${element.tagName}#${element.id} ${(element.getAttribute('aria-label') || element.textContent || '')
    .trim().slice(0, 40)}`, query: !!element.closest('#es-query'), panel: !!element.closest('#es-panel'),
    panel_button: element.id === 'es-panel-button'}; }"""


def test_the_query_box_has_the_focus_on_load_and_the_closed_panel_holds_no_tab_stop(
        page: Page, sample_url: str) -> None:  # noqa: F811
    page.goto(sample_url)
    query = page.get_by_label("Query")
    expect(query).to_be_focused(timeout=10_000)
    query.fill(QUERY)  # the first keys typed are the query
    stops = []
    for _ in range(40):  # around the whole page and back: past the header and the panel's place in it
        page.keyboard.press("Tab")
        stops.append(page.evaluate(FOCUSED))
    assert any(stop["panel_button"] for stop in stops), stops  # the walk went round the panel's place
    assert [stop["where"] for stop in stops if stop["panel"]] == []
    # Open, the panel's controls are reachable; closed again, they are not.
    page.get_by_role("button", name="Corpus, settings and model").click()
    budget = page.get_by_label("Reasoning budget (tokens)")
    expect(budget).to_be_visible()
    budget.focus()
    expect(budget).to_be_focused()
    page.get_by_role("button", name="Toggle Sidebar").click()
    page.wait_for_function("""() => { const field = document.querySelector('#es-panel input[type=number]');
        field.focus(); return document.activeElement !== field; }""")
    query.press("Enter")
    expect(page.locator(".es-rcard")).to_have_count(20, timeout=20_000)
    shoot(page, "desktop-1280x800")
