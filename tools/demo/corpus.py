"""Deterministic generators of demo training text built from the fact tables in `tools.demo.facts`.

Every passage is made by filling a template with entities that satisfy a true relation, so:
- the facts a sentence states are known (and checked against `facts.all_facts()` by the tests);
- entity spans are recorded while the text is assembled, never found by string search, so they are exact;
- classification labels follow from the template's topic, so they are true by construction.

Held-out data uses different templates (every fifth of each topic), a different random stream and, for the NER and
classification sets, drug-disease, drug-adverse-effect and gene-disease pairs that the training split never
shows.
"""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .facts import DISEASE_BY_NAME, DISEASES, DRUG_BY_NAME, DRUGS, GENES, Fact, GeneKind

Split = Literal["train", "heldout", "all"]
Kind = Literal["lm", "ner", "classification"]

CLASSIFICATION_LABELS: tuple[str, ...] = ("treatment", "adverse effect", "genetics")
NER_LABELS: tuple[str, ...] = ("Chemical", "Disease")
TOPICS: tuple[str, ...] = ("treatment", "adverse effect", "genetics", "pathogen", "definition")

# Slot name -> entity label of what fills it (None: plain text such as a drug-class phrase).
SLOT_LABELS: dict[str, str | None] = {
    "drug": "Chemical",
    "disease": "Disease",
    "disease2": "Disease",
    "effect": "Disease",
    "effect2": "Disease",
    "gene": "Gene",
    "pathogen": "Pathogen",
    "drug_class": None,
    "disease_desc": None,
}

_HELDOUT_EVERY = 5  # every fifth template of a topic is reserved for held-out data
_HELDOUT_PAIR_MODULUS = 6  # about one relation pair in six is never shown to the NER/classification training split
_ABBREVIATION_RATE = 0.25
_SYNONYM_RATE = 0.3
_LM_ABSTRACT_RATE = 0.2


@dataclass(frozen=True)
class Template:
    """A sentence pattern of one topic; `gene_kinds` limits genetics wording to the links it is true for."""

    topic: str
    text: str
    gene_kinds: tuple[GeneKind, ...] | None = None

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(field for _, field, _, _ in string.Formatter().parse(self.text) if field)


@dataclass(frozen=True)
class Mention:
    """A character span [start, end) of one entity; `name` is its canonical table name (synonyms resolved)."""

    start: int
    end: int
    label: str
    name: str


@dataclass(frozen=True)
class Passage:
    """Generated text with every entity span it contains and the facts it states."""

    text: str
    mentions: tuple[Mention, ...]
    facts: tuple[Fact, ...]
    topic: str


_ALL_KINDS: tuple[GeneKind, ...] = ("mendelian", "risk", "driver", "mediator")
_M, _R, _D, _X = ("mendelian",), ("risk",), ("driver",), ("mediator",)

_TREATMENT = (
    "{drug} is best used for the treatment of {disease}.",
    "{drug} is used to treat {disease}.",
    "{drug} is indicated for the treatment of {disease}.",
    "{drug} is an effective treatment for {disease}.",
    "{drug} is widely prescribed for {disease}.",
    "Patients with {disease} are commonly treated with {drug}.",
    "{drug} is frequently used in patients with {disease}.",
    "The efficacy of {drug} in {disease} has been demonstrated in clinical trials.",
    "{drug} remains an important therapeutic option for {disease}.",
    "{disease} can be treated with {drug}.",
    "{drug} is commonly used in the management of {disease}.",
    "We evaluated the efficacy of {drug} for the treatment of {disease}.",
    "{drug} improves symptoms in many patients with {disease}.",
    "The use of {drug} for {disease} is well established.",
    "{disease} is often managed with {drug}.",
    "Clinical studies have shown that {drug} is effective against {disease}.",
    "These findings support the use of {drug} in patients with {disease}.",
    "{drug} is best used for the treatment of {disease} and {disease2}.",
    "{drug} is used to treat {disease} and {disease2}.",
    "{drug} is indicated for {disease} as well as {disease2}.",
    "Clinical indications for {drug} include {disease} and {disease2}.",
    "{drug}, {drug_class}, is used in the treatment of {disease}.",
    "{drug} is {drug_class} used to treat {disease}.",
    "As {drug_class}, {drug} is effective in {disease}.",
    "In this study, {drug} was administered to patients with {disease}.",
    "In conclusion, {drug} is an effective option for {disease}.",
)

