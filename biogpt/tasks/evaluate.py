"""The paper's task models from the command line: convert a fairseq checkpoint, run one text, evaluate a data set.

    python -m biogpt convert-fairseq SRC_DIR OUT_DIR [--vocab base|large|DIR] [--dict F --bpecodes F]
                                     [--task T]
    python -m biogpt run --task relations|pubmedqa|hoc --model DIR [--text T | --title T --abstract A |
                         --question Q --context C]
    python -m biogpt eval TASK --model DIR --data FILE [--limit N] [--output PRED_FILE]

`--model` is a converted directory or a fairseq checkpoint directory (converted once into
~/.cache/biogpt/fairseq). `eval` reads the data files of microsoft/BioGPT (`{bc5cdr-re,ddi,kd-dti}/*.json`,
PubMedQA's `pqal_*_set.json` / `ori_pqal.json`, HoC's `*.tsv`), drops the documents the original drops (those
without relations), prints the original metric as JSON and writes one JSON line of predictions per example.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import BioGptError, InputError
from ..fairseq import (PROMPT_CONFIG_KEY, TASKS, convert_fairseq_checkpoint, convert_into_cache,
                       is_fairseq_checkpoint_dir)
from ..modeling import BioGptForCausalLM
from ..tokenization import BioGptTokenizer
from .hoc import classify_hallmarks, classify_hallmarks_many, hoc_micro_f1
from .pubmedqa import accuracy, answer_question, answer_questions
from .relations import FAMILIES, bc5cdr_ids, bc5cdr_scores, extract_relations, extract_relations_many, \
    hard_match_evaluation, parse_triples

RUN_TASKS = ("relations", "pubmedqa", "hoc")


def load_task_model(source: str, device: str = "cpu", vocab: Optional[str] = None
                    ) -> tuple[BioGptForCausalLM, BioGptTokenizer]:
    """Model and tokenizer of a converted directory, or of a fairseq checkpoint converted into the cache."""
    if is_fairseq_checkpoint_dir(source) or str(source).endswith(".pt"):
        source = str(convert_into_cache(source, vocab=vocab))
    return BioGptForCausalLM.from_pretrained(source, device=device), BioGptTokenizer.from_pretrained(source)


def run_task(task: str, model: Any, tokenizer: Any, text: Optional[str] = None, **fields: Any) -> dict[str, Any]:
    """One input through a task model: "relations" (or a family: "bc5cdr", "ddi", "kd-dti"; fields `title`,
    `abstract`), "pubmedqa" (fields `question`, `context`; `text` is the context) or "hoc" (`text`)."""
    if task == "relations" or task in FAMILIES:
        return extract_relations(model, tokenizer, text, title=fields.get("title"), abstract=fields.get("abstract"),
                                 family=fields.get("family") or (task if task in FAMILIES else None))
    if task == "pubmedqa":
        return answer_question(model, tokenizer, fields.get("question") or "", fields.get("context") or text or "")
    if task == "hoc":
        return classify_hallmarks(model, tokenizer, text or "")
    raise InputError(f"Unknown task {task!r}: use one of {', '.join(RUN_TASKS + tuple(FAMILIES))}.")


# ----------------------------------------------------------------------------------------------------------------
# Data sets
# ----------------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"No such data file: {path}.") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}.") from None


def _limit(items: list, limit: Optional[int]) -> list:
    return items if limit is None else items[:limit]


def _evaluate_bc5cdr(model, tokenizer, data_path: Path, args) -> tuple[dict, list[dict]]:
    data = _read_json(data_path)
    entities_path = Path(args.entities) if args.entities else data_path.with_suffix(".entities.json")
    if not entities_path.is_file():
        raise InputError(f"BC5CDR needs the gold name dictionaries ({entities_path} is missing): pass --entities "
                         "FILE (e.g. test.entities.json beside test.json).")
    entities = _read_json(entities_path)
    with_relations = [(pmid, doc) for pmid, doc in data.items() if doc.get("relations")]
    documents = _limit(with_relations, args.limit)
    results = extract_relations_many(model, tokenizer, [{"title": d["title"], "abstract": d["abstract"]}
                                                        for _, d in documents], "bc5cdr", args.batch_size)
    predicted, gold, records = {}, {}, []
    for (pmid, doc), result in zip(documents, results):
        pairs = bc5cdr_ids([(r["head"], r["tail"]) for r in result["relations"]], entities)
        predicted[pmid] = pairs
        gold[pmid] = [(r["chemical"], r["disease"]) for r in doc["relations"]]
        records.append({"id": pmid, "generated": result["generated"], "failed": result["failed"],
                        "relations": [{"chemical": r["head"], "disease": r["tail"], "chemical_id": c,
                                       "disease_id": d} for r, (c, d) in zip(result["relations"], pairs)]})
    metrics = {"examples": len(documents), "dropped_without_relations": len(data) - len(with_relations),
               "failed": sum(r["failed"] for r in records),
               **bc5cdr_scores(predicted, gold)}
    return metrics, records


def _evaluate_triples(family: str) -> Callable:
    def evaluate(model, tokenizer, data_path: Path, args) -> tuple[dict, list[dict]]:
        data = _read_json(data_path)
        documents = _limit([(key, doc) for key, doc in data.items() if doc.get("triples")], args.limit)
        results = extract_relations_many(model, tokenizer, [{"title": d.get("title"), "abstract": d["abstract"]}
                                                            for _, d in documents], family, args.batch_size)
        predictions = [parse_triples(result["generated"]) for result in results]
        records = [{"id": key, "generated": result["generated"],
                    "triple_list_pred": [{"subject": d, "relation": i, "object": t} for d, i, t in triples]}
                   for (key, _), result, triples in zip(documents, results, predictions)]
        metrics = {"examples": len(documents),
                   "failed": sum(triples[0][0] == "failed" for triples in predictions),
                   **hard_match_evaluation(predictions, [key for key, _ in documents], data)}
        return metrics, records
    return evaluate


def _evaluate_pubmedqa(model, tokenizer, data_path: Path, args) -> tuple[dict, list[dict]]:
    data = _read_json(data_path)
    items = _limit(list(data.items()), args.limit)
    missing = [key for key, item in items if "final_decision" not in item]
    if missing:
        raise InputError(f"{data_path}: {len(missing)} questions have no final_decision (e.g. {missing[0]}); "
                         "evaluation needs the gold answers (pqal_test_set.json or ori_pqal.json).")
    results = answer_questions(model, tokenizer, [{"question": item["QUESTION"], "context": item["CONTEXTS"]}
                                                  for _, item in items], args.batch_size, probabilities=False)
    gold = [item["final_decision"] for _, item in items]
    records = [{"id": key, "generated": result["generated"], "answer": result["answer"], "gold": answer}
               for (key, _), result, answer in zip(items, results, gold)]
    return {"examples": len(items), "failed": sum(r["answer"] == "failed" for r in records),
            "accuracy": accuracy([r["answer"] for r in records], gold)}, records


def read_hoc_tsv(path: Path) -> list[tuple[str, str]]:
    """(sentence, labels) rows of a HoC TSV; blank lines are skipped, as the original reader does."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"No such data file: {path}.") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise InputError(f"{path}:{number}: expected 'sentence<TAB>labels'.")
        rows.append((fields[0], fields[-1].strip()))
    return rows


