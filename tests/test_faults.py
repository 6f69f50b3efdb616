"""Faults and hostile input: failed loads keep the previous model serving, untrusted checkpoints never run code,
bad requests get specific messages without hurting the worker, and a client that goes away stops its generation.

Manager-level tests load the real tiny checkpoints of `app_fixtures`; app-level ones drive the real app on
127.0.0.1 through `gradio_client` (and raw HTTP where gradio_client cannot send the payload, e.g. lone surrogates).
Text goes through `biogpt.validation.clean_text` in the handlers; numbers are checked by the app's `CheckedSlider` /
`CheckedNumber` before Gradio converts them, so a mistyped API value gets a message naming the parameter.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import httpx
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

import biogpt.loading
from app_fixtures import Checkpoints, Server, checkpoints, paper_release, server  # noqa: F401  (fixtures)
from biogpt import AutoModelForCausalLM, AutoTokenizer, BioGptForCausalLM, CheckpointError, DeviceError
from biogpt.manager import ModelManager, ModelSpec
from biogpt.settings import Settings
from ui.handlers import Workbench

GREEDY = ("greedy", 8, 0.8, 0.95, 50, 1.0, 0, 4, -1)  # mode, max new tokens, temperature, top-p, top-k, ...


def _copy(source: str, dest: Path) -> Path:
    """A private copy of a checkpoint directory (a new path, so a new ModelSpec)."""
    from biogpt import catalog

    path = catalog.demo_path("causal-lm") if source == catalog.DEMO else Path(source)
    shutil.copytree(path, dest)
    return dest


def _generate(loaded: Any, prompt: str = "Aspirin inhibits") -> list[int]:
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    return loaded.model.generate(ids, max_new_tokens=4, do_sample=False)[0].tolist()


def _fail_after(count: int, error: BaseException) -> Callable:
    """A stand-in for `loading._assign` that assigns `count` tensors, then raises `error` (mid tensor loop)."""
    original = biogpt.loading._assign
    calls = [0]

    def assign(model: Any, name: str, tensor: torch.Tensor) -> None:
        calls[0] += 1
        if calls[0] > count:
            raise error
        original(model, name, tensor)

    return assign


class Marker:
    """A file that code from a checkpoint would create if it ever ran."""

    def __init__(self, root: Path):
        self.path = root / "PWNED"

    def python(self) -> str:
        return f"open({str(self.path)!r}, 'w').write('ran')\n"

    def exists(self) -> bool:
        return self.path.exists()


# ----------------------------------------------------------------------------------------------------------------
# Loads that fail part-way, through the manager
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def serving(checkpoints: Checkpoints) -> tuple[ModelManager, ModelSpec, Any, list[int]]:
    """A manager already serving the tiny LM, and what that model generates."""
    manager = ModelManager(max_models=1)  # one slot: a successful new load would evict the old model
    spec = ModelSpec(checkpoints.lm)
    loaded = manager.get(spec)
    return manager, spec, loaded, _generate(loaded)


def _still_serving(manager: ModelManager, spec: ModelSpec, loaded: Any, expected: list[int]) -> None:
    assert manager.get(spec) is loaded and [row["source"] for row in manager.status()] == [spec.source]
    assert not manager._loading, "no load may be left half-registered"
    assert _generate(loaded) == expected


@pytest.mark.parametrize("error, message", [
    (MemoryError(), "Out of memory while loading"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "Out of GPU memory while loading"),
])
def test_out_of_memory_in_the_tensor_loop_keeps_the_previous_model(serving, checkpoints, tmp_path, monkeypatch,
                                                                   error, message) -> None:
    manager, spec, loaded, expected = serving
    other = ModelSpec(str(_copy(checkpoints.lm, tmp_path / "other")))
    monkeypatch.setattr(biogpt.loading, "_assign", _fail_after(3, error))
    with pytest.raises(DeviceError, match=message):
        manager.get(other)
    _still_serving(manager, spec, loaded, expected)
    monkeypatch.undo()  # memory is back: the same request now loads (nothing cached the failure)
    assert manager.get(other).spec == other


def test_a_corrupt_safetensors_file_keeps_the_previous_model(serving, checkpoints, tmp_path) -> None:
    manager, spec, loaded, expected = serving
    broken = _copy(checkpoints.lm, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        manager.get(ModelSpec(str(broken)))
    _still_serving(manager, spec, loaded, expected)


# ----------------------------------------------------------------------------------------------------------------
# Untrusted checkpoints never run code
# ----------------------------------------------------------------------------------------------------------------
class SystemCall:
    """Unpickling this runs `os.system(command)`: what a malicious pytorch_model.bin does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickle_calling_os_system_is_refused_by_the_manager(serving, checkpoints, tmp_path) -> None:
    manager, spec, loaded, expected = serving
    evil = _copy(checkpoints.lm, tmp_path / "evil-bin")
    (evil / "model.safetensors").unlink()
    marker = Marker(tmp_path)
    state = {name: tensor for name, tensor in loaded.model.state_dict().items()}
    state["biogpt.embed_tokens.weight"] = SystemCall(f"touch {marker.path}")
    torch.save(state, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="Refusing to load pytorch_model.bin: .*arbitrary code"):
        manager.get(ModelSpec(str(evil)))
    with open(evil / "pytorch_model.bin", "wb") as handle:  # the legacy, non-zip pickle format
        pickle.dump(state, handle)
    with pytest.raises(CheckpointError, match="Refusing to load pytorch_model.bin"):
        manager.get(ModelSpec(str(evil)))
    assert not marker.exists()
    _still_serving(manager, spec, loaded, expected)


