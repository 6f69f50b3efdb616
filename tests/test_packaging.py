"""Packaging tells the truth: one list of dependencies, and both an editable and a plain `pip install .` of the
library find the bundled demo models and run them, from outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import requirements

REPO = Path(__file__).resolve().parent.parent
# Run from a folder outside the checkout, so `import biogpt` can only come from the installation under test.
SMOKE = """
import sys, torch
from biogpt import BioGptForCausalLM, BioGptTokenizer, catalog
path = catalog.demo_path("causal-lm")
model, tokenizer = BioGptForCausalLM.from_pretrained(path), BioGptTokenizer.from_pretrained(path)
ids = tokenizer("Aspirin", return_tensors="pt")["input_ids"]
print(model.generate(ids, max_new_tokens=3).shape[1] - ids.shape[1])
print(path)
print("tools" in sys.modules)
"""


def test_requirements_txt_is_generated_from_pyproject() -> None:
    assert (REPO / "requirements.txt").read_text(encoding="utf-8") == requirements.render(), \
        "requirements.txt is stale: run `make requirements`"


def _smoke(tmp_path: Path, env: dict) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SMOKE], cwd=tmp_path, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_editable_install_finds_the_demo_models(tmp_path: Path) -> None:
    new_tokens, path, imported_tools = _smoke(tmp_path, {"PYTHONPATH": ""})
    assert new_tokens == "3" and imported_tools == "False"
    assert Path(path) == REPO / "biogpt" / "demo_models" / "demo-lm"


@pytest.mark.slow
def test_a_plain_install_finds_the_demo_models(tmp_path: Path) -> None:
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("biogpt-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    assert not (target / "tools").exists(), "the demo builder (tools/) must not ship in the wheel"
    assert (target / "biogpt" / "native.c").is_file(), "the CPU kernels' source must ship: it is compiled on use"
    run = tmp_path / "run"
    run.mkdir()
    new_tokens, path, imported_tools = _smoke(run, {"PYTHONPATH": str(target)})
    assert new_tokens == "3" and imported_tools == "False"
    assert Path(path) == target / "biogpt" / "demo_models" / "demo-lm"
