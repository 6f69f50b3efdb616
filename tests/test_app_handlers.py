"""The app's handler functions on real checkpoints loaded by the real ModelManager (no mocks)."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import gradio as gr
import pytest

from app_fixtures import CLASS_LABELS, NER_LABELS, Checkpoints, checkpoints  # noqa: F401  (fixture)
from biogpt.generation import continuation_text
from biogpt.manager import ModelManager
from biogpt.settings import Settings
from ui.formatting import confidence_html
from ui.handlers import Workbench

GREEDY = dict(mode="greedy", temperature=0.8, top_p=0.95, top_k=50, repetition_penalty=1.0,
              no_repeat_ngram_size=0, num_beams=4, seed=-1)
# How the stats line says that a run ended by itself (the model's end of text, or the token limit).
ENDED = ("the model ended the text", "reached the token limit")
TEXT = "Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer treated with amifostine."


@pytest.fixture(scope="module")
def bench(checkpoints: Checkpoints) -> Workbench:
    return Workbench(ModelManager(max_models=4), Settings(model=checkpoints.lm, max_new_tokens=256))


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
    assert stats.endswith(ENDED) and 'class="wb-conf"' in html_view


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
        assert updates[-1][2].endswith("stopped by you")
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
    new_state, status, _ = bench.load_model(state["source"], "sdpa", "auto", "none", "auto", state, progress=None)
    assert "loaded in" in status
    with pytest.raises(gr.Error) as excinfo:
        bench.load_model("not-a-real-owner/not-a-real-model", "sdpa", "auto", "none", "auto", new_state,
                         progress=None)
    assert _error(excinfo).startswith("Could not load not-a-real-owner/not-a-real-model: ")
    assert bench.manager.loaded(bench.spec(new_state))
    assert "loaded in" in bench.status(new_state)
    updates = list(bench.generate("Aspirin inhibits", max_new_tokens=4, state=new_state, **GREEDY))
    assert updates[-1][0].startswith("Aspirin inhibits")


def test_int8_and_int4_weights_from_the_panel(bench: Workbench, state: dict) -> None:
    """The panel's CPU weight choices load PyTorch's weight-only kernels; the greedy text is the one a direct load
    with TorchAoConfig gives (the library's int8/int4 are tested against dequantized references in test_cpu_quant)."""
    from biogpt import BioGptForCausalLM, TorchAoConfig

    # What the panel's choices stand for: the output head quantized too, int4 in groups of 64, bf16 activations.
    for weights, config in (("int8", TorchAoConfig("int8_weight_only", include_input_output_embeddings=True)),
                            ("int4", TorchAoConfig("int4_weight_only", group_size=64,
                                                   include_input_output_embeddings=True))):
        new_state, status, _ = bench.load_model(state["source"], "sdpa", "auto", weights, "auto", state,
                                                progress=None)
        assert new_state["quantization"] == weights and f"· {weights} · loaded in" in status
        updates = list(bench.generate("Aspirin inhibits", max_new_tokens=8, state=new_state, **GREEDY))
        loaded = bench.manager.get(bench.spec(new_state))
        direct = BioGptForCausalLM.from_pretrained(loaded.source_path, quantization_config=config,
                                                   torch_dtype="bfloat16")
        ids = loaded.tokenizer("Aspirin inhibits", return_tensors="pt")["input_ids"]
        expected = direct.generate(ids, max_new_tokens=8)[0, ids.shape[1]:].tolist()
        assert updates[-1][0] == "Aspirin inhibits" + continuation_text(loaded.tokenizer, ids[0].tolist(), expected)
    with pytest.raises(gr.Error, match="Weights must be one of none, 4bit, int8, int4"):
        bench.load_model(state["source"], "sdpa", "auto", "int3", "auto", state, progress=None)


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
        bench.load_model(state["source"], "sdpa", "fp64", "none", "auto", state, progress=None)
    assert _error(excinfo).startswith("Precision must be one of auto, float32, bfloat16, float16")


# ----------------------------------------------------------------------------------------------------------------
# Untrusted values at the handler boundary
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"mode": "sampling", "temperature": "hot"}, "Temperature must be a number; got str 'hot'."),
    ({"mode": "sampling", "temperature": float("nan")}, "Temperature must be a finite number; got nan."),
    ({"mode": "sampling", "top_p": float("inf")}, "Top-p must be a finite number; got inf."),
    ({"max_new_tokens": "8"}, "Max new tokens must be a whole number; got str '8'."),
    ({"max_new_tokens": 8.5}, "Max new tokens must be a whole number; got 8.5."),
    ({"max_new_tokens": 10**400}, "Max new tokens must be between 1 and 256, got a huge number."),
    ({"repetition_penalty": None}, "Repetition penalty is missing."),
    ({"mode": "sampling", "seed": [1]}, "Seed must be a whole number; got list [1]."),
])
def test_mistyped_generation_values_name_the_parameter(bench: Workbench, state: dict, overrides: dict,
                                                       message: str) -> None:
    with pytest.raises(gr.Error) as excinfo:
        next(bench.generate("COVID-19 is", state=state, **{**GREEDY, "max_new_tokens": 8, **overrides}))
    assert _error(excinfo) == message


