"""Finding checkpoint files: a local directory, a single file, or a Hugging Face Hub repo id.

Everything that reads a checkpoint (config, tokenizer, weights) resolves its files here, so the same rules hold
everywhere: Hub ids go through `huggingface_hub` (which honours `HF_HUB_OFFLINE`, `HF_HOME` and its cache), and
every failure becomes a `CheckpointError` that says what to do.

`DownloadGuard` bounds what the Hub may bring onto this server: it reads the size of a repo's weights from the
Hub's metadata before fetching any of them, refuses what is over the size limit or the disk budget (downloads in
progress count), stops a download that sends more bytes than its metadata announced, and leaves no partial files
in the cache when a load fails.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

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
        return _download(repo_id, filename, kwargs, progress)
    except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError) as exc:
        raise _not_on_hub(repo_id, revision, exc) from None
    except hub_errors.EntryNotFoundError as exc:
        # LocalEntryNotFoundError (what an unreachable Hub raises) subclasses EntryNotFoundError: tell them apart.
        if not isinstance(exc, hub_errors.LocalEntryNotFoundError):
            if not required:
                return None
            raise CheckpointError(f"{repo_id} has no file {filename}.") from None
        raise _unreachable(repo_id, filename, exc) from None
    except OSError as exc:  # other network failures surface as OSError subclasses
        raise _unreachable(repo_id, filename, exc) from None
    except hub_errors.HTTPError as exc:  # httpx's own errors: the body broke off after huggingface_hub's retries
        raise CheckpointError(f"Downloading {repo_id}/{filename} failed part-way ({exc.__class__.__name__}); "
                              "nothing of it was kept. Try again.") from None


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


def _not_on_hub(repo_id: str, revision: Optional[str], exc: Exception) -> CheckpointError:
    """The message for a repository (RepositoryNotFoundError) or a revision (RevisionNotFoundError) the Hub lacks."""
    from huggingface_hub import errors as hub_errors

    if isinstance(exc, hub_errors.RevisionNotFoundError):
        return CheckpointError(f"{repo_id} has no revision {revision!r}.")
    return CheckpointError(f"{repo_id!r} was not found on the Hugging Face Hub (or it is private: pass token=... / "
                           "log in).")


def _unreachable(repo_id: str, filename: str, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"Could not download {repo_id}/{filename}: the Hugging Face Hub is unreachable ({exc.__class__.__name__}) "
        "and the file is not in the local cache. Check the network, or use a local directory."
    )


def _download(repo_id: str, filename: str, kwargs: dict, progress: Optional[ProgressCallback]) -> Path:
    """hf_hub_download, reporting to `progress` and held to the size a `DownloadGuard` read for the file."""
    import huggingface_hub
    from tqdm.auto import tqdm

    announced = _announced.get()
    limit = None if announced is None or announced[0] != repo_id else announced[1].get(filename)
    if progress is None and limit is None:
        return Path(huggingface_hub.hf_hub_download(**kwargs))

    class _Reporter(tqdm):  # huggingface_hub drives this bar with the bytes as they arrive
        def update(self, n=1):
            out = super().update(n)
            if limit is not None and self.n > limit:  # raised inside the download: it stops here
                raise CheckpointError(f"{repo_id}/{filename} sent more than the {format_bytes(limit)} the Hub's "
                                      "metadata announced; the download was stopped and removed.")
            if progress is not None and self.total:
                progress(min(1.0, self.n / self.total), int(self.n))
            return out

    path = Path(huggingface_hub.hf_hub_download(**kwargs, tqdm_class=_Reporter))
    if progress is not None:
        progress(1.0, path.stat().st_size)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Bounded downloads
# ----------------------------------------------------------------------------------------------------------------
# The weight files a load fetches, in loading.find_weights' order: a single file, else the shards of an index.
_WEIGHT_CHOICES = (("model.safetensors", "model.safetensors.index.json", ".safetensors"),
                   ("pytorch_model.bin", "pytorch_model.bin.index.json", ".bin"))
METADATA_TIMEOUT_S = 10.0
# (repo id, {file name: size the Hub announced}) of the guarded download running in this thread.
_announced: contextvars.ContextVar[Optional[tuple[str, Mapping[str, Optional[int]]]]] = \
    contextvars.ContextVar("announced", default=None)


def format_bytes(count: int) -> str:
    """A size for people: "1.4 GB", "12.0 MB", "900 bytes" (decimal units, as the Hub shows sizes)."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def weights_to_fetch(sizes: Mapping[str, Optional[int]]) -> dict[str, Optional[int]]:
    """{file: size} of the weight files a load of a repo with these files (and sizes) downloads."""
    root = {name: size for name, size in sizes.items() if "/" not in name}
    for single, index, suffix in _WEIGHT_CHOICES:
        if single in root:
            return {single: root[single]}
        if index in root:
            return {name: size for name, size in root.items() if name.endswith(suffix)}
    return {}