def _evaluate_hoc(model, tokenizer, data_path: Path, args) -> tuple[dict, list[dict]]:
    rows = _limit(read_hoc_tsv(data_path), args.limit)
    results = classify_hallmarks_many(model, tokenizer, [sentence for sentence, _ in rows], args.batch_size,
                                      probabilities=False)
    records = [{"id": i, "generated": result["generated"], "answer": result["answer"], "gold": labels}
               for i, ((_, labels), result) in enumerate(zip(rows, results))]
    return {"examples": len(rows), "failed": sum(r["answer"] == "failed" for r in records),
            **hoc_micro_f1([r["answer"] for r in records], [labels for _, labels in rows])}, records


_EVALUATORS: dict[str, Callable] = {"bc5cdr": _evaluate_bc5cdr, "ddi": _evaluate_triples("ddi"),
                                    "kd-dti": _evaluate_triples("kd-dti"), "pubmedqa": _evaluate_pubmedqa,
                                    "hoc": _evaluate_hoc}


# ----------------------------------------------------------------------------------------------------------------
# Command lines
# ----------------------------------------------------------------------------------------------------------------
def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biogpt eval", description="Score a task model with the paper's metric.")
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--model", required=True, help="converted directory or fairseq checkpoint directory")
    parser.add_argument("--data", required=True, help="the task's data file (JSON, or TSV for hoc)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only")
    parser.add_argument("--output", default=None, help="predictions file (default: ./TASK-predictions.jsonl)")
    parser.add_argument("--entities", default=None, help="bc5cdr: name -> MeSH id dictionaries (default: "
                                                         "DATA with .entities.json)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocab", default=None, help="base|large|DIR for a fairseq directory without dict.txt")
    return parser


