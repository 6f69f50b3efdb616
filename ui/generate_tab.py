"""Generate: continue a biomedical prompt, streamed token by token, with a Stop that really stops."""

from __future__ import annotations

import gradio as gr

from .components import CheckedNumber, CheckedSlider
from .handlers import MODES, Workbench
from .model_panel import ModelPanel

MODE_HELP = {
    "greedy": "Greedy: always the most likely next token (deterministic).",
    "beam": "Beam search: keeps the best few continuations; output appears when the search ends.",
    "sampling": "Sampling: draws each token at random from the filtered distribution (set a seed to repeat a run).",
}


def build_generate_tab(bench: Workbench, panel: ModelPanel, examples: list[str]) -> None:
    cap = bench.settings.max_new_tokens
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
            mode = gr.Radio(list(MODES), value="greedy", label="Decoding", info=MODE_HELP["greedy"])
            max_new_tokens = CheckedSlider(1, cap, value=min(64, cap), step=1, label="Max new tokens")
            with gr.Group(visible=False) as sampling:
                temperature = CheckedSlider(0.05, 2.0, value=0.8, step=0.05, label="Temperature")
                top_p = CheckedSlider(0.05, 1.0, value=0.95, step=0.01, label="Top-p (nucleus)")
                top_k = CheckedSlider(0, 500, value=50, step=1, label="Top-k", info="0 = no top-k filter")
                seed = CheckedNumber(value=-1, precision=0, label="Seed", info="-1 = a new random seed each run")
            num_beams = CheckedSlider(1, 8, value=4, step=1, label="Beams", visible=False)
            repetition_penalty = CheckedSlider(1.0, 3.0, value=1.0, step=0.05, label="Repetition penalty")
            no_repeat = CheckedSlider(0, 10, value=0, step=1, label="No-repeat n-gram size", info="0 = off")
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