def hub_file_sizes(repo_id: str, *, revision: Optional[str] = None, token: Optional[str] = None,
                   timeout: float = METADATA_TIMEOUT_S) -> dict[str, Optional[int]]:
    """{file: size in bytes} of a Hub repo, from the Hub's metadata (one request to HF_ENDPOINT, no file fetched)."""
    from huggingface_hub import HfApi, constants, errors as hub_errors

    try:
        info = HfApi(endpoint=constants.ENDPOINT).model_info(repo_id, revision=revision, token=token,
                                                             files_metadata=True, timeout=timeout)
    except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError) as exc:
        raise _not_on_hub(repo_id, revision, exc) from None
    except (hub_errors.HfHubHTTPError, hub_errors.HTTPError, OSError, ValueError) as exc:  # HTTP, network, bad JSON
        raise CheckpointError(f"Could not read the size of {repo_id}'s files from the Hugging Face Hub "
                              f"({exc.__class__.__name__}), so nothing was downloaded. Try again later.") from None
    return {sibling.rfilename: sibling.size for sibling in info.siblings or ()}


def _cache_root(cache_dir: Optional[str | os.PathLike]) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def _weights_cached(repo_id: str, cache_dir: Optional[str | os.PathLike], revision: Optional[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision), str)

    return cached("config.json") and any(cached(name) for choice in _WEIGHT_CHOICES for name in choice[:2])


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed while we walk
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _free_bytes(path: Path) -> int:
    while not path.exists():  # the cache may not exist yet: ask about the disk it will be on
        path = path.parent
    return shutil.disk_usage(path).free


