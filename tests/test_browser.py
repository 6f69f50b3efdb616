"""The app in a real headless Chromium: streaming, Stop, the three tabs, no script injection; takes screenshots.

Screenshots go to a temporary folder; `make screenshots` sets SCREENSHOTS_DIR=docs/screenshots to refresh the
README's pictures (look at them before committing).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import expect

from app_fixtures import Checkpoints, Server, checkpoints, paper_release, server  # noqa: F401  (fixtures)
from browser import browser_page, shots  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser
XSS_PROMPT = '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script>'


@pytest.fixture(scope="module")
def page(server: Server) -> Iterator:
    with browser_page(server.url) as page:
        yield page


@pytest.fixture()
def slow_model(server: Server) -> Iterator[list]:
    """Slow the session's causal LM down (and count its forward calls) so streaming and Stop are observable."""
    bench = server.demo.workbench
    model = bench.manager.get(bench.spec(bench.default_state())).model
    original, calls = model.forward, []

    def slow_forward(*args, **kwargs):
        calls.append(time.perf_counter())
        time.sleep(0.08)
        return original(*args, **kwargs)

    model.forward = slow_forward
    yield calls
    model.forward = original


def _output(page) -> str:
    """The text of the token view (the plain-text copy sits in a closed accordion)."""
    view = page.locator("#gen-view .wb-view")
    return view.inner_text() if view.count() else ""


def _choose(page, dropdown: str, value: str) -> None:
    """Type a custom value into a Gradio dropdown (a checkpoint path when not on the bundled demos)."""
    box = page.locator(f"{dropdown} input")
    box.fill(value)
    box.press("Enter")


def _generate(page, prompt: str) -> None:
    page.locator("#gen-prompt textarea").fill(prompt)
    page.locator("#gen-run").click()


def test_generate_streams_and_stop_stops(page, slow_model: list, shots: Path) -> None:
    page.locator("#gen-prompt textarea").fill("COVID-19 is")
    page.get_by_label("Max new tokens").first.fill("64")
    page.locator("#gen-run").click()
    readings: list[str] = []
    deadline = time.time() + 30
    while len(set(r for r in readings if r.strip())) < 2 and time.time() < deadline:
        readings.append(_output(page))
        page.wait_for_timeout(100)
    seen = [r for r in dict.fromkeys(readings) if r.strip()]
    assert len(seen) >= 2 and seen[1].startswith(seen[0]), f"the text should grow while streaming: {seen}"
    page.screenshot(path=str(shots / "app-generate.png"), full_page=True)

    page.locator("#gen-stop").click()
    page.wait_for_timeout(500)
    calls_after_stop, text_after_stop = len(slow_model), _output(page)
    page.wait_for_timeout(1500)
    assert len(slow_model) <= calls_after_stop + 1, "the model kept running after Stop"
    assert _output(page) == text_after_stop
    assert len(slow_model) < 64, "Stop should end the run before max_new_tokens"


def test_entities_are_highlighted(page, checkpoints: Checkpoints, shots: Path) -> None:
    page.get_by_role("tab", name="Entities").click()
    if not checkpoints.demo:
        _choose(page, "#ent-backend", checkpoints.ner)
    page.locator("#ent-text textarea").fill(
        "Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer treated with amifostine.")
    page.locator("#ent-run").click()
    spans = page.locator("#ent-highlighted .token.highlighted")
    spans.first.wait_for(timeout=30_000)
    assert spans.count() >= 1
    page.screenshot(path=str(shots / "app-entities.png"), full_page=True)


def test_classify_shows_a_label(page, checkpoints: Checkpoints, shots: Path) -> None:
    page.get_by_role("tab", name="Classify").click()
    if not checkpoints.demo:
        _choose(page, "#cls-classifier", checkpoints.classify)
    page.locator("#cls-text textarea").fill("VEGF overexpression increased angiogenesis in colorectal tumours.")
    page.locator("#cls-run").click()
    bars = page.locator("#cls-result .wb-score")
    bars.first.wait_for(timeout=30_000)
    assert bars.count() >= 2 and page.locator("#cls-result .wb-score-label").first.inner_text().strip()
    expect(page.locator("#cls-summary")).not_to_be_empty()
    page.screenshot(path=str(shots / "app-classify.png"), full_page=True)


def test_user_and_model_text_are_never_run_as_html(page, checkpoints: Checkpoints) -> None:
    page.get_by_role("tab", name="Generate").click()
    _generate(page, XSS_PROMPT)
    # The token view shows this run once it shows its prompt (an earlier run's text may still be on screen).
    expect(page.locator("#gen-view .wb-view")).to_contain_text(XSS_PROMPT, timeout=30_000)
    expect(page.locator("#gen-stats")).to_contain_text(re.compile("the model ended the text|reached the token limit"),
                                                      timeout=30_000)
    assert _output(page).startswith(XSS_PROMPT)

    page.get_by_role("tab", name="Entities").click()
    if not checkpoints.demo:
        _choose(page, "#ent-backend", checkpoints.ner)
    page.locator("#ent-text textarea").fill(XSS_PROMPT)
    page.locator("#ent-run").click()
    expect(page.locator("#ent-highlighted .text").last).to_contain_text(">", timeout=30_000)
    shown = page.evaluate("Array.from(document.querySelectorAll('#ent-highlighted .text'))"
                          ".map(e => e.textContent).join('')")
    assert shown == XSS_PROMPT
    assert page.evaluate("typeof window.__xss") == "undefined"
