"""Generate: continue a biomedical prompt, streamed token by token, with a Stop that really stops; then click any
generated word to see what else the model considered there and which prompt words led to it, and continue from
another token while keeping every version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from biogpt.validation import DECODING_MODES, parameters

from .components import CheckedNumber, parameter_slider
from .explore import TOKEN_CLICK, TOKEN_VIEW, Explorer, view_value
from .handlers import Workbench
from .model_panel import ModelPanel

MODE_HELP = {
    "greedy": "Greedy: always the most likely next token (deterministic).",
    "beam": "Beam search: keeps the best few continuations; output appears when the search ends.",
    "sampling": "Sampling: draws each token at random from the filtered distribution (a run's seed is kept in "
                "its history entry, so it can be repeated).",
}
# What a share link carries, in the order of the inputs below (the model comes from the panel).
SHARED = ("prompt", "mode", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
          "no_repeat_ngram_size", "num_beams", "seed")


@dataclass
class GenerateTab:
    """The inputs other tabs fill (History's re-run, a share link) and the event that runs them."""

    inputs: list  # prompt, mode, the eight controls (see SHARED), colour switch, panel state, history
    run: gr.Button


def build_generate_tab(bench: Workbench, panel: ModelPanel, history: gr.BrowserState,
                       examples: list[str]) -> GenerateTab:
    explorer = Explorer(bench)
    table = parameters(bench.settings)
    seed_range = table["seed"]
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="e.g. COVID-19 is", elem_id="gen-prompt",
                                max_length=bench.settings.max_prompt_chars)
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                stop = gr.Button("Stop", variant="stop", elem_id="gen-stop")
            gr.Examples(examples, inputs=prompt, label="Example prompts")
            view = gr.HTML(view_value("", [], True), html_template=TOKEN_VIEW, js_on_load=TOKEN_CLICK,
                           elem_id="gen-view", label="Output")
            stats = gr.Markdown(elem_classes="wb-stats", elem_id="gen-stats")
            versions = gr.Radio([], label="Versions", visible=False, elem_id="gen-versions",
                                info="Each continuation you branched off; the first is the model's own.")
            with gr.Group(visible=False, elem_id="gen-explain") as explain:
                step = gr.Markdown(elem_id="gen-step")
                alternatives = gr.HTML(elem_id="gen-alternatives")
                with gr.Row(equal_height=True):
                    choice = gr.Dropdown([], label="Continue with another token", elem_id="gen-choice", scale=3)
                    branch = gr.Button("Continue with this token instead", elem_id="gen-branch", scale=2)
                gr.Markdown("**Where it came from**: the prompt, each word tinted by how much this choice "
                            "depended on it.")
                heat = gr.HTML(elem_id="gen-attribution")
                method = gr.Markdown(elem_classes="wb-stats")
            with gr.Accordion("Plain text (to copy)", open=False):
                output = gr.Textbox(label="Output", lines=4, elem_id="gen-output", buttons=["copy"],
                                    interactive=False)
            with gr.Row():
                share = gr.Button("Copy a share link", size="sm", elem_id="gen-share", scale=0, min_width=180)
                link = gr.Textbox(show_label=False, interactive=False, elem_id="gen-link", visible=False, scale=4)
        with gr.Column(scale=2, min_width=280):
            mode = gr.Radio(list(DECODING_MODES), value="greedy", label="Decoding", info=MODE_HELP["greedy"],
                            elem_id="gen-mode")
            max_new_tokens = parameter_slider(table["max_new_tokens"])
            with gr.Group(visible=False) as sampling:
                temperature = parameter_slider(table["temperature"])
                top_p = parameter_slider(table["top_p"])
                top_k = parameter_slider(table["top_k"])
                seed = CheckedNumber(value=seed_range.default, precision=0, label=seed_range.label,
                                     info=seed_range.info, minimum=seed_range.low, maximum=seed_range.high,
                                     elem_id="gen-seed")
            num_beams = parameter_slider(table["num_beams"], visible=False)
            repetition_penalty = parameter_slider(table["repetition_penalty"])
            no_repeat = parameter_slider(table["no_repeat_ngram_size"])
            colored = gr.Checkbox(value=True, label="Colour words by the model's confidence", elem_id="gen-colored")
    run_state = gr.State(None)

    def show_mode(choice_value: str):
        return (gr.update(info=MODE_HELP.get(choice_value, "")), gr.update(visible=choice_value == "sampling"),
                gr.update(visible=choice_value == "beam"))

    mode.change(show_mode, mode, [mode, sampling, num_beams], api_visibility="private", queue=False)

    controls = [mode, max_new_tokens, temperature, top_p, top_k, repetition_penalty, no_repeat, num_beams, seed]
    page_inputs = [prompt, *controls, colored, panel.state, history]
    shown = [view, output, stats, run_state, history, versions, explain]
    # Generation requests run side by side (BIOGPT_GENERATE_CONCURRENCY, default 8) so that each model's batching
    # engine can merge them into one forward per step; the other events keep the queue's default limit.
    running = gr.on([run.click, prompt.submit], explorer.generate, page_inputs, shown, api_name="generate_page",
                    api_visibility="private",
                    show_progress="minimal", concurrency_limit=bench.settings.generate_concurrency,
                    concurrency_id="generate")
    running.then(bench.status, panel.state, panel.status, api_name="status_after_generate", api_visibility="private",
                 queue=False)  # the model is loaded now
    branching = branch.click(explorer.branch, [run_state, choice, colored, history], shown,
                             api_visibility="private", concurrency_limit=bench.settings.generate_concurrency,
                             concurrency_id="generate")
    # Both halves are needed: the event sets the loop's stop flag, `cancels` ends the Gradio job.
    stop.click(bench.stop, None, None, cancels=[running, branching], queue=False, api_name="stop")
    view.click(explorer.explain, [run_state, colored],
               [view, run_state, explain, step, alternatives, choice, heat, method], api_visibility="private")
    versions.input(explorer.show_version, [run_state, versions, colored], [view, output, run_state],
                   api_visibility="private", queue=False)

    # A share link: this page's address with the prompt and the decoding settings in its query string.
    share.click(None, [prompt, *controls, panel.source], link, api_visibility="private", js=f"""(...values) => {{
        const names = {[*SHARED, "model"]!r};
        const query = new URLSearchParams();
        names.forEach((name, i) => {{ if (values[i] !== null && values[i] !== undefined) query.set(name, values[i]); }});
        const url = window.location.origin + window.location.pathname + '?' + query.toString();
        if (navigator.clipboard) navigator.clipboard.writeText(url).catch(() => {{}});
        return url;
    }}""").then(lambda: gr.update(visible=True), None, link, api_visibility="private", queue=False)

    # The API: the plain stream of (text, confidence HTML, stats), as before the page grew its token view.
    api = gr.Button(visible=False)
    api.click(bench.generate, [prompt, *controls, panel.state], [output, gr.HTML(visible=False), stats],
              api_name="generate", concurrency_limit=bench.settings.generate_concurrency,
              concurrency_id="generate")
    return GenerateTab([prompt, *controls, colored, panel.state, history], run)


