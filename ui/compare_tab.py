"""Compare: two models, or two precisions, or two decoding settings, on the same prompt, side by side, streaming
together, each word tinted by that side's confidence. Both runs go to the History tab."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import gradio as gr

from biogpt.devices import COMPUTE_DTYPES
from biogpt.validation import (
    DECODING_MODES,
    check_choice,
    clean_text,
    generation_params,
    parameters,
)

from .components import CheckedNumber, parameter_slider
from .errors import handler, shown_to_user
from .explore import (
    TOKEN_VIEW,
    record,
    remember,
    streaming_pieces,
    view_value,
    with_seed,
)
from .fairness import limited
from .handlers import Progress, Workbench
from .model_panel import LANGUAGE_MODELS, PRECISIONS

SIDES = ("A", "B")


@dataclass
class Side:
    """One column's choices."""

    source: gr.Dropdown
    precision: gr.Radio
    mode: gr.Radio
    max_new_tokens: Any
    temperature: Any
    top_p: Any
    seed: Any
    view: gr.HTML
    stats: gr.Markdown

    @property
    def inputs(self) -> list:
        return [self.source, self.precision, self.mode, self.max_new_tokens, self.temperature, self.top_p, self.seed]


def _side(bench: Workbench, name: str, initial: dict, default_mode: str) -> Side:
    table = parameters(bench.settings)
    seed_range = table["seed"]
    with gr.Column(min_width=300):
        gr.Markdown(f"### {name}")
        source = gr.Dropdown(LANGUAGE_MODELS, value=initial["source"], allow_custom_value=True, label="Model",
                             elem_id=f"cmp-{name.lower()}-model")
        with gr.Row():
            precision = gr.Radio(list(PRECISIONS), value=initial["dtype"], label="Precision", min_width=200)
            mode = gr.Radio(list(DECODING_MODES[::2]), value=default_mode, label="Decoding", min_width=160,
                            elem_id=f"cmp-{name.lower()}-mode")
        max_new_tokens = parameter_slider(table["max_new_tokens"])
        with gr.Accordion("Sampling settings", open=default_mode == "sampling"):
            temperature = parameter_slider(table["temperature"])
            top_p = parameter_slider(table["top_p"])
            seed = CheckedNumber(value=seed_range.default, precision=0, label=seed_range.label, info=seed_range.info,
                                 minimum=seed_range.low, maximum=seed_range.high)
        view = gr.HTML(view_value("", [], True), html_template=TOKEN_VIEW, elem_id=f"cmp-{name.lower()}-view")
        stats = gr.Markdown(elem_classes="wb-stats", elem_id=f"cmp-{name.lower()}-stats")
    return Side(source, precision, mode, max_new_tokens, temperature, top_p, seed, view, stats)


