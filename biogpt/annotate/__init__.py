"""Corpus annotation: many documents through one task (ner, relations, classify, generate), resumably, locally
or on Ray.

`python -m biogpt annotate INPUT --task ner --model DIR_OR_ID --output OUT` (see `cli`) reads JSONL, CSV/TSV,
PubTator or plain text (`readers`), annotates shard by shard with batches of windows from many documents
(`registry`, `engine`; `ray_engine` on a Ray cluster), and writes JSONL records plus PubTator or CSV into shards
committed atomically with a manifest (`writers`, `shards`). `annotate_texts` is the same work as a library call,
`annotate_file` the same for one file in memory (the app's upload).
"""

from .engine import Annotator, RunConfig, Summary, annotate_file, annotate_texts, run_local
from .readers import DEFAULT_MAX_CHARS, FORMATS, ReaderOptions
from .registry import TASKS, AnnotationTask

__all__ = ["DEFAULT_MAX_CHARS", "FORMATS", "TASKS", "AnnotationTask", "Annotator", "ReaderOptions", "RunConfig",
           "Summary", "annotate_file", "annotate_texts", "run_local"]