_ADVERSE = (
    "{drug} can cause {effect}.",
    "{effect} is a known adverse effect of {drug}.",
    "{effect} is a well-recognized side effect of {drug} therapy.",
    "Treatment with {drug} was associated with {effect}.",
    "Patients receiving {drug} should be monitored for {effect}.",
    "Treatment with {drug} was associated with {effect} in patients with {disease}.",
    "Adverse effects of {drug} include {effect} and {effect2}.",
    "{drug} use has been linked to an increased risk of {effect}.",
    "Cases of {effect} induced by {drug} have been described.",
    "{effect} was reported in patients treated with {drug}.",
    "The risk of {effect} should be considered before prescribing {drug}.",
    "{effect} may occur during treatment with {drug}.",
    "Although {drug} is effective for {disease}, it can cause {effect}.",
    "We report a case of {effect} associated with {drug}.",
    "In patients with {disease}, {drug} therapy was complicated by {effect}.",
    "{effect} and {effect2} are known adverse effects of {drug}.",
    "{drug}, {drug_class}, may cause {effect}.",
    "{effect} has been observed as an adverse reaction to {drug}.",
    "Clinicians prescribing {drug} for {disease} should be aware of the risk of {effect}.",
    "The incidence of {effect} was higher among patients treated with {drug}.",
)

# Ordered so that every gene kind has templates in both the training and the held-out fifth.
_GENETICS: tuple[tuple[tuple[GeneKind, ...], str], ...] = (
    (_ALL_KINDS, "{gene} is associated with {disease}."),
    (_M, "Mutations in the {gene} gene cause {disease}."),
    (_R, "Carriers of {gene} variants have an increased risk of {disease}."),
    (_D, "Somatic alterations in {gene} have been identified as drivers of {disease}."),
    (_X, "Elevated levels of {gene} have been observed in patients with {disease}."),
    (_ALL_KINDS, "{gene} has been implicated in the pathogenesis of {disease}."),
    (_M, "{disease} is caused by mutations in the {gene} gene."),
    (_R, "Germline variants in {gene} increase susceptibility to {disease}."),
    (_D, "Alterations in {gene} are found in a subset of patients with {disease}."),
    (_M, "{disease} results from pathogenic variants in {gene}."),
    (_ALL_KINDS, "The role of {gene} in {disease} has been extensively studied."),
    (_X, "{gene} is a key proinflammatory cytokine in {disease}."),
    (_R, "{gene} is a well-established susceptibility gene for {disease}."),
    (_M + _R + _D, "The {gene} gene has been linked to {disease}."),
    (_D, "Oncogenic {gene} signaling contributes to {disease}."),
    (_X, "{gene} contributes to tissue damage in {disease}."),
    (_D, "Molecular testing for {gene} alterations is used in {disease}."),
    (_M, "Genetic testing for {gene} mutations can confirm a diagnosis of {disease}."),
    (_R, "Genetic studies have linked {gene} to {disease}."),
    (_R, "Inherited variants in {gene} are a risk factor for {disease}."),
)

_PATHOGEN = (
    "{disease} is {disease_desc} caused by {pathogen}.",
    "{disease} is caused by {pathogen}.",
    "{pathogen} can cause {disease}.",
    "Patients with {disease} are infected with {pathogen}.",
    "{disease} results from infection with {pathogen}.",
)

_DEFINITION = (
    "{disease} is {disease_desc}.",
    "{drug} is {drug_class}.",
    "{disease}, {disease_desc}, was the focus of this study.",
    "{drug} is classified as {drug_class}.",
    "{drug}, {drug_class}, is widely used in clinical practice.",
    "{disease} is known to be {disease_desc}.",
    "{drug} is {drug_class} that is widely used in clinical practice.",
    "{disease} is considered {disease_desc}.",
    "We reviewed the pharmacology of {drug}, {drug_class}.",
    "{disease} is generally regarded as {disease_desc}.",
)

TEMPLATES: dict[str, tuple[Template, ...]] = {
    "treatment": tuple(Template("treatment", t) for t in _TREATMENT),
    "adverse effect": tuple(Template("adverse effect", t) for t in _ADVERSE),
    "genetics": tuple(Template("genetics", t, kinds) for kinds, t in _GENETICS),
    "pathogen": tuple(Template("pathogen", t) for t in _PATHOGEN),
    "definition": tuple(Template("definition", t) for t in _DEFINITION),
}


