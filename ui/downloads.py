"""Files the app offers for download (the Entities tab's JSON and CSV, annotated uploads), kept bounded on disk."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

ENTITY_FOLDERS_KEPT = 32  # per process; Gradio copies every returned file into its own cache before serving it
ENTITY_FIELDS = ("text", "label", "score", "start", "end")
RELATION_FIELDS = ("head", "relation", "tail", "head_type", "tail_type")
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


def _write(name: str, records: list[dict[str, Any]], fields: tuple[str, ...]) -> list[str]:
    """`<name>.json` and `<name>.csv` of `records` in a fresh folder of `entity_folder()`."""
    folder = entity_folder()
    as_json, as_csv = folder / f"{name}.json", folder / f"{name}.csv"
    as_json.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    with as_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows({k: v for k, v in record.items() if k in fields} for record in records)
    return [str(as_json), str(as_csv)]


def relation_files(relations: list[dict[str, Any]]) -> list[str]:
    """relations.json (every field, entity spans included) and relations.csv (head, relation, tail and types)."""
    records = [{**r, "head_spans": [list(s) for s in r["head_spans"]], "tail_spans": [list(s) for s in r["tail_spans"]]}
               for r in relations]
    return _write("relations", records, RELATION_FIELDS)


def entity_files(found: list[dict[str, Any]]) -> list[str]:
    """entities.json and entities.csv in a fresh folder of `entity_folder()`, which keeps the newest few."""
    clean = [{"text": e["text"], "label": e["label"], "score": float(e["score"]), "start": int(e["start"]),
              "end": int(e["end"])} for e in found]
    return _write("entities", clean, ENTITY_FIELDS)


def annotated_files(name: str, files: Mapping[str, bytes]) -> list[str]:
    """An uploaded file's annotations (`{suffix: bytes}`: records JSONL, PubTator or CSV, rejects) as
    `<name>.<suffix>` in a fresh folder of `entity_folder()`; the records file first."""
    folder = entity_folder()
    paths = []
    for suffix, data in sorted(files.items(), key=lambda item: item[0] != "jsonl"):
        path = folder / f"{name}.{suffix}"
        path.write_bytes(data)
        paths.append(str(path))
    return paths