def restore_shared(demo: gr.Blocks, bench: Workbench, panel: ModelPanel, tab: GenerateTab) -> None:
    """Open a share link: its query string fills the prompt and the decoding settings, and loads its model."""
    fields = tab.inputs[:len(SHARED)]

    def restore(request: gr.Request) -> tuple:
        query = dict(request.query_params) if request is not None else {}
        values = []
        for name in SHARED:
            raw = query.get(name)
            if raw is None or name in ("prompt", "mode"):
                values.append(raw if raw is not None else gr.skip())
                continue
            try:
                values.append(float(raw) if "." in raw else int(raw))
            except ValueError:  # a hand-edited link: keep that control as it is
                values.append(gr.skip())
        model = query.get("model")
        return (*values, model if model else gr.skip(), bool(model))

    wanted = gr.State(False)
    panel_inputs = [panel.source, panel.attention, panel.precision, panel.weights, panel.device, panel.state]

    def load_shared(wanted_value: bool, *values: Any) -> tuple:
        return bench.load_model_in_panel(*values) if wanted_value else (gr.skip(),) * 5

    demo.load(restore, None, [*fields, panel.source, wanted], api_visibility="private", queue=False).then(
        load_shared, [wanted, *panel_inputs], [panel.state, panel.source, panel.about, panel.status, panel.notice],
        api_visibility="private")