def templates(topic: str, split: Split = "all") -> tuple[Template, ...]:
    """The templates of `topic` that `split` may use (held-out: every fifth; train: the rest)."""
    every = TEMPLATES[topic]
    if split == "all":
        return every
    held = split == "heldout"
    return tuple(t for i, t in enumerate(every) if (i % _HELDOUT_EVERY == _HELDOUT_EVERY - 1) == held)


def is_heldout_pair(subject: str, obj: str) -> bool:
    """Whether a relation pair is reserved for held-out data (stable across runs: crc32, not `hash`)."""
    return zlib.crc32(f"{subject}\t{obj}".encode()) % _HELDOUT_PAIR_MODULUS == 0


@dataclass(frozen=True)
class _Relations:
    treats: dict[str, tuple[str, ...]]
    adverse: dict[str, tuple[str, ...]]
    genes: tuple[tuple[str, str, GeneKind], ...]
    pathogens: tuple[tuple[str, str], ...]
    described: tuple[str, ...]


def _relations(drop_heldout_pairs: bool) -> _Relations:
    keep = (lambda a, b: not is_heldout_pair(a, b)) if drop_heldout_pairs else (lambda a, b: True)
    treats = {d.name: tuple(x for x in d.treats if keep(d.name, x)) for d in DRUGS}
    adverse = {d.name: tuple(x for x in d.adverse_effects if keep(d.name, x)) for d in DRUGS}
    return _Relations(
        treats={k: v for k, v in treats.items() if v},
        adverse={k: v for k, v in adverse.items() if v},
        genes=tuple((g.name, d, g.kind) for g in GENES for d in g.diseases if keep(g.name, d)),
        pathogens=tuple((d.name, d.pathogen) for d in DISEASES if d.pathogen),
        described=tuple(d.name for d in DISEASES if d.description),
    )


def _assign(tpl: Template, rel: _Relations, rng: random.Random, drug: str | None,
            disease: str | None) -> dict[str, str] | None:
    """Choose entities for the template's slots that make it true, or None when none fit the constraints."""
    slots = tpl.slots
    if "drug" in slots and tpl.topic != "definition":
        n_ind = ("disease" in slots) + ("disease2" in slots)
        n_eff = ("effect" in slots) + ("effect2" in slots)
        options = [d for d in DRUG_BY_NAME if (drug is None or d == drug)
                   and len(rel.treats.get(d, ())) >= n_ind and len(rel.adverse.get(d, ())) >= n_eff
                   and (disease is None or disease in rel.treats.get(d, ()))]
        if not options:
            return None
        chosen = rng.choice(options)
        out = {"drug": chosen, "drug_class": DRUG_BY_NAME[chosen].drug_class}
        if n_ind:
            indications = list(rel.treats[chosen])
            first = disease or rng.choice(indications)
            out["disease"] = first
            if n_ind == 2:
                out["disease2"] = rng.choice([x for x in indications if x != first])
        if n_eff:
            out.update(zip(("effect", "effect2"), rng.sample(rel.adverse[chosen], n_eff)))
        return out
    if tpl.topic == "genetics":
        triples = [t for t in rel.genes if t[2] in (tpl.gene_kinds or ()) and disease in (None, t[1])]
        if not triples or drug is not None:
            return None
        gene, dz, _ = rng.choice(triples)
        return {"gene": gene, "disease": dz}
    if tpl.topic == "pathogen":
        pairs = [p for p in rel.pathogens if disease in (None, p[0])]
        if not pairs or drug is not None:
            return None
        dz, pathogen = rng.choice(pairs)
        return {"disease": dz, "pathogen": pathogen, "disease_desc": DISEASE_BY_NAME[dz].description or ""}
    if "drug" in slots:  # drug definition
        if disease is not None:
            return None
        chosen = drug or rng.choice(list(DRUG_BY_NAME))
        return {"drug": chosen, "drug_class": DRUG_BY_NAME[chosen].drug_class}
    # disease definition
    options = [d for d in rel.described if disease in (None, d)]
    if not options or drug is not None:
        return None
    dz = rng.choice(options)
    return {"disease": dz, "disease_desc": DISEASE_BY_NAME[dz].description or ""}


