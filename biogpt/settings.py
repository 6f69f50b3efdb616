"""Every `BIOGPT_*` environment variable: its type, default, meaning and validation, parsed in one place.

`Settings.from_env()` reads them all at once and raises a `ConfigError` naming the first bad value; the app, the
model manager and the input checks take the resulting `Settings` object instead of reading the environment
themselves. The README's configuration table is `markdown_table()` (a test keeps the two equal).

A field's metadata says which variable sets it (`env`), how the text is parsed (`parse`), the `python app.py` flag
that overrides it (`flag`), the documentation line (`doc`) and, where the default is decided at run time, how the
default reads (`default_doc`).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .errors import ConfigError

# BIOGPT_CPU_KERNELS: the probe's modes, then the kernels of `biogpt.kernels` a deployment may force.
CPU_KERNEL_CHOICES = ("auto", "probe", "aten", "gemv", "onednn", "native", "dequant", "tiles")
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


# ----------------------------------------------------------------------------------------------------------------
# Parsers: (text, variable name) -> value, or ConfigError naming the variable
# ----------------------------------------------------------------------------------------------------------------
def parse_bytes(text: Optional[str], name: str = "size") -> Optional[int]:
    """'8GB' -> 8e9, '512MiB' -> 512 * 2**20, '1000' -> 1000; empty or None -> None (no limit)."""
    if text is None:
        return None
    value = text.strip().upper().replace(" ", "")
    if not value:
        return None
    number = value.rstrip("KMGTIB")
    unit = value[len(number):]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _UNITS or amount < 0:
        raise ConfigError(f"{name}={text!r} is not a size: write e.g. 8GB, 512MiB or a number of bytes.")
    return int(amount * _UNITS[unit])


def parse_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={text!r}: use 1/0, true/false, yes/no or on/off.")


def parse_path(text: str, name: str) -> Path:
    """A path; `~` is the user's home."""
    return Path(os.path.expanduser(text.strip()))


def parse_count(text: str, name: str) -> int:
    """A whole number >= 1."""
    value = text.strip()
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={text!r} must be a whole number >= 1.")
    return int(value)


def parse_port(text: str, name: str) -> int:
    value = parse_count(text, name)
    if value > 65535:
        raise ConfigError(f"{name}={text!r} must be a port number (1-65535).")
    return value


def parse_text(text: str, name: str) -> str:
    return text.strip()


def parse_choice(text: str, name: str, choices: tuple[str, ...]) -> str:
    value = text.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={text!r}: use one of {', '.join(choices)}.")
    return value


def parse_list(text: str, name: str) -> tuple[str, ...]:
    """Comma- or whitespace-separated words, e.g. Hub ids or fnmatch patterns."""
    return tuple(part for part in text.replace(",", " ").split() if part)


def parse_auth(text: str, name: str) -> str:
    """`user:password` pairs separated by commas, or the path of a file of `user:hash` lines (`biogpt.access`
    reads it); checked for shape here, so a typo stops the start-up instead of locking everyone out."""
    value = text.strip()
    path = Path(os.path.expanduser(value))
    if path.is_file():
        return str(path)
    if value.startswith(("/", "~", ".")):
        raise ConfigError(f"{name} names the file {value!r}, which does not exist.")
    for pair in value.split(","):
        user, colon, password = pair.strip().partition(":")
        if not user or not colon or not password:
            raise ConfigError(f"{name}: each entry must be user:password (separated by commas), or the value the "
                              "path of a file of user:hash lines.")
    return value


def parse_paths(text: str, name: str) -> tuple[Path, ...]:
    """os.pathsep-separated directories, `~` expanded and resolved."""
    return tuple(Path(os.path.expanduser(part.strip())).resolve() for part in text.split(os.pathsep) if part.strip())


def _var(env: str, parse: Callable[[str, str], Any], default: Any, doc: str, *, flag: Optional[str] = None,
         default_doc: Optional[str] = None, secret: bool = False) -> Any:
    # A secret (passwords) stays out of the dataclass's repr, hence out of logs and tracebacks.
    return field(default=default, repr=not secret, metadata={"env": env, "parse": parse, "doc": doc, "flag": flag,
                                                             "default_doc": default_doc})


