"""biogpt.validation: the exact message for each kind of bad input, and what good input becomes."""

from __future__ import annotations

import pytest

from biogpt import BioGptError, GenerationParameterError
from biogpt.generation import GenerationConfig
from biogpt.settings import Settings
from biogpt.validation import (GENERATION_PARAMETERS, InputError, check_beam_memory, check_generation_params,
                               check_value, clean_text, generation_params, is_clean, parameters)

LIMITS = Settings(max_input_chars=100, max_new_tokens=64, max_beams=8, max_beam_tokens=1_000)
ALLOWED = sorted([*GENERATION_PARAMETERS, "do_sample", "early_stopping", "truncate"])


# ----------------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------------
def test_clean_text_keeps_text_and_strips_control_characters() -> None:
    assert clean_text("COVID-19 is", max_chars=100) == "COVID-19 is"
    assert clean_text("a\x00b\x07c\x1b[31md\x7fe\x85f", max_chars=100) == "abc[31mdef"
    assert clean_text("line\r\nnext\rlast\tcol", max_chars=100) == "line\nnext\nlast\tcol"
    # Format characters and emoji are text, not controls: zero-width joiners and RTL marks stay.
    assert clean_text("👩\u200d🔬 \u200fα-β <b>&amp;</b>", max_chars=100) == "👩\u200d🔬 \u200fα-β <b>&amp;</b>"
    assert clean_text(" Aspirin ".encode("utf-8"), max_chars=100) == " Aspirin "


@pytest.mark.parametrize("value, message", [
    (None, "The prompt is empty: type or paste some text first."),
    ("", "The prompt is empty: type or paste some text first."),
    (" \n\t ", "The prompt is empty: type or paste some text first."),
    ("\x00\x01\x1b", "The prompt is empty: type or paste some text first."),
    (42, "The prompt must be text; got int."),
    (["a"], "The prompt must be text; got list."),
    ("x" * 101, "The prompt is 101 characters long; the limit is 100."),
    ("ab\ud800cd", "The prompt contains an invalid character at position 2: a lone UTF-16 surrogate (U+D800), "
                   "which is not valid Unicode text. Remove it or re-encode the text as UTF-8."),
    ("\udfff", "The prompt contains an invalid character at position 0: a lone UTF-16 surrogate (U+DFFF), "
               "which is not valid Unicode text. Remove it or re-encode the text as UTF-8."),
    (b"ok \xff\xfe", "The prompt is not valid UTF-8: byte 0xff at position 3 cannot be decoded. Send UTF-8 text."),
])
def test_bad_text_gets_a_specific_message(value: object, message: str) -> None:
    with pytest.raises(InputError) as excinfo:
        clean_text(value, max_chars=100)
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, BioGptError) and isinstance(excinfo.value, ValueError)


def test_a_megabyte_is_refused_by_its_length_before_any_scan() -> None:
    with pytest.raises(InputError, match=r"^The text is 1,048,576 characters long; the limit is 20,000\.$"):
        clean_text("\ud800" * 2**20, what="text", max_chars=20_000)


def test_the_input_cap_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIOGPT_MAX_INPUT_CHARS", "10")
    with pytest.raises(InputError, match="is 11 characters long; the limit is 10"):
        clean_text("x" * 11)


def test_is_clean() -> None:
    assert is_clean("a\tb\nc") and not is_clean("a\rb") and not is_clean("a\x00") and not is_clean("\ud800")


# ----------------------------------------------------------------------------------------------------------------
# Numbers and generation parameters
# ----------------------------------------------------------------------------------------------------------------
def test_good_parameters_are_normalised() -> None:
    params = {"max_new_tokens": 24.0, "temperature": 1, "top_p": 0.9, "top_k": 50.0, "do_sample": True,
              "num_beams": 1, "seed": None, "truncate": True, "early_stopping": "never"}
    checked = check_generation_params(params, LIMITS)
    assert checked == {**params, "max_new_tokens": 24, "temperature": 1.0, "top_k": 50}
    assert type(checked["max_new_tokens"]) is int and type(checked["temperature"]) is float
    assert check_generation_params({}, LIMITS) == {}


