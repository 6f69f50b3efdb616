"""The paper's downstream tasks (biogpt.tasks.relations, pubmedqa, hoc, evaluate): inputs, parsers and metrics as
microsoft/BioGPT's scripts compute them, and each task run end to end on a tiny converted checkpoint.

Expected values are hand-computed, invariants (gold targets parsed back score 1.0), or sklearn (the original's
metric library) when it is installed. The end-to-end models are "scripted" (tests/fairseq_fixtures.py): greedy
decoding writes a chosen answer, so the parsed relations, spans, labels and probabilities are known in advance.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import fairseq_fixtures as ff
from biogpt.fairseq import convert_fairseq_checkpoint
from biogpt.modeling import BioGptForCausalLM
from biogpt.tasks.evaluate import main as eval_main
from biogpt.tasks.evaluate import read_hoc_tsv, run_main, run_task, wants_task_run
from biogpt.tasks.hoc import HOC_CLASSES, hoc_micro_f1, hoc_source, hoc_target, parse_hoc
from biogpt.tasks.prompted import answer_text, decode_new_tokens
from biogpt.tasks.pubmedqa import accuracy, parse_pubmedqa, pubmedqa_source, pubmedqa_target
from biogpt.tasks.relations import (FAILED, bc5cdr_ids, bc5cdr_scores, bc5cdr_target, find_spans,
                                    hard_match_evaluation, longest_names, normalize_name, parse_bc5cdr,
                                    parse_triples, sort_triples, source_text, title_abstract, triple_target)
from biogpt.tokenization import BioGptTokenizer

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------------------
# Inputs and targets
# ----------------------------------------------------------------------------------------------------------------
def test_document_texts_as_rebuild_data_builds_them():
    assert title_abstract("Lithium toxicity", "Text.") == "Lithium toxicity. Text."
    assert title_abstract("Lithium toxicity.", "Text.") == "Lithium toxicity. Text."
    assert title_abstract("Is lithium toxic?", "Text.") == "Is lithium toxic? Text."
    assert title_abstract("Lithium (Li)", "Text.") == "Lithium (Li) Text."
    assert source_text("ddi", abstract="  A\nB.\n") == "A B."
    assert pubmedqa_source(" Does it? ", ["One  two\n", " three"]) == "question: Does it? context: One two three "
    assert hoc_source("Cells grow") == "Cells grow." and hoc_source("Cells grow .") == "Cells grow ."


def test_targets_use_longest_names_and_drug_order():
    assert longest_names({"li": "D1", "lithium": "D1", "lithia": "D1", "x": "D2"}) == {"D1": "lithium", "D2": "x"}
    target = bc5cdr_target([{"chemical": "D1", "disease": "D9"}, {"chemical": "D2", "disease": "D9"}],
                           {"li": "D1", "lithium": "D1", "x": "D2"}, {"toxicity": "D9"})
    assert target == ("the relation between lithium and toxicity exists; "
                      "the relation between x and toxicity exists.")
    content = "warfarin and aspirin interact; heparin too"
    triples = [{"drug": "warfarin", "target": "b", "interaction": "effect"},
               {"drug": "heparin", "target": "c", "interaction": "advise"},
               {"drug": "Aspirin", "target": "Warfarin", "interaction": "Mechanism"}]
    # "Aspirin" is not found in the lowercased content (-1), so it sorts first.
    assert triple_target(sort_triples(triples, content)) == (
        "the interaction between aspirin and warfarin is mechanism; the interaction between warfarin and b is "
        "effect; the interaction between heparin and c is advise.")


# ----------------------------------------------------------------------------------------------------------------
# Parsers: the original regex behaviour
# ----------------------------------------------------------------------------------------------------------------
def test_bc5cdr_splits_on_every_semicolon_and_ddi_only_on_semicolon_space():
    answer = "the relation between a and b exists;the relation between c and d exists."
    assert parse_bc5cdr(answer) == [("a", "b"), ("c", "d")]
    answer = "the interaction between a and b is effect;the interaction between c and d is int."
    # One sentence for DDI: greedy groups take the last ' and ' / ' is ' they can.
    assert parse_triples(answer) == [("a and b is effect;the interaction between c", "int", "d")]
    assert parse_triples("the interaction between a and b is effect; the interaction between c and d is int.") == [
        ("a", "effect", "b"), ("c", "int", "d")]
    assert parse_bc5cdr("the relation between a and b and c exists.") == [("a and b", "c")]


def test_failed_answers():
    assert parse_triples("no relation here.") == [FAILED] == [("failed", "failed", "failed")]
    assert parse_bc5cdr("no relation here.") == []
    assert parse_pubmedqa("the answer is yes.") == "failed"
    assert parse_hoc("the kind of this document is empty.") == "failed"
    assert [parse_pubmedqa(pubmedqa_target(label)) for label in ("yes", "no", "maybe")] == ["yes", "no", "maybe"]
    assert parse_hoc("the type of this document is a|b.") == "a|b"


def test_entity_spans_are_every_case_insensitive_whole_word_occurrence():
    text = "ACE inhibitors, not acetaminophen: an ace\ninhibitor. Ace  Inhibitors again."
    assert find_spans(text, "ace") == [(0, 3), (38, 41), (53, 56)]
    assert find_spans(text, "ace inhibitors") == [(0, 14), (53, 68)]
    assert find_spans(text, "ace inhibitor") == [(38, 51)]
    assert find_spans(text, "5-ht") == [] and find_spans(text, " ") == []
    assert find_spans("(DVT) and dvt", "(dvt)") == [(0, 5)]


def test_text_after_the_last_learned_prompt_run():
    assert answer_text("learned1 learned2 the answer to the question given the context is yes.") == (
        "the answer to the question given the context is yes")
    assert parse_pubmedqa("x learned8 learned9 the answer to the question given the context is no .") == "no"
    # postprocess.py's other prefixes never apply: the prompt run always matches first in the original line.
    assert answer_text("we can conclude that the type of this document is empty.") == (
        "we can conclude that the type of this document is empty")


# ----------------------------------------------------------------------------------------------------------------
# Metrics, hand-computed
# ----------------------------------------------------------------------------------------------------------------
def test_bc5cdr_corpus_scores():
    entities = {"chemical2id": {"lithium": "C1"}, "disease2id": {"cyanosis": "D1", "toxicity": "D2"}}
    pairs = bc5cdr_ids([("lithium", "cyanosis"), ("lithium", "toxicity"), ("salt", "toxicity")], entities)
    assert pairs == [("C1", "D1"), ("C1", "D2"), ("-1", "D2")]
    scores = bc5cdr_scores({"p1": pairs, "p2": [("C1", "D1")]},
                           {"p1": [("C1", "D1"), ("C2", "D2")], "p2": [("C1", "D1")], "p3": [("C3", "D3")]})
    # predicted 4 distinct (pmid, c, d), gold 4, 2 shared
    assert scores == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "tp": 2, "fp": 2, "fn": 2}


def test_hard_match_evaluation_figures():
    gold = {"d1": {"triples": [{"drug": "Aspirin", "target": "Warfarin", "interaction": "effect"},
                               {"drug": "ibuprofen", "target": "lithium", "interaction": "mechanism"}]},
            "d2": {"triples": [{"drug": "x", "target": "y", "interaction": "advise"}]}}
    predictions = [[("aspirin", "effect", "warfarin")], [("x", "advise", "y"), ("x", "int", "z")],
                   [("q", "int", "r")]]
    result = hard_match_evaluation(predictions, ["d1", "d2", "not-in-gold"], gold)
    assert (result["num_sample"], result["missing"], result["num_gold_tp"], result["num_pred"]) == (2, 1, 3, 3)
    # d1: P 1, R 1/2, F1 2/3; d2: P 1/2, R 1, F1 2/3. acc: d (1/2, 1), t (1/2, 1/2), i (1/2, 1/2).
    assert result["sample"] == pytest.approx({"acc_d": 0.75, "acc_t": 0.5, "acc_i": 0.5, "tp_p": 0.75,
                                              "tp_r": 0.75, "tp_micro_f1": 2 / 3, "tp_macro_f1": 0.75})
    # corpus sets: triples 2 of 3 each way; drugs P 1 R 2/3; targets and types 2/3 each way.
    assert result["ontology"] == pytest.approx({"f1_d": 0.8, "f1_t": 2 / 3, "f1_i": 2 / 3, "all_p": 2 / 3,
                                                "all_r": 2 / 3, "onto_f1": 2 / 3})
    failed = hard_match_evaluation([[FAILED]], ["d2"], gold)
    assert failed["num_pred"] == 0 and failed["sample"]["tp_p"] == 0.0 and failed["sample"]["acc_d"] == 0.0


def test_roman_numeral_and_parenthesis_normalisation():
    assert normalize_name("interleukin2") == "interleukinII"
    assert normalize_name("interleukin-2") == "interleukinII"
    assert normalize_name("cyp12") == "cyp12"  # two digits: unchanged
    assert normalize_name("b-type natriuretic peptide") == "bnatriureticpeptide"
    gold = {"d": {"triples": [{"drug": "Tumor necrosis factor (TNF)", "target": "interleukin-2",
                               "interaction": "mechanism"}]}}
    by_abbreviation = hard_match_evaluation([[("TNF", "mechanism", "interleukin 2")]], ["d"], gold)
    by_name = hard_match_evaluation([[("tumor necrosis factor", "mechanism", "interleukin-2")]], ["d"], gold)
    no_match = hard_match_evaluation([[("tnf-alpha", "mechanism", "interleukin-2")]], ["d"], gold)
    assert by_abbreviation["sample"]["tp_micro_f1"] == by_name["sample"]["tp_micro_f1"] == 1.0
    assert no_match["sample"]["tp_micro_f1"] == 0.0


def test_hoc_micro_f1_and_pubmedqa_accuracy():
    gold = ["activating invasion and metastasis|cellular energetics", "empty", "inducing angiogenesis",
            "cellular energetics"]
    predicted = ["activating invasion and metastasis", "empty", "failed", "cellular energetics|unknown label"]
    # tp 3 (row 1 one label, row 2, row 4), fp 0 (unknown labels are ignored), fn 2 -> 6 / 8
    assert hoc_micro_f1(predicted, gold) == {"micro_f1": 0.75, "tp": 3, "fp": 0, "fn": 2}
    assert hoc_micro_f1(["failed"], ["unknown"])["micro_f1"] == 0.0
    assert accuracy(["yes", "no", "failed", "maybe"], ["yes", "yes", "no", "maybe"]) == 0.5


def test_metrics_agree_with_sklearn():
    pytest.importorskip("sklearn", reason="scikit-learn (the original's metric library) is not installed")
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    rng = random.Random(0)
    labels = list(HOC_CLASSES) + ["failed"]
    gold = ["|".join(rng.sample(labels[:-1], rng.randint(1, 3))) for _ in range(200)]
    predicted = ["|".join(rng.sample(labels, rng.randint(1, 3))) for _ in range(200)]
    binarizer = MultiLabelBinarizer(classes=list(HOC_CLASSES))
    with pytest.warns(UserWarning):  # sklearn warns about the unknown "failed" and ignores it
        p = binarizer.fit_transform([[w.strip() for w in line.split("|")] for line in predicted])
    g = binarizer.fit_transform([[w.strip() for w in line.split("|")] for line in gold])
    assert hoc_micro_f1(predicted, gold)["micro_f1"] == pytest.approx(f1_score(g, p, average="micro"))
    answers = [rng.choice(["yes", "no", "maybe", "failed"]) for _ in range(50)]
    truth = [rng.choice(["yes", "no", "maybe"]) for _ in range(50)]
    assert accuracy(answers, truth) == pytest.approx(accuracy_score(truth, answers))


# ----------------------------------------------------------------------------------------------------------------
# Gold targets round-trip on the released task data
# ----------------------------------------------------------------------------------------------------------------
def _tasks(shared_dir: Path, name: str) -> dict:
    return json.loads((shared_dir / "data/biogpt-tasks" / name).read_text(encoding="utf-8"))


def test_bc5cdr_gold_targets_score_one_where_names_parse_back(shared_dir):
    data, entities = _tasks(shared_dir, "bc5cdr-re/valid.json"), _tasks(shared_dir, "bc5cdr-re/valid.entities.json")
    clean, predicted, gold = [], {}, {}
    for pmid, doc in data.items():
        chemicals, diseases = longest_names(doc["chemical2id"]), longest_names(doc["disease2id"])
        target = bc5cdr_target(doc["relations"], doc["chemical2id"], doc["disease2id"])
        predicted[pmid] = bc5cdr_ids(parse_bc5cdr(target), entities)
        gold[pmid] = [(r["chemical"], r["disease"]) for r in doc["relations"]]
        # The original cannot read back a name holding ' and ' or ';' (its regex and split), nor one the corpus-wide
        # name dictionary maps to another id than this document's.
        if all(" and " not in name and ";" not in name and entities[kind].get(name) == entity_id
               for r in doc["relations"]
               for kind, name, entity_id in (("chemical2id", chemicals[r["chemical"]], r["chemical"]),
                                             ("disease2id", diseases[r["disease"]], r["disease"]))):
            clean.append(pmid)
    assert len(data) == 500 and len(clean) >= 490
    scores = bc5cdr_scores({p: predicted[p] for p in clean}, {p: gold[p] for p in clean})
    assert (scores["precision"], scores["recall"], scores["f1"]) == (1.0, 1.0, 1.0)
    everything = bc5cdr_scores(predicted, gold)
    assert everything["tp"] == 1000 and everything["fn"] == 9  # 9 of 1009 pairs hit those limits of the original


@pytest.mark.parametrize("name", ["ddi", "kd-dti"])
def test_triple_gold_targets_score_one(shared_dir, name):
    data = _tasks(shared_dir, f"{name}/valid.json")
    predictions, ids, clean = [], [], []
    for key, doc in data.items():
        if not doc["triples"]:
            continue  # dropped by rebuild_data.py
        content = source_text(name, title=doc.get("title"), abstract=doc["abstract"]).lower()
        predictions.append(parse_triples(triple_target(sort_triples(doc["triples"], content))))
        ids.append(key)
        if all(" and " not in t["drug"] + " " + t["target"] and " is " not in t["target"] for t in doc["triples"]):
            clean.append(len(ids) - 1)
    result = hard_match_evaluation([predictions[i] for i in clean], [ids[i] for i in clean], data)
    assert len(clean) >= len(ids) - 1
    assert set(result["sample"].values()) == set(result["ontology"].values()) == {1.0}


def test_triple_gold_targets_survive_the_real_tokenizer(shared_dir, real_tokenizer):
    data = _tasks(shared_dir, "ddi/valid.json")
    predictions, ids = [], []
    for key, doc in data.items():
        target = triple_target(sort_triples(doc["triples"], source_text("ddi", abstract=doc["abstract"]).lower()))
        generated = decode_new_tokens(real_tokenizer, real_tokenizer(target, add_special_tokens=False)["input_ids"])
        predictions.append(parse_triples(generated))
        ids.append(key)
    assert hard_match_evaluation(predictions, ids, data)["sample"]["tp_micro_f1"] == 1.0


def test_hoc_gold_targets_score_one(shared_dir, real_tokenizer):
    rows = read_hoc_tsv(shared_dir / "data/hoc/valid.tsv")
    assert len(rows) == 4947
    labels = [gold for _, gold in rows]
    assert hoc_micro_f1([parse_hoc(hoc_target(gold)) for gold in labels], labels)["micro_f1"] == 1.0
    decoded = [decode_new_tokens(real_tokenizer, real_tokenizer(hoc_target(gold), add_special_tokens=False)
                                 ["input_ids"]) for gold in labels[:300]]
    assert hoc_micro_f1([parse_hoc(text) for text in decoded], labels[:300])["micro_f1"] == 1.0


# ----------------------------------------------------------------------------------------------------------------
# End to end on scripted checkpoints
# ----------------------------------------------------------------------------------------------------------------
BC5CDR, DDI, KD_DTI, PUBMEDQA, HOC = ff.BC5CDR, ff.DDI, ff.KD_DTI, ff.PUBMEDQA, ff.HOC


@pytest.fixture(scope="module")
def task_vocab(tmp_path_factory):
    """A BPE vocabulary learned on the tasks' texts (every word one token), as learned dir + dict.txt lines."""
    return ff.task_vocab(tmp_path_factory.mktemp("task-bpe"))


