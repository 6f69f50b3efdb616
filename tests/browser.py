"""Headless Chromium for the browser tests: Debian's chromium driven by Playwright, with a fresh profile."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def browser_page(url: str, width: int = 1280, height: int = 900) -> Iterator:
    """A page of a fresh Chromium profile, opened at `url` once the app has rendered."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: install the Debian chromium package (`make browser`)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="biogpt-chromium-")
    try:
        with sync_playwright() as pw:
            # Playwright manages --user-data-dir itself: a persistent context is how to give it a fresh one.
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, viewport={"width": width, "height": height},
                args=FLAGS, accept_downloads=True)
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("#gen-prompt textarea", timeout=60_000)
            yield page
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: SCREENSHOTS_DIR (`make screenshots` sets docs/screenshots) or a temporary folder."""
    folder = os.environ.get("SCREENSHOTS_DIR")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
