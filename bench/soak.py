"""Soak test of the app: many concurrent gradio_client users against one server on 127.0.0.1.

`python -m bench.soak --clients 50 --minutes 10 [--out FILE]` starts the app in a child process on the bundled demo
models (`--checkpoints tiny`: the tiny checkpoints of tests/app_fixtures.py), then every client (its own Client,
hence its own session) sends requests one after another until the time is up (`--requests N` instead: N requests
in all), mixing every endpoint the demo models serve: streamed `generate` (greedy and beam search), `entities`,
`classify` (a fine-tuned classifier and zero-shot), `status`, `stop` and, now and then, `load_model` with the spec
already loaded. It prints requests, errors, p50/p95 latency (overall and per endpoint) and the server's RSS at the
start and the end. Checks:

- errors: none, except documented "busy" rejections (queue full) and per-client "limited" refusals (a client
  past its allowance of jobs; these clients send one at a time, so none are expected), counted by kind;
- no cross-talk: each result equals what a solo request with the same input returned before the run (greedy
  decoding and the classifiers are deterministic, so a mixed-up stream would show);
- memory: the server's RSS after warm-up and at the end (the drift is reported; the bound is the caller's).

`run_soak` is also what tests/test_soak.py calls, at CI size, against an in-process server.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
from gradio_client import Client
from gradio_client.exceptions import AppError

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["COVID-19 is", "Aspirin inhibits", "Metformin reduces", "Cisplatin-induced nephrotoxicity",
           "Ibuprofen is best used for", "Warfarin increases the risk of", "SARS-CoV-2", "Patients with ovarian"]
TEXTS = ["Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer.",
         "Aspirin inhibits platelet aggregation and prevents myocardial infarction.",
         "Warfarin increases the risk of bleeding when combined with ibuprofen.",
         "Metformin reduces blood glucose in patients with type 2 diabetes."]
MAX_NEW_TOKENS = 12
ZERO_SHOT = ("yes, no, maybe", "Is this about a drug? {text}")
# The endpoint of request i of a user: a fixed cycle, so every run mixes the same way.
MIX = ["generate", "entities", "generate", "classify", "status", "beam", "entities", "zero_shot", "generate",
       "status", "generate", "entities", "classify", "generate", "stop", "entities", "classify", "status",
       "generate", "load_model"]
BUSY = ("queue is full", "too many requests")
LIMITED = "you already have jobs running"
CLIENT_TIMEOUT_S = 60  # of each HTTP request of a soak client (the whole run has its own time limit)


@dataclass
class SoakResult:
    requests: Counter = field(default_factory=Counter)  # endpoint -> requests sent
    errors: Counter = field(default_factory=Counter)    # kind -> count ("busy" is the documented one)
    mismatches: list = field(default_factory=list)      # (endpoint, input) whose result differed from the solo one
    latencies: dict = field(default_factory=dict)       # endpoint -> [seconds]
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, endpoint: str, seconds: float, error: Optional[str], mismatch: Optional[Any]) -> None:
        with self.lock:
            self.requests[endpoint] += 1
            self.latencies.setdefault(endpoint, []).append(seconds)
            if error is not None:
                self.errors[error] += 1
            if mismatch is not None:
                self.mismatches.append((endpoint, mismatch))

    def summary(self) -> dict:
        def pct(values: list, q: float) -> float:
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0

        every = [seconds for values in self.latencies.values() for seconds in values]
        return {"requests": sum(self.requests.values()), "by_endpoint": dict(self.requests),
                "errors": dict(self.errors), "mismatches": len(self.mismatches), "seconds": round(self.seconds, 1),
                "latency_p50_s_all": pct(every, 0.5), "latency_p95_s_all": pct(every, 0.95),
                "latency_p50_s": {k: pct(v, 0.5) for k, v in self.latencies.items()},
                "latency_p95_s": {k: pct(v, 0.95) for k, v in self.latencies.items()}}


class Requests:
    """The inputs of each endpoint, and the comparable part of its result."""

    def __init__(self, lm: str, ner: str, classify: str):
        self.lm, self.ner, self.classify = lm, ner, classify

    def call(self, client: Client, endpoint: str, index: int) -> tuple[Any, Any]:
        """(input key, comparable result) of request `index` to `endpoint`."""
        if endpoint in ("generate", "beam"):
            prompt = PROMPTS[index % len(PROMPTS)]
            mode, beams = ("greedy", 4) if endpoint == "generate" else ("beam", 2)
            job = client.submit(prompt, mode, MAX_NEW_TOKENS, 0.8, 0.95, 50, 1.0, 0, beams, -1, api_name="/generate")
            for _ in job:  # consume the stream as a browser does
                pass
            return prompt, job.result()[0]
        if endpoint == "entities":
            text = TEXTS[index % len(TEXTS)]
            _, table, _, summary = client.predict(text, self.ner, 0.0, "simple", api_name="/entities")
            return text, (table["data"], summary)
        if endpoint == "classify":
            text = TEXTS[index % len(TEXTS)]
            label = client.predict(text, "classifier", self.classify, "", "", api_name="/classify")
            return text, label
        if endpoint == "zero_shot":
            text = TEXTS[index % len(TEXTS)]
            return text, client.predict(text, "zero-shot", "", *ZERO_SHOT, api_name="/classify")
        if endpoint == "stop":  # nothing of this session runs: a no-op that must answer
            return None, client.predict(api_name="/stop")
        if endpoint == "status":
            return None, client.predict(api_name="/status")["source"]  # the model, not timings
        if endpoint == "load_model":
            status, _ = client.predict(self.lm, "sdpa", "auto", "none", "auto", api_name="/load_model")
            return None, status.split(" · ")[0]
        raise ValueError(f"unknown endpoint {endpoint!r}")

    def solo(self, url: str) -> dict:
        """The reference result of every input, one request at a time from one client."""
        client = Client(url, verbose=False)
        reference = {}
        for endpoint in dict.fromkeys(MIX):
            for index in range(max(len(PROMPTS), len(TEXTS))):
                key, result = self.call(client, endpoint, index)
                reference[(endpoint, key)] = result
        client.close()
        return reference


def _error_kind(exc: Exception) -> str:
    # A per-client refusal reaches gradio_client as an HTTP 400 whose JSON `detail` is the message.
    text = (exc.response.text if isinstance(exc, httpx.HTTPStatusError) else str(exc)).lower()
    if any(marker in text for marker in BUSY):
        return "busy"
    if LIMITED in text:
        return "limited"
    return f"{type(exc).__name__}: {str(exc)[:120]}"


def run_soak(url: str, requests: Requests, users: int, total: Optional[int], reference: dict,
             on_progress: Optional[Callable[[int], None]] = None, timeout_s: float = 1_800,
             duration_s: Optional[float] = None) -> SoakResult:
    """Requests from `users` concurrent clients (request i of user u is MIX[(u + i) % len(MIX)]): `total` in all,
    or, with `duration_s`, as many as each client sends one after another until that time has passed."""
    result = SoakResult()
    started = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    stop_at = time.monotonic() + duration_s if duration_s is not None else None
    shares = [None] * users if total is None else [total // users + (1 if u < total % users else 0)
                                                   for u in range(users)]
    done = [0]

    def user(number: int) -> None:
        # 50 clients fetching the app's config at once from a 2-core server can take longer than httpx's default 5 s.
        client = Client(url, verbose=False, httpx_kwargs={"timeout": CLIENT_TIMEOUT_S})
        i = 0
        try:
            while (shares[number] is None or i < shares[number]) and (stop_at is None or time.monotonic() < stop_at):
                i += 1
                if time.monotonic() > deadline:
                    result.record("timeout", 0.0, "not sent: the run's time limit passed", None)
                    continue
                endpoint = MIX[(number + i) % len(MIX)]
                begin = time.perf_counter()
                error = mismatch = None
                try:
                    key, value = requests.call(client, endpoint, number * 7 + i - 1)
                    if value != reference[(endpoint, key)]:
                        mismatch = key
                except (AppError, OSError, TimeoutError, httpx.HTTPError) as exc:  # the outcomes a client can see
                    error = _error_kind(exc)
                result.record(endpoint, time.perf_counter() - begin, error, mismatch)
                with result.lock:
                    done[0] += 1
                    count = done[0]
                if on_progress is not None and count % 100 == 0:
                    on_progress(count)
        finally:
            client.close()

    threads = [threading.Thread(target=user, args=(u,), name=f"soak-user-{u}") for u in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, min(deadline, stop_at or deadline) - time.monotonic() + 120))
    result.seconds = time.perf_counter() - started
    return result


# ----------------------------------------------------------------------------------------------------------------
# The full run: the app in a child process, so its RSS is the server's alone
# ----------------------------------------------------------------------------------------------------------------
SERVER = """
import sys, time
sys.path[:0] = [{repo!r}]
from app import build_app
from biogpt.manager import ModelManager
from biogpt.settings import Settings
settings = Settings(model={lm!r}, preload=False, concurrency=2, max_new_tokens=64)
demo = build_app(manager=ModelManager(max_models=4), settings=settings)
demo.launch(server_name="127.0.0.1", server_port={port}, prevent_thread_lock=True, quiet=True)
print("READY", flush=True)
demo.block_thread()
"""


def _wait_ready(process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "READY" in line:
            return
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
    raise RuntimeError("the server did not start in time")


def main(argv: Optional[list[str]] = None) -> dict:
    import tempfile

    import psutil

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", "--users", dest="clients", type=int, default=50)
    parser.add_argument("--minutes", type=float, help="run this long (each client sends until the time is up)")
    parser.add_argument("--requests", type=int, default=1_000, help="without --minutes: this many requests in all")
    parser.add_argument("--checkpoints", choices=("demo", "tiny"), default="demo",
                        help="the bundled demo models, or the tiny checkpoints of tests/app_fixtures.py")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    sys.path[:0] = [str(REPO / "tests")]
    from app_fixtures import Checkpoints, _tiny, free_port  # the same checkpoints the app tests use

    if args.checkpoints == "tiny":
        checkpoints = _tiny(Path(tempfile.mkdtemp(prefix="soak-checkpoints-")))
    else:
        checkpoints = Checkpoints("demo", "demo", "demo", demo=True)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = SERVER.format(repo=str(REPO), lm=checkpoints.lm, port=port)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env, cwd=REPO)
    try:
        _wait_ready(process)
        url = f"http://127.0.0.1:{port}/"
        requests = Requests(checkpoints.lm, checkpoints.ner, checkpoints.classify)
        server = psutil.Process(process.pid)
        reference = requests.solo(url)
        # Warm-up: one round of every endpoint from a few users, so lazy imports and caches are counted before.
        run_soak(url, requests, users=10, total=100, reference=reference)
        rss_start = server.memory_info().rss
        print(f"warm-up done; server RSS {rss_start / 2**20:.0f} MiB", flush=True)
        # The server's RSS every 30 s, to tell a plateau from a leak.
        timeline, finished = [], threading.Event()

        def sample() -> None:
            while not finished.wait(30):
                timeline.append(round(server.memory_info().rss / 2**20))

        threading.Thread(target=sample, name="rss-sampler", daemon=True).start()
        duration = args.minutes * 60 if args.minutes else None
        result = run_soak(url, requests, args.clients, None if duration else args.requests, reference,
                          on_progress=lambda n: print(f"  {n} requests", flush=True), duration_s=duration,
                          timeout_s=(duration or 1_800) + 600)
        finished.set()
        rss_end = server.memory_info().rss
    finally:
        process.terminate()
        process.wait(30)
    summary = {**result.summary(), "clients": args.clients, "checkpoints": args.checkpoints,
               "rss_start_mib": round(rss_start / 2**20, 1), "rss_end_mib": round(rss_end / 2**20, 1),
               "rss_drift_mib": round((rss_end - rss_start) / 2**20, 1), "rss_every_30s_mib": timeline}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
