"""The app in a real headless Chromium: streaming, Stop, the three tabs, no script injection; takes screenshots.

Screenshots go to a temporary folder; `make screenshots` sets SCREENSHOTS_DIR=docs/screenshots to refresh the
README's pictures (look at them before committing).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import expect

from app_fixtures import Checkpoints, Server, checkpoints, server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
XSS_PROMPT = '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script>'


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: SCREENSHOTS_DIR (`make screenshots`) or a temporary folder."""
    folder = os.environ.get("SCREENSHOTS_DIR")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def page(server: Server) -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: install the Debian chromium package (`make browser`)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="biogpt-chromium-")  # a fresh profile every run
    try:
        with sync_playwright() as pw:
            # Playwright manages --user-data-dir itself: a persistent context is how to give it a fresh one.
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, viewport={"width": 1280, "height": 900},
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = context.new_page()
            page.goto(server.url)
            page.wait_for_selector("#gen-prompt textarea", timeout=60_000)
            yield page
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


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
    return page.locator("#gen-output textarea").input_value()


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
    heading = page.locator("#cls-label .output-class")
    heading.first.wait_for(timeout=30_000)
    assert heading.first.inner_text().strip()
    page.screenshot(path=str(shots / "app-classify.png"), full_page=True)


def test_user_and_model_text_are_never_run_as_html(page, checkpoints: Checkpoints) -> None:
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Colour tokens by confidence").check()
    _generate(page, XSS_PROMPT)
    # The view shows this run once it shows its prompt (an earlier run's output and stats may still be on screen).
    expect(page.locator("#gen-confidence .wb-conf")).to_contain_text(XSS_PROMPT, timeout=30_000)
    expect(page.locator("#gen-stats")).to_contain_text("finished", timeout=30_000)
    page.get_by_label("Colour tokens by confidence").uncheck()
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
