"""The look of the workbench: a Gradio theme, the stylesheet and the header HTML."""

from __future__ import annotations

import base64
from pathlib import Path

import gradio as gr

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CSS_PATH = ASSETS / "style.css"
LOGO_PATH = ASSETS / "logo.svg"


def theme() -> gr.themes.Base:
    return gr.themes.Soft(
        primary_hue=gr.themes.colors.teal,
        secondary_hue=gr.themes.colors.sky,
        neutral_hue=gr.themes.colors.slate,
        radius_size=gr.themes.sizes.radius_md,
    )


def header_html() -> str:
    # The logo is inlined as a data URI so that it needs no file route (and no allowed_paths).
    logo = base64.b64encode(LOGO_PATH.read_bytes()).decode("ascii")
    return (
        '<div id="wb-header">'
        f'<img src="data:image/svg+xml;base64,{logo}" alt="">'
        "<div><h1>BioGPT workbench</h1>"
        "<p>Generate biomedical text, find entities and classify abstracts with Microsoft's BioGPT.</p></div>"
        "</div>"
    )


def confidence_color(prob: float) -> str:
    """Background for a token of probability `prob`: red (unsure) through amber to green (confident)."""
    prob = min(1.0, max(0.0, prob))
    hue = int(120 * prob)  # 0 = red, 120 = green
    return f"hsla({hue}, 75%, 50%, 0.28)"