def _stated_facts(slots: frozenset[str], values: dict[str, str]) -> tuple[Fact, ...]:
    """The facts a filled template states, derived from which slots it uses."""
    facts: list[Fact] = []
    drug, disease = values.get("drug"), values.get("disease")
    if drug:
        facts += [Fact("treats", drug, values[s]) for s in ("disease", "disease2") if s in slots]
        facts += [Fact("adverse_effect", drug, values[s]) for s in ("effect", "effect2") if s in slots]
        if "drug_class" in slots:
            facts.append(Fact("drug_class", drug, values["drug_class"]))
    if "gene" in slots:
        facts.append(Fact("gene_disease", values["gene"], values["disease"]))
    if "pathogen" in slots:
        facts.append(Fact("caused_by", values["disease"], values["pathogen"]))
    if disease and "disease_desc" in slots:
        facts.append(Fact("disease_description", disease, values["disease_desc"]))
    return tuple(facts)


def _surface(slot: str, name: str, rng: random.Random) -> list[tuple[str, str | None, str]]:
    """How a slot value is written, as (text, label, canonical name) segments; abbreviations are their own span."""
    label = SLOT_LABELS[slot]
    if label == "Chemical":
        drug = DRUG_BY_NAME[name]
        text = rng.choice(drug.synonyms) if drug.synonyms and rng.random() < _SYNONYM_RATE else name
        if drug.abbreviation and text == name and rng.random() < _ABBREVIATION_RATE:
            return [(text, label, name), (" (", None, ""), (drug.abbreviation, label, name), (")", None, "")]
        return [(text, label, name)]
    if label == "Disease":
        abbreviation = DISEASE_BY_NAME[name].abbreviation
        if abbreviation and rng.random() < _ABBREVIATION_RATE:
            return [(name, label, name), (" (", None, ""), (abbreviation, label, name), (")", None, "")]
    return [(name, label, name)]


def _render(tpl: Template, values: dict[str, str], rng: random.Random) -> Passage:
    pieces: list[str] = []
    mentions: list[Mention] = []
    pos = 0
    for literal, field, _, _ in string.Formatter().parse(tpl.text):
        segments: list[tuple[str, str | None, str]] = [(literal, None, "")]
        if field:
            segments += _surface(field, values[field], rng)
        for text, label, name in segments:
            if label:
                mentions.append(Mention(pos, pos + len(text), label, name))
            pieces.append(text)
            pos += len(text)
    text = "".join(pieces)
    # Sentence-initial capital; ASCII only, so "β-thalassemia" and "5-fluorouracil" keep their form and spans
    # keep their length.
    if text[0] in string.ascii_lowercase:
        text = text[0].upper() + text[1:]
    return Passage(text, tuple(mentions), _stated_facts(tpl.slots, values), tpl.topic)


def _sentence(rng: random.Random, rel: _Relations, split: Split, topic: str, *, drug: str | None = None,
              disease: str | None = None) -> Passage | None:
    """One sentence of `topic`; with `drug`/`disease` given, only templates that mention that entity are used."""
    candidates = [t for t in templates(topic, split)
                  if (drug is None or "drug" in t.slots) and (disease is None or "disease" in t.slots)]
    rng.shuffle(candidates)
    for tpl in candidates:
        values = _assign(tpl, rel, rng, drug, disease)
        if values is not None:
            return _render(tpl, values, rng)
    return None


def _join(passages: Sequence[Passage], topic: str) -> Passage:
    mentions: list[Mention] = []
    offset = 0
    for p in passages:
        mentions += [Mention(m.start + offset, m.end + offset, m.label, m.name) for m in p.mentions]
        offset += len(p.text) + 1
    facts = tuple(dict.fromkeys(f for p in passages for f in p.facts))
    return Passage(" ".join(p.text for p in passages), tuple(mentions), facts, topic)


def _abstract(rng: random.Random, rel: _Relations, split: Split) -> Passage:
    """A short abstract-like paragraph about one drug or one disease (3-5 sentences sharing the focus entity)."""
    plan: list[tuple[str, dict[str, str]]]
    if rng.random() < 0.5:
        drug = rng.choice([d for d in rel.treats if d in rel.adverse])
        plan = [("definition", {"drug": drug}), ("treatment", {"drug": drug}), ("adverse effect", {"drug": drug})]
        plan += [(rng.choice(["treatment", "adverse effect"]), {"drug": drug})] * rng.randint(0, 2)
    else:
        disease = rng.choice(sorted({d for ds in rel.treats.values() for d in ds}))
        opener = "pathogen" if DISEASE_BY_NAME[disease].pathogen and rng.random() < 0.6 else "definition"
        plan = [(opener, {"disease": disease}), ("genetics", {"disease": disease})]
        plan += [("treatment", {"disease": disease})] * rng.randint(1, 3)
    sentences = [s for topic, focus in plan if (s := _sentence(rng, rel, split, topic, **focus)) is not None]
    # the focus always has a treatment sentence, so an abstract is never empty
    return _join(sentences, "abstract")