def scripted_model(directory: Path, task_vocab, source: str, answer: str, prompts: int, data: str):
    """Convert a scripted checkpoint that answers `answer` to the input built from `source`."""
    src = ff.scripted_task_checkpoint(directory / data, task_vocab, source, answer, prompts, data)
    out = convert_fairseq_checkpoint(src, directory / "converted")
    return BioGptForCausalLM.from_pretrained(out), BioGptTokenizer.from_pretrained(out), out


def test_bc5cdr_relations_end_to_end(tmp_path, task_vocab):
    text = title_abstract(BC5CDR["title"], BC5CDR["abstract"])
    model, tokenizer, _ = scripted_model(tmp_path, task_vocab, text.lower(), BC5CDR["answer"], 9, "RE-BC5CDR")
    result = run_task("relations", model, tokenizer, title=BC5CDR["title"], abstract=BC5CDR["abstract"])
    assert result["task"] == "bc5cdr" and not result["failed"]
    assert result["text"] == ("Lithium carbonate toxicity in a newborn. Cyanosis was seen after lithium carbonate "
                              "exposure.")
    assert result["generated"] == BC5CDR["answer"]
    assert result["relations"] == [{"head": "lithium carbonate", "relation": "CID", "tail": "cyanosis",
                                    "head_type": "Chemical", "tail_type": "Disease",
                                    "head_spans": [(0, 17), (65, 82)], "tail_spans": [(41, 49)]}]
    assert [(e["start"], e["end"], e["type"], e["text"]) for e in result["entities"]] == [
        (0, 17, "Chemical", "Lithium carbonate"), (41, 49, "Disease", "Cyanosis"),
        (65, 82, "Chemical", "lithium carbonate")]


