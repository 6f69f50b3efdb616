"""Documentation that cannot rot: every code block of README.md, docs/ and the seed page runs.

Hub ids are mapped to the bundled demo checkpoint and GPU devices to the CPU (the only changes the drop-in promise
allows besides `transformers` -> `biogpt`); each Python block runs in a fresh interpreter, each bash block in bash.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app_fixtures import checkpoints, paper_release, server  # noqa: F401  (fixtures: the app, the release)

REPO = Path(__file__).resolve().parent.parent
DEMO_LM = REPO / "biogpt" / "demo_models" / "demo-lm"
FENCE = re.compile(r"^( *)```(py|python|bash|sh)\n(.*?)^\1```", re.S | re.M)
HUB_IDS = ("microsoft/BioGPT-Large-PubMedQA", "microsoft/BioGPT-Large", "microsoft/biogpt")


def code_blocks(path: Path) -> list[tuple[str, str, str]]:
    """(id, language, code) for each fenced block, dedented by its fence's indentation."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for n, match in enumerate(FENCE.finditer(text), start=1):
        indent = len(match.group(1))
        code = "\n".join(line[indent:] for line in match.group(3).splitlines())
        blocks.append((f"{path.name}#{n}", "bash" if match.group(2) in ("bash", "sh") else "python", code))
    return blocks


def localise(code: str, checkpoints: dict[str, str], server_url: str | None = None,
             release: str | None = None, data: str | None = None) -> str:
    """The mapping this test is allowed: Hub ids -> local checkpoints, GPUs -> CPU, the app's URL -> the test's, the
    fine-tuned release -> the scripted one of tests/fairseq_fixtures.py, the paper's test data -> ../shared's."""
    if release:
        code = code.replace("~/biogpt-release/checkpoints", release)
    if data:
        code = code.replace("BC5CDR/raw/test.json", data)
    for hub_id in HUB_IDS:
        code = code.replace(f'"{hub_id}"', repr(checkpoints[hub_id])).replace(f" {hub_id} ", f" {checkpoints[hub_id]} ")
    code = re.sub(r"device=0\b", 'device="cpu"', code).replace("--device 0", "--device cpu")
    if server_url:
        code = code.replace("http://127.0.0.1:7860/", server_url)
    return code