class DownloadGuard:
    """Checks each Hub download against a size limit and a disk budget, and cleans up after a failed one.

    `max_bytes`: the weights one repo may have (None: no limit); `disk_budget`: bytes the Hub cache may hold,
    counting downloads in progress at their full size (None: the free disk space is the only bound);
    `limit_source` names where `max_bytes` comes from, for the refusal message.
    """

    def __init__(self, max_bytes: Optional[int] = None, disk_budget: Optional[int] = None,
                 cache_dir: Optional[str | os.PathLike] = None, limit_source: str = "BIOGPT_MAX_MODEL_BYTES"):
        self.max_bytes = max_bytes
        self.disk_budget = disk_budget
        self.cache_dir = cache_dir
        self.limit_source = limit_source
        self._lock = threading.Lock()
        self._in_progress: dict[str, int] = {}  # repo id -> bytes it is downloading
        self._repo_locks: dict[str, threading.Lock] = {}

    def in_progress(self) -> int:
        """Bytes of the downloads running now (their announced sizes)."""
        with self._lock:
            return sum(self._in_progress.values())

    @contextlib.contextmanager
    def guard(self, repo_id: str, *, revision: Optional[str] = None, token: Optional[str] = None) -> Iterator[None]:
        """Run a load of the Hub repo `repo_id` inside this block.

        Before it: unless the weights are cached (or the Hub cannot be asked: offline, unreachable), their size is
        read from the Hub and the download refused with a `CheckpointError` giving both sizes when it is over a
        limit. During it: files may not exceed their announced size. After a failure: the cache is left without
        the attempt's partial files (a repo that was not cached before is removed whole unless its weights made
        it in). Loads of one repo run one at a time, so a cleanup never meets another thread's download.
        """
        validate_repo_id(repo_id)
        with self._lock:
            repo_lock = self._repo_locks.setdefault(repo_id, threading.Lock())
        with repo_lock:
            folder = _cache_root(self.cache_dir) / _repo_folder(repo_id)
            existed = folder.exists()
            try:
                sizes = self._check(repo_id, revision, token)
                announced = _announced.set((repo_id, sizes)) if sizes is not None else None
                try:
                    yield
                finally:
                    if announced is not None:
                        _announced.reset(announced)
                    with self._lock:
                        self._in_progress.pop(repo_id, None)
            except BaseException:
                self._clean(repo_id, folder, existed, revision)
                raise

    def _check(self, repo_id: str, revision: Optional[str], token: Optional[str]) -> Optional[dict]:
        """The repo's announced file sizes after the checks pass (None when nothing was checked); raises if over."""
        import huggingface_hub

        if (self.max_bytes is None and self.disk_budget is None) or huggingface_hub.constants.HF_HUB_OFFLINE \
                or _weights_cached(repo_id, self.cache_dir, revision) or hub_unreachable_reason() is not None:
            return None  # nothing to check, nothing to download, or the load fails at once with its own message
        sizes = hub_file_sizes(repo_id, revision=revision, token=token)
        weights = weights_to_fetch(sizes)
        unknown = sorted(name for name, size in weights.items() if size is None)
        if unknown:
            raise CheckpointError(f"The Hugging Face Hub did not say how large {repo_id}/{unknown[0]} is, so it was "
                                  "not downloaded.")
        need = sum(weights.values())
        if self.max_bytes is not None and need > self.max_bytes:
            raise CheckpointError(f"{repo_id} has {format_bytes(need)} of weights, over this server's limit of "
                                  f"{format_bytes(self.max_bytes)} ({self.limit_source}); nothing was downloaded.")
        root = _cache_root(self.cache_dir)
        with self._lock:  # checked and reserved together, so two downloads cannot both take the last bytes
            busy = sum(self._in_progress.values())
            free = _free_bytes(root)
            if need + busy > free:
                raise CheckpointError(
                    f"{repo_id} needs {format_bytes(need)} of disk for its weights, but only {format_bytes(free)} is "
                    f"free ({format_bytes(busy)} of it promised to downloads in progress); nothing was downloaded.")
            if self.disk_budget is not None:
                held = _tree_bytes(root) if root.exists() else 0
                if held + busy + need > self.disk_budget:
                    raise CheckpointError(
                        f"{repo_id} needs {format_bytes(need)} of disk for its weights, over the download budget of "
                        f"{format_bytes(self.disk_budget)} (the cache holds {format_bytes(held)}, downloads in progress "
                        f"{format_bytes(busy)}); nothing was downloaded.")
            self._in_progress[repo_id] = need
        return sizes

    def _clean(self, repo_id: str, folder: Path, existed: bool, revision: Optional[str]) -> None:
        """Remove what a failed load left in the cache: all of a repo that was new (unless its weights are
        complete), else `.incomplete` blobs, dangling snapshot links and empty folders."""
        locks = folder.parent / ".locks" / folder.name
        if not existed and not _weights_cached(repo_id, self.cache_dir, revision):
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(locks, ignore_errors=True)
            return
        if not folder.exists():
            return
        for partial in folder.glob("blobs/*.incomplete"):
            partial.unlink(missing_ok=True)
        for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # deepest first
            if path.is_symlink() and not path.exists():
                path.unlink()
            elif path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()


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
