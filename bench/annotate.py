"""Corpus annotation speed: BC5CDR abstracts through the bundled demo NER model, documents per second.

    python -m bench.annotate                 # 200 abstracts, 3 repeats, Ray with 1 and 2 workers
    python -m bench.annotate --docs 60 --no-ray --threads 1

Rows: (a) a naive loop calling `extract_entities` (the Entities tab's code) one document at a time, (b) the local
engine (`biogpt.annotate.run_local`: windows of many documents length-bucketed into batches; reading and writing
the shards included), also with bf16 weights (`--dtype bfloat16`: other arithmetic, so its entities are compared
with fp32's rather than expected equal), (c) the Ray engine with 1 and 2 CPU actors (a local Ray started here;
actor start-up and model loading included: a few seconds). (a) and (b) alternate, in one process on loaded models;
medians of the repeats. Prints a table and writes JSON (bench/out/annotate-<date>.json or --out).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .common import OUT, REPO, machine, median

SHARED = Path(os.environ.get("BIOGPT_SHARED_DIR", REPO.parent / "shared"))
BC5CDR = ("CDR_DevelopmentSet.PubTator.txt", "CDR_TrainingSet.PubTator.txt")


def load_abstracts(count: int, data_dir: Path) -> list[tuple[str, str]]:
    """(PMID, title + " " + abstract) of the first `count` BC5CDR documents."""
    from biogpt.tasks.data import read_pubtator

    documents: list[tuple[str, str]] = []
    for name in BC5CDR:
        documents += [(doc.id, doc.text) for doc in read_pubtator(data_dir / name)]
        if len(documents) >= count:
            break
    if len(documents) < count:
        raise SystemExit(f"only {len(documents)} BC5CDR documents in {data_dir}; ask for fewer with --docs")
    return documents[:count]


def _spans(entities: list[list[dict[str, Any]]]) -> list[list[tuple]]:
    return [[(e["start"], e["end"], e["label"]) for e in document] for document in entities]


def _engine_entities(out: Path) -> list[list[dict[str, Any]]]:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return [json.loads(line)["result"]["entities"] for shard in manifest["shards"]
            for line in (out / "shards" / f"{shard['key']}.jsonl").read_text(encoding="utf-8").splitlines()]


def run(docs: int, repeats: int, batch_size: int, shard_size: int, ray_workers: list[int], data_dir: Path
        ) -> dict[str, Any]:
    import torch

    from biogpt.annotate import TASKS, RunConfig, run_local
    from biogpt.annotate.models import load_for_task
    from biogpt.catalog import demo_path
    from biogpt.tasks.entities import extract_entities

    abstracts = load_abstracts(docs, data_dir)
    model_dir = str(demo_path("token-classification"))
    # One loader for every row, so the naive loop and the engines run the same CPU kernels.
    model, tokenizer = load_for_task(TASKS["ner"], model_dir)
    model_bf16, _ = load_for_task(TASKS["ner"], model_dir, dtype="bfloat16")
    work = Path(tempfile.mkdtemp(prefix="bench-annotate-"))
    corpus = work / "bc5cdr.jsonl"
    corpus.write_text("".join(json.dumps({"id": pmid, "text": text}) + "\n" for pmid, text in abstracts),
                      encoding="utf-8")

    def config(out: Path, dtype: str = "float32") -> RunConfig:
        return RunConfig(str(corpus), "ner", model_dir, out, batch_size=batch_size, shard_size=shard_size,
                         dtype=dtype)

    def naive() -> list[list[dict[str, Any]]]:
        return [extract_entities(model, tokenizer, text) for _, text in abstracts]

    def engine(loaded: Any, dtype: str) -> Callable[[], Path]:
        def annotate() -> Path:
            out = work / f"local-{time.perf_counter_ns()}"
            run_local(config(out, dtype), progress=False, model=loaded, tokenizer=tokenizer)
            return out
        return annotate

    extract_entities(model, tokenizer, abstracts[0][1])  # warm-up: spaCy, oneDNN kernels
    extract_entities(model_bf16, tokenizer, abstracts[0][1])
    runs = {"naive": naive, "local": engine(model, "float32"), "local-bf16": engine(model_bf16, "bfloat16")}
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, Any] = {}
    load_before = os.getloadavg()
    for _ in range(repeats):
        for name, fn in runs.items():
            started = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - started)
    rows: dict[str, Any] = {name: {"seconds": [round(t, 3) for t in values], "docs_per_s": docs / median(values)}
                            for name, values in times.items()}
    for name in ("local", "local-bf16"):
        rows[name]["speedup_vs_naive"] = rows[name]["docs_per_s"] / rows["naive"]["docs_per_s"]
    reference = _spans(results["naive"])
    same = reference == _spans(_engine_entities(results["local"]))
    bf16 = _spans(_engine_entities(results["local-bf16"]))
    rows["local-bf16"]["documents_with_fp32_entities"] = sum(a == b for a, b in zip(reference, bf16)) / docs
    manifest = json.loads((results["local"] / "manifest.json").read_text(encoding="utf-8"))
    rows.update(_ray_rows(config, work, ray_workers, docs, rows["naive"]["docs_per_s"]))
    shutil.rmtree(work)
    return {"date": _dt.date.today().isoformat(), "machine": machine(), "docs": docs, "repeats": repeats,
            "batch_size": batch_size, "shard_size": shard_size, "torch_threads": torch.get_num_threads(),
            "windows": manifest["totals"]["windows"], "same_entities_naive_vs_local": same,
            "load_average_before_after": [round(x, 2) for x in (*load_before[:1], *os.getloadavg()[:1])],
            "rows": rows}


def _ray_rows(config: Callable[[Path], Any], work: Path, workers: list[int], docs: int,
              naive_rate: float) -> dict[str, Any]:
    if not workers:
        return {}
    try:
        import ray
    except ModuleNotFoundError:
        return {f"ray-{n}": {"skipped": "ray is not installed (pip install 'biogpt[ray]')"} for n in workers}
    from biogpt.annotate.ray_engine import run_ray

    rows = {}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        for n in workers:
            started = time.perf_counter()
            run_ray(config(work / f"ray-{n}"), workers=n, progress=False)
            seconds = time.perf_counter() - started
            rows[f"ray-{n}"] = {"seconds": [round(seconds, 3)], "docs_per_s": docs / seconds,
                                "speedup_vs_naive": docs / seconds / naive_rate}
    finally:
        ray.shutdown()
    return rows


def table(result: dict[str, Any]) -> str:
    names = {"naive": "(a) naive loop, extract_entities per document", "local": "(b) local engine",
             "local-bf16": "(b) local engine, bf16 weights",
             "ray-1": "(c) Ray, 1 worker", "ray-2": "(c) Ray, 2 workers"}
    lines = [f"{result['docs']} BC5CDR abstracts, demo NER model, batch size {result['batch_size']}, shard size "
             f"{result['shard_size']}, {result['torch_threads']} torch threads, "
             f"{result['machine'].get('cores')} cores, load average {result['load_average_before_after']}",
             "| | documents/s | vs naive |", "|---|---|---|"]
    for key, row in result["rows"].items():
        label = names.get(key, key)
        if "skipped" in row:
            lines.append(f"| {label} | skipped: {row['skipped']} | |")
        else:
            ratio = row.get("speedup_vs_naive")
            lines.append(f"| {label} | {row['docs_per_s']:.1f} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    lines.append(f"same entities (naive vs local engine): {result['same_entities_naive_vs_local']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=25, help="documents per shard: Ray hands out whole shards")
    parser.add_argument("--ray-workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of rows (a) and (b) (default: torch's; Ray actors use one per CPU)")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "bc5cdr")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    workers = [] if args.no_ray else [int(n) for n in args.ray_workers.split(",") if n]
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    result = run(args.docs, args.repeats, args.batch_size, args.shard_size, workers, args.data)
    out = args.out or OUT / f"annotate-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(table(result))
    print(json.dumps(result["rows"], indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