@pytest.mark.parametrize("prompt, message", [
    ("COVID \ud800 is", "The prompt contains an invalid character at position 6: a lone UTF-16 surrogate (U+D800), "
                        "which is not valid Unicode text. Remove it or re-encode the text as UTF-8."),
    (b"COVID \xff is", "The prompt is not valid UTF-8: byte 0xff at position 6 cannot be decoded. Send UTF-8 text."),
    (42, "The prompt must be text; got int."),
    ("\x00\x07 \x1b", "The prompt is empty: type or paste some text first."),
])
def test_unusable_prompts_get_the_specific_message(bench: Workbench, state: dict, prompt, message: str) -> None:
    with pytest.raises(gr.Error) as excinfo:
        next(bench.generate(prompt, state=state, max_new_tokens=4, **GREEDY))
    assert _error(excinfo) == message


def test_control_characters_are_removed_from_every_text(bench: Workbench, state: dict,
                                                        checkpoints: Checkpoints) -> None:
    final = list(bench.generate("COVID\x00-19\x1b is\r\n", state=state, max_new_tokens=2, **GREEDY))[-1][0]
    assert final.startswith("COVID-19 is\n") and "\x00" not in final and "\x1b" not in final
    highlighted = bench.entities("Aspirin\x07 causes\x00 cancer.", checkpoints.ner, 0.0, "simple", state)[0]
    assert highlighted["text"] == "Aspirin causes cancer."
    scores = bench.classify("VEGF\x1b[0m induced angiogenesis.", "classifier", checkpoints.classify, "", "", state)
    assert abs(sum(scores.values()) - 1) < 1e-4
    with pytest.raises(gr.Error) as excinfo:
        bench.classify("VEGF \udfff", "zero-shot", "", "yes, no", "{text}", state)
    assert "lone UTF-16 surrogate (U+DFFF)" in _error(excinfo)


def test_the_model_source_is_cleaned_and_capped(bench: Workbench, state: dict) -> None:
    new_state, status, _ = bench.load_model("\x00" + state["source"] + "\x1b\n", "sdpa", "auto", "none", "auto",
                                            state, progress=None)
    assert new_state["source"] == state["source"] and "loaded in" in status
    for source, message in (
            ("x" * 1_001, "The model is 1,001 characters long; the limit is 1,000."),
            ("owner/\ud800", "The model contains an invalid character at position 6: a lone UTF-16 surrogate "
                             "(U+D800), which is not valid Unicode text. Remove it or re-encode the text as UTF-8."),
            ([state["source"]], "The model must be text; got list."),
            ("  ", "The model is empty: pick one from the list or type a Hub id or a local path."),
            (None, "The model is empty: pick one from the list or type a Hub id or a local path.")):
        with pytest.raises(gr.Error) as excinfo:
            bench.load_model(source, "sdpa", "auto", "none", "auto", new_state, progress=None)
        assert _error(excinfo) == message
    assert bench.manager.loaded(bench.spec(new_state))


