"""HTML and text the handlers show: the confidence view, the stats line, the status line, score bars."""

from __future__ import annotations

import html
from typing import Any, Optional

from biogpt.hub import format_bytes

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


def count(number: int, noun: str, plural: str = "") -> str:
    """"1 entity", "3 entities", "1,204 texts": a number and its noun, singular for one."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"


# Why a generation ended, in words (the library's finish reasons, and "stopped" for the Stop button).
FINISHED = {"eos": "the model ended the text", "length": "reached the token limit", "stop_string": "reached a stop text",
            "cancelled": "stopped by you", "stopped": "stopped by you"}


def stats_line(count: int, seconds: float, reason: Optional[str], truncated: bool) -> str:
    """'24 tokens · 12.0 tokens/s · 2.0 s · the model ended the text', plus a note when the prompt was cut."""
    rate = count / seconds if seconds > 0 else 0.0
    line = f"{count} tokens · {rate:.1f} tokens/s · {seconds:.1f} s"
    if reason:
        line += f" · {FINISHED.get(reason, reason)}"
    if truncated:
        line += " · the prompt was cut to fit the model's context"
    return line


def loaded_status(loaded: Any) -> str:
    """One line about a loaded model: what, where, how big, how long it took to load."""
    spec = loaded.spec
    parts = [f"**{spec.source}**", f"`{spec.device}`", spec.dtype, spec.attn_implementation, format_bytes(loaded.bytes)]
    if spec.quantization:
        parts.append(spec.quantization)
    parts.append(f"loaded in {loaded.load_seconds:.1f} s")
    return " · ".join(parts)


def scores_html(scores: dict[str, float], threshold: Optional[float] = None) -> str:
    """One row per label, most probable first: its name, a bar and the percentage; with `threshold` (labels that
    are each true or not), the rows at or above it are marked. Every string is HTML-escaped."""
    rows = []
    for label, score in sorted(scores.items(), key=lambda item: item[1], reverse=True):
        chosen = threshold is not None and score >= threshold
        rows.append(f'<div class="wb-score{" wb-chosen" if chosen else ""}"><span class="wb-score-label">'
                    f'{html.escape(label)}</span><span class="wb-bar"><span style="width:{100 * score:.1f}%">'
                    f'</span></span><span class="wb-score-value">{100 * score:.1f}%</span></div>')
    return f'<div class="wb-scores">{"".join(rows)}</div>'


def single_label_summary(scores: dict[str, float]) -> str:
    """What a one-label-per-text result means, in words; a low-confidence result says so plainly."""
    label, score = max(scores.items(), key=lambda item: item[1])
    if score < 0.5:
        return (f"**Low confidence.** The most likely label, *{html.escape(label)}*, has only {100 * score:.0f}%: "
                "the model is unsure; read this as a guess, not an answer.")
    return f"Most likely: **{html.escape(label)}** ({100 * score:.0f}%)."


def multi_label_summary(scores: dict[str, float], threshold: float, none_label: str = "none") -> str:
    """What a several-labels-per-text result means at `threshold`, in words (no label above it: `none_label`)."""
    chosen = [label for label, score in sorted(scores.items(), key=lambda item: -item[1]) if score >= threshold]
    if not chosen:
        return (f"No label reaches the {100 * threshold:.0f}% threshold: **{html.escape(none_label)}**. Each label "
                "has its own probability (they need not add up to 100%).")
    return (f"At or above the {100 * threshold:.0f}% threshold: **{', '.join(html.escape(c) for c in chosen)}**. "
            "Each label has its own probability (they need not add up to 100%).")
