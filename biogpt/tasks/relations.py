"""Relation extraction with BioGPT's fine-tuned prompt models, as the paper ran it (B `examples/RE-*`).

Three families share one recipe: the model reads a lowercased document and writes its relations as sentences.

- BC5CDR: title + abstract; `the relation between {chemical} and {disease} exists`, joined by `"; "`, ending in `.`.
- DDI: the abstract (newlines as spaces); `the interaction between {drug} and {target} is {type}`.
- KD-DTI: title + abstract; the DDI sentence, with KD-DTI's interaction types.

For each family: the input text (`source_text`), the training target (`bc5cdr_target`, `triple_target`), the parser
of the original postprocess.py (`parse_bc5cdr`, `parse_triples`, regex behaviour included: BC5CDR splits on `;`,
DDI/KD-DTI on `"; "`, greedy groups, `failed`), and the original metric (`bc5cdr_scores`: corpus P/R/F1 over
(pmid, chemical id, disease id) pairs as BC5CDR's evaluation kit counts them; `hard_match_evaluation`: every figure
of B's hard_match_evaluation.py). `extract_relations` runs a model and maps every predicted entity name back to all
of its character spans in the text (case-insensitively, as the model reads lowercased text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..errors import ConfigError, InputError
from .prompted import PromptSettings, answer_text, build_input_ids, generate_answers

Span = tuple[int, int]
Triple = tuple[str, str, str]  # (drug, interaction, target), the order B's postprocess.py produces
FAILED: Triple = ("failed", "failed", "failed")

_BC5CDR_SENTENCE = re.compile(r"the relation between (.*) and (.*) exists")
_TRIPLE_SENTENCE = re.compile(r"the interaction between (.*) and (.*) is (.*)")
_NUM2ROMAN = {"0": "0", "1": "I", "2": "II", "3": "III", "4": "IV", "5": "V", "6": "VI", "7": "VII", "8": "VIII",
              "9": "IX"}


@dataclass(frozen=True)
class Family:
    """A relation task: its name, the entity types of the head and tail, and the relation name for BC5CDR."""

    name: str
    head_type: str
    tail_type: str


FAMILIES = {"bc5cdr": Family("bc5cdr", "Chemical", "Disease"), "ddi": Family("ddi", "Drug", "Drug"),
            "kd-dti": Family("kd-dti", "Drug", "Target")}
BC5CDR_RELATION = "CID"  # chemical-induced disease, BC5CDR's only relation type


def family_for(name: Optional[str]) -> Family:
    """The family called `name` (a converted checkpoint records it as config.json `biogpt_prompt.task`)."""
    if name in FAMILIES:
        return FAMILIES[name]
    if name is None:
        raise ConfigError("This checkpoint does not record its relation family: pass family= (--family) bc5cdr, ddi "
                          "or kd-dti, or convert it again with --task.")
    raise ConfigError(f"{name!r} is not a relation extraction task (bc5cdr, ddi or kd-dti)"
                      + (f": this is a {name} checkpoint, run it with --task {name}." if name in ("pubmedqa", "hoc")
                         else "."))


# ----------------------------------------------------------------------------------------------------------------
# Inputs and targets (B rebuild_data.py)
# ----------------------------------------------------------------------------------------------------------------
def title_abstract(title: str, abstract: str) -> str:
    """Title and abstract as BC5CDR/KD-DTI join them: `" "` after a title ending in a non-word character, else
    `". "`."""
    return title + (" " if re.search(r"\W$", title) else ". ") + abstract


def source_text(family: str, *, title: Optional[str] = None, abstract: Optional[str] = None,
                text: Optional[str] = None) -> str:
    """The document text as the family's rebuild_data.py builds it, before lowercasing.

    BC5CDR/KD-DTI: `title_abstract(title, abstract)` (or `text` as given). DDI: the abstract (or `text`) stripped,
    with newlines as spaces.
    """
    if text is None:
        if family == "ddi":
            text = abstract
        elif title is not None and abstract is not None:
            text = title_abstract(title, abstract)
        else:
            text = title if abstract is None else abstract
    if not isinstance(text, str) or not text.strip():
        raise InputError("A relation extraction needs a text (or a title and an abstract).")
    return text.strip().replace("\n", " ") if family == "ddi" else text


def longest_names(name2id: Mapping[str, str]) -> dict[str, str]:
    """id -> its longest name (B `unify_ent2id(method='max')`: the first of equally long names wins)."""
    id2name: dict[str, str] = {}
    for name, entity_id in name2id.items():
        if entity_id not in id2name or len(name) > len(id2name[entity_id]):
            id2name[entity_id] = name
    return id2name


def bc5cdr_target(relations: Sequence[Mapping[str, str]], chemical2id: Mapping[str, str],
                  disease2id: Mapping[str, str]) -> str:
    """The training target of a BC5CDR document (relations in JSON order, each entity by its longest name)."""
    chemicals, diseases = longest_names(chemical2id), longest_names(disease2id)
    return "; ".join(f"the relation between {chemicals[r['chemical']]} and {diseases[r['disease']]} exists"
                     for r in relations) + "."


def sort_triples(triples: Sequence[Mapping[str, str]], content: str) -> list[Mapping[str, str]]:
    """Triples by the position of the drug in the lowercased content (the drug itself is not lowercased, so a
    capitalised name is not found and sorts first), as B's rebuild_data.py orders them."""
    return sorted(triples, key=lambda triple: content.find(triple["drug"]))