def test_beam_search_over_the_memory_limit_is_refused_before_decoding(bench: Workbench, state: dict,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = bench.manager.get(bench.spec(state))
    prompt = "COVID-19 is"
    length = min(len(loaded.tokenizer(prompt)["input_ids"]) + 64, loaded.model.config.max_position_embeddings)
    beams = dict(GREEDY, mode="beam", num_beams=4)
    monkeypatch.setattr(loaded.server, "settings", Settings(max_beam_tokens=4 * length - 1))
    calls = []
    monkeypatch.setattr(loaded.model, "forward", lambda *a, **k: calls.append(1))  # must never be reached
    with pytest.raises(gr.Error) as excinfo:
        next(bench.generate(prompt, state=state, max_new_tokens=64, **beams))
    assert _error(excinfo) == (
        f"Beam search would hold num_beams × (prompt + new tokens) = 4 × {length} = {4 * length:,} tokens, over the "
        f"limit of {4 * length - 1:,} (BIOGPT_MAX_BEAM_TOKENS): use fewer beams, fewer new tokens or a shorter "
        "prompt.")
    assert not calls and all(row["in_use"] == 0 for row in bench.manager.status())
    monkeypatch.undo()
    monkeypatch.setattr(loaded.server, "settings", Settings(max_beam_tokens=4 * length))  # at the limit: allowed
    assert list(bench.generate(prompt, state=state, max_new_tokens=64, **beams))[-1][0].startswith(prompt)


def test_entity_files_stay_bounded_on_disk(bench: Workbench, state: dict, checkpoints: Checkpoints, tmp_path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from ui import downloads

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(downloads, "_swept", False)
    stale = tmp_path / "biogpt-entities-999999999"  # left by a process that no longer runs
    stale.mkdir()
    (tmp_path / "biogpt-entities-notapid").mkdir()  # not ours: left alone
    keep = downloads.ENTITY_FOLDERS_KEPT
    found = [{"text": "Aspirin", "label": "Chemical", "score": 0.9, "start": 0, "end": 7}]
    returned = [downloads.entity_files(found) for _ in range(3 * keep)]
    files = bench.entities(TEXT, checkpoints.ner, 0.0, "simple", state)[2]
    root = downloads.entity_root()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([root.name, "biogpt-entities-notapid"])
    folders = list(root.iterdir())
    assert len(folders) == keep and all(sorted(p.name for p in f.iterdir()) == ["entities.csv", "entities.json"]
                                        for f in folders)
    for path in returned[-(keep - 1):] + [files]:  # the newest are all still there, with the right content
        assert all(Path(p).is_file() for p in path) and Path(path[0]).parent.parent == root
    assert json.loads(Path(returned[-1][0]).read_text(encoding="utf-8")) == found
    assert not Path(returned[0][0]).exists()


def test_the_ui_asks_the_library_about_devices_and_has_no_tensor_code(bench: Workbench, state: dict,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from biogpt import devices

    root = Path(__file__).resolve().parent.parent
    for path in [root / "app.py", *sorted((root / "ui").glob("*.py"))]:
        assert not re.search(r"^\s*(import torch|from torch)", path.read_text(encoding="utf-8"), re.M), path
    assert devices.available_devices()[:2] == ["auto", "cpu"] and devices.default_concurrency() in (2, 4)
    assert devices.attention_unavailable_reason("sdpa") is None
    monkeypatch.setattr("ui.handlers.attention_unavailable_reason", lambda *a: "no flash here")
    with pytest.raises(gr.Error) as excinfo:
        bench.load_model(state["source"], "flash_attention_2", "auto", "none", "auto", state, progress=None)
    assert _error(excinfo) == "flash_attention_2 is unavailable: no flash here. Choose sdpa or eager."


# --------------------------------------------------------------------------------------------------------------
# Generation through each model's batching engine
# --------------------------------------------------------------------------------------------------------------
def _slow_forward(model, delay: float = 0.01):
    """Patch `model.forward` to sleep a little per call (so that concurrent requests overlap); returns the undo."""
    original = model.forward

    def slow(*args, **kwargs):
        time.sleep(delay)
        return original(*args, **kwargs)

    model.forward = slow
    return lambda: setattr(model, "forward", original)


def _wait(condition, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_concurrent_generations_are_batched_and_equal_solo_runs(bench: Workbench, state: dict) -> None:
    prompts = ["Ibuprofen is best used for", "COVID-19 is"]  # different lengths: the merged batch is left-padded
    params = dict(GREEDY, max_new_tokens=40)
    list(bench.generate("warm up", max_new_tokens=2, state=state, **GREEDY))
    loaded = bench.manager.get(bench.spec(state))
    engine = loaded.server.engine
    assert engine is loaded.server.engine, "one engine per loaded model"

    solo_texts, solo_forwards = [], 0
    for prompt in prompts:
        before = engine.forward_count
        solo_texts.append(list(bench.generate(prompt, state=state, **params))[-1][0])
        solo_forwards += engine.forward_count - before

    undo = _slow_forward(loaded.model)
    results: list = [None, None]
    barrier = threading.Barrier(len(prompts))

    def user(i: int) -> None:
        barrier.wait()
        results[i] = list(bench.generate(prompts[i], state=state, request=_request(f"batched-{i}"), **params))

    try:
        before = engine.forward_count
        threads = [threading.Thread(target=user, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        batched_forwards = engine.forward_count - before
    finally:
        undo()
    assert [updates[-1][0] for updates in results] == solo_texts
    assert all(updates[-1][2].endswith(ENDED) for updates in results)
    assert batched_forwards < solo_forwards, "the two requests were not decoded in shared forwards"


def test_stop_and_a_closed_client_stop_the_engine(bench: Workbench, state: dict) -> None:
    list(bench.generate("warm up", max_new_tokens=2, state=state, **GREEDY))
    loaded = bench.manager.get(bench.spec(state))
    engine = loaded.server.engine
    undo = _slow_forward(loaded.model)
    try:
        # Stop: the engine's forward count stops growing within a step.
        run = bench.generate("Ibuprofen is best used for", max_new_tokens=200, state=state,
                             request=_request("engine-stop"), **GREEDY)
        updates = [next(run) for _ in range(3)]
        bench.stop(_request("engine-stop"))
        updates.extend(run)
        assert updates[-1][2].endswith("stopped by you")
        assert _wait(lambda: engine.active_count == 0)
        frozen = engine.forward_count
        time.sleep(0.2)
        assert engine.forward_count == frozen, "the engine kept decoding after Stop"

        # A client that goes away: Gradio closes the handler's generator; the request leaves the batch.
        run = bench.generate("Aspirin inhibits", max_new_tokens=200, state=state, request=_request("gone"),
                             **GREEDY)
        for _ in range(3):
            next(run)
        run.close()
        assert _wait(lambda: engine.active_count == 0 and engine.pending_count == 0)
        frozen = engine.forward_count
        time.sleep(0.2)
        assert engine.forward_count == frozen, "the engine kept decoding for a client that went away"
    finally:
        undo()


def test_beam_search_bypasses_the_engine(bench: Workbench, state: dict) -> None:
    engine = bench.manager.get(bench.spec(state)).server.engine
    before = engine.forward_count, engine.prefill_count
    updates = list(bench.generate("COVID-19 is", state=state, **dict(GREEDY, mode="beam", num_beams=3,
                                                                      max_new_tokens=8)))
    assert updates[-1][0].startswith("COVID-19 is") and updates[-1][2].endswith(ENDED)
    assert (engine.forward_count, engine.prefill_count) == before


def test_unloading_or_evicting_the_model_closes_its_engine(checkpoints: Checkpoints) -> None:
    manager = ModelManager(max_models=1)
    bench = Workbench(manager, Settings(model=checkpoints.lm, max_new_tokens=64))
    state = bench.default_state()
    spec = bench.spec(state)
    closed: list = []
    manager.on_unload.append(lambda loaded: closed.append(loaded.spec))

    list(bench.generate("COVID-19 is", max_new_tokens=4, state=state, **GREEDY))
    engine = manager.get(spec).server.engine
    thread = engine._thread
    assert thread is not None and thread.is_alive()
    assert manager.unload(spec)
    assert not thread.is_alive(), "the engine thread outlived its model"
    assert closed == [spec]

    # Eviction (max_models=1): loading another model closes the engine of the one it replaces.
    list(bench.generate("COVID-19 is", max_new_tokens=4, state=state, **GREEDY))
    loaded = manager.get(spec)
    engine = loaded.server.engine
    assert engine._thread.is_alive()
    manager.get(bench.spec(state, "token-classification", checkpoints.ner))
    assert not manager.loaded(spec)
    assert not engine._thread.is_alive() and loaded.server._engine is None
    assert closed == [spec, spec]


def test_generate_event_runs_requests_concurrently(checkpoints: Checkpoints, monkeypatch) -> None:
    from app import build_app

    monkeypatch.setenv("BIOGPT_GENERATE_CONCURRENCY", "6")
    settings = Settings.from_env()
    assert settings.generate_concurrency == 6
    demo = build_app(ModelManager(max_models=1), Settings(model=checkpoints.lm, preload=False))
    generate = next(fn for fn in demo.fns.values() if fn.api_name == "generate")
    assert (generate.concurrency_limit, generate.concurrency_id) == (8, "generate")
