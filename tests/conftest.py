"""Fixtures shared by the whole suite: where ../shared is, and tiny checkpoints in the exact Hub layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BIOGPT_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's read-only shared data (real vocabularies, BC5CDR, HoC); skip where a clone has none."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): tests on the real BioGPT vocabulary and corpora need it")
    return SHARED
