"""`python -m tools.readme`: rewrite the README's configuration table from `biogpt.settings` (between the
`<!-- settings-table -->` markers); tests/test_settings.py checks that the README holds the generated table."""

from __future__ import annotations

import sys
from pathlib import Path

from biogpt.settings import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table -->\n", "<!-- /settings-table -->\n"


def main() -> int:
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + START + markdown_table() + END + tail, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
