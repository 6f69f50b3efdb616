"""The model panel above the tabs: which model writes the text (first, with its one-line description), what is
loaded now, and, folded away under "Advanced", how it runs (attention backend, precision, 4-bit, device)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from biogpt.catalog import CATALOG, DEMO
from biogpt.devices import (
    ATTENTION_BACKENDS,
    attention_unavailable_reason,
    available_devices,
)
from biogpt.quantization import quantization_unavailable_reason

from .handlers import WEIGHTS, Workbench, is_demo

DEMO_NOTICE = ("**Demo models.** These are tiny demo models trained on generated sentences — not BioGPT; "
               "outputs are illustrative only.")
PRECISIONS = (("auto", "auto"), ("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"))  # (label, value)
# How the weights are stored (handlers.WEIGHTS): as loaded, 4-bit NF4 with bitsandbytes (GPU), or PyTorch's
# weight-only int8 / int4 kernels (CPU).
WEIGHT_LABELS = {"none": "as loaded (Precision)", "4bit": "4-bit NF4 (bitsandbytes)", "int8": "int8 (CPU)",
                 "int4": "int4 (CPU)"}
# The language models the panel offers (the paper's task models live in the Entities and Classify tabs).
LANGUAGE_MODELS = [name for name, entry in CATALOG.items() if "causal-lm" in entry.tasks and not entry.paper_task]


@dataclass
class ModelPanel:
    state: gr.State
    source: gr.Dropdown
    about: gr.Markdown
    attention: gr.Dropdown
    precision: gr.Radio
    weights: gr.Dropdown
    device: gr.Dropdown
    load: gr.Button
    status: gr.Markdown
    notice: gr.Markdown


def describe(source: str) -> str:
    """The one-line description under the model box."""
    entry = CATALOG.get(source)
    if entry is None:
        return "A checkpoint of your choice: a Hugging Face Hub id (owner/name) or a local directory."
    return f"{entry.description} · {entry.size}"


def build_model_panel(bench: Workbench) -> ModelPanel:
    initial = bench.default_state()
    flash_reason = attention_unavailable_reason("flash_attention_2", "auto", "bfloat16")
    quant_reason = quantization_unavailable_reason("auto", 4)
    choices = [(f"{name} ({CATALOG[name].size})" if name != DEMO else "demo (bundled, offline)", name)
               for name in LANGUAGE_MODELS]
    with gr.Group(elem_id="wb-panel"):
        with gr.Row(equal_height=True):
            source = gr.Dropdown(choices, value=initial["source"], allow_custom_value=True, label="Model", scale=5,
                                 elem_id="wb-model", info="Pick one, or type a Hugging Face Hub id or a directory.")
            load = gr.Button("Load", variant="secondary", scale=0, min_width=90, elem_id="wb-load")
        about = gr.Markdown(describe(initial["source"]), elem_id="wb-model-about")
        status = gr.Markdown(bench.status(initial), elem_id="wb-status")
    with gr.Accordion("Advanced: attention, precision, weights, device", open=False, elem_id="wb-advanced"):
        with gr.Row():
            attention = gr.Dropdown(list(ATTENTION_BACKENDS), value=initial["attn_implementation"],
                                    label="Attention", min_width=160,
                                    info=f"Unavailable here: {flash_reason}." if flash_reason
                                    else "sdpa is the fast default.")
            precision = gr.Radio(list(PRECISIONS), value=initial["dtype"], label="Precision", min_width=200,
                                 info="auto: the checkpoint's dtype (fp32 on CPU).")
            weights = gr.Dropdown([(WEIGHT_LABELS[w], w) for w in WEIGHTS if w != "4bit" or quant_reason is None],
                                  value="none", label="Weights", min_width=160, elem_id="wb-weights",
                                  info="int8 / int4: smaller and faster on a CPU."
                                  + (f" 4-bit NF4 is unavailable here: {quant_reason}." if quant_reason else
                                     " 4-bit NF4: BioGPT-Large on a small GPU."))
            device = gr.Dropdown(available_devices(), value=initial["device"], label="Device",
                                 allow_custom_value=True, min_width=120)
    notice = gr.Markdown(DEMO_NOTICE, elem_id="wb-notice", visible=is_demo(initial["source"]))
    return ModelPanel(gr.State(initial), source, about, attention, precision, weights, device, load, status, notice)


def catalog_defaults(source: str) -> tuple[dict, dict]:
    """The options a catalog entry recommends (e.g. 4-bit for BioGPT-Large where bitsandbytes runs): updates for
    the weights choice and the precision radio; other sources keep what the user chose."""
    entry = CATALOG.get(source)
    if entry is None:
        return gr.update(), gr.update()
    four_bit = entry.defaults.get("quantization") == "4bit" and quantization_unavailable_reason("auto", 4) is None
    return gr.update(value="4bit" if four_bit else "none"), gr.update(value=entry.defaults.get("dtype", "auto"))


def wire_model_panel(bench: Workbench, panel: ModelPanel) -> None:
    inputs = [panel.source, panel.attention, panel.precision, panel.weights, panel.device, panel.state]
    shown = [panel.state, panel.source, panel.about, panel.status, panel.notice]
    # In the page a failed load is reported in the panel (a warning, and the status of what is really loaded);
    # API clients get an error from /load_model (an invisible button carries that endpoint).
    load = dict(fn=bench.load_model_in_panel, inputs=inputs, outputs=shown, show_progress_on=[panel.status],
                api_visibility="private")
    panel.load.click(**load)
    panel.source.select(catalog_defaults, panel.source, [panel.weights, panel.precision], queue=False,
                        api_visibility="private").then(**load)
    gr.on([panel.attention.input, panel.precision.input, panel.weights.input, panel.device.input], **load)
    panel.source.change(describe, panel.source, panel.about, queue=False, api_visibility="private")
    api = gr.Button(visible=False)
    api.click(bench.load_model, inputs, [panel.state, panel.status, panel.notice], api_name="load_model")