def run_block(language: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def assert_ran(block_id: str, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{block_id} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, f"{block_id}:\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def demo_checkpoints() -> dict[str, str]:
    assert (DEMO_LM / "model.safetensors").exists(), "the bundled demo checkpoint is missing: run `make demo`"
    return {hub_id: str(DEMO_LM) for hub_id in HUB_IDS}


DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOC_BLOCKS = [block for path in DOC_FILES for block in code_blocks(path)]


def test_docs_have_the_seed_examples():
    ids = {block_id for block_id, _, _ in DOC_BLOCKS}
    assert len(DOC_BLOCKS) >= 8 and any(i.startswith("README.md") for i in ids)
    text = "\n".join(code for _, _, code in DOC_BLOCKS)
    for needed in ('pipeline(', 'AutoModelForCausalLM.from_pretrained(', 'BitsAndBytesConfig(',
                   'biogpt run --task text-generation', 'attn_implementation="eager"'):
        assert needed in text, needed


@pytest.mark.slow  # every block runs in a fresh interpreter (importing torch takes seconds): `make test` only
@pytest.mark.parametrize("block_id,language,code", DOC_BLOCKS, ids=[b[0] for b in DOC_BLOCKS])
def test_documented_code_runs(block_id, language, code, demo_checkpoints, tmp_path, request):
    server = request.getfixturevalue("server").url if "gradio_client" in code else None  # the real app, loopback
    release = data = None
    if "biogpt-release" in code:
        release = str(request.getfixturevalue("paper_release"))
        data = str(request.getfixturevalue("shared_dir") / "data/biogpt-tasks/bc5cdr-re/valid.json")
    result = run_block(language, localise(code, demo_checkpoints, server, release, data), tmp_path)
    assert_ran(block_id, result)
    if "Ibuprofen is best used for" in code and ("generate(" in code or "generator(" in code or "biogpt run" in code):
        # Python examples print prompt + continuation; the command line prints the continuation it streams.
        expected = "Ibuprofen is best used for" if language == "python" else ""
        assert expected in result.stdout and result.stdout.strip(), result.stdout


SEED = Path(os.environ.get("BIOGPT_SHARED_DIR", REPO.parent / "shared")) / "seed" / "biogpt.md"


def seed_blocks() -> list[tuple[str, str, str]]:
    if not SEED.exists():
        return []
    # The page's last example is cut off (no closing fence): take the note's code up to the next heading.
    text = SEED.read_text(encoding="utf-8")
    blocks = code_blocks(SEED)
    tail = re.search(r"^( +)```py\n(.*?)^## ", text, re.S | re.M)
    if tail and "```" not in tail.group(2):
        blocks.append(("biogpt.md#note", "python", "\n".join(l[len(tail.group(1)):] for l in tail.group(2).splitlines())))
    return blocks


def drop_in(code: str) -> str:
    """The drop-in promise: `transformers` -> `biogpt`, nothing else."""
    return code.replace("from transformers import", "from biogpt import").replace("transformers-cli", "biogpt")


@pytest.mark.slow  # a fresh interpreter per block, as above
@pytest.mark.skipif(not SEED.exists(), reason="../shared/seed/biogpt.md is absent (a user's clone has no ../shared)")
@pytest.mark.parametrize("block_id,language,code", seed_blocks() or [("none", "python", "")],
                         ids=[b[0] for b in seed_blocks()] or ["none"])
def test_seed_page_examples_run_with_biogpt(block_id, language, code, demo_checkpoints, tmp_path):
    assert "transformers" in code or "BioGPT" in code or "biogpt" in code
    result = run_block(language, localise(drop_in(code), demo_checkpoints), tmp_path)
    assert_ran(block_id, result)


@pytest.mark.slow
def test_seed_4bit_example_on_biogpt_large_layer_shapes(tmp_path, shared_dir):
    """The 4-bit example on a random checkpoint with BioGPT-Large's vocabulary and layer shapes (2 of its 48 layers,
    to fit CI), loaded and quantized by the same code path as the real one."""
    import torch

    from biogpt import BioGptConfig, BioGptForCausalLM
    from biogpt.bpe import convert_fairseq_vocab

    large = shared_dir / "data/biogpt-vocab/large"
    convert_fairseq_vocab(large / "dict.txt", large / "bpecodes", tmp_path)
    config = BioGptConfig(vocab_size=57717, hidden_size=1600, num_hidden_layers=2, num_attention_heads=25,
                          intermediate_size=6400, max_position_embeddings=2048)
    torch.manual_seed(0)
    BioGptForCausalLM.from_config(config, torch_dtype=torch.bfloat16).save_pretrained(tmp_path)
    block = next(code for _, _, code in seed_blocks() if "BitsAndBytesConfig" in code)
    code = drop_in(block).replace('"microsoft/BioGPT-Large"', repr(str(tmp_path)))
    code += "\nassert model.is_quantized and type(model.biogpt.layers[0].fc1).__name__ == 'Linear4bit'"
    code += "\nassert output.startswith('Ibuprofen is best used for')"
    result = run_block("python", code, tmp_path)
    assert_ran("seed 4-bit on BioGPT-Large shapes", result)


def test_the_apps_own_example_is_the_readmes():
    """The About tab shows the README's client example, which test_documented_code_runs runs against the app."""
    from ui.about_tab import ABOUT, CLIENT_EXAMPLE

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"```python\n{CLIENT_EXAMPLE}```" in readme and CLIENT_EXAMPLE in ABOUT
    assert "microsoft/biogpt\"" not in CLIENT_EXAMPLE.split("#")[0], "the example must run offline"


def test_localise_maps_only_ids_and_devices():
    code = 'pipeline(model="microsoft/biogpt", device=0)\necho x | biogpt run --model microsoft/BioGPT-Large --device 0'
    out = localise(code, {h: "/ckpt" for h in HUB_IDS})
    assert out == "pipeline(model='/ckpt', device=\"cpu\")\necho x | biogpt run --model /ckpt --device cpu"