def test_ddi_and_kd_dti_relations_end_to_end(tmp_path, task_vocab):
    ddi_text = "Aspirin increases the effect of warfarin. Avoid aspirin with warfarin."
    model, tokenizer, _ = scripted_model(tmp_path / "ddi", task_vocab, ddi_text.lower(), DDI["answer"], 9, "RE-DDI")
    result = run_task("relations", model, tokenizer, abstract=DDI["abstract"])
    assert result["task"] == "ddi" and result["text"] == ddi_text
    assert result["relations"] == [{"head": "aspirin", "relation": "effect", "tail": "warfarin", "head_type": "Drug",
                                    "tail_type": "Drug", "head_spans": [(0, 7), (48, 55)],
                                    "tail_spans": [(32, 40), (61, 69)]}]

    dti_text = "Imatinib inhibits ABL1. Imatinib is a kinase inhibitor of ABL1 and KIT."
    model, tokenizer, _ = scripted_model(tmp_path / "dti", task_vocab, dti_text.lower(), KD_DTI["answer"], 9,
                                         "RE-DTI")
    result = run_task("relations", model, tokenizer, title=KD_DTI["title"], abstract=KD_DTI["abstract"])
    assert result["task"] == "kd-dti"
    assert [(r["head"], r["relation"], r["tail"], r["head_spans"], r["tail_spans"]) for r in result["relations"]] == [
        ("imatinib", "inhibitor", "abl1", [(0, 8), (24, 32)], [(18, 22), (58, 62)])]
    assert {e["type"] for e in result["entities"]} == {"Drug", "Target"}