@dataclass
class Comparer:
    bench: Workbench

    @limited
    @handler
    def compare(self, prompt: str, source_a: str, precision_a: str, mode_a: str, max_new_tokens_a: float,
                temperature_a: float, top_p_a: float, seed_a: float, source_b: str, precision_b: str, mode_b: str,
                max_new_tokens_b: float, temperature_b: float, top_p_b: float, seed_b: float,
                state: Optional[dict], history: Optional[list], request: gr.Request) -> Iterator[tuple]:
        """Stream both sides together: (view A, stats A, view B, stats B, history) after each new piece of text;
        both runs are recorded in the history at the end."""
        prompt = clean_text(prompt, "prompt", self.bench.settings.max_prompt_chars)
        runs = [self._run(state, source_a, precision_a, mode_a, max_new_tokens_a, temperature_a, top_p_a, seed_a),
                self._run(state, source_b, precision_b, mode_b, max_new_tokens_b, temperature_b, top_p_b, seed_b)]
        # Each side decodes in its own thread; this generator yields whenever either has produced something.
        updates: "queue.Queue[tuple[int, Any]]" = queue.Queue()
        sessions = [_Session(request, side) for side in SIDES]

        def decode(i: int) -> None:
            spec, _, params = runs[i]
            try:
                with shown_to_user():  # a library error becomes the message this side shows
                    for progress in self.bench.decode(spec, prompt, params, sessions[i]):
                        updates.put((i, progress))
            except BaseException as exc:  # handed to the page's thread, which shows or re-raises it
                updates.put((i, exc))
            updates.put((i, None))

        for i in range(2):
            threading.Thread(target=decode, args=(i,), daemon=True, name=f"compare-{SIDES[i]}").start()
        latest: list[Any] = [None, None]
        finished = 0
        try:
            while finished < 2:
                i, item = updates.get()
                if item is None:
                    finished += 1
                    continue
                if isinstance(item, BaseException) and not isinstance(item, gr.Error):
                    raise item
                latest[i] = item
                yield self._shown(prompt, latest) + (gr.skip(),)
        finally:  # the page went away or a side failed: stop the other side too
            for session in sessions:
                self.bench.stop(session)
        for i, item in enumerate(latest):
            if isinstance(item, Progress):
                history = remember(history, record("compare", item.loaded, runs[i][1], runs[i][2], prompt, item,
                                                   side=SIDES[i]))
        yield self._shown(prompt, latest) + (history,)

    def _run(self, state: Optional[dict], source: str, precision: str, mode: str, max_new_tokens: float,
             temperature: float, top_p: float, seed: float) -> tuple[Any, str, dict]:
        """(model spec, decoding mode, checked parameters) of one side."""
        check_choice("Decoding", mode, DECODING_MODES)
        params = with_seed(mode, generation_params(mode, dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=0, repetition_penalty=1.0,
            no_repeat_ngram_size=0, num_beams=1, seed=seed), self.bench.settings))
        check_choice("Precision", precision, COMPUTE_DTYPES)
        side = {**(state or self.bench.default_state()), "source": clean_text(source, "model", 1_000).strip(),
                "dtype": precision}
        return self.bench.spec(side), mode, params

    @staticmethod
    def _shown(prompt: str, latest: list[Any]) -> tuple:
        shown = []
        for item in latest:
            if item is None:
                shown += [gr.skip(), gr.skip()]
            elif isinstance(item, gr.Error):
                shown += [view_value(prompt, [], True), f"⚠ {item.message}"]
            else:
                shown += [view_value(prompt, streaming_pieces(item), True), item.stats()]
        return tuple(shown)


class _Session:
    """A request-like handle per side, so that each side has its own stop flag (see Workbench.stop)."""

    def __init__(self, request: Optional[gr.Request], side: str):
        self.session_hash = f"{getattr(request, 'session_hash', None) or 'local'}:compare-{side}"


def build_compare_tab(bench: Workbench, panel: Any, history: gr.BrowserState) -> None:
    comparer = Comparer(bench)
    initial = bench.default_state()
    prompt = gr.Textbox(label="Prompt", lines=2, elem_id="cmp-prompt", max_length=bench.settings.max_prompt_chars,
                        placeholder="One prompt, two runs: e.g. two models, fp32 against bf16, or greedy against "
                                    "sampling.")
    with gr.Row():
        run = gr.Button("Compare", variant="primary", elem_id="cmp-run")
        stop = gr.Button("Stop", variant="stop", elem_id="cmp-stop")
    with gr.Row(equal_height=False):
        a = _side(bench, "A", initial, "greedy")
        b = _side(bench, "B", initial, "sampling")
    running = gr.on([run.click, prompt.submit], comparer.compare,
                    [prompt, *a.inputs, *b.inputs, panel.state, history],
                    [a.view, a.stats, b.view, b.stats, history], api_visibility="private",
                    concurrency_limit=bench.settings.generate_concurrency, concurrency_id="generate")

    def stop_both(request: gr.Request) -> None:
        for side in SIDES:
            bench.stop(_Session(request, side))

    stop.click(stop_both, None, None, cancels=[running], queue=False, api_visibility="private")
