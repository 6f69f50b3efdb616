"""`python -m tools.requirements`: write requirements.txt from pyproject.toml, the one list of dependencies.

requirements.txt is what a GPU host such as Hugging Face Spaces installs (the library's dependencies plus the app's
and the quantization extras); tests/test_packaging.py checks that it is the file this script writes.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXTRAS = ("app", "quantization")
HEADER = """\
# Generated from pyproject.toml by `python -m tools.requirements` (edit pyproject.toml, then run it): the library's
# dependencies plus its "app" and "quantization" extras, for a host that runs the app from this directory (Hugging
# Face Spaces installs these as is; pip picks the CUDA build of torch there). `make` installs the CPU build of torch
# first on a machine without an NVIDIA GPU.
"""


def render() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    return HEADER + "\n".join(lines) + "\n"


def main() -> int:
    (REPO / "requirements.txt").write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
