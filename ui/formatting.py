"""HTML and text the handlers show: the confidence view, the stats line, the status line, byte sizes."""

from __future__ import annotations

import html
from typing import Any, Optional

from .theme import confidence_color


def confidence_html(prompt: str, pieces: list[tuple[str, float]]) -> str:
    """The prompt then each generated piece tinted by its probability; every string is HTML-escaped."""
    spans = "".join(
        f'<span class="wb-tok" style="background:{confidence_color(p)}" title="p = {p:.3f}">{html.escape(t)}</span>'
        for t, p in pieces
    )
    legend = ('<div class="wb-legend">Confidence: '
              f'<span style="background:{confidence_color(0.05)}">low</span>'
              f'<span style="background:{confidence_color(0.5)}">medium</span>'
              f'<span style="background:{confidence_color(0.95)}">high</span>'
              "(hover a piece for its probability)</div>")
    return f'<div class="wb-conf"><span class="wb-prompt">{html.escape(prompt)}</span>{spans}</div>{legend}'


def fmt_bytes(count: int) -> str:
    if count < 1024**2:
        return f"{count / 1024:.0f} KiB"
    return f"{count / 1024**2:.1f} MiB" if count < 1024**3 else f"{count / 1024**3:.2f} GiB"


def stats_line(count: int, seconds: float, reason: Optional[str], truncated: bool) -> str:
    """'24 tokens · 12.0 tokens/s · 2.0 s · finished: eos', plus a note when the prompt was cut."""
    rate = count / seconds if seconds > 0 else 0.0
    line = f"{count} tokens · {rate:.1f} tokens/s · {seconds:.1f} s"
    if reason:
        line += f" · finished: {reason}"
    if truncated:
        line += " · the prompt was cut to fit the model's context"
    return line


def loaded_status(loaded: Any) -> str:
    """One line about a loaded model: what, where, how big, how long it took to load."""
    spec = loaded.spec
    parts = [f"**{spec.source}**", f"`{spec.device}`", spec.dtype, spec.attn_implementation, fmt_bytes(loaded.bytes)]
    if spec.quantization:
        parts.append(spec.quantization)
    parts.append(f"loaded in {loaded.load_seconds:.1f} s")
    return " · ".join(parts)
