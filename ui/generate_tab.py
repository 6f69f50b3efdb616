"""Generate: continue a biomedical prompt, streamed token by token, with a Stop that really stops."""

from __future__ import annotations

import gradio as gr

from biogpt.validation import DECODING_MODES, parameters

from .components import CheckedNumber, parameter_slider
from .handlers import Workbench
from .model_panel import ModelPanel

MODE_HELP = {
    "greedy": "Greedy: always the most likely next token (deterministic).",
    "beam": "Beam search: keeps the best few continuations; output appears when the search ends.",
    "sampling": "Sampling: draws each token at random from the filtered distribution (set a seed to repeat a run).",
}


def build_generate_tab(bench: Workbench, panel: ModelPanel, examples: list[str]) -> None:
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
            output = gr.Textbox(label="Output", lines=8, elem_id="gen-output", buttons=["copy"], interactive=False)
            confidence = gr.HTML(visible=False, elem_id="gen-confidence")
            stats = gr.Markdown(elem_classes="wb-stats", elem_id="gen-stats")
        with gr.Column(scale=2, min_width=280):
            mode = gr.Radio(list(DECODING_MODES), value="greedy", label="Decoding", info=MODE_HELP["greedy"])
            max_new_tokens = parameter_slider(table["max_new_tokens"])
            with gr.Group(visible=False) as sampling:
                temperature = parameter_slider(table["temperature"])
                top_p = parameter_slider(table["top_p"])
                top_k = parameter_slider(table["top_k"])
                seed = CheckedNumber(value=seed_range.default, precision=0, label=seed_range.label,
                                     info=seed_range.info, minimum=seed_range.low, maximum=seed_range.high)
            num_beams = parameter_slider(table["num_beams"], visible=False)
            repetition_penalty = parameter_slider(table["repetition_penalty"])
            no_repeat = parameter_slider(table["no_repeat_ngram_size"])
            show_confidence = gr.Checkbox(value=False, label="Colour tokens by confidence")

    def show_mode(choice: str):
        return (gr.update(info=MODE_HELP.get(choice, "")), gr.update(visible=choice == "sampling"),
                gr.update(visible=choice == "beam"))

    mode.change(show_mode, mode, [mode, sampling, num_beams], api_visibility="private", queue=False)
    show_confidence.change(lambda on: (gr.update(visible=on), gr.update(visible=not on)), show_confidence,
                           [confidence, output], api_visibility="private", queue=False)

    inputs = [prompt, mode, max_new_tokens, temperature, top_p, top_k, repetition_penalty, no_repeat, num_beams,
              seed, panel.state]
    outputs = [output, confidence, stats]
    # Generation requests run side by side (BIOGPT_GENERATE_CONCURRENCY, default 8) so that each model's batching
    # engine can merge them into one forward per step; the other events keep the queue's default limit.
    running = gr.on([run.click, prompt.submit], bench.generate, inputs, outputs, api_name="generate",
                    show_progress="minimal", concurrency_limit=bench.settings.generate_concurrency,
                    concurrency_id="generate")
    running.then(bench.status, panel.state, panel.status, api_name="status_after_generate", api_visibility="private",
                 queue=False)  # the model is loaded now
    # Both halves are needed: the event sets the loop's stop flag, `cancels` ends the Gradio job.
    stop.click(bench.stop, None, None, cancels=[running], queue=False, api_name="stop")
