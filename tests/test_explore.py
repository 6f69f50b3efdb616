"""The Generate tab's exploration handlers and the History tab's records, on the real manager (no browser):
what a run records, that a seeded or greedy re-run reproduces it token for token, branching, and the session
exports (Markdown to read, JSON that imports back to the same history)."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from app_fixtures import Checkpoints, checkpoints  # noqa: F401  (fixture)
from biogpt.errors import GenerationParameterError, InputError
from biogpt.manager import ModelManager
from biogpt.settings import Settings
from ui.explore import Explorer
from ui.handlers import Workbench
from ui.history_tab import exports, imported, markdown, table

CONTROLS = dict(max_new_tokens=12, temperature=0.9, top_p=0.95, top_k=50, repetition_penalty=1.0,
                no_repeat_ngram_size=0, num_beams=4, seed=-1)


@pytest.fixture(scope="module")
def explorer(checkpoints: Checkpoints) -> Explorer:
    return Explorer(Workbench(ModelManager(max_models=2), Settings(model=checkpoints.lm, max_new_tokens=64)))


def _request(session: str) -> gr.Request:
    return gr.Request(session_hash=session)


def _run(explorer: Explorer, prompt: str, mode: str, history: list, **controls) -> tuple:
    """(run, history, plain text) after a whole generation."""
    final = list(explorer.generate(prompt, mode, **{**CONTROLS, **controls}, colored=True, state=None,
                                   history=history, request=_request("explore")))[-1]
    view, text, stats, run, new_history = final[:5]
    return run, new_history, text


def test_a_run_records_everything_needed_to_repeat_it(explorer: Explorer) -> None:
    run, history, text = _run(explorer, "Aspirin inhibits", "sampling", [])
    (entry,) = history
    assert entry["kind"] == "generate" and entry["prompt"] == "Aspirin inhibits"
    assert text == "Aspirin inhibits" + entry["output"]
    assert set(entry["model"]) == {"source", "revision", "dtype", "attn_implementation", "quantization", "device"}
    assert entry["params"]["do_sample"] is True and isinstance(entry["params"]["seed"], int)  # a seed was drawn
    assert entry["params"]["temperature"] == 0.9 and entry["tokens"] == len(run["versions"][0]["token_ids"])
    assert entry["finish"] in ("the model ended the text", "reached the token limit")
    spans = run["versions"][0]["spans"]
    assert spans[0][0] == 0 and spans[-1][1] == len(entry["output"])  # the clickable pieces tile the text
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("mode", ["greedy", "sampling"])
def test_a_rerun_reproduces_the_run_token_for_token(explorer: Explorer, mode: str) -> None:
    run, history, _ = _run(explorer, "Metformin reduces blood glucose by", mode, [])
    texts = [text for text, _ in explorer.rerun(history[0], history, _request("rerun"))]
    again = list(explorer.rerun(history[0], history, _request("rerun")))[-1][1][-1]
    assert texts[-1] == history[0]["output"] and again["kind"] == "rerun" and again["of"] == history[0]["id"]
    assert again["params"] == history[0]["params"]


def test_a_rerun_checks_what_the_browser_sent(explorer: Explorer) -> None:
    _, history, _ = _run(explorer, "Aspirin inhibits", "greedy", [])
    tampered = {**history[0], "params": {**history[0]["params"], "max_new_tokens": 10_000}}
    with pytest.raises(GenerationParameterError, match="^Max new tokens must be between 1 and 64, got 10000\\.$"):
        list(explorer.rerun(tampered, history, _request("rerun")))


def test_branching_keeps_the_first_version_and_continues_from_the_picked_token(explorer: Explorer) -> None:
    run, history, _ = _run(explorer, "Ibuprofen is best used for", "greedy", [])
    original = run["versions"][0]
    explained = explorer.explain(run, True, gr.EventData(None, {"token": 0}))
    run = explained[1]
    choices = explained[5]["choices"]
    picked = choices[0][1]
    assert picked != original["token_ids"][0]
    final = list(explorer.branch(run, picked, True, history, _request("branch")))[-1]
    run, history = final[3], final[4]
    first, second = run["versions"]
    assert first == original and second["token_ids"][0] == picked and second["branched_at"] == 0
    assert history[-1]["kind"] == "branch" and history[-1]["branch"]["from"] == history[0]["id"]
    assert history[-1]["input_ids"] == run["prompt_ids"] + [picked]
    shown = explorer.show_version(run, first["label"], True)
    assert shown[1] == run["prompt"] + first["text"]


def test_the_json_export_imports_back_to_the_same_history(explorer: Explorer, tmp_path) -> None:
    _, history, _ = _run(explorer, "Aspirin inhibits", "greedy", [])
    _, history, _ = _run(explorer, "COVID-19 is", "sampling", history)
    as_md, as_json = exports(history)
    assert imported(as_json, []) == history
    assert imported(as_json, history) == history  # nothing twice
    document = open(as_md, encoding="utf-8").read()
    assert document.startswith("# BioGPT workbench session") and "## Run 2" in document
    assert "> COVID-19 is" in document and f"seed = {history[1]['params']['seed']}" in document
    assert markdown(history) == document and [row[0] for row in table(history)] == [2, 1]


@pytest.mark.parametrize("content, message", [
    (b"not json", "not JSON"),
    (json.dumps({"runs": []}).encode(), "not a session export of this workbench"),
    (json.dumps({"format": "biogpt-workbench-history", "runs": [{"no": "id"}]}).encode(),
     "not a session export of this workbench"),
])
def test_importing_something_else_says_so(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "session.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        imported(str(path), [])