def triple_target(triples: Sequence[Mapping[str, str]]) -> str:
    """The training target of a DDI/KD-DTI document (triples already in `sort_triples` order)."""
    return "; ".join(f"the interaction between {t['drug'].lower()} and {t['target'].lower()} is "
                     f"{t['interaction'].lower()}" for t in triples) + "."


# ----------------------------------------------------------------------------------------------------------------
# Parsers (B postprocess.py)
# ----------------------------------------------------------------------------------------------------------------
def parse_bc5cdr(generated: str) -> list[tuple[str, str]]:
    """(chemical, disease) name pairs of a generated BC5CDR answer; [] when no sentence matches."""
    pairs = []
    for sentence in re.split(r";", answer_text(generated)):
        match = _BC5CDR_SENTENCE.match(sentence.strip())
        if match is not None:
            pairs.append((match.group(1).strip(), match.group(2).strip()))
    return pairs


def parse_triples(generated: str) -> list[Triple]:
    """(drug, interaction, target) triples of a generated DDI/KD-DTI answer; `[FAILED]` when none matches."""
    triples = []
    for sentence in re.split(r"; ", answer_text(generated)):
        match = _TRIPLE_SENTENCE.match(sentence)
        if match is not None:
            drug, target, interaction = (group.strip() for group in match.groups())
            triples.append((drug, interaction, target))
    return triples or [FAILED]


def bc5cdr_ids(pairs: Iterable[tuple[str, str]], entities: Mapping[str, Mapping[str, str]]) -> list[tuple[str, str]]:
    """Names to MeSH ids with the gold name dictionaries (`{chemical2id, disease2id}`); an unknown name is "-1"."""
    return [(entities["chemical2id"].get(chemical.strip(), "-1"), entities["disease2id"].get(disease.strip(), "-1"))
            for chemical, disease in pairs]


# ----------------------------------------------------------------------------------------------------------------
# Running a model
# ----------------------------------------------------------------------------------------------------------------
def find_spans(text: str, name: str) -> list[Span]:
    """Every (start, end) where `name` occurs in `text`, case-insensitively, as a whole word sequence.

    Whitespace runs in either match any whitespace run; a name starting/ending in a word character does not match
    inside a longer word ("ace" is not found in "acetaminophen").
    """
    words = name.split()
    if not words:
        return []
    pattern = r"\s+".join(re.escape(word) for word in words)
    if re.match(r"\w", words[0]):
        pattern = r"(?<!\w)" + pattern
    if re.search(r"\w$", words[-1]):
        pattern += r"(?!\w)"
    return [(m.start(), m.end()) for m in re.finditer(pattern, text, flags=re.IGNORECASE)]


def relations_result(family: str, text: str, generated: str) -> dict[str, Any]:
    """The structured result of one generated answer: relations with the spans of their entities in `text`.

    `entities` lists every span once per type, in text order, for highlighting; `failed` is True when the answer
    holds no relation sentence (the original prints `Failed` for it).
    """
    kind = family_for(family)
    if kind.name == "bc5cdr":
        found = [(chemical, BC5CDR_RELATION, disease) for chemical, disease in parse_bc5cdr(generated)]
    else:
        found = [triple for triple in parse_triples(generated) if triple != FAILED]
    relations, entities = [], {}
    for head, relation, tail in found:
        head_spans, tail_spans = find_spans(text, head), find_spans(text, tail)
        relations.append({"head": head, "relation": relation, "tail": tail, "head_type": kind.head_type,
                          "tail_type": kind.tail_type, "head_spans": head_spans, "tail_spans": tail_spans})
        for name, kind_name, spans in ((head, kind.head_type, head_spans), (tail, kind.tail_type, tail_spans)):
            for start, end in spans:
                entities[(start, end, kind_name)] = {"name": name, "text": text[start:end], "type": kind_name,
                                                     "start": start, "end": end}
    return {"task": kind.name, "text": text, "generated": generated, "relations": relations,
            "entities": [entity for _, entity in sorted(entities.items())], "failed": not found}


