"""Classify: label probabilities from a fine-tuned classifier, or zero-shot over the language model."""

from __future__ import annotations

import gradio as gr

from biogpt.tasks.classify import HOC_LABELS, HOC_TEMPLATE, PUBMEDQA_LABELS, PUBMEDQA_TEMPLATE

from .handlers import Workbench
from .model_panel import ModelPanel

# Ready-made zero-shot tasks: name -> (comma-separated labels, prompt template).
PRESETS = {"PubMedQA (yes / no / maybe)": (", ".join(PUBMEDQA_LABELS), PUBMEDQA_TEMPLATE),
           "Hallmarks of Cancer": (", ".join(HOC_LABELS), HOC_TEMPLATE)}


def build_classify_tab(bench: Workbench, panel: ModelPanel, examples: list[str]) -> None:
    presets = PRESETS
    first = next(iter(presets))
    with gr.Row():
        with gr.Column(scale=3):
            text = gr.Textbox(label="Text", lines=6, elem_id="cls-text", max_length=bench.settings.max_input_chars,
                              placeholder="An abstract, a sentence, or 'Question: ... Context: ...' for PubMedQA.")
            run = gr.Button("Classify", variant="primary", elem_id="cls-run")
            gr.Examples(examples, inputs=text, label="Example texts")
        with gr.Column(scale=2, min_width=280):
            mode = gr.Radio([("Fine-tuned classifier", "classifier"), ("Zero-shot (language model)", "zero-shot")],
                            value="classifier", label="Mode")
            choices = bench.classifiers(panel.state.value)
            classifier = gr.Dropdown(choices, value=choices[0][1], allow_custom_value=True, label="Classifier",
                                     elem_id="cls-classifier",
                                     info="A sequence-classification checkpoint; its own labels are used.")
            with gr.Group(visible=False) as zero_shot:
                preset = gr.Dropdown(list(presets) + ["Custom"], value=first, label="Task")
                labels = gr.Textbox(presets[first][0], label="Labels (comma-separated)", lines=2)
                template = gr.Textbox(presets[first][1], label="Prompt template", lines=3,
                                      info="{text} is replaced by the input; each label is scored as the answer.")
    result = gr.Label(label="Label probabilities", num_top_classes=10, elem_id="cls-label")

    mode.change(lambda m: (gr.update(visible=m == "classifier"), gr.update(visible=m == "zero-shot")), mode,
                [classifier, zero_shot], api_visibility="private", queue=False)
    preset.change(lambda p: presets.get(p, (gr.skip(), gr.skip())), preset, [labels, template],
                  api_visibility="private", queue=False)
    gr.on([run.click, text.submit], bench.classify, [text, mode, classifier, labels, template, panel.state],
          result, api_name="classify")
