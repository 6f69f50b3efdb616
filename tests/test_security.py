"""Safe to expose: the exposure-aware defaults, bounded Hub downloads, login, per-client fairness, messages without
the server's paths, and the file routes, each checked against a real app server (gradio_client or raw HTTP).

The servers listen on this machine only: the "exposed" one on a non-loopback address of this machine when it has
one (else loopback with BIOGPT_EXPOSED=1), and the Hugging Face Hub is a small HTTP server on 127.0.0.1 started by
these tests (`FakeHub`), with `huggingface_hub.constants.ENDPOINT` pointed at it. No other network traffic.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional

import gradio as gr
import httpx
import huggingface_hub
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from app import build_app, launch_options
from app_fixtures import REPO, Checkpoints, _tiny, free_port
from biogpt import access, catalog
from biogpt.errors import CheckpointError, ConfigError, InputError
from biogpt.manager import ModelManager, ModelSpec
from biogpt.settings import Settings
from ui.errors import redact

GREEDY = ("greedy", 4, 0.8, 0.95, 50, 1.0, 0, 4, -1)  # mode, max new tokens, temperature, top-p, top-k, ...
CATALOG = ", ".join(catalog.CATALOG)
COMMIT = "a" * 40


# ----------------------------------------------------------------------------------------------------------------
# A Hugging Face Hub on 127.0.0.1
# ----------------------------------------------------------------------------------------------------------------
class FakeHub:
    """The Hub endpoints huggingface_hub uses: repo metadata with file sizes (`/api/models/<id>?blobs=true`) and
    file resolution (`HEAD`/`GET /<id>/resolve/<rev>/<file>`). Per repo: `announce` overrides the sizes the
    metadata states, `drop_after` sends only that many bytes of a file and closes the connection (and answers a
    resumed request with 500), `gate` holds a file's body half-way until the event is set."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.announce: dict[tuple[str, str], int] = {}
        self.drop_after: dict[tuple[str, str], int] = {}
        self.gate: dict[tuple[str, str], threading.Event] = {}
        self.half_sent: dict[tuple[str, str], threading.Event] = {}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo_id: str, folder: Path) -> None:
        self.repos[repo_id] = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}

    def fetched(self, repo_id: str) -> list[str]:
        """The files of `repo_id` whose bytes were asked for (GET)."""
        return [path.rsplit("/", 1)[-1] for method, path in self.requests
                if method == "GET" and path.startswith(f"/{repo_id}/resolve/")]

    def _answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((request.command, request.path))
        path = request.path.split("?", 1)[0]
        info = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?$", path)
        resolve = re.match(r"^/([^/]+/[^/]+)/resolve/[^/]+/(.+)$", path)
        if info:
            repo = info.group(1)
            if repo not in self.repos:
                return self._send(request, 404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
            siblings = [{"rfilename": name, "size": self.announce.get((repo, name), len(data))}
                        for name, data in self.repos[repo].items()]
            data = json.dumps({"id": repo, "sha": COMMIT, "siblings": siblings}).encode()
            return self._send(request, 200, data, {"Content-Type": "application/json"}, body)
        if resolve:
            repo, name = resolve.groups()
            if repo not in self.repos:
                return self._send(request, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
            if name not in self.repos[repo]:
                return self._send(request, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
            data = self.repos[repo][name]
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            key = (repo, name)
            if body and key in self.drop_after:
                if request.headers.get("Range"):
                    return self._send(request, 500, b"", headers, body)
                request.send_response(200)
                for header, value in {**headers, "Content-Length": str(len(data))}.items():
                    request.send_header(header, value)
                request.end_headers()
                request.wfile.write(data[:self.drop_after[key]])
                request.wfile.flush()
                request.close_connection = True
                return None
            if body and key in self.gate:
                request.send_response(200)
                for header, value in {**headers, "Content-Length": str(len(data))}.items():
                    request.send_header(header, value)
                request.end_headers()
                request.wfile.write(data[:len(data) // 2])
                request.wfile.flush()
                self.half_sent[key].set()
                self.gate[key].wait(60)
                request.wfile.write(data[len(data) // 2:])
                return None
            return self._send(request, 200, data, headers, body)
        return self._send(request, 200, b"fake hub", {}, body)  # the reachability probe: HEAD /

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict, body: bool) -> None:
        request.send_response(status)
        for header, value in {**headers, "Content-Length": str(len(data))}.items():
            request.send_header(header, value)
        request.end_headers()
        if body:
            request.wfile.write(data)

    def close(self) -> None:
        for event in self.gate.values():
            event.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    """Tiny checkpoints in the Hub layout (a few hundred KB), to serve from the fake Hub."""
    return _tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def hub(tiny: Checkpoints) -> Iterator[FakeHub]:
    """The fake Hub with `tiny-org/tiny-lm`, and huggingface_hub pointed at it (online) for this module."""
    fake = FakeHub()
    fake.add("tiny-org/tiny-lm", Path(tiny.lm))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "ENDPOINT", fake.url)
        patch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                      fake.url + "/{repo_id}/resolve/{revision}/{filename}")  # made from ENDPOINT at import
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield fake
    fake.close()


def _repo_copy(hub: FakeHub, repo_id: str, tiny: Checkpoints) -> dict[str, bytes]:
    """A new repo with the tiny LM's files (tests change its behaviour without touching the others)."""
    hub.add(repo_id, Path(tiny.lm))
    return hub.repos[repo_id]


def _cache_leftovers(cache: Path, repo_id: str) -> list[str]:
    """Everything the cache holds for `repo_id` (its folder and its lock folder)."""
    folder = "models--" + repo_id.replace("/", "--")
    return sorted(str(p.relative_to(cache)) for root in (cache / folder, cache / ".locks" / folder)
                  if root.exists() for p in [root, *root.rglob("*")])


# ----------------------------------------------------------------------------------------------------------------
# Servers
# ----------------------------------------------------------------------------------------------------------------
def own_address() -> Optional[str]:
    """A non-loopback IPv4 address of this machine (a UDP connect picks the interface and sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never reached, only routed
        except OSError:
            return None
        host = probe.getsockname()[0]
    return None if ipaddress.ip_address(host).is_loopback else host


@contextlib.contextmanager
def launched(settings: Settings, login: Optional[access.Credentials] = None) -> Iterator[tuple[str, gr.Blocks]]:
    """The real app with `settings` (manager from the same settings) on a free port; yields (url, demo)."""
    demo = build_app(manager=ModelManager.from_settings(settings), settings=settings)
    options = launch_options(settings, login)
    demo.launch(**options, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://{options['server_name']}:{options['server_port']}/", demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def exposed(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, gr.Blocks, Settings]]:
    """The app bound to a non-loopback address of this machine (or the exposure flag forced), with default access
    rules, widened by BIOGPT_ALLOWED_MODELS=tiny-org/*; downloads capped at 1 MB, uploads at 1,000 bytes."""
    host = own_address()
    settings = Settings.from_env({
        "BIOGPT_HOST": host or "127.0.0.1", "BIOGPT_PORT": str(free_port()), "BIOGPT_MODEL": "demo",
        "BIOGPT_PRELOAD": "0", "BIOGPT_ALLOWED_MODELS": "tiny-org/*", "BIOGPT_MAX_MODEL_BYTES": "1MB",
        "BIOGPT_MAX_UPLOAD_BYTES": "1000", "BIOGPT_CACHE_DIR": str(tmp_path_factory.mktemp("hf-cache")),
        "BIOGPT_MAX_MODELS": "4", **({} if host else {"BIOGPT_EXPOSED": "1"})})
    with launched(settings) as (url, demo):
        yield url, demo, settings


@pytest.fixture()
def client(exposed) -> Iterator[Client]:
    url, _, _ = exposed
    client = Client(url, verbose=False)
    yield client
    client.close()


# ----------------------------------------------------------------------------------------------------------------
# Exposure-aware defaults
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, reasons", [
    ({}, ()),
    ({"BIOGPT_HOST": "localhost"}, ()),
    ({"BIOGPT_HOST": "::1"}, ()),
    ({"BIOGPT_HOST": "127.0.1.1"}, ()),
    ({"BIOGPT_HOST": "0.0.0.0"}, ("listening on 0.0.0.0, not only on loopback",)),
    ({"BIOGPT_HOST": "192.168.1.20"}, ("listening on 192.168.1.20, not only on loopback",)),
    ({"BIOGPT_SHARE": "1"}, ("sharing a public gradio.live link",)),
    ({"SPACE_ID": "me/app"}, ("running on Hugging Face Spaces", "listening on 0.0.0.0, not only on loopback")),
    ({"BIOGPT_EXPOSED": "1"}, ("BIOGPT_EXPOSED=1",)),
    ({"BIOGPT_EXPOSED": "0", "BIOGPT_HOST": "0.0.0.0"}, ()),
])
def test_when_the_app_counts_as_exposed(env: dict, reasons: tuple) -> None:
    settings = Settings.from_env(env)
    assert settings.exposure() == reasons
    assert settings.local_paths_allowed == (not reasons)
    assert access.allowed_models(settings) == (None if not reasons else tuple(catalog.CATALOG))


def test_allowed_models_widen_the_catalog_and_the_operator_model_is_always_allowed() -> None:
    exposed = Settings.from_env({"BIOGPT_HOST": "0.0.0.0", "BIOGPT_MODEL": "lab/own-model",
                                 "BIOGPT_ALLOWED_MODELS": "lab/*, other/one"})
    allowed = access.allowed_models(exposed)
    assert allowed == (*catalog.CATALOG, "lab/own-model", "lab/*", "other/one")
    for ok in ("microsoft/biogpt", "microsoft/BIOGPT", "lab/anything", "other/one"):
        access.check_model(ok, allowed)
    with pytest.raises(CheckpointError) as excinfo:
        access.check_model("other/two", allowed)
    assert str(excinfo.value) == (f"'other/two' is not offered on this server; choose one of {CATALOG}, "
                                  "lab/own-model, lab/*, other/one (the operator can allow more with "
                                  "BIOGPT_ALLOWED_MODELS).")
    assert access.allowed_models(replace(exposed, allowed_models=("*",))) is None
    assert access.allowed_models(Settings(allowed_models=("lab/x",))) == (*catalog.CATALOG, "lab/x")


def test_the_startup_log_says_which_defaults_apply_and_why() -> None:
    settings = Settings.from_env({"BIOGPT_HOST": "0.0.0.0", "BIOGPT_MAX_MODEL_BYTES": "2GB",
                                  "BIOGPT_AUTH": "alice:pw,bob:pw2"})
    assert access.describe(settings, access.credentials(settings)) == "\n".join([
        "Access: exposed (listening on 0.0.0.0, not only on loopback)",
        "  local paths: off (default; BIOGPT_ALLOW_LOCAL_PATHS changes it)",
        f"  models: {CATALOG} (BIOGPT_ALLOWED_MODELS widens this)",
        "  downloads: weights up to 2.0 GB (BIOGPT_MAX_MODEL_BYTES), within the free disk space",
        "  login: required (2 user(s) from BIOGPT_AUTH)",
        "  per client: 1 running + 4 waiting job(s)"])
    private = access.describe(Settings(memory_budget=8 * 10**9))
    assert private.splitlines()[0] == ("Access: private (listening on 127.0.0.1 only; BIOGPT_EXPOSED=1 if a proxy "
                                       "exposes it)")
    assert "  models: any Hub id" in private and "weights up to 8.0 GB (the memory budget)" in private
    assert "login: none: anyone who reaches the app can use it" in private
    assert "alice" not in repr(settings) and "pw2" not in repr(settings)  # the secret stays out of logs


def test_an_exposed_app_refuses_local_paths_and_models_outside_the_list(client: Client, exposed, tiny) -> None:
    _, demo, settings = exposed
    for path in ("/etc", "../../etc/passwd", "~/.ssh", tiny.lm):
        with pytest.raises(AppError) as excinfo:
            client.predict(path, "sdpa", "auto", "none", "auto", api_name="/load_model")
        assert str(excinfo.value) == (
            f"Could not load {path}: Local paths are disabled on this server ({path!r}); choose a catalog model or a "
            "Hugging Face Hub repo id (BIOGPT_ALLOW_LOCAL_PATHS=1 enables them).")
    with pytest.raises(AppError) as excinfo:
        client.predict("someone/other-model", "sdpa", "auto", "none", "auto", api_name="/load_model")
    assert str(excinfo.value) == (
        f"Could not load someone/other-model: 'someone/other-model' is not offered on this server; choose one of "
        f"{CATALOG}, tiny-org/* (the operator can allow more with BIOGPT_ALLOWED_MODELS).")
    # Entities and classify take a model too: the same rules.
    text = "Aspirin inhibits platelet aggregation."
    with pytest.raises(AppError, match="Local paths are disabled on this server"):
        client.predict(text, "/etc", 0.0, "simple", api_name="/entities")
    with pytest.raises(AppError, match="'someone/classifier' is not offered on this server"):
        client.predict(text, "classifier", "someone/classifier", "", "", api_name="/classify")
    with pytest.raises(AppError, match=r"^spaCy pipeline '.*' is not installed here"):
        client.predict(text, "spacy:/etc", 0.0, "simple", api_name="/entities")
    assert [row["source"] for row in demo.workbench.manager.status()] == []  # nothing was loaded


def test_allowed_models_widening_loads_from_the_hub(client: Client, exposed, hub: FakeHub) -> None:
    _, demo, settings = exposed
    status, _ = client.predict("tiny-org/tiny-lm", "sdpa", "auto", "none", "auto", api_name="/load_model")
    assert status.startswith("**tiny-org/tiny-lm**") and "loaded in" in status
    assert "model.safetensors" in hub.fetched("tiny-org/tiny-lm")
    text = client.predict("Aspirin inhibits", *GREEDY, api_name="/generate")[0]
    assert text.startswith("Aspirin inhibits")
    status, _ = client.predict("demo", "sdpa", "auto", "none", "auto", api_name="/load_model")
    assert status.startswith("**demo**")


# ----------------------------------------------------------------------------------------------------------------
# Bounded downloads
# ----------------------------------------------------------------------------------------------------------------
def test_an_oversized_repo_is_refused_before_any_byte_is_fetched(client: Client, exposed, hub: FakeHub,
                                                                 tiny) -> None:
    _, _, settings = exposed
    _repo_copy(hub, "tiny-org/huge", tiny)
    hub.announce[("tiny-org/huge", "model.safetensors")] = 50 * 10**9
    with pytest.raises(AppError) as excinfo:
        client.predict("tiny-org/huge", "sdpa", "auto", "none", "auto", api_name="/load_model")
    assert str(excinfo.value) == ("Could not load tiny-org/huge: tiny-org/huge has 50.0 GB of weights, over this "
                                  "server's limit of 1.0 MB (BIOGPT_MAX_MODEL_BYTES); nothing was downloaded.")
    assert hub.fetched("tiny-org/huge") == []  # not the weights, not even config.json
    assert not any(path.startswith("/tiny-org/huge/resolve/") for _, path in hub.requests)
    assert _cache_leftovers(Path(settings.cache_dir), "tiny-org/huge") == []


def test_the_disk_budget_counts_downloads_in_progress(hub: FakeHub, tiny, tmp_path: Path) -> None:
    first, second = _repo_copy(hub, "tiny-org/slow", tiny), _repo_copy(hub, "tiny-org/second", tiny)
    weights = len(first["model.safetensors"])
    key = ("tiny-org/slow", "model.safetensors")
    hub.gate[key], hub.half_sent[key] = threading.Event(), threading.Event()
    # Room for one download of the weights (plus the small files), not two.
    manager = ModelManager(cache_dir=tmp_path, disk_budget_bytes=weights * 3 // 2)
    results: dict[str, Any] = {}
    loading = threading.Thread(target=lambda: results.update(slow=manager.get(ModelSpec("tiny-org/slow"))))
    loading.start()
    try:
        assert hub.half_sent[key].wait(60), "the first download must have started"
        assert manager.downloads.in_progress() == weights
        with pytest.raises(CheckpointError) as excinfo:
            manager.get(ModelSpec("tiny-org/second"))
        message = str(excinfo.value)
        assert message.startswith("tiny-org/second needs ") and "over the download budget of " in message
        assert "downloads in progress " in message and message.endswith("; nothing was downloaded.")
        assert hub.fetched("tiny-org/second") == []
    finally:
        hub.gate[key].set()
        loading.join(60)
    assert results["slow"].spec.source == "tiny-org/slow" and manager.downloads.in_progress() == 0
    assert len(second["model.safetensors"]) == weights


@pytest.mark.slow
def test_a_download_dropped_midway_leaves_the_cache_clean(hub: FakeHub, tiny, tmp_path: Path) -> None:
    files = _repo_copy(hub, "tiny-org/dropped", tiny)
    hub.drop_after[("tiny-org/dropped", "model.safetensors")] = len(files["model.safetensors"]) // 3
    manager = ModelManager(cache_dir=tmp_path, max_model_bytes=10**6)
    with pytest.raises(CheckpointError):
        manager.get(ModelSpec("tiny-org/dropped"))
    assert "model.safetensors" in hub.fetched("tiny-org/dropped")  # it really started
    assert _cache_leftovers(tmp_path, "tiny-org/dropped") == []
    assert manager.status() == [] and manager.downloads.in_progress() == 0


def test_a_download_longer_than_announced_is_stopped_and_removed(hub: FakeHub, tiny, tmp_path: Path) -> None:
    files = _repo_copy(hub, "tiny-org/liar", tiny)
    files["model.safetensors"] = files["model.safetensors"] + b"\0" * 4_000_000  # 4 MB more than announced
    hub.announce[("tiny-org/liar", "model.safetensors")] = 1_000
    manager = ModelManager(cache_dir=tmp_path, max_model_bytes=10**6)
    with pytest.raises(CheckpointError) as excinfo:
        manager.get(ModelSpec("tiny-org/liar"))
    assert str(excinfo.value) == ("tiny-org/liar/model.safetensors sent more than the 1.0 KB the Hub's metadata "
                                  "announced; the download was stopped and removed.")
    assert _cache_leftovers(tmp_path, "tiny-org/liar") == []


@pytest.mark.slow
def test_a_failed_download_of_a_cached_repo_removes_only_the_partial_files(hub: FakeHub, tiny,
                                                                           tmp_path: Path) -> None:
    files = _repo_copy(hub, "tiny-org/partly", tiny)
    config = huggingface_hub.hf_hub_download("tiny-org/partly", "config.json", cache_dir=tmp_path)
    folder = tmp_path / "models--tiny-org--partly"
    (folder / "blobs" / "deadbeef.1234.incomplete").write_bytes(b"left by a killed process")
    (folder / "snapshots" / ("b" * 40)).mkdir()
    hub.drop_after[("tiny-org/partly", "model.safetensors")] = len(files["model.safetensors"]) // 2
    with pytest.raises(CheckpointError):
        ModelManager(cache_dir=tmp_path, max_model_bytes=10**6).get(ModelSpec("tiny-org/partly"))
    assert not list(folder.rglob("*.incomplete")) and not (folder / "snapshots" / ("b" * 40)).exists()
    assert Path(config).read_bytes() == files["config.json"]  # the complete file stays cached


# ----------------------------------------------------------------------------------------------------------------
# Login
# ----------------------------------------------------------------------------------------------------------------
def test_password_files_and_pairs(tmp_path: Path) -> None:
    made = subprocess.run([sys.executable, "-m", "biogpt.access", "hash", "alice"], input="s3cret pass\n",
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert made.returncode == 0, made.stderr
    line = made.stdout.strip()
    assert re.fullmatch(r"alice:scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", line)
    users = tmp_path / "users"
    users.write_text(f"# the lab\n\n{line}\nbob:{access.hash_password('other')}\n")
    login = access.credentials(Settings.from_env({"BIOGPT_AUTH": str(users)}))
    assert login.users == ("alice", "bob")
    assert login.check("alice", "s3cret pass") and login.check("bob", "other")
    assert not login.check("alice", "other") and not login.check("carol", "s3cret pass")
    pairs = access.credentials(Settings.from_env({"BIOGPT_AUTH": "alice:a:b:c, bob:pw"}))
    assert pairs.check("alice", "a:b:c") and pairs.check("bob", "pw") and not pairs.check("bob", "pw ")
    for value, message in (("alice", "BIOGPT_AUTH: each entry must be user:password (separated by commas), or the "
                                     "value the path of a file of user:hash lines."),
                           ("/no/such/users", "BIOGPT_AUTH names the file '/no/such/users', which does not exist.")):
        with pytest.raises(ConfigError) as excinfo:
            Settings.from_env({"BIOGPT_AUTH": value})
        assert str(excinfo.value) == message
    users.write_text("alice:md5$abc\n")
    with pytest.raises(ConfigError, match=r"^BIOGPT_AUTH file, line 1: the password hash is not scrypt"):
        access.credentials(Settings.from_env({"BIOGPT_AUTH": str(users)}))


def _healthcheck_path() -> str:
    """The route the Dockerfile's HEALTHCHECK asks for."""
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    return re.search(r"HEALTHCHECK.*?http://127\.0\.0\.1:7860(/[^'\" ]*)", dockerfile, re.S).group(1)


def test_login_is_required_for_the_page_and_the_api(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{access.hash_password('right')}\n")
    settings = Settings(host="127.0.0.1", port=free_port(), model="demo", preload=False, auth=str(users))
    with launched(settings, access.credentials(settings)) as (url, demo):
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "gen-prompt" not in page.text and "Ibuprofen" not in page.text
        for route in ("config", "gradio_api/info", "gradio_api/queue/data?session_hash=x"):
            answer = httpx.get(url + route, timeout=30)
            assert answer.status_code == 401 and answer.json()["detail"]["error"] == "Not authenticated"
        body = {"data": ["Aspirin inhibits", *GREEDY]}
        for route in ("gradio_api/call/generate", "gradio_api/queue/join", "gradio_api/run/generate"):
            assert httpx.post(url + route, json=body, timeout=30).status_code == 401
        wrong = httpx.post(url + "login", data={"username": "alice", "password": "wrong"}, timeout=30)
        assert wrong.status_code == 400 and wrong.json() == {"detail": "Incorrect credentials."}
        assert httpx.post(url + "login", data={"username": "mallory", "password": "right"},
                          timeout=30).status_code == 400
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("alice", "wrong"), verbose=False)
        with pytest.raises(Exception, match="credentials were not provided"):
            Client(url, verbose=False)
        client = Client(url, auth=("alice", "right"), verbose=False)
        assert client.predict("Aspirin inhibits", *GREEDY, api_name="/generate")[0].startswith("Aspirin inhibits")
        client.close()
        # The container's health check needs no login and does not render the page.
        health = httpx.get(url.rstrip("/") + _healthcheck_path(), timeout=30)
        assert health.status_code == 200 and len(health.content) < 200


# ----------------------------------------------------------------------------------------------------------------
# Fairness
# ----------------------------------------------------------------------------------------------------------------
def test_the_server_keeps_the_state_of_at_most_max_sessions(tmp_path: Path) -> None:
    """Every session (a browser tab, a gradio_client) costs server memory for its state: scripted clients that each
    open a new session must not grow it without bound, so the least recently used sessions are dropped."""
    settings = Settings.from_env({"BIOGPT_HOST": "127.0.0.1", "BIOGPT_PORT": str(free_port()), "BIOGPT_MODEL": "demo",
                                  "BIOGPT_PRELOAD": "0", "BIOGPT_MAX_SESSIONS": "2"})
    with launched(settings) as (url, demo):
        seen = []
        for _ in range(4):
            client = Client(url, verbose=False)
            assert client.predict(api_name="/status")["loaded"] is False  # the preload is off
            seen.append(client.session_hash)
            client.close()
        assert list(demo.state_holder.session_data) == seen[-2:]


CLIENTS = """
import json, sys, threading
import httpx
from gradio_client import Client

url, greedy_jobs = sys.argv[1], int(sys.argv[2])
params = ["greedy", 4, 0.8, 0.95, 50, 1.0, 0, 4, -1]
call = url + "gradio_api/call/generate"
# The greedy client: one session, jobs sent as fast as it can (the simple API answers each at once).
greedy = [httpx.post(call, json={"data": ["Hold on", *params], "session_hash": "greedy"}, timeout=60)
          for _ in range(greedy_jobs)]
admitted = [answer.json()["event_id"] for answer in greedy if answer.status_code == 200]
refused = [[answer.status_code, answer.json()["detail"]] for answer in greedy if answer.status_code != 200]
polite = [None] * 19

def ask(number):
    client = Client(url, verbose=False)
    try:
        polite[number] = ["ok", client.predict(f"Patient {number} has", *params, api_name="/generate")[0]]
    except Exception as exc:
        polite[number] = ["error", f"{type(exc).__name__}: {exc}"]
    finally:
        client.close()

threads = [threading.Thread(target=ask, args=(number,)) for number in range(19)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(300)
print("RESULT " + json.dumps({"admitted": len(admitted), "refused": refused, "polite": polite}), flush=True)
sys.stdin.readline()  # the test lets the greedy client's jobs go on
done = []  # the session's event stream, as gradio_client reads it: one process_completed per job
with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": "greedy"}, timeout=120) as events:
    for line in events.iter_lines():
        message = json.loads(line[len("data:"):]) if line.startswith("data:") else {}
        if message.get("msg") == "process_completed":
            done.append(message.get("success"))
            if len(done) == len(admitted):
                break
print("RESULT " + json.dumps({"greedy_done": done}), flush=True)
"""


@pytest.fixture()
def held(exposed, monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Generations whose prompt starts with "Hold" wait for the returned event before decoding (2 minutes at
    most): they stay running, and their client's other jobs waiting, for as long as the test needs."""
    _, demo, _ = exposed
    bench = demo.workbench
    server = bench.manager.get(bench.spec(None)).server
    gate, original = threading.Event(), server.stream

    def stream(prompt: Optional[str], *args: Any, **kwargs: Any) -> Any:
        if prompt and prompt.startswith("Hold"):
            gate.wait(120)
        return original(prompt, *args, **kwargs)

    monkeypatch.setattr(server, "stream", stream)
    yield gate
    gate.set()


def _refusal(settings: Settings) -> str:
    return (f"You already have jobs running ({settings.client_running} running, {settings.client_queued} waiting; "
            f"each user may have {settings.client_running} running and {settings.client_queued} waiting). Wait for "
            "one to finish, then try again.")


def _running(demo: gr.Blocks, session: str) -> int:
    return sum(1 for job in demo._queue.active_jobs if job for event in job if event.session_hash == session)


@pytest.mark.slow
def test_one_greedy_client_cannot_starve_nineteen_others(exposed, held: threading.Event) -> None:
    url, demo, settings = exposed
    allowance = settings.client_running + settings.client_queued
    clients = subprocess.Popen([sys.executable, "-c", CLIENTS, url, str(allowance + 6)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    def result() -> dict:
        for line in clients.stdout:  # gradio_client may print other lines
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        raise AssertionError(clients.stderr.read()[-3000:])

    try:
        first = result()
        # While the greedy client holds a worker and waits with a full allowance, every other client is served.
        assert first["polite"] == [["ok", first["polite"][n][1]] for n in range(19)], first["polite"]
        assert all(text.startswith(f"Patient {n} has") for n, (_, text) in enumerate(first["polite"]))
        assert first["admitted"] == allowance
        assert first["refused"] == [[400, _refusal(settings)]] * 6
        assert _running(demo, "greedy") == settings.client_running
        held.set()
        clients.stdin.write("go\n")
        clients.stdin.flush()
        assert result() == {"greedy_done": [True] * allowance}
    finally:
        held.set()
        clients.wait(120)


def _raw_generate(url: str, prompt: str = "Hold on") -> httpx.Response:
    return httpx.post(url + "gradio_api/call/generate", json={"data": [prompt, *GREEDY]}, timeout=30)


def test_api_calls_without_a_session_are_limited_per_address(exposed, held: threading.Event) -> None:
    url, demo, settings = exposed
    allowance = settings.client_running + settings.client_queued
    accepted = [_raw_generate(url) for _ in range(allowance)]
    assert [answer.status_code for answer in accepted] == [200] * allowance
    refused = _raw_generate(url)
    assert refused.status_code == 400 and refused.json() == {"detail": _refusal(settings)}
    other = Client(url, verbose=False)  # a session: another client, served while this address waits
    assert other.predict("Aspirin inhibits", *GREEDY, api_name="/generate")[0].startswith("Aspirin inhibits")
    other.close()
    held.set()
    for answer in accepted:  # every accepted job completes
        with httpx.stream("GET", f"{url}gradio_api/call/generate/{answer.json()['event_id']}", timeout=120) as events:
            assert "event: complete" in "".join(events.iter_text())
    again = _raw_generate(url, "Aspirin inhibits")  # the allowance is back
    assert again.status_code == 200
    with httpx.stream("GET", f"{url}gradio_api/call/generate/{again.json()['event_id']}", timeout=120) as events:
        assert "event: complete" in "".join(events.iter_text())
    # The REST route that would skip the queue (and these limits) is closed.
    direct = httpx.post(url + "gradio_api/run/generate", json={"data": ["COVID-19 is", *GREEDY]}, timeout=30)
    assert direct.status_code == 404


# ----------------------------------------------------------------------------------------------------------------
# Caps on what API clients send
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("api, args, message", [
    ("/classify", ("VEGF drives angiogenesis.", "zero-shot", "", ", ".join(f"l{i}" for i in range(21)), "{text}"),
     "Zero-shot takes at most 20 labels; got 21."),
    ("/classify", ("VEGF drives angiogenesis.", "zero-shot", "", "a," * 2_500, "{text}"),
     "The label list is 5,000 characters long; the limit is 4,000."),
    ("/classify", ("VEGF drives angiogenesis.", "zero-shot", "", "yes, no", "{text} " * 700),
     "The prompt template is 4,900 characters long; the limit is 4,000."),
    ("/classify", ("VEGF drives angiogenesis.", "classifier", ["demo"], "", ""),
     "The classifier must be text; got list."),
    ("/entities", ("Aspirin.", "x" * 1_001, 0.0, "simple"),
     "The backend is 1,001 characters long; the limit is 1,000."),
    ("/load_model", ("demo", "sdpa", "auto", "none", {"cuda": 0}), "The device must be text; got dict."),
])
def test_every_input_is_capped_on_the_server(client: Client, api: str, args: tuple, message: str) -> None:
    with pytest.raises(AppError) as excinfo:
        client.predict(*args, api_name=api)
    assert str(excinfo.value) == message


def test_uploads_over_the_limit_are_refused(exposed) -> None:
    url, _, settings = exposed
    small = httpx.post(url + "gradio_api/upload", files={"files": ("a.txt", b"x" * 500)}, timeout=30)
    assert small.status_code == 200
    big = httpx.post(url + "gradio_api/upload", files={"files": ("b.txt", b"x" * 2_000)}, timeout=30)
    assert big.status_code == 413
    path = Path(small.json()[0])
    assert access.check_upload(path, settings) == path
    with pytest.raises(InputError) as excinfo:
        access.check_upload(path, replace(settings, max_upload_bytes=100))
    assert str(excinfo.value) == "The file is 500 bytes; the limit is 100 bytes."
    assert list(access.limit_rows(iter(range(3)), replace(settings, max_upload_rows=3))) == [0, 1, 2]
    with pytest.raises(InputError) as excinfo:
        list(access.limit_rows(iter(range(4)), replace(settings, max_upload_rows=3)))
    assert str(excinfo.value) == "The file has more than 3 rows; the limit is 3."


# ----------------------------------------------------------------------------------------------------------------
# Nothing leaks
# ----------------------------------------------------------------------------------------------------------------
def test_redaction_keeps_what_the_user_typed_and_hides_the_rest(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    cases = [
        ("config.json is missing from '/srv/models': is this a BioGPT checkpoint directory?", (),
         "config.json is missing from '<server path>': is this a BioGPT checkpoint directory?"),
        (f"{mine}/model.safetensors is not readable.", (str(mine),), f"{mine}/model.safetensors is not readable."),
        (f"config.json is missing from '{tmp_path}'.", (f"{mine}/notes.txt",),
         f"config.json is missing from '{tmp_path}'."),  # a folder above what the user typed
        (f"{REPO}/x/model.safetensors is bad.", (), "<server path>/model.safetensors is bad."),
        ("/root/.cache/huggingface/hub/models--a--b/snapshots/1/model.safetensors is not readable.", ("a/b",),
         "<server path>/model.safetensors is not readable."),
        ("unreachable at http://10.1.2.3:8080 (ConnectError); see https://huggingface.co/docs.", (),
         "unreachable at <server URL> (ConnectError); see https://huggingface.co/docs."),
        ("4-bit / 8-bit, yes/no, 'owner/name', a/b/c, 1/0", (), "4-bit / 8-bit, yes/no, 'owner/name', a/b/c, 1/0"),
        ("token hf_abcdefghijklmnopqrstuvwxyz0123 Traceback (most recent call last):\n  File \"/app/x.py\"", (),
         "token <token>"),
        ("outside the directories models may be loaded from (/data/a, ~/b)", (),
         "outside the directories models may be loaded from (<server path>, <server path>)"),
    ]
    for message, typed, expected in cases:
        assert redact(message, typed) == expected
    relative = os.path.relpath(mine)  # the library prints the resolved form; the user sees what they typed
    assert redact(f"{mine.resolve()}/config.json is bad.", (relative,)) == f"{relative}/config.json is bad."


def test_bad_loads_show_no_server_path(tmp_path: Path, monkeypatch) -> None:
    """The six bad loads of the issue, through the app's handler, on a private app (local paths allowed)."""
    from ui.handlers import Workbench

    corrupt = tmp_path / "corrupt"
    shutil.copytree(catalog.demo_path("causal-lm"), corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\0" * 64)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    monkeypatch.chdir(tmp_path)  # relative paths are typed from the server's working directory
    bench = Workbench(ModelManager(max_models=1), Settings(model="demo", preload=False))
    shown = {}
    for source in ("/etc", "../x", "/nonexistent/dir", str(tmp_path / "notes.txt"), "empty", "corrupt",
                   "./corrupt"):
        with pytest.raises(gr.Error) as excinfo:
            bench.load_model(source, "sdpa", "auto", "none", "auto", bench.default_state(), progress=None)
        shown[source] = excinfo.value.message
    notes = str(tmp_path / "notes.txt")
    assert shown.pop(notes) == (f"Could not load {notes}: config.json is missing from '{tmp_path}': is this a "
                                "BioGPT checkpoint directory?")  # the folder of the file the user typed
    for message in shown.values():
        assert str(REPO) not in message and str(Path.home()) not in message and str(tmp_path) not in message
    assert shown["/etc"] == "Could not load /etc: config.json is missing from '/etc': is this a BioGPT checkpoint " \
                            "directory?"
    assert shown["../x"] == "Could not load ../x: No such file or directory: '../x'."
    assert shown["/nonexistent/dir"] == ("Could not load /nonexistent/dir: No such file or directory: "
                                         "'/nonexistent/dir'.")
    assert shown["empty"] == "Could not load empty: config.json is missing from 'empty': is this a BioGPT checkpoint " \
                             "directory?"
    assert shown["corrupt"].startswith("Could not load corrupt: corrupt/model.safetensors is not a readable "
                                       "safetensors file")
    assert shown["./corrupt"].startswith("Could not load ./corrupt: ./corrupt/model.safetensors is not a readable")


def test_a_corrupt_file_in_the_hub_cache_is_named_without_its_path(tmp_path: Path, monkeypatch) -> None:
    from ui.handlers import Workbench

    snapshot = tmp_path / "models--org--broken" / "snapshots" / COMMIT
    shutil.copytree(catalog.demo_path("causal-lm"), snapshot)
    (snapshot / "model.safetensors").write_bytes(b"\0" * 64)
    (tmp_path / "models--org--broken" / "refs").mkdir()
    (tmp_path / "models--org--broken" / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    bench = Workbench(ModelManager(cache_dir=tmp_path), Settings(model="demo", preload=False))
    with pytest.raises(gr.Error) as excinfo:
        bench.load_model("org/broken", "sdpa", "auto", "none", "auto", bench.default_state(), progress=None)
    assert excinfo.value.message.startswith("Could not load org/broken: <server path>/model.safetensors is not a "
                                            "readable safetensors file (")
    assert str(tmp_path) not in excinfo.value.message


@pytest.mark.parametrize("route", [
    "gradio_api/file=/etc/passwd", "gradio_api/file=../../../../etc/passwd",
    "gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd", "gradio_api/file=..%2f..%2f..%2fetc%2fpasswd",
    "gradio_api/file/../../../etc/passwd", "gradio_api/file=//etc/passwd", "gradio_api/file=file:///etc/passwd",
    "file=/etc/passwd", "gradio_api/file={repo}/app.py", "gradio_api/file={repo}/biogpt/settings.py",
    "gradio_api/file={tmp}/biogpt-entities-{pid}", "gradio_api/file={home}/.bash_history",
])
def test_the_file_route_serves_nothing_it_did_not_write(exposed, route: str) -> None:
    url, _, _ = exposed
    import tempfile

    route = route.format(repo=REPO, tmp=tempfile.gettempdir(), pid=os.getpid(), home=Path.home())
    answer = httpx.get(url + route, timeout=30)
    assert answer.status_code in (400, 403, 404, 405), (route, answer.status_code)
    assert "root:" not in answer.text and "BIOGPT_" not in answer.text


def test_the_file_route_serves_what_the_app_wrote(exposed) -> None:
    url, _, _ = exposed
    base = url + "gradio_api/call/entities"
    event = httpx.post(base, json={"data": ["Aspirin causes bleeding.", "demo", 0.0, "simple"]}, timeout=30)
    with httpx.stream("GET", f"{base}/{event.json()['event_id']}", timeout=120) as events:
        lines = [line for line in events.iter_lines() if line.startswith("data:")]
    files = json.loads(lines[-1][len("data:"):])[2]
    served = httpx.get(files[0]["url"], timeout=30)
    assert served.status_code == 200 and isinstance(served.json(), list)  # entities.json, as written
    assert files[0]["url"].startswith(url + "gradio_api/file=")
    for trick in ("/../../../../../../etc/passwd", "%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd"):
        answer = httpx.get(files[0]["url"] + trick, timeout=30)
        assert answer.status_code in (403, 404) and "root:" not in answer.text


# ----------------------------------------------------------------------------------------------------------------
# Docker
# ----------------------------------------------------------------------------------------------------------------
def test_the_image_pins_the_torch_the_tests_use_and_checks_a_cheap_route() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    pinned = re.search(r'"torch==([\d.]+)"', makefile).group(1)
    assert f"torch=={pinned}" in dockerfile
    assert re.search(r"^ARG TORCH_INDEX=", dockerfile, re.M) and "download.pytorch.org/whl/cpu" in dockerfile
    assert _healthcheck_path() == "/gradio_api/app_id"
