"""Property fuzzing at CI size (the properties live in bench/fuzz.py, which runs >= 10,000 cases per target).

Each target gets 250 hypothesis examples (derandomized, so CI is reproducible). The learned-vocabulary targets run
everywhere; the real BioGPT vocabulary ones skip without ../shared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fuzz
from biogpt.validation import InputError, clean_text

CASES = 250


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory):
    return fuzz.learned_tokenizer(Path(tmp_path_factory.mktemp("fuzz-vocab")))


def test_tokenizer_offsets_on_a_learned_vocabulary(learned) -> None:
    fuzz.run_tokenizer(learned, CASES)


def test_tokenizer_offsets_on_the_real_vocabulary(real_tokenizer) -> None:
    fuzz.run_tokenizer(real_tokenizer, CASES)


def test_generation_parameter_validation() -> None:
    fuzz.run_params(CASES)


def test_aggregate_spans_on_a_learned_vocabulary(learned) -> None:
    fuzz.run_aggregate(learned, CASES)


def test_aggregate_spans_on_the_real_vocabulary(real_tokenizer) -> None:
    fuzz.run_aggregate(real_tokenizer, CASES)


def test_extract_entities_spans_on_a_tiny_windowed_model(learned) -> None:
    fuzz.run_extract(fuzz.tiny_ner_model(len(learned), fuzz.LABEL_SETS["bio"]), learned, CASES)


@pytest.mark.parametrize("text", ["\ud800", "ok \udbff\udfff? no: \udc00", "x\udfff"])
def test_lone_surrogates_are_refused_before_the_tokenizer(text: str) -> None:
    with pytest.raises(InputError, match="a lone UTF-16 surrogate"):
        clean_text(text, max_chars=100)