def _guarded(run: Callable[[], int]) -> int:
    try:
        return run()
    except BioGptError as error:  # checkpoint, data and parameter problems: one line, no traceback
        print(f"biogpt: error: {error}", file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`biogpt eval TASK --model DIR --data FILE [--limit N] [--output PRED_FILE]`."""
    args = _eval_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.limit is not None and args.limit < 1:
        _eval_parser().error("--limit must be >= 1")

    def run() -> int:
        model, tokenizer = load_task_model(args.model, args.device, args.vocab)
        metrics, records = _EVALUATORS[args.task](model, tokenizer, Path(args.data), args)
        output = Path(args.output or f"{args.task}-predictions.jsonl")
        output.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        print(json.dumps({"task": args.task, "model": args.model, "data": args.data, **metrics,
                          "predictions": str(output)}, indent=2))
        return 0
    return _guarded(run)


def wants_task_run(argv: Sequence[str]) -> bool:
    """True when `biogpt run` arguments name a paper task (`--task relations|pubmedqa|hoc|<family>`)."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--task=") else (
            argv[i + 1] if arg == "--task" and i + 1 < len(argv) else None)
        if value is not None:
            return value in RUN_TASKS or value in FAMILIES
    return False


def run_main(argv: Optional[Sequence[str]] = None) -> int:
    """`biogpt run --task relations|pubmedqa|hoc --model DIR ...`: one input, the result as JSON on stdout.

    Without --text/--title/--abstract/--question, the text is read from stdin.
    """
    parser = argparse.ArgumentParser(prog="biogpt run", description="Run a paper task model on one text.")
    parser.add_argument("--task", required=True, choices=RUN_TASKS + tuple(FAMILIES))
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", default=None)
    parser.add_argument("--title", default=None)
    parser.add_argument("--abstract", default=None)
    parser.add_argument("--question", default=None)
    parser.add_argument("--context", default=None)
    parser.add_argument("--family", default=None, choices=tuple(FAMILIES), help="relations: override the "
                                                                                 "checkpoint's relation family")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", default=None)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))

    def run() -> int:
        text = args.text
        if text is None and args.title is None and args.abstract is None and args.context is None:
            text = sys.stdin.read()
        model, tokenizer = load_task_model(args.model, args.device, args.vocab)
        result = run_task(args.task, model, tokenizer, text, title=args.title, abstract=args.abstract,
                          question=args.question, context=args.context, family=args.family)
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    return _guarded(run)


def convert_main(argv: Optional[Sequence[str]] = None) -> int:
    """`biogpt convert-fairseq SRC_DIR OUT_DIR [--vocab base|large|DIR] [--dict F --bpecodes F] [--task T]`."""
    parser = argparse.ArgumentParser(prog="biogpt convert-fairseq",
                                     description="Convert a fine-tuned BioGPT fairseq checkpoint to the Hugging Face "
                                                 "layout.")
    parser.add_argument("src", help="directory with checkpoint*.pt (+ dict.txt, bpecodes), or the .pt file")
    parser.add_argument("out", help="output directory (must not exist or be empty)")
    parser.add_argument("--vocab", default=None, help="base, large, or a directory with dict.txt + bpecodes "
                                                      "(default: the files beside the checkpoint, else the released "
                                                      "vocabulary of matching size)")
    parser.add_argument("--dict", dest="dict_path", default=None, help="the fairseq dict.txt to use")
    parser.add_argument("--bpecodes", dest="bpecodes_path", default=None, help="the bpecodes to use")
    parser.add_argument("--task", default=None, choices=TASKS, help="record the task (default: guessed from the "
                                                                    "training data path or directory name)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))

    def run() -> int:
        out = convert_fairseq_checkpoint(args.src, args.out, args.vocab, dict_path=args.dict_path,
                                         bpecodes_path=args.bpecodes_path, task=args.task)
        prompt = json.loads((out / "config.json").read_text(encoding="utf-8"))[PROMPT_CONFIG_KEY]
        print(f"Converted {args.src} -> {out} (task {prompt['task'] or 'unknown'}, "
              f"{prompt['learned_prompt']} learned prompt tokens, vocabulary: {prompt['vocabulary']}).")
        return 0
    return _guarded(run)


if __name__ == "__main__":
    sys.exit(main())
