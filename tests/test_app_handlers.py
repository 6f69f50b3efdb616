"""The app's handler functions on real checkpoints loaded by the real ModelManager (no mocks)."""

from __future__ import annotations

import csv
import json
import threading
import time

import gradio as gr
import pytest

from app_fixtures import CLASS_LABELS, NER_LABELS, Checkpoints, checkpoints  # noqa: F401  (fixture)
from biogpt.generation import continuation_text
from biogpt.manager import ModelManager
from ui.handlers import AppSettings, Workbench, confidence_html

GREEDY = dict(mode="greedy", temperature=0.8, top_p=0.95, top_k=50, repetition_penalty=1.0,
              no_repeat_ngram_size=0, num_beams=4, seed=-1)
TEXT = "Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer treated with amifostine."


@pytest.fixture(scope="module")
def bench(checkpoints: Checkpoints) -> Workbench:
    return Workbench(ModelManager(max_models=4), AppSettings(model=checkpoints.lm, max_new_tokens=256))


@pytest.fixture()
def state(bench: Workbench) -> dict:
    return bench.default_state()


def _request(session: str) -> gr.Request:
    return gr.Request(session_hash=session)


def _error(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.message


def test_generation_streams_and_matches_a_non_streamed_greedy_run(bench: Workbench, state: dict) -> None:
    prompt = "COVID-19 is"
    updates = list(bench.generate(prompt, max_new_tokens=24, state=state, **GREEDY))
    texts = [text for text, _, _ in updates]
    assert len(updates) > 2 and len(set(texts)) > 1, "the output must grow in several updates"
    final, html_view, stats = updates[-1]

    loaded = bench.manager.get(bench.spec(state))
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = loaded.model.generate(ids, max_new_tokens=24, do_sample=False)
    expected = prompt + continuation_text(loaded.tokenizer, ids[0].tolist(), out[0, ids.shape[1]:].tolist())
    assert final == expected
    assert stats.startswith(f"{len(out[0]) - ids.shape[1]} tokens · ") and "tokens/s" in stats
    assert "finished:" in stats and 'class="wb-conf"' in html_view


def test_stop_sets_the_event_and_the_forward_calls_stop(bench: Workbench, state: dict) -> None:
    model = bench.manager.get(bench.spec(state)).model
    calls = []
    original = model.forward

    def counting_forward(*args, **kwargs):
        calls.append(time.perf_counter())
        time.sleep(0.02)  # slow enough that Stop always lands mid-run
        return original(*args, **kwargs)

    model.forward = counting_forward
    updates: list[tuple[str, str, str]] = []
    run = bench.generate("Ibuprofen is best used for", max_new_tokens=200, state=state,
                         request=_request("stop-test"), **GREEDY)
    worker = threading.Thread(target=lambda: updates.extend(run))
    try:
        worker.start()
        deadline = time.time() + 30
        while len(updates) < 3 and time.time() < deadline:
            time.sleep(0.01)
        assert len(updates) >= 3
        bench.stop(_request("stop-test"))
        calls_at_stop = len(calls)
        worker.join(timeout=10)
        assert not worker.is_alive()
        time.sleep(0.2)
        assert len(calls) <= calls_at_stop + 1, "the decoding loop kept calling the model after Stop"
        assert len(calls) < 150
        assert updates[-1][2].endswith("finished: stopped")
    finally:
        model.forward = original
    bench.stop(_request("nobody-running"))  # stopping an idle session is harmless


def test_confidence_view_escapes_model_and_user_text() -> None:
    view = confidence_html('<img src=x onerror="alert(1)">', [("<script>x</script>", 0.5)])
    assert "<script>" not in view and "<img" not in view
    assert "&lt;script&gt;x&lt;/script&gt;" in view and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in view


def test_entity_spans_are_exact_slices_and_files_match(bench: Workbench, state: dict,
                                                       checkpoints: Checkpoints) -> None:
    highlighted, rows, files, summary = bench.entities(TEXT, checkpoints.ner, 0.0, "simple", state)
    assert rows, "the model should find some entities"
    assert highlighted["text"] == TEXT
    for (text, label, score, start, end), span in zip(rows, highlighted["entities"]):
        assert TEXT[start:end] == text and span == {"entity": label, "start": start, "end": end}
        assert 0.0 <= score <= 1.0
    labels = {label.split("-", 1)[-1] for label in NER_LABELS if label != "O"}
    assert {row[1] for row in rows} <= labels
    assert summary.startswith(f"{len(rows)} entities")
    as_json, as_csv = files
    assert [e["text"] for e in json.loads(open(as_json, encoding="utf-8").read())] == [r[0] for r in rows]
    assert [r["text"] for r in csv.DictReader(open(as_csv, encoding="utf-8"))] == [r[0] for r in rows]

    high = bench.entities(TEXT, checkpoints.ner, 0.99, "simple", state)[1]
    assert all(row[2] >= 0.99 for row in high)


def test_entities_on_a_long_abstract(bench: Workbench, state: dict, checkpoints: Checkpoints) -> None:
    text = " ".join([TEXT] * 60)  # far longer than the model's context
    rows = bench.entities(text, checkpoints.ner, 0.0, "first", state)[1]
    assert rows and max(row[4] for row in rows) > len(text) // 2
    assert all(text[start:end] == span for span, _, _, start, end in rows)


def test_classify_returns_the_models_labels(bench: Workbench, state: dict, checkpoints: Checkpoints) -> None:
    scores = bench.classify("VEGF overexpression induced angiogenesis.", "classifier", checkpoints.classify, "", "",
                            state)
    if checkpoints.demo:
        labels = set(bench.manager.get(bench.spec(state, "sequence-classification", "demo")).model.config
                     .id2label.values())
    else:
        labels = set(CLASS_LABELS)
    assert set(scores) == labels and abs(sum(scores.values()) - 1) < 1e-4


def test_zero_shot_with_pubmedqa_and_custom_labels(bench: Workbench, state: dict) -> None:
    from biogpt.tasks.classify import PUBMEDQA_TEMPLATE

    answer = bench.classify("Question: Do statins reduce mortality? Context: They did not in this trial.",
                            "zero-shot", "", "yes, no, maybe", PUBMEDQA_TEMPLATE, state)
    assert set(answer) == {"yes", "no", "maybe"} and abs(sum(answer.values()) - 1) < 1e-6
    custom = bench.classify("Aspirin inhibits platelets.", "zero-shot", "", "drug, disease", "{text} This is a",
                            state)
    assert set(custom) == {"drug", "disease"}


def test_a_bad_model_id_errors_and_the_previous_model_stays(bench: Workbench, state: dict) -> None:
    new_state, status, _ = bench.load_model(state["source"], "sdpa", "auto", False, "auto", state, progress=None)
    assert "loaded in" in status
    with pytest.raises(gr.Error) as excinfo:
        bench.load_model("not-a-real-owner/not-a-real-model", "sdpa", "auto", False, "auto", new_state,
                         progress=None)
    assert _error(excinfo).startswith("Could not load not-a-real-owner/not-a-real-model: ")
    assert bench.manager.loaded(bench.spec(new_state))
    assert "loaded in" in bench.status(new_state)
    updates = list(bench.generate("Aspirin inhibits", max_new_tokens=4, state=new_state, **GREEDY))
    assert updates[-1][0].startswith("Aspirin inhibits")


@pytest.mark.parametrize("prompt, overrides, message", [
    ("   ", {}, "The prompt is empty: type or paste some text first."),
    ("x" * 4001, {}, "The prompt is 4,001 characters long; the limit is 4,000."),
    ("COVID-19 is", {"max_new_tokens": 0}, "Max new tokens must be between 1 and 256, got 0."),
    ("COVID-19 is", {"max_new_tokens": 10_000}, "Max new tokens must be between 1 and 256, got 10000."),
    ("COVID-19 is", {"mode": "sampling", "temperature": 0}, "Temperature must be between 0.05 and 2, got 0."),
    ("COVID-19 is", {"mode": "sampling", "top_p": 1.5}, "Top-p must be between 0.05 and 1, got 1.5."),
    ("COVID-19 is", {"mode": "beam", "num_beams": 9}, "Beams must be between 1 and 8, got 9."),
    ("COVID-19 is", {"repetition_penalty": 0.5}, "Repetition penalty must be between 1 and 3, got 0.5."),
    ("COVID-19 is", {"mode": "telepathy"}, "Decoding mode must be one of greedy, beam, sampling; got 'telepathy'."),
])
def test_generation_validation_messages(bench: Workbench, state: dict, prompt: str, overrides: dict,
                                        message: str) -> None:
    kwargs = {**GREEDY, "max_new_tokens": 8, **overrides}
    with pytest.raises(gr.Error) as excinfo:
        next(bench.generate(prompt, state=state, **kwargs))
    assert _error(excinfo) == message


def test_entity_and_classify_validation_messages(bench: Workbench, state: dict, checkpoints: Checkpoints) -> None:
    with pytest.raises(gr.Error) as excinfo:
        bench.entities("", checkpoints.ner, 0.0, "simple", state)
    assert _error(excinfo) == "The text is empty: type or paste some text first."
    with pytest.raises(gr.Error) as excinfo:
        bench.entities("a" * 20_001, checkpoints.ner, 0.0, "simple", state)
    assert _error(excinfo) == "The text is 20,001 characters long; the limit is 20,000."
    with pytest.raises(gr.Error) as excinfo:
        bench.entities(TEXT, checkpoints.ner, 1.5, "simple", state)
    assert _error(excinfo) == "Score threshold must be between 0 and 1, got 1.5."
    with pytest.raises(gr.Error) as excinfo:
        bench.classify(TEXT, "zero-shot", "", "yes", "{text}", state)
    assert _error(excinfo) == "Zero-shot needs at least two different labels, separated by commas."
    with pytest.raises(gr.Error) as excinfo:
        bench.classify(TEXT, "zero-shot", "", "yes, no", "{question} then {context}", state)
    assert _error(excinfo) == "This template needs a question and a context: write 'Question: … Context: …'."
    with pytest.raises(gr.Error) as excinfo:
        bench.load_model(state["source"], "sdpa", "fp64", False, "auto", state, progress=None)
    assert _error(excinfo).startswith("Precision must be one of auto, float32, bfloat16, float16")


def test_settings_from_env() -> None:
    settings = AppSettings.from_env({"BIOGPT_PORT": "8000", "BIOGPT_HOST": "0.0.0.0", "BIOGPT_CONCURRENCY": "3",
                                     "BIOGPT_MAX_QUEUE": "5", "BIOGPT_PRELOAD": "0", "BIOGPT_MODEL": "demo"})
    assert (settings.port, settings.host, settings.concurrency, settings.max_queue, settings.preload,
            settings.model) == (8000, "0.0.0.0", 3, 5, False, "demo")
    with pytest.raises(ValueError, match="BIOGPT_PORT must be an integer"):
        AppSettings.from_env({"BIOGPT_PORT": "eighty"})
    # Loopback by default; reachable from outside the container on Hugging Face Spaces.
    assert AppSettings.from_env({}).host == "127.0.0.1"
    assert AppSettings.from_env({"SPACE_ID": "someone/biogpt"}).host == "0.0.0.0"
    assert AppSettings.from_env({"GRADIO_SERVER_NAME": "0.0.0.0"}).host == "0.0.0.0"