# ----------------------------------------------------------------------------------------------------------------
# The settings
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The deployment's choices. `Settings()` holds the defaults; `Settings.from_env()` the environment's values.

    `on_spaces` (SPACE_ID is set) and `gradio_server_name` (GRADIO_SERVER_NAME) are facts about the host that
    decide some defaults; they are not BIOGPT_* variables.
    """

    # -- the app ----------------------------------------------------------------------------------------------
    model: Optional[str] = _var(
        "BIOGPT_MODEL", parse_text, None,
        "catalog name, Hub id or local path; `demo` forces the bundled demo models", flag="--model",
        default_doc="`microsoft/biogpt` if cached or reachable, else `demo`")
    host: Optional[str] = _var(
        "BIOGPT_HOST", parse_text, None, "interface to listen on", flag="--host",
        default_doc="`127.0.0.1` (`0.0.0.0` on Spaces)")
    port: int = _var("BIOGPT_PORT", parse_port, 7860, "port", flag="--port", default_doc="7860")
    share: bool = _var("BIOGPT_SHARE", parse_bool, False, "a public gradio.live link", flag="--share")
    exposed: Optional[bool] = _var(
        "BIOGPT_EXPOSED", parse_bool, None,
        "treat the app as reachable by strangers (local paths off, catalog models only): `1` e.g. behind a reverse "
        "proxy on this host, `0` to keep the open defaults", default_doc="on when listening beyond loopback, "
        "sharing or on Spaces")
    auth: Optional[str] = _var(
        "BIOGPT_AUTH", parse_auth, None,
        "require a login: `user:password` pairs (comma-separated), or the path of a file of `user:scrypt$…` "
        "lines (see Deployment)", default_doc="none", secret=True)
    preload: bool = _var("BIOGPT_PRELOAD", parse_bool, True, "load the default model right after start-up",
                         flag="--preload/--no-preload")
    concurrency: Optional[int] = _var(
        "BIOGPT_CONCURRENCY", parse_count, None, "jobs run at the same time", flag="--concurrency",
        default_doc="2 on CPU, 4 on GPU")
    max_queue: int = _var("BIOGPT_MAX_QUEUE", parse_count, 64,
                          'queued jobs before new ones get a "busy" message', flag="--max-queue")
    generate_concurrency: int = _var(
        "BIOGPT_GENERATE_CONCURRENCY", parse_count, 8,
        "generations merged into one batched forward per step by the batching engine")
    client_running: int = _var("BIOGPT_CLIENT_RUNNING", parse_count, 1,
                               "jobs one client (browser session, or IP address for the API) may have running")
    client_queued: int = _var("BIOGPT_CLIENT_QUEUED", parse_count, 4,
                              "jobs one client may have waiting; more get a \"you already have jobs\" message")
    max_sessions: int = _var(
        "BIOGPT_MAX_SESSIONS", parse_count, 1_000,
        "sessions (browser tabs, API clients) whose state the server keeps, the least recently used dropped first: "
        "each costs ~2 MB, and Gradio's own default of 10,000 would let scripted clients fill ~20 GB")
    # -- what one request may ask for -------------------------------------------------------------------------
    max_new_tokens: int = _var("BIOGPT_MAX_NEW_TOKENS", parse_count, 512, "new tokens one generation may ask for")
    max_prompt_chars: int = _var("BIOGPT_MAX_PROMPT_CHARS", parse_count, 4_000, "characters of a prompt")
    max_input_chars: int = _var("BIOGPT_MAX_INPUT_CHARS", parse_count, 20_000,
                                "characters of a text to tag or classify")
    max_beams: int = _var("BIOGPT_MAX_BEAMS", parse_count, 8, "beams of one beam search")
    max_beam_tokens: int = _var(
        "BIOGPT_MAX_BEAM_TOKENS", parse_count, 8_192,
        "num_beams × (prompt + new tokens) of one beam search: the rows × positions of its key/value cache")
    max_labels: int = _var("BIOGPT_MAX_LABELS", parse_count, 20, "labels of one zero-shot classification")
    max_upload_bytes: Optional[int] = _var("BIOGPT_MAX_UPLOAD_BYTES", parse_bytes, 10 * 10**6,
                                           "size of one uploaded file", default_doc="10 MB")
    max_upload_rows: int = _var("BIOGPT_MAX_UPLOAD_ROWS", parse_count, 10_000, "rows (texts) of one uploaded file")
    # -- models -----------------------------------------------------------------------------------------------
    max_models: int = _var("BIOGPT_MAX_MODELS", parse_count, 2,
                           "models kept loaded (the least recently used is unloaded first)")
    memory_budget: Optional[int] = _var("BIOGPT_MEMORY_BUDGET", parse_bytes, None,
                                        "e.g. `8GB`: unload models to keep their CPU memory under it",
                                        default_doc="none")
    gpu_memory_budget: Optional[int] = _var("BIOGPT_GPU_MEMORY_BUDGET", parse_bytes, None,
                                            "the same for GPU memory", default_doc="none")
    cache_dir: Optional[str] = _var("BIOGPT_CACHE_DIR", parse_text, None,
                                    "where downloaded checkpoints go (`HF_HOME` works too)",
                                    default_doc="Hugging Face default")
    allow_local_paths: Optional[bool] = _var(
        "BIOGPT_ALLOW_LOCAL_PATHS", parse_bool, None, "whether users may type local paths",
        default_doc="on (off when exposed)")
    local_roots: tuple[Path, ...] = _var("BIOGPT_LOCAL_ROOTS", parse_paths, (),
                                         "directories (os.pathsep-separated) local paths must lie in",
                                         default_doc="anywhere")
    allowed_models: tuple[str, ...] = _var(
        "BIOGPT_ALLOWED_MODELS", parse_list, (),
        "Hub ids or fnmatch patterns (comma-separated) users may load besides the catalog, `demo` and "
        "`BIOGPT_MODEL`; `*` = any", default_doc="any Hub id (when exposed: none beyond those)")
    max_model_bytes: Optional[int] = _var(
        "BIOGPT_MAX_MODEL_BYTES", parse_bytes, None,
        "weights a Hub download may have (read from the Hub's metadata before a byte is fetched)",
        default_doc="the larger memory budget, else this machine's RAM")
    disk_budget: Optional[int] = _var(
        "BIOGPT_DISK_BUDGET", parse_bytes, None,
        "bytes the Hugging Face cache may hold, downloads in progress included",
        default_doc="the free disk space")
    finetuned_dir: Optional[Path] = _var(
        "BIOGPT_FINETUNED_DIR", parse_path, None,
        "the unpacked release of Microsoft's fine-tuned BioGPT models (its `checkpoints/` folder, with e.g. "
        "`RE-BC5CDR-BioGPT/`): the catalog's relation, PubMedQA and HoC models load from there",
        default_doc="unset (those catalog entries explain how to get them)")
    fairseq_vocab_dir: Optional[Path] = _var(
        "BIOGPT_FAIRSEQ_VOCAB_DIR", parse_path, None,
        "the released vocabularies (`base/` and `large/`, each dict.txt + bpecodes) for converting fairseq "
        "checkpoints that lack them", default_doc="downloaded once from the Hub's microsoft/biogpt and "
        "microsoft/BioGPT-Large")
    fairseq_cache_dir: Path = _var(
        "BIOGPT_FAIRSEQ_CACHE_DIR", parse_path,
        Path(os.path.expanduser("~/.cache/biogpt/fairseq")),
        "where fairseq checkpoints loaded by path are converted to (once per checkpoint)",
        default_doc="`~/.cache/biogpt/fairseq`")
    demo_dir: Optional[Path] = _var(
        "BIOGPT_DEMO_DIR", parse_path, None,
        "where the bundled demo checkpoints are (`demo-lm`, `demo-ner`, `demo-classify`)",
        default_doc="the copy inside the `biogpt` package")
    # -- speed ------------------------------------------------------------------------------------------------
    cpu_kernels: str = _var(
        "BIOGPT_CPU_KERNELS", lambda text, name: parse_choice(text, name, CPU_KERNEL_CHOICES), "auto",
        "CPU kernels of the linear layers: `auto` measures the candidates once per machine (cached), `probe` "
        "measures again, `aten` is plain PyTorch, `gemv`, `onednn`, `native` (compiled here from `biogpt/native.c`), "
        "`dequant` or `tiles` force that kernel where it applies")
    kernel_cache: Path = _var(
        "BIOGPT_KERNEL_CACHE", parse_path,
        Path(os.path.expanduser("~/.cache/biogpt/cpu-kernels.json")),
        "where the CPU kernel probe keeps its choices (per CPU, torch version, threads and matrix shapes)",
        default_doc="`~/.cache/biogpt/cpu-kernels.json`")
    # -- facts about the host (not BIOGPT_* variables) --------------------------------------------------------
    on_spaces: bool = False
    gradio_server_name: Optional[str] = None

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """Parse every BIOGPT_* variable of `env` (default: os.environ); unset or empty ones keep their default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {"on_spaces": bool(env.get("SPACE_ID")),
                                  "gradio_server_name": env.get("GRADIO_SERVER_NAME") or None}
        for spec in variables():
            raw = env.get(spec.metadata["env"])
            if raw is not None and raw.strip():
                values[spec.name] = spec.metadata["parse"](raw, spec.metadata["env"])
        return cls(**values)

    # -- defaults decided by the host -------------------------------------------------------------------------
    @property
    def listen_host(self) -> str:
        """BIOGPT_HOST, else GRADIO_SERVER_NAME, else 0.0.0.0 on Spaces (reached from outside its container),
        else loopback."""
        return self.host or self.gradio_server_name or ("0.0.0.0" if self.on_spaces else "127.0.0.1")

    def exposure(self) -> tuple[str, ...]:
        """Why strangers may reach this app (empty when only this machine can): on Spaces, sharing, or listening
        beyond loopback; BIOGPT_EXPOSED=1/0 overrides the guess. The one decision behind the exposure-aware
        defaults (`local_paths_allowed`, `biogpt.access.allowed_models`)."""
        if self.exposed is not None:
            return ("BIOGPT_EXPOSED=1",) if self.exposed else ()
        reasons = []
        if self.on_spaces:
            reasons.append("running on Hugging Face Spaces")
        if self.share:
            reasons.append("sharing a public gradio.live link")
        if not is_loopback(self.listen_host):
            reasons.append(f"listening on {self.listen_host}, not only on loopback")
        return tuple(reasons)

    @property
    def is_exposed(self) -> bool:
        return bool(self.exposure())

    @property
    def local_paths_allowed(self) -> bool:
        """BIOGPT_ALLOW_LOCAL_PATHS when set; otherwise on, except when exposed (visitors must not read its files)."""
        return self.allow_local_paths if self.allow_local_paths is not None else not self.is_exposed


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); any other name or address (0.0.0.0, a LAN
    address, a host name) may be reachable from other machines."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def zero_gpu() -> bool:
    """True on a Hugging Face ZeroGPU Space (the `spaces` package is installed): GPU work runs in `@spaces.GPU`
    calls, each in a worker process of its own."""
    return importlib.util.find_spec("spaces") is not None


def variables() -> list[Any]:
    """The dataclass fields of `Settings` that a BIOGPT_* variable sets, in documentation order."""
    return [spec for spec in fields(Settings) if "env" in spec.metadata]


def _describe(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"{default:,}" if isinstance(default, int) else str(default)


def markdown_table() -> str:
    """The README's configuration table."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for spec in variables():
        name = f"`{spec.metadata['env']}`"
        if spec.metadata["flag"]:
            name += f" (`{spec.metadata['flag']}`)"
        default = spec.metadata["default_doc"]
        if default is None:
            default = _describe(spec.default)
        lines.append(f"| {name} | {default} | {spec.metadata['doc']} |")
    return "\n".join(lines) + "\n"