def test_pubmedqa_end_to_end_with_answer_probabilities(tmp_path, task_vocab):
    source = pubmedqa_source(PUBMEDQA["question"], PUBMEDQA["context"])
    assert source == "question: Does aspirin prevent stroke? context: Aspirin reduced stroke in trials. "
    model, tokenizer, _ = scripted_model(tmp_path, task_vocab, source, PUBMEDQA["answer"], 9, "QA-PubMedQA")
    result = run_task("pubmedqa", model, tokenizer, question=PUBMEDQA["question"], context=PUBMEDQA["context"])
    assert result["answer"] == "yes" and result["generated"] == PUBMEDQA["answer"]
    probabilities = result["probabilities"]
    assert set(probabilities) == {"yes", "no", "maybe"}
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert probabilities["yes"] > 0.999


def test_hoc_end_to_end_with_label_probabilities(tmp_path, task_vocab):
    model, tokenizer, _ = scripted_model(tmp_path, task_vocab, HOC["text"], HOC["answer"], 1, "DC-HoC")
    result = run_task("hoc", model, tokenizer, HOC["text"])
    assert result["labels"] == ["cellular energetics", "inducing angiogenesis"]
    # Moses detokenization writes the escaped "|" back with spaces around it, as the original's output had them.
    assert result["answer"] == "cellular energetics | inducing angiogenesis"
    probabilities = result["probabilities"]
    assert set(probabilities) == set(HOC_CLASSES)
    assert probabilities["cellular energetics"] > 0.99 and probabilities["inducing angiogenesis"] > 0.99
    assert all(p < 0.01 for label, p in probabilities.items()
               if label not in ("cellular energetics", "inducing angiogenesis"))


