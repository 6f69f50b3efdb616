"""Finding checkpoint files: a local directory, a single file, or a Hugging Face Hub repo id.

Everything that reads a checkpoint (config, tokenizer, weights) resolves its files here, so the same rules hold
everywhere: Hub ids go through `huggingface_hub` (which honours `HF_HUB_OFFLINE`, `HF_HOME` and its cache), and
every failure becomes a `CheckpointError` that says what to do.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from .errors import CheckpointError

# A Hub repo id is "name" or "owner/name" of letters, digits, '-', '_' and '.', never starting with '.' or '-'.
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

ProgressCallback = Callable[[float, int], None]
"""Called with (fraction done in [0, 1], bytes done) while files download."""

PROBE_TIMEOUT_S = 2.0
_PROBE_TTL_S = 30.0  # how long an answer about the Hub's reachability is trusted
_probe_lock = threading.Lock()
_probe: dict[str, tuple[float, Optional[str]]] = {}  # endpoint -> (when asked, why unreachable or None)


def is_local(source: str | os.PathLike) -> bool:
    """True when `source` names something on disk (an existing path, or one written like a path)."""
    text = str(source)
    return Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") > 1


def validate_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise CheckpointError(
            f"{repo_id!r} is neither an existing local path nor a valid Hugging Face Hub repo id "
            "(expected 'owner/name', e.g. 'microsoft/biogpt')."
        )
    return repo_id


def resolve_file(
    source: str | os.PathLike,
    filename: str,
    *,
    revision: Optional[str] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    local_files_only: bool = False,
    token: Optional[str] = None,
    required: bool = True,
    progress: Optional[ProgressCallback] = None,
) -> Optional[Path]:
    """Path of `filename` in the checkpoint `source`, downloading it from the Hub if needed.

    Returns None for a missing optional file (`required=False`); raises `CheckpointError` otherwise.
    """
    text = os.path.expanduser(str(source))
    if is_local(text):
        base = Path(text)
        if base.is_file():
            base = base.parent
        if not base.exists():
            raise CheckpointError(f"No such directory: {str(source)!r}.")
        path = base / filename
        if path.is_file():
            return path
        if required:  # no directory listing: on a server the message reaches remote users
            raise CheckpointError(f"{filename} is missing from {str(base)!r}: is this a BioGPT checkpoint directory?")
        return None
    return _hub_file(validate_repo_id(text), filename, revision=revision, cache_dir=cache_dir,
                     local_files_only=local_files_only, token=token, required=required, progress=progress)


def _hub_file(repo_id, filename, *, revision, cache_dir, local_files_only, token, required, progress) -> Optional[Path]:
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    kwargs = dict(repo_id=repo_id, filename=filename, revision=revision,
                  cache_dir=str(cache_dir) if cache_dir else None, token=token)
    try:
        # The cache first: a cached file needs no network, and HF_HUB_OFFLINE setups rely on it.
        return Path(huggingface_hub.hf_hub_download(**kwargs, local_files_only=True))
    except (hub_errors.LocalEntryNotFoundError, FileNotFoundError):
        pass
    except hub_errors.EntryNotFoundError:
        if not required:
            return None
        raise CheckpointError(f"{repo_id} has no file {filename}.") from None
    if local_files_only or huggingface_hub.constants.HF_HUB_OFFLINE:
        if not required:
            return None
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        raise CheckpointError(
            f"{repo_id}/{filename} is not in the local Hugging Face cache and {why}. Download it once with "
            f"network access (`huggingface-cli download {repo_id}`), point HF_HOME at a cache that has it, "
            "or pass a local directory instead."
        )
    why_not = hub_unreachable_reason()
    if why_not is not None:  # fail at once instead of huggingface_hub's retries against a dead network
        raise CheckpointError(f"Could not download {repo_id}/{filename}: {why_not} and the file is not in the local "
                              "cache. Check the network, or use a local directory.")
    try:
        if progress is None:
            return Path(huggingface_hub.hf_hub_download(**kwargs))
        return _download_with_progress(repo_id, filename, kwargs, progress)
    except hub_errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id!r} was not found on the Hugging Face Hub (or it is private: pass token=... / log in)."
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise CheckpointError(f"{repo_id} has no revision {revision!r}.") from None
    except hub_errors.EntryNotFoundError as exc:
        # LocalEntryNotFoundError (what an unreachable Hub raises) subclasses EntryNotFoundError: tell them apart.
        if not isinstance(exc, hub_errors.LocalEntryNotFoundError):
            if not required:
                return None
            raise CheckpointError(f"{repo_id} has no file {filename}.") from None
        raise _unreachable(repo_id, filename, exc) from None
    except OSError as exc:  # other network failures surface as OSError subclasses
        raise _unreachable(repo_id, filename, exc) from None


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when the Hugging Face Hub's endpoint answers at all within `timeout` seconds, else why not.

    One request, no retries; the answer is remembered for 30 seconds, so a server without network answers every
    Hub id at once with one clear message (huggingface_hub itself retries for ~20 s).
    """
    import huggingface_hub
    from huggingface_hub import errors as hub_errors
    from huggingface_hub.utils import get_session

    endpoint = huggingface_hub.constants.ENDPOINT
    with _probe_lock:
        asked, reason = _probe.get(endpoint, (0.0, None))
        if time.monotonic() - asked < _PROBE_TTL_S:
            return reason
    try:
        get_session().head(endpoint, timeout=timeout)
        reason = None
    except (hub_errors.HTTPError, OSError) as exc:  # DNS, refused connection, timeout
        reason = f"the Hugging Face Hub is unreachable at {endpoint} ({exc.__class__.__name__})"
    with _probe_lock:
        _probe[endpoint] = (time.monotonic(), reason)
    return reason


def _unreachable(repo_id: str, filename: str, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"Could not download {repo_id}/{filename}: the Hugging Face Hub is unreachable ({exc.__class__.__name__}) "
        "and the file is not in the local cache. Check the network, or use a local directory."
    )


def _download_with_progress(repo_id: str, filename: str, kwargs: dict, progress: ProgressCallback) -> Path:
    import huggingface_hub
    from tqdm.auto import tqdm

    class _Reporter(tqdm):  # huggingface_hub drives this bar; we forward its counts to the callback
        def update(self, n=1):
            out = super().update(n)
            if self.total:
                progress(min(1.0, self.n / self.total), int(self.n))
            return out

    path = Path(huggingface_hub.hf_hub_download(**kwargs, tqdm_class=_Reporter))
    progress(1.0, path.stat().st_size)
    return path


def list_files(source: str | os.PathLike, *, revision: Optional[str] = None, local_files_only: bool = False,
               cache_dir: Optional[str | os.PathLike] = None, token: Optional[str] = None) -> Optional[list[str]]:
    """The file names of a local checkpoint directory; None for a Hub repo (callers probe candidate names)."""
    text = os.path.expanduser(str(source))
    if is_local(text):
        base = Path(text)
        if base.is_file():
            return [base.name]
        if not base.is_dir():
            raise CheckpointError(f"No such directory: {str(source)!r}.")
        return sorted(p.name for p in base.iterdir())
    return None
