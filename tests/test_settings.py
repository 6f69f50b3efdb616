"""biogpt.settings: every BIOGPT_* variable parsed in one place, with the README's table generated from it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from biogpt import catalog
from biogpt.errors import ConfigError
from biogpt.settings import Settings, markdown_table, parse_bytes, variables

REPO = Path(__file__).resolve().parent.parent


def test_values_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "BIOGPT_MODEL": "demo", "BIOGPT_CACHE_DIR": str(tmp_path), "BIOGPT_MAX_MODELS": "3",
        "BIOGPT_MEMORY_BUDGET": "8GB", "BIOGPT_GPU_MEMORY_BUDGET": "512MiB", "BIOGPT_PRELOAD": "0",
        "BIOGPT_LOCAL_ROOTS": os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]),
        "BIOGPT_PORT": "8000", "BIOGPT_HOST": "0.0.0.0", "BIOGPT_CONCURRENCY": "3", "BIOGPT_MAX_QUEUE": "5",
        "BIOGPT_MAX_INPUT_CHARS": "50", "BIOGPT_MAX_NEW_TOKENS": "32", "BIOGPT_MAX_BEAMS": "4",
        "BIOGPT_MAX_BEAM_TOKENS": "2048", "BIOGPT_GENERATE_CONCURRENCY": "6", "BIOGPT_CPU_KERNELS": "ATen"})
    assert settings.model == "demo" and settings.cache_dir == str(tmp_path)
    assert (settings.max_models, settings.memory_budget, settings.gpu_memory_budget) == (3, 8 * 10**9, 512 * 2**20)
    assert settings.preload is False and settings.cpu_kernels == "aten"
    assert settings.is_exposed and settings.local_paths_allowed is False  # BIOGPT_HOST=0.0.0.0 is not loopback
    assert settings.local_roots == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    assert (settings.port, settings.listen_host, settings.concurrency, settings.max_queue) == (8000, "0.0.0.0", 3, 5)
    assert (settings.max_input_chars, settings.max_new_tokens, settings.max_beams, settings.max_beam_tokens,
            settings.generate_concurrency) == (50, 32, 4, 2048, 6)
    assert catalog.default_source(settings.model) == ("demo", "bundled demo models (BIOGPT_MODEL=demo)")


def test_defaults_and_host_facts() -> None:
    defaults = Settings.from_env({})
    assert defaults == Settings()
    assert (defaults.max_models, defaults.memory_budget, defaults.preload, defaults.local_roots) == (2, None, True, ())
    assert (defaults.max_input_chars, defaults.max_prompt_chars, defaults.max_new_tokens) == (20_000, 4_000, 512)
    assert defaults.generate_concurrency == 8 and defaults.port == 7860
    # Loopback by default; reachable from outside the container on Hugging Face Spaces; local paths off there.
    assert defaults.listen_host == "127.0.0.1" and defaults.local_paths_allowed
    spaces = Settings.from_env({"SPACE_ID": "someone/biogpt"})
    assert spaces.listen_host == "0.0.0.0" and not spaces.local_paths_allowed
    assert Settings.from_env({"SPACE_ID": "me/app", "BIOGPT_ALLOW_LOCAL_PATHS": "1"}).local_paths_allowed
    assert Settings.from_env({"GRADIO_SERVER_NAME": "0.0.0.0"}).listen_host == "0.0.0.0"
    assert Settings.from_env({"BIOGPT_MODEL": "  "}).model is None  # empty means unset


@pytest.mark.parametrize("env, message", [
    ({"BIOGPT_MEMORY_BUDGET": "lots"}, "BIOGPT_MEMORY_BUDGET='lots' is not a size: write e.g. 8GB, 512MiB or a "
                                       "number of bytes."),
    ({"BIOGPT_MAX_MODELS": "0"}, "BIOGPT_MAX_MODELS='0' must be a whole number >= 1."),
    ({"BIOGPT_MAX_NEW_TOKENS": "-5"}, "BIOGPT_MAX_NEW_TOKENS='-5' must be a whole number >= 1."),
    ({"BIOGPT_PORT": "eighty"}, "BIOGPT_PORT='eighty' must be a whole number >= 1."),
    ({"BIOGPT_PORT": "70000"}, "BIOGPT_PORT='70000' must be a port number (1-65535)."),
    ({"BIOGPT_PRELOAD": "maybe"}, "BIOGPT_PRELOAD='maybe': use 1/0, true/false, yes/no or on/off."),
])
def test_a_bad_value_names_the_variable(env: dict, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env(env)
    assert str(excinfo.value) == message


def test_sizes() -> None:
    assert parse_bytes("1.5 GiB") == int(1.5 * 2**30) and parse_bytes("") is None and parse_bytes("1000") == 1000
    assert parse_bytes("8gb") == 8 * 10**9 and parse_bytes(None) is None


def test_the_readme_table_is_the_generated_one() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README.md's configuration table differs from biogpt.settings.markdown_table()"


def test_every_biogpt_variable_in_the_code_is_a_setting() -> None:
    """No module reads a BIOGPT_* variable the settings do not own (and the settings own nothing unused)."""
    declared = {spec.metadata["env"] for spec in variables()}
    mentioned: set[str] = set()
    for folder in ("biogpt", "ui"):
        for path in (REPO / folder).rglob("*.py"):
            mentioned |= set(re.findall(r"\bBIOGPT_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
    mentioned |= set(re.findall(r"\bBIOGPT_[A-Z0-9_]+\b", (REPO / "app.py").read_text(encoding="utf-8")))
    assert mentioned - declared == set()
    for path in [*(REPO / "biogpt").rglob("*.py"), *(REPO / "ui").rglob("*.py"), REPO / "app.py"]:
        if path.name != "settings.py":
            assert "os.environ" not in path.read_text(encoding="utf-8"), f"{path} reads the environment itself"