def test_eval_bc5cdr_and_ddi_in_process(tmp_path, task_vocab, capsys):
    text = title_abstract(BC5CDR["title"], BC5CDR["abstract"])
    _, _, model_dir = scripted_model(tmp_path / "cdr", task_vocab, text.lower(), BC5CDR["answer"], 9, "RE-BC5CDR")
    data = {"111": {"title": BC5CDR["title"], "abstract": BC5CDR["abstract"],
                    "relations": [{"chemical": "D016651", "disease": "D003490"}],
                    "chemical2id": {"lithium carbonate": "D016651"}, "disease2id": {"cyanosis": "D003490"}},
            "222": {"title": "No relation.", "abstract": "None.", "relations": [], "chemical2id": {},
                    "disease2id": {}}}
    (tmp_path / "valid.json").write_text(json.dumps(data))
    (tmp_path / "valid.entities.json").write_text(json.dumps({"chemical2id": {"lithium carbonate": "D016651"},
                                                               "disease2id": {"cyanosis": "D003490"}}))
    predictions = tmp_path / "cdr.jsonl"
    assert eval_main(["bc5cdr", "--model", str(model_dir), "--data", str(tmp_path / "valid.json"), "--output",
                      str(predictions)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert (metrics["examples"], metrics["dropped_without_relations"], metrics["precision"], metrics["recall"],
            metrics["f1"]) == (1, 1, 1.0, 1.0, 1.0)
    record = json.loads(predictions.read_text())
    assert record["id"] == "111" and record["relations"] == [
        {"chemical": "lithium carbonate", "disease": "cyanosis", "chemical_id": "D016651", "disease_id": "D003490"}]

    _, _, model_dir = scripted_model(tmp_path / "ddi", task_vocab, DDI["abstract"].replace("\n", " ").lower(),
                                     DDI["answer"], 9, "RE-DDI")
    data = {"DDI-1": {"abstract": DDI["abstract"], "pmid": "1",
                      "triples": [{"drug": "Aspirin", "target": "warfarin", "interaction": "effect"},
                                  {"drug": "aspirin", "target": "heparin", "interaction": "advise"}]}}
    (tmp_path / "ddi.json").write_text(json.dumps(data))
    assert eval_main(["ddi", "--model", str(model_dir), "--data", str(tmp_path / "ddi.json"), "--output",
                      str(tmp_path / "ddi.jsonl")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # one of two gold triples: P 1, R 1/2; drugs equal; targets and types 1 of 2
    assert metrics["sample"] == pytest.approx({"acc_d": 1.0, "acc_t": 0.5, "acc_i": 0.5, "tp_p": 1.0, "tp_r": 0.5,
                                               "tp_micro_f1": 2 / 3, "tp_macro_f1": 2 / 3})
    assert json.loads((tmp_path / "ddi.jsonl").read_text())["triple_list_pred"] == [
        {"subject": "aspirin", "relation": "effect", "object": "warfarin"}]
    assert eval_main(["bc5cdr", "--model", str(model_dir), "--data", str(tmp_path / "missing.json")]) == 1
    assert "No such data file" in capsys.readouterr().err


def test_eval_command_line_on_hoc_with_limit(tmp_path, task_vocab):
    _, _, model_dir = scripted_model(tmp_path, task_vocab, HOC["text"], HOC["answer"], 1, "DC-HoC")
    rows = [(HOC["text"], "cellular energetics|inducing angiogenesis"),
            ("Normal cells switch to glycolysis and grow new vessels .", "empty"),
            ("Cells .", "resisting cell death")]
    (tmp_path / "valid.tsv").write_text("".join(f"{s}\t{labels}\n\n" for s, labels in rows))
    predictions = tmp_path / "hoc.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "biogpt", "eval", "hoc", "--model", str(model_dir), "--data",
         str(tmp_path / "valid.tsv"), "--limit", "2", "--output", str(predictions)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads(completed.stdout)
    # Both rows get both labels: tp 2, fp 2 (row 2), fn 1 (row 2's empty) -> 4 / 7
    assert (metrics["examples"], metrics["tp"], metrics["fp"], metrics["fn"]) == (2, 2, 2, 1)
    assert metrics["micro_f1"] == pytest.approx(4 / 7)
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["answer"] for r in records] == ["cellular energetics | inducing angiogenesis"] * 2
    assert [r["gold"] for r in records] == ["cellular energetics|inducing angiogenesis", "empty"]


def test_run_command_prints_the_result(tmp_path, task_vocab, capsys):
    _, _, model_dir = scripted_model(tmp_path, task_vocab, HOC["text"], HOC["answer"], 1, "DC-HoC")
    assert wants_task_run(["--model", "m", "--task", "hoc"]) and wants_task_run(["--task=relations"])
    assert not wants_task_run(["--task", "text-generation"]) and not wants_task_run(["--model", "m"])
    assert run_main(["--task", "hoc", "--model", str(model_dir), "--text", HOC["text"]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["labels"] == ["cellular energetics", "inducing angiogenesis"]
    assert run_main(["--task", "relations", "--model", str(model_dir), "--text", "x"]) == 1
    assert "this is a hoc checkpoint, run it with --task hoc" in capsys.readouterr().err
