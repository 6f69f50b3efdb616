"""pipeline("text-generation") and `python -m biogpt run` end to end on a tiny checkpoint with the real vocabulary."""

from __future__ import annotations

import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import biogpt
from biogpt import cli
from biogpt.errors import DeviceError, GenerationParameterError
from biogpt.generation import continuation_text, generate

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["Ibuprofen is best used for", "The patients ( n = 12 ) received"]


@pytest.fixture(scope="module")
def checkpoint(shared_dir, tmp_path_factory) -> Path:
    """A directory in the Hub layout: config.json, model.safetensors, vocab.json, merges.txt."""
    from biogpt.bpe import convert_fairseq_vocab

    directory = tmp_path_factory.mktemp("tiny-biogpt")
    base = shared_dir / "data" / "biogpt-vocab" / "base"
    convert_fairseq_vocab(base / "dict.txt", base / "bpecodes", directory)
    torch.manual_seed(0)
    config = biogpt.BioGptConfig(vocab_size=42384, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=24, max_position_embeddings=96, initializer_range=0.3)
    biogpt.BioGptForCausalLM.from_config(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return (biogpt.BioGptForCausalLM.from_pretrained(checkpoint), biogpt.BioGptTokenizer.from_pretrained(checkpoint))


def _expected_continuation(loaded, prompt: str, **kwargs) -> str:
    model, tokenizer = loaded
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = generate(model, ids, **kwargs)
    return continuation_text(tokenizer, ids[0].tolist(), out[0, ids.shape[1]:].tolist())


def test_pipeline_glues_prompt_and_continuation_in_context(checkpoint, loaded):
    generator = biogpt.pipeline("text-generation", model=str(checkpoint))
    prompt = PROMPTS[0]
    result = generator(prompt, max_new_tokens=8)
    continuation = _expected_continuation(loaded, prompt, max_new_tokens=8)
    assert result == [{"generated_text": prompt + continuation}]
    # In context: the whole sequence decoded at once reads the same (no "forthe").
    model, tokenizer = loaded
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    whole = generate(model, ids, max_new_tokens=8)[0]
    assert result[0]["generated_text"] == tokenizer.decode(whole, skip_special_tokens=True)
    assert generator(prompt, max_new_tokens=8, return_full_text=False) == [{"generated_text": continuation}]


def test_pipeline_list_input_sampling_and_loaded_model(loaded):
    model, tokenizer = loaded
    generator = biogpt.pipeline("text-generation", model=model, tokenizer=tokenizer)
    results = generator(PROMPTS, max_new_tokens=5, do_sample=True, num_return_sequences=2, seed=3)
    assert len(results) == 2 and all(len(r) == 2 for r in results)
    assert all(r["generated_text"].startswith(p) for p, rs in zip(PROMPTS, results) for r in rs)
    beams = generator(PROMPTS[1], max_new_tokens=5, num_beams=3, num_return_sequences=2)
    assert len(beams) == 2


def test_pipeline_default_length_and_window(loaded):
    model, tokenizer = loaded
    generator = biogpt.pipeline("text-generation", model=model, tokenizer=tokenizer)
    ids = generate(model, tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"], max_new_tokens=256,
                   eos_token_id=[])
    assert ids.shape[1] == 96  # 256 new tokens requested, clamped to the 96 positions: no IndexError
    long_prompt = " ".join(["aspirin"] * 150)
    with pytest.raises(GenerationParameterError, match="truncate"):
        generator(long_prompt, max_new_tokens=4)
    out = generator(long_prompt, max_new_tokens=4, truncation=True)
    assert out[0]["generated_text"].startswith(long_prompt)


def test_pipeline_errors(checkpoint):
    with pytest.raises(GenerationParameterError, match="text-generation"):
        biogpt.pipeline("summarization", model=str(checkpoint))
    if not torch.cuda.is_available():
        for device in (0, "cuda"):
            with pytest.raises(DeviceError, match="CUDA"):
                biogpt.pipeline("text-generation", model=str(checkpoint), device=device)


def test_pipeline_float16_on_cpu_is_upgraded(checkpoint):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generator = biogpt.pipeline("text-generation", model=str(checkpoint), torch_dtype=torch.float16)
    assert generator.model.dtype == torch.float32
    assert any("float16" in str(w.message) for w in caught)


def _cli(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "biogpt", *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_cli_streams_each_prompt(checkpoint, loaded):
    done = _cli(["run", "--task", "text-generation", "--model", str(checkpoint), "--device", "cpu",
                 "--max-new-tokens", "7"], stdin="\n".join(PROMPTS) + "\n")
    assert done.returncode == 0, done.stderr
    expected = "".join(_expected_continuation(loaded, p, max_new_tokens=7) + "\n" for p in PROMPTS)
    assert done.stdout == expected


def test_cli_runs_the_bundled_demo_by_name_without_a_warning_nobody_asked_for() -> None:
    """`--model demo` is the app's name for the offline model; the pipeline's default length (256 new tokens) fits
    what room the model has without a warning about a length the user never set."""
    from biogpt import catalog

    done = _cli(["run", "--model", "demo", "--prompt", "Aspirin inhibits"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "Asked for" not in done.stderr and "Traceback" not in done.stderr
    model_window = biogpt.BioGptConfig.from_pretrained(catalog.demo_path()).max_position_embeddings
    assert model_window < 256 + 6, "the demo's window must be shorter than the default for this test to mean much"


def test_cli_device_error_is_one_line(checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _cli(["run", "--model", str(checkpoint), "--device", "0", "--prompt", "x"])
    assert done.returncode == 1
    assert "CUDA" in done.stderr and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_cli_prompt_flag_and_sampling(checkpoint, loaded, capsys):
    code = cli.main(["run", "--model", str(checkpoint), "--prompt", PROMPTS[1], "--max-new-tokens", "6",
                     "--do-sample", "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "5"])
    assert code == 0
    expected = _expected_continuation(loaded, PROMPTS[1], max_new_tokens=6, do_sample=True, temperature=0.8,
                                      top_k=20, top_p=0.9, seed=5)
    assert capsys.readouterr().out == expected + "\n"


def test_cli_help_bad_flags_and_finetune(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "run" in out and "finetune" in out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--model", "x", "--no-such-flag"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--model", "x", "--max-new-tokens", "many"])
    assert exit_info.value.code == 2

    seen = []
    fake = types.ModuleType("biogpt.tasks.finetune")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(cli._DELEGATED, "finetune", fake.main)
    assert cli.main(["finetune", "--task", "ner", "--epochs", "1"]) == 0
    assert seen == [["--task", "ner", "--epochs", "1"]]