def extract_relations_many(model: Any, tokenizer: Any, documents: Sequence[Mapping[str, Optional[str]]],
                           family: Optional[str] = None, batch_size: int = 8) -> list[dict[str, Any]]:
    """`relations_result` for each document (`{title, abstract}` or `{text}`), generated as the paper did."""
    settings = PromptSettings.from_config(model.config)
    kind = family_for(family or settings.task)
    texts = [source_text(kind.name, title=d.get("title"), abstract=d.get("abstract"), text=d.get("text"))
             for d in documents]
    inputs = [build_input_ids(tokenizer, text.lower(), settings) for text in texts]
    outputs = generate_answers(model, tokenizer, inputs, settings, batch_size=batch_size)
    return [relations_result(kind.name, text, output.text) for text, output in zip(texts, outputs)]


def extract_relations(model: Any, tokenizer: Any, text: Optional[str] = None, *, title: Optional[str] = None,
                      abstract: Optional[str] = None, family: Optional[str] = None) -> dict[str, Any]:
    """Relations of one document (see `relations_result`); `family` defaults to the checkpoint's task."""
    return extract_relations_many(model, tokenizer, [{"title": title, "abstract": abstract, "text": text}],
                                  family)[0]


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------
def _prf(tp: int, n_predicted: int, n_gold: int) -> dict[str, float]:
    precision = tp / n_predicted if n_predicted else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def bc5cdr_scores(predicted: Mapping[str, Iterable[tuple[str, str]]],
                  gold: Mapping[str, Iterable[tuple[str, str]]]) -> dict[str, Any]:
    """Corpus-level precision/recall/F1 over distinct (pmid, chemical id, disease id) CID pairs.

    A pair with an unknown name ("-1") is a prediction that matches nothing, as in the evaluation kit's input.
    """
    predicted_set = {(pmid, c, d) for pmid, pairs in predicted.items() for c, d in pairs}
    gold_set = {(pmid, c, d) for pmid, pairs in gold.items() for c, d in pairs}
    tp = len(predicted_set & gold_set)
    return {**_prf(tp, len(predicted_set), len(gold_set)), "tp": tp, "fp": len(predicted_set) - tp,
            "fn": len(gold_set) - tp}


def normalize_name(name: str) -> str:
    """B's normalize_name: a trailing digit after a non-digit becomes a Roman numeral, `-type` goes, and only
    ASCII letters and digits stay."""
    name = name.strip()
    if len(name) > 2 and name[-1].isnumeric() and not name[-2].isnumeric() and name[-1] in _NUM2ROMAN:
        name = name[:-1] + _NUM2ROMAN[name[-1]]
    name = name.replace("-type", "")
    return re.sub("[^a-zA-Z0-9]+", "", name)


def _without_abbreviation(name: str) -> str:
    """'aaa (bb)' -> normalized 'aaa'."""
    name = name.strip()
    return normalize_name(name[:name.rfind("(")].strip() if "(" in name and name[-1] == ")" else name)


def _abbreviation(name: str) -> str:
    """'aaa (bb)' -> normalized 'bb'."""
    name = name.strip()
    return normalize_name(name[name.rfind("(") + 1:-1].strip() if "(" in name and name[-1] == ")" else name)


def _apply(items: set, rule) -> set:
    """A name rule on a set of names, or on every element of a set of triples (B rm_abbr / get_abbr)."""
    items_list = list(items)
    if items_list and isinstance(items_list[0], (tuple, list)):
        return {tuple(rule(part) for part in item) for item in items_list}
    return {rule(item) for item in items_list}


def _set_accuracy(predicted: set, gold: set) -> float:
    return float(predicted == gold) if not gold else len(predicted & gold) / len(predicted | gold)