def _with_remote_code(source: str, dest: Path, marker: Marker) -> Path:
    """A checkpoint whose config and tokenizer config point (auto_map) at code that would leave `marker`."""
    path = _copy(source, dest)
    for module in ("modeling_evil", "configuration_evil", "tokenization_evil"):
        (path / f"{module}.py").write_text(marker.python() + "class Evil:\n    pass\n")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.Evil", "AutoModel": "modeling_evil.Evil",
                          "AutoModelForCausalLM": "modeling_evil.Evil"}
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BioGptTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_evil.Evil", None]}}))
    return path


def test_auto_map_code_is_never_imported(checkpoints, tmp_path) -> None:
    marker = Marker(tmp_path)
    path = _with_remote_code(checkpoints.lm, tmp_path / "remote-code", marker)
    loaded = ModelManager().get(ModelSpec(str(path)))
    assert isinstance(loaded.model, BioGptForCausalLM)
    AutoModelForCausalLM.from_pretrained(path)
    AutoTokenizer.from_pretrained(path, trust_remote_code=True)  # a tokenizer argument it ignores: no code either
    assert not marker.exists()
    assert not {"modeling_evil", "configuration_evil", "tokenization_evil"} & set(sys.modules)


def test_trust_remote_code_is_refused(checkpoints, tmp_path) -> None:
    marker = Marker(tmp_path)
    path = _with_remote_code(checkpoints.lm, tmp_path / "remote-code", marker)
    for load in (BioGptForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(CheckpointError, match="trust_remote_code=True is not supported"):
            load(path, trust_remote_code=True)
    assert not marker.exists()


def test_local_paths_are_off_on_spaces_through_the_app(checkpoints) -> None:
    manager = ModelManager.from_settings(Settings.from_env({"SPACE_ID": "someone/biogpt"}))
    bench = Workbench(manager, Settings(model="microsoft/biogpt", preload=False))
    for path in ("/etc", "../../etc/passwd", checkpoints.lm if not checkpoints.demo else "/tmp"):
        with pytest.raises(gr.Error, match="Local paths are disabled on this server"):
            bench.load_model(path, "sdpa", "auto", "none", "auto", bench.default_state(), progress=None)
    assert manager.status() == []


# ----------------------------------------------------------------------------------------------------------------
# The running app
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def client(server: Server) -> Client:
    """A fresh client, hence a fresh session with the default model."""
    return Client(server.url, verbose=False)


def _works(client: Client) -> None:
    assert client.predict("Aspirin inhibits", *GREEDY, api_name="/generate")[0].startswith("Aspirin inhibits")


def test_failed_loads_through_the_app_keep_the_session_model(client, server, checkpoints, tmp_path,
                                                             monkeypatch) -> None:
    _works(client)
    before = client.predict(api_name="/status")
    broken = _copy(checkpoints.lm, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AppError, match="not a readable safetensors file"):
        client.predict(str(broken), "sdpa", "auto", "none", "auto", api_name="/load_model")
    monkeypatch.setattr(biogpt.loading, "_assign", _fail_after(3, MemoryError()))  # the server runs in-process
    with pytest.raises(AppError, match="Out of memory while loading"):
        client.predict(str(_copy(checkpoints.lm, tmp_path / "oom")), "sdpa", "auto", "none", "auto",
                       api_name="/load_model")
    monkeypatch.undo()
    assert client.predict(api_name="/status") == before
    _works(client)
    assert not server.demo.workbench.manager._loading


@pytest.mark.parametrize("args, message", [
    (("x" * 1_000_000, *GREEDY), "The prompt is 1,000,000 characters long; the limit is 4,000."),
    (("  \n ", *GREEDY), "The prompt is empty: type or paste some text first."),
    (("COVID-19 is", "sampling", 8, -1.0, 0.95, 50, 1.0, 0, 4, -1), "-1"),
    (("COVID-19 is", "sampling", 8, 0.8, 1.5, 50, 1.0, 0, 4, -1), "1.5"),
    (("COVID-19 is", "greedy", 10_000, 0.8, 0.95, 50, 1.0, 0, 4, -1), "10000"),
    (("COVID-19 is", "beam", 8, 0.8, 0.95, 50, 1.0, 0, 99, -1), "99"),
])
def test_bad_generation_requests_get_a_message_and_the_server_keeps_working(client, args, message) -> None:
    with pytest.raises(AppError, match=message.replace(".", r"\.")):
        client.predict(*args, api_name="/generate")
    _works(client)


def test_a_prompt_longer_than_the_context_is_cut_with_a_visible_note(client, server) -> None:
    loaded = server.demo.workbench.manager.get(server.demo.workbench.spec(None))
    prompt = "cancer " * 560  # under the 4,000-character cap, over the tiny model's 512 positions
    assert len(loaded.tokenizer(prompt)["input_ids"]) > loaded.model.config.max_position_embeddings
    text, _, stats = client.predict(prompt, *GREEDY, api_name="/generate")
    assert "the prompt was cut to fit the model's context" in stats and text.startswith(prompt)


@pytest.mark.parametrize("position, value, message", [
    (3, "hot", "Temperature must be a number; got str 'hot'."),
    (3, None, "Temperature is missing."),
    (4, [0.5], "Top-p must be a number; got list [0.5]."),
    (2, 8.5, "Max new tokens must be a whole number; got 8.5."),
    (2, True, "Max new tokens must be a whole number; got bool True."),
    (8, "4", "Beams must be a whole number; got str '4'."),
    (9, "42", "Seed must be a whole number; got str '42'."),
    (9, 1.5, "Seed must be a whole number; got 1.5."),
])
def test_a_wrong_type_for_a_number_names_the_parameter(client, position, value, message) -> None:
    args = ["COVID-19 is", "sampling", 8, 0.8, 0.95, 50, 1.0, 0, 4, -1]
    args[position] = value
    with pytest.raises(AppError) as excinfo:
        client.predict(*args, api_name="/generate")
    assert str(excinfo.value) == message
    _works(client)


def test_a_wrong_type_for_the_entity_threshold_names_it(client, checkpoints) -> None:
    with pytest.raises(AppError, match=r"^Score threshold must be a number; got str 'high'\.$"):
        client.predict("Aspirin causes cancer.", checkpoints.ner, "high", "simple", api_name="/entities")


def test_control_characters_are_removed(client) -> None:
    text = client.predict("COVID\x00-19\x1b[31m is\x07", *GREEDY, api_name="/generate")[0]
    assert text.startswith("COVID-19[31m is") and "\x00" not in text and "\x1b" not in text


def _raw_call(server: Server, api: str, body: str) -> str:
    """POST a raw JSON body (gradio_client cannot encode lone surrogates), return the event stream's text."""
    base = server.url.rstrip("/") + "/gradio_api/call/" + api
    response = httpx.post(base, content=body.encode("ascii"), headers={"content-type": "application/json"},
                          timeout=30)
    response.raise_for_status()
    with httpx.stream("GET", f"{base}/{response.json()['event_id']}", timeout=30) as stream:
        return "".join(stream.iter_text())


def test_lone_surrogates_do_not_hurt_the_worker(client, server, checkpoints) -> None:
    for api, data in (("generate", ["COVID \ud800 is", *GREEDY]),
                      ("entities", ["Aspirin \udc00 cancer", checkpoints.ner, 0.0, "simple"]),
                      ("classify", ["VEGF \ud800", "classifier", checkpoints.classify, "", ""])):
        events = _raw_call(server, api, json.dumps({"data": data}))  # json.dumps writes "\ud800" as an escape
        assert "event: error" in events or "event: complete" in events, events[-300:]
    _works(client)


def test_lone_surrogates_get_a_specific_message(server) -> None:
    events = _raw_call(server, "generate", json.dumps({"data": ["COVID \ud800 is", *GREEDY]}))
    assert "lone UTF-16 surrogate" in events


def test_a_client_that_cancels_stops_the_decoding_loop(server, monkeypatch) -> None:
    bench = server.demo.workbench
    model = bench.manager.get(bench.spec(None)).model
    calls: list[float] = []
    original = model.forward

    def slow_forward(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.perf_counter())
        time.sleep(0.05)  # 64 tokens would take > 3 s: plenty of time to cancel in the middle
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slow_forward)
    client = Client(server.url, verbose=False)
    job = client.submit("COVID-19 is", "greedy", 64, 0.8, 0.95, 50, 1.0, 0, 4, -1, api_name="/generate")
    deadline = time.monotonic() + 30
    while len(job.outputs()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(job.outputs()) >= 3, "the stream must have started"
    job.cancel()
    at_cancel = len(calls)
    time.sleep(1.0)
    after = len(calls)
    time.sleep(0.5)
    assert len(calls) == after, "the decoding loop must have stopped"
    assert after - at_cancel <= 3 and after < 64, (at_cancel, after)
    client.close()
    _released(bench)


def test_a_closed_http_stream_stops_the_decoding_loop(server, monkeypatch) -> None:
    bench = server.demo.workbench
    model = bench.manager.get(bench.spec(None)).model
    calls: list[int] = []
    original = model.forward

    def slow_forward(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        time.sleep(0.05)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slow_forward)
    base = server.url.rstrip("/") + "/gradio_api/call/generate"
    body = {"data": ["COVID-19 is", "greedy", 64, 0.8, 0.95, 50, 1.0, 0, 4, -1]}
    event_id = httpx.post(base, json=body, timeout=30).json()["event_id"]
    with httpx.stream("GET", f"{base}/{event_id}", timeout=30) as stream:
        received = 0
        for line in stream.iter_lines():
            received += line.startswith("data:")
            if received >= 3:
                break  # leaving the block closes the connection mid-stream
    at_close = len(calls)
    time.sleep(1.5)
    after = len(calls)
    time.sleep(0.5)
    assert len(calls) == after and after - at_close <= 3 and after < 64, (at_close, after)
    _released(bench)


def _released(bench: Workbench) -> None:
    """The cancelled generation gave its model back (`in_use` 0), so it can be evicted or unloaded again."""
    deadline = time.monotonic() + 5
    while any(row["in_use"] for row in bench.manager.status()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(row["in_use"] == 0 for row in bench.manager.status()), bench.manager.status()