@pytest.mark.parametrize("params, message", [
    ({"temperature": -0.5}, "Temperature must be between 0.05 and 2, got -0.5."),
    ({"temperature": 0}, "Temperature must be between 0.05 and 2, got 0."),
    ({"temperature": "hot"}, "Temperature must be a number; got str 'hot'."),
    ({"temperature": "0.5"}, "Temperature must be a number; got str '0.5'."),
    ({"temperature": None}, "Temperature is missing."),
    ({"temperature": float("nan")}, "Temperature must be a finite number; got nan."),
    ({"top_p": 1.5}, "Top-p must be between 0.05 and 1, got 1.5."),
    ({"top_p": float("inf")}, "Top-p must be a finite number; got inf."),
    ({"top_k": 2.5}, "Top-k must be a whole number; got 2.5."),
    ({"top_k": True}, "Top-k must be a whole number; got bool True."),
    ({"max_new_tokens": 65}, "Max new tokens must be between 1 and 64, got 65."),
    ({"max_new_tokens": 0}, "Max new tokens must be between 1 and 64, got 0."),
    ({"max_new_tokens": 10**400}, "Max new tokens must be between 1 and 64, got a huge number."),
    ({"num_beams": 9}, "Beams must be between 1 and 8, got 9."),
    ({"seed": -2}, "Seed must be between -1 and 2.14748e+09, got -2."),
    ({"do_sample": "yes"}, "do_sample must be true or false; got str 'yes'."),
    ({"early_stopping": 1}, "early_stopping must be true, false or 'never'; got 1."),
    ({"min_new_tokens": 10, "max_new_tokens": 5}, "min_new_tokens (10) must not exceed max_new_tokens (5)."),
    ({"num_return_sequences": 2}, "num_return_sequences (2) must not exceed num_beams (1) unless sampling with a "
                                  "single beam."),
    ({"temprature": 0.5, "x": 1}, "Unknown generation parameter(s): temprature, x. Allowed: "
                                  + ", ".join(ALLOWED) + "."),
])
def test_bad_parameters_name_the_parameter(params: dict, message: str) -> None:
    with pytest.raises(GenerationParameterError) as excinfo:
        check_generation_params(params, LIMITS)
    assert str(excinfo.value) == message


def test_not_a_mapping() -> None:
    with pytest.raises(GenerationParameterError, match="^Generation parameters must be a mapping of names to "
                                                       "values; got list.$"):
        check_generation_params([("temperature", 1.0)], LIMITS)  # type: ignore[arg-type]


def test_beams_times_length_guard() -> None:
    # 8 beams × (100 prompt + 64 new) = 1,312 > 1,000; 4 beams fit.
    with pytest.raises(GenerationParameterError) as excinfo:
        check_generation_params({"num_beams": 8, "max_new_tokens": 64}, LIMITS, prompt_tokens=100)
    assert str(excinfo.value) == ("Beam search would hold num_beams × (prompt + new tokens) = 8 × 164 = 1,312 "
                                  "tokens, over the limit of 1,000 (BIOGPT_MAX_BEAM_TOKENS): use fewer beams, fewer "
                                  "new tokens or a shorter prompt.")
    assert check_generation_params({"num_beams": 4, "max_new_tokens": 64}, LIMITS, prompt_tokens=100)["num_beams"] == 4
    # Generation never runs past the model's positions, so neither does the estimate.
    check_beam_memory(8, 64, LIMITS, prompt_tokens=5_000, max_positions=120)
    with pytest.raises(GenerationParameterError, match="8 × 126 = 1,008 tokens"):
        check_beam_memory(8, 64, LIMITS, prompt_tokens=5_000, max_positions=126)


def test_accepted_parameters_are_accepted_by_the_library() -> None:
    checked = check_generation_params({"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.5, "top_k": 0,
                                       "repetition_penalty": 1.2, "no_repeat_ngram_size": 3, "num_beams": 2,
                                       "length_penalty": -1.0, "early_stopping": True, "num_return_sequences": 2},
                                      LIMITS, prompt_tokens=10)
    config = GenerationConfig()
    assert config.update(**checked) == {}
    config.validate()


def test_check_value_with_another_error_type() -> None:
    with pytest.raises(InputError, match=r"^Score threshold must be between 0 and 1, got 1\.5\.$"):
        check_value("Score threshold", 1.5, 0.0, 1.0, error=InputError)
    assert check_value("Score threshold", 1, 0.0, 1.0, error=InputError) == 1.0


def test_the_controls_and_the_checks_share_one_table() -> None:
    """The app's sliders are built from `parameters(settings)`; the deployment's caps move both together."""
    table = parameters(Settings(max_new_tokens=100, max_beams=3))
    assert (table["max_new_tokens"].high, table["num_beams"].high) == (100, 3)
    assert table["temperature"].label == "Temperature" and table["top_p"].title == "Top-p"
    with pytest.raises(GenerationParameterError, match=r"^Beams must be between 1 and 3, got 4\.$"):
        generation_params("beam", {"max_new_tokens": 10, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                                   "num_beams": 4}, Settings(max_beams=3))
    sampled = generation_params("sampling", {"max_new_tokens": 10, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                                             "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": -1})
    assert sampled == {"max_new_tokens": 10, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "do_sample": True,
                       "num_beams": 1, "truncate": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": None}
