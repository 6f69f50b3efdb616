"""Files the app offers for download (the Entities tab's JSON and CSV), kept bounded on disk."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

ENTITY_FOLDERS_KEPT = 32  # per process; Gradio copies every returned file into its own cache before serving it
ENTITY_FIELDS = ("text", "label", "score", "start", "end")
_lock = threading.Lock()
_count = itertools.count()
_swept = False


def entity_root() -> Path:
    """This process's folder of entity downloads, under the system temp directory."""
    return Path(tempfile.gettempdir()) / f"biogpt-entities-{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists and belongs to someone else
        return True
    return True


def entity_folder(keep: int = ENTITY_FOLDERS_KEPT) -> Path:
    """A new, empty folder for one request's files; the oldest beyond the newest `keep` are removed.

    So the disk holds at most `keep` folders of two files each, however many requests come: the returned paths
    only have to live until Gradio has copied them into its cache (it does so when the handler returns), so
    `keep` far above the number of concurrent requests is safe. The first call also removes the folders left by
    processes that no longer run (an app restarted many times does not pile them up either).
    """
    global _swept
    root = entity_root()
    with _lock:
        if not _swept:
            _swept = True
            for other in root.parent.glob("biogpt-entities-*"):
                pid = other.name.rsplit("-", 1)[-1]
                if other != root and pid.isdigit() and other.is_dir() and not _process_alive(int(pid)):
                    shutil.rmtree(other, ignore_errors=True)
        root.mkdir(mode=0o700, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{next(_count):012d}-", dir=root))
        # Names start with a zero-padded counter, so sorting them sorts by age.
        for old in sorted(path for path in root.iterdir() if path.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def entity_files(found: list[dict[str, Any]]) -> list[str]:
    """entities.json and entities.csv in a fresh folder of `entity_folder()`, which keeps the newest few."""
    folder = entity_folder()
    as_json, as_csv = folder / "entities.json", folder / "entities.csv"
    clean = [{"text": e["text"], "label": e["label"], "score": float(e["score"]), "start": int(e["start"]),
              "end": int(e["end"])} for e in found]
    as_json.write_text(json.dumps(clean, indent=2, ensure_ascii=False), encoding="utf-8")
    with as_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ENTITY_FIELDS))
        writer.writeheader()
        writer.writerows(clean)
    return [str(as_json), str(as_csv)]