def _rng(kind: str, split: Split, seed: int | random.Random) -> random.Random:
    # Each kind and split gets its own stream, so train and held-out never share random draws.
    base = seed.random() if isinstance(seed, random.Random) else seed
    return random.Random(f"biogpt-demo/{kind}/{split}/{base}")


def _weighted_topic(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


_LM_WEIGHTS = {"treatment": 0.35, "adverse effect": 0.25, "genetics": 0.15, "pathogen": 0.1, "definition": 0.15}
_NER_WEIGHTS = {"treatment": 0.35, "adverse effect": 0.35, "genetics": 0.15, "pathogen": 0.05, "definition": 0.1}


def _unconstrained(rng: random.Random, rel: _Relations, split: Split, topic: str) -> Passage:
    passage = _sentence(rng, rel, split, topic)
    if passage is None:  # every topic has templates and entities in every split; guard against table edits
        raise ValueError(f"no {topic!r} sentence can be generated for split {split!r}")
    return passage


def lm_passages(n: int, seed: int | random.Random, split: Split = "all") -> list[Passage]:
    """`n` language-model passages (single sentences, and about one in five a short abstract), with their facts.

    The LM splits differ by template only: the demo LM must learn every fact to answer prompts, so no pair is held out.
    """
    rng, rel = _rng("lm", split, seed), _relations(drop_heldout_pairs=False)
    return [_abstract(rng, rel, split) if rng.random() < _LM_ABSTRACT_RATE
            else _unconstrained(rng, rel, split, _weighted_topic(rng, _LM_WEIGHTS)) for _ in range(n)]


def lm_sentences(n: int, seed: int | random.Random, split: Split = "all") -> list[str]:
    """`n` texts for causal-LM training: true biomedical sentences and short abstracts in PubMed style."""
    return [p.text for p in lm_passages(n, seed, split)]


def ner_passages(n: int, seed: int | random.Random, split: Split = "all") -> list[Passage]:
    """`n` single sentences with every entity span (Chemical, Disease, Gene, Pathogen) and their facts."""
    rng, rel = _rng("ner", split, seed), _relations(drop_heldout_pairs=split == "train")
    return [_unconstrained(rng, rel, split, _weighted_topic(rng, _NER_WEIGHTS)) for _ in range(n)]


def ner_examples(n: int, seed: int | random.Random, split: Split = "all",
                 labels: Sequence[str] = NER_LABELS) -> list[dict[str, Any]]:
    """`n` NER examples `{"text", "entities": [{"start", "end", "label"}]}` with spans of the given labels only.

    Genes and pathogens still occur in the text; by default they are unlabelled (neither Chemical nor Disease),
    as in BC5CDR. Pass `labels=("Chemical", "Disease", "Gene")` for a three-class set.
    """
    return [{"text": p.text,
             "entities": [{"start": m.start, "end": m.end, "label": m.label} for m in p.mentions if m.label in labels]}
            for p in ner_passages(n, seed, split)]


def classification_passages(n: int, seed: int | random.Random, split: Split = "all") -> list[Passage]:
    """`n` sentences whose topic is one of CLASSIFICATION_LABELS, equally many of each, in shuffled order."""
    rng, rel = _rng("classification", split, seed), _relations(drop_heldout_pairs=split == "train")
    out = [_unconstrained(rng, rel, split, CLASSIFICATION_LABELS[i % len(CLASSIFICATION_LABELS)]) for i in range(n)]
    rng.shuffle(out)
    return out


def classification_examples(n: int, seed: int | random.Random, split: Split = "all") -> list[dict[str, str]]:
    """`n` examples `{"text", "label"}`; the label says what the sentence is about (treatment, adverse effect,
    genetics) and is true by construction."""
    return [{"text": p.text, "label": p.topic} for p in classification_passages(n, seed, split)]


_GENERATORS: dict[str, Callable[..., list[Any]]] = {
    "lm": lm_sentences,
    "ner": ner_examples,
    "classification": classification_examples,
}


def train_heldout(kind: Kind, n_train: int, n_heldout: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Train and held-out sets of one kind: disjoint templates, separate random streams and (NER, classification)
    relation pairs the training split never contains, so held-out metrics measure generalisation."""
    generate = _GENERATORS[kind]
    return generate(n_train, seed, "train"), generate(n_heldout, seed, "heldout")
