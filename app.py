"""The BioGPT workbench: `python app.py` locally, in Docker, and on Hugging Face Spaces (which runs this file).

Building the app is cheap: no model is loaded until first use unless preload is asked for (`--preload` or
BIOGPT_PRELOAD=1). Command-line options override the BIOGPT_* environment variables of the same name.

Access follows `biogpt.access`: the start-up log says whether the app counts as exposed and which defaults that
brings; BIOGPT_AUTH turns on Gradio's login (page and API alike); the queue limits each client's jobs
(`ui.fairness`) and takes no job outside it (`api_open=False`: the REST routes that skip the queue are closed).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from dataclasses import replace
from typing import Any, Optional

import gradio as gr

from biogpt import access
from biogpt.devices import default_concurrency
from biogpt.manager import ModelManager
from biogpt.settings import Settings
from ui import fairness
from ui.about_tab import build_about_tab
from ui.classify_tab import build_classify_tab
from ui.compare_tab import build_compare_tab
from ui.entities_tab import build_entities_tab
from ui.generate_tab import build_generate_tab, restore_shared
from ui.handlers import Workbench
from ui.history_tab import build_history_tab
from ui.model_panel import build_model_panel, wire_model_panel
from ui.theme import ASSETS, CSS_PATH, LOGO_PATH, header_html, theme


class WorkbenchBlocks(gr.Blocks):
    """Blocks that bring their theme and stylesheet to every `launch()` (Gradio 6 takes them there), so that
    `demo.launch()` looks the same from this file, from Spaces and from the tests."""

    def launch(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("theme", theme())
        kwargs.setdefault("css_paths", [CSS_PATH])
        kwargs.setdefault("favicon_path", str(LOGO_PATH))
        return super().launch(*args, **kwargs)


def build_app(manager: Optional[ModelManager] = None, settings: Optional[Settings] = None) -> gr.Blocks:
    """The whole UI, wired to `manager` (a new one from `settings` when None); the queue is configured."""
    settings = settings or Settings.from_env()
    manager = manager or ModelManager.from_settings(settings)
    bench = Workbench(manager, settings)
    examples = json.loads((ASSETS / "examples.json").read_text(encoding="utf-8"))

    with WorkbenchBlocks(title="BioGPT workbench") as demo:
        gr.HTML(header_html())
        panel = build_model_panel(bench)
        # Every run of this browser, kept in its own storage (survives a reload; History shows and exports it).
        history = gr.BrowserState([], storage_key="biogpt-workbench-history")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                generate = build_generate_tab(bench, panel, history, examples["generate"])
            with gr.Tab("Compare", id="compare"):
                build_compare_tab(bench, panel, history)
            with gr.Tab("Entities", id="entities"):
                build_entities_tab(bench, panel, examples["entities"])
            with gr.Tab("Classify", id="classify"):
                show_labels = build_classify_tab(bench, panel, examples["classify"])
            with gr.Tab("History", id="history"):
                show_history = build_history_tab(bench, history)
            with gr.Tab("About", id="about"):
                build_about_tab()
        gr.Markdown("Outputs are machine-generated and **not medical advice**. BioGPT © Microsoft, MIT licence.",
                    elem_classes="wb-stats")
        wire_model_panel(bench, panel)
        demo.load(bench.status, panel.state, panel.status, api_name="status_page", api_visibility="private")
        restore_shared(demo, bench, panel, generate)
        demo.load(**show_history)  # the history this browser kept, as the page opens
        demo.load(**show_labels)  # the default classifier's labels, before anyone runs it
        status_api = gr.Button(visible=False)
        status_api.click(bench.status_report, panel.state, gr.JSON(visible=False), api_name="status")

    demo.queue(max_size=settings.max_queue, api_open=False,
               default_concurrency_limit=settings.concurrency or default_concurrency())
    fairness.install(demo, running=settings.client_running, waiting=settings.client_queued)
    demo.workbench = bench  # for `serve` and the tests
    return demo


def launch_options(settings: Settings, login: Optional[access.Credentials] = None) -> dict[str, Any]:
    """The `demo.launch(...)` arguments the settings decide: where to listen, sharing, login, upload size, how many
    sessions' state is kept."""
    return dict(server_name=settings.listen_host, server_port=settings.port, share=settings.share,
                auth=login.check if login is not None else None, max_file_size=settings.max_upload_bytes,
                state_session_capacity=settings.max_sessions)


def quiet_console() -> None:
    """The console says what an operator needs: one line per refused request (INFO from `ui`), none per HTTP
    request, and not bitsandbytes' note that its optional `kernels` package is absent (it runs without it)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "gradio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def serve(demo: gr.Blocks, settings: Settings) -> None:
    """Say which access defaults apply and which model the app starts with, launch, then warm the default model in
    the background so the page is up at once (BIOGPT_PRELOAD)."""
    login = access.credentials(settings)
    print(access.describe(settings, login), flush=True)
    print(f"Model: {demo.workbench.initial_reason}", flush=True)
    demo.launch(**launch_options(settings, login), prevent_thread_lock=True, quiet=True)
    print(f"Running on {demo.local_url}" + (f" and {demo.share_url}" if demo.share_url else
                                            " (python app.py --share for a public link)"), flush=True)
    if settings.preload:
        threading.Thread(target=demo.workbench.preload, name="preload", daemon=True).start()
    demo.block_thread()


def parse_args(argv: Optional[list[str]] = None, base: Optional[Settings] = None) -> Settings:
    base = base or Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=base.listen_host, help="interface to listen on (0.0.0.0 in Docker/Spaces)")
    parser.add_argument("--port", type=int, default=base.port)
    parser.add_argument("--share", action="store_true", default=base.share, help="a public gradio.live link")
    parser.add_argument("--model", default=base.model, help="catalog name, Hub id or local path")
    parser.add_argument("--preload", action=argparse.BooleanOptionalAction, default=base.preload,
                        help="load the default model right after start-up")
    parser.add_argument("--concurrency", type=int, default=base.concurrency, help="simultaneous jobs")
    parser.add_argument("--max-queue", type=int, default=base.max_queue, help="queued jobs before 'busy'")
    args = parser.parse_args(argv)
    return replace(base, host=args.host, port=args.port, share=args.share, model=args.model, preload=args.preload,
                   concurrency=args.concurrency, max_queue=args.max_queue)


def __getattr__(name: str) -> Any:
    """`app.demo`, built on first access: what `gradio app.py` (reload mode) looks up. Importing this module for
    `build_app` builds nothing."""
    if name == "demo":
        globals()["demo"] = build_app()
        return globals()["demo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    quiet_console()
    settings = parse_args()
    serve(build_app(settings=settings), settings)