def _set_precision(predicted: set, gold: set) -> float:
    return float(predicted == gold) if not predicted else len(predicted & gold) / len(predicted)


def _set_recall(predicted: set, gold: set) -> float:
    return float(predicted == gold) if not gold else len(predicted & gold) / len(gold)


def _normed(predicted: set, gold: set, metric) -> float:
    """The better of matching by abbreviation and by name without abbreviation (B normed_eval)."""
    return max(metric(_apply(predicted, _abbreviation), _apply(gold, _abbreviation)),
               metric(_apply(predicted, _without_abbreviation), _apply(gold, _without_abbreviation)))


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _squash(text: str) -> str:
    return text.strip().lower().replace(" ", "")


def hard_match_evaluation(predictions: Sequence[Sequence[Triple]], pmids: Sequence[str],
                          gold: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """B's hard_match_evaluation.py (RE-DDI, RE-DTI): every figure it prints.

    `predictions[i]` are the (drug, interaction, target) triples for document `pmids[i]` (`[FAILED]` counts as
    none); `gold` maps ids to documents with `triples` of {drug, target, interaction}. Names are lowercased with
    spaces removed, then matched by `normalize_name` with or without a trailing parenthesised abbreviation.
    "sample" figures average per-document scores (tp_micro_f1 is the mean per-document F1, tp_macro_f1 the F1 of the
    mean precision and recall); "ontology" figures score the corpus-wide sets.
    """
    precisions, recalls, f1s, d_acc, t_acc, i_acc = [], [], [], [], [], []
    all_pred: dict[str, list] = {"triple": [], "d": [], "t": [], "i": []}
    all_gold: dict[str, list] = {"triple": [], "d": [], "t": [], "i": []}
    num_pred = num_gold = 0
    for triples, pmid in zip(predictions, pmids):
        pred = {"triple": set(), "d": set(), "t": set(), "i": set()}
        if triples and triples[0][0] != "failed":
            for drug, interaction, target in triples:
                d, t, i = _squash(drug), _squash(target), _squash(interaction)
                pred["d"].add(d)
                pred["t"].add(t)
                pred["i"].add(i)
                pred["triple"].add((d, t, i))
        if pmid not in gold:
            continue
        gold_sets = {"triple": set(), "d": set(), "t": set(), "i": set()}
        for triple in gold[pmid].get("triples") or ():
            d, t, i = _squash(triple["drug"]), _squash(triple["target"]), _squash(triple["interaction"])
            gold_sets["d"].add(d)
            gold_sets["t"].add(t)
            gold_sets["i"].add(i)
            gold_sets["triple"].add((d, t, i))
        precisions.append(_normed(pred["triple"], gold_sets["triple"], _set_precision))
        recalls.append(_normed(pred["triple"], gold_sets["triple"], _set_recall))
        f1s.append(_f1(precisions[-1], recalls[-1]))
        d_acc.append(_normed(pred["d"], gold_sets["d"], _set_accuracy))
        t_acc.append(_normed(pred["t"], gold_sets["t"], _set_accuracy))
        i_acc.append(_normed(pred["i"], gold_sets["i"], _set_accuracy))
        for key in all_pred:
            all_pred[key].extend(pred[key])
            all_gold[key].extend(gold_sets[key])
        num_pred += len(pred["triple"])
        num_gold += len(gold_sets["triple"])
    if not f1s:
        raise InputError("hard_match_evaluation: no prediction belongs to a gold document.")

    def onto(key: str) -> tuple[float, float]:
        predicted, golden = set(all_pred[key]), set(all_gold[key])
        return _normed(predicted, golden, _set_precision), _normed(predicted, golden, _set_recall)

    all_p, all_r = onto("triple")
    return {
        "num_sample": len(f1s), "missing": len(predictions) - len(f1s), "num_gold_tp": num_gold,
        "num_pred": num_pred,
        "sample": {"acc_d": _mean(d_acc), "acc_t": _mean(t_acc), "acc_i": _mean(i_acc), "tp_p": _mean(precisions),
                   "tp_r": _mean(recalls), "tp_micro_f1": _mean(f1s),
                   "tp_macro_f1": _f1(_mean(precisions), _mean(recalls))},
        "ontology": {"f1_d": _f1(*onto("d")), "f1_t": _f1(*onto("t")), "f1_i": _f1(*onto("i")), "all_p": all_p,
                     "all_r": all_r, "onto_f1": _f1(all_p, all_r)},
    }
