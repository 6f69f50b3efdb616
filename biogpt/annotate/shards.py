"""The output directory of a run: shard files committed atomically, a manifest, and resumption after a crash.

Layout of OUT:
    manifest.json            the run's settings ("run"); once every shard is done also the shard list, the
                             totals and "complete": true
    shards/KEY.jsonl         one record per document of shard KEY (plus KEY.pubtator or KEY.csv for some tasks)
    shards/KEY.rejects.jsonl the shard's rejected records, when it has any
    shards/KEY.done.json     the shard's commit marker: counts, and each file's size and sha256
    rejects.jsonl            every reject, in input order (written when the run completes)

Every file is written to a temporary name, fsync'ed and renamed into place; a shard's marker is written last,
after its files and their directory are synced. A shard without a valid marker is simply annotated again, so a run
killed at any instant and started again with the same command ends with the same bytes as an uninterrupted run.
A lock file keeps two runs from writing to one directory at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import ConfigError

MANIFEST = "manifest.json"
SHARDS = "shards"
REJECTS = "rejects.jsonl"
FORMAT = "biogpt-annotate/1"
_DONE = ".done.json"
_TEMP = ".tmp"


@dataclass(frozen=True)
class ShardOutput:
    """A shard's annotated output: file suffix -> bytes (e.g. "jsonl", "pubtator", "rejects.jsonl"), and counts."""

    key: str
    files: Mapping[str, bytes]
    documents: int
    rejects: int
    windows: int


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` holds either its old content or all of `data`, even after a crash."""
    temp = path.with_name(f".{path.name}{_TEMP}")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _sync_directory(path: Path) -> None:
    """Make the renames done in `path` durable (a rename lives in the directory's own data)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _key_order(key: str) -> tuple[int, ...]:
    return tuple(int(part) for part in key.split("-"))


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


class ShardStore:
    """The output directory of one run (see the module docstring). Use as a context manager (it holds the lock)."""

    def __init__(self, output: os.PathLike | str, run: Mapping[str, Any]):
        self.root = Path(output)
        self.run = dict(run)
        self.shards = self.root / SHARDS
        self._lock: Optional[int] = None
        self.done: dict[str, dict[str, Any]] = {}
        self.complete = False

    def __enter__(self) -> "ShardStore":
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            raise ConfigError(f"Another annotate run is writing to {self.root}; wait for it or pick another "
                              "--output.") from None
        try:
            self._open()
        except BaseException:  # a refused directory: let go of the lock, then report
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing releases the flock
            self._lock = None

    def _open(self) -> None:
        manifest_path = self.root / MANIFEST
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            self._check_same_run(manifest.get("run", {}))
            self.complete = bool(manifest.get("complete"))
        elif any(path.name != ".lock" for path in self.root.iterdir()):
            raise ConfigError(f"{self.root} is not empty and holds no {MANIFEST}: it is not an annotate output "
                              "directory. Pick an empty or new --output.")
        else:
            write_atomic(manifest_path, _json_bytes({"format": FORMAT, "run": self.run, "complete": False}))
        self.shards.mkdir(exist_ok=True)
        for path in self.shards.iterdir():
            if path.name.endswith(_TEMP):  # left by a killed run; never part of the output
                path.unlink()
            elif path.name.endswith(_DONE):
                marker = json.loads(path.read_text(encoding="utf-8"))
                if self._files_intact(marker):
                    self.done[marker["key"]] = marker

    def _check_same_run(self, previous: Mapping[str, Any]) -> None:
        changed = sorted(key for key in set(previous) | set(self.run) if previous.get(key) != self.run.get(key))
        if changed:
            details = "; ".join(f"{key}: {json.dumps(previous.get(key))} then, {json.dumps(self.run.get(key))} now"
                                for key in changed)
            raise ConfigError(f"{self.root} holds a run with other settings ({details}). Run the same command to "
                              "continue it, or pick a new --output.")

    def _files_intact(self, marker: Mapping[str, Any]) -> bool:
        for name, facts in marker["files"].items():
            path = self.shards / name
            if not path.is_file() or path.stat().st_size != facts["bytes"]:
                return False
        return True

    def commit(self, output: ShardOutput) -> None:
        """Write a shard's files, then its marker; from then on the shard counts as done."""
        files = {}
        for suffix, data in output.files.items():
            name = f"{output.key}.{suffix}"
            write_atomic(self.shards / name, data)
            files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        _sync_directory(self.shards)
        marker = {"key": output.key, "documents": output.documents, "rejects": output.rejects,
                  "windows": output.windows, "files": files}
        write_atomic(self.shards / f"{output.key}{_DONE}", _json_bytes(marker))
        _sync_directory(self.shards)
        self.done[output.key] = marker

    def finalize(self) -> dict[str, Any]:
        """Once every shard is done: the merged rejects.jsonl and the complete manifest, which it returns."""
        shards = [self.done[key] for key in sorted(self.done, key=_key_order)]
        rejects = b"".join((self.shards / name).read_bytes() for shard in shards for name in shard["files"]
                           if name.endswith(f".{REJECTS}"))
        write_atomic(self.root / REJECTS, rejects)
        totals = {name: sum(shard[name] for shard in shards) for name in ("documents", "rejects", "windows")}
        manifest = {"format": FORMAT, "run": self.run, "complete": True, "totals": {**totals, "shards": len(shards)},
                    "shards": shards}
        write_atomic(self.root / MANIFEST, _json_bytes(manifest))
        _sync_directory(self.root)
        self.complete = True
        return manifest
