"""Hand-written fact tables: drugs, diseases, genes and their true relations (common textbook pharmacology).

These tables are the only source of the demo training text. Names keep their real casing ("Parkinson's disease",
"COVID-19", "TNF-α"); relations are deliberately conservative (well-established indications and adverse effects,
gene-disease associations phrased by how strong they are) so generated sentences never state something false.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

GeneKind = Literal["mendelian", "risk", "driver", "mediator"]


@dataclass(frozen=True)
class Drug:
    """A drug (labelled Chemical): its class phrase (with article), indications and adverse effects."""

    name: str
    drug_class: str
    treats: tuple[str, ...]
    adverse_effects: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()
    abbreviation: str | None = None


@dataclass(frozen=True)
class Disease:
    """A disease or adverse effect (labelled Disease); `description` (with article) and `pathogen` are optional."""

    name: str
    description: str | None = None
    abbreviation: str | None = None
    pathogen: str | None = None


@dataclass(frozen=True)
class Gene:
    """A gene or gene product and the diseases it is associated with.

    `kind` says how strong the link is, so templates can be chosen to match it: "mendelian" (mutations cause the
    disease), "risk" (variants raise susceptibility), "driver" (somatic alterations drive a cancer), "mediator"
    (a cytokine raised in and driving the disease).
    """

    name: str
    kind: GeneKind
    diseases: tuple[str, ...]


class Fact(NamedTuple):
    """One true statement: (relation, subject, object) with canonical names."""

    relation: Literal["treats", "adverse_effect", "gene_disease", "caused_by", "drug_class", "disease_description"]
    subject: str
    object: str


def _drug(name: str, drug_class: str, treats: str, adverse: str = "", *, synonyms: str = "",
          abbreviation: str | None = None) -> Drug:
    # "|"-separated lists keep the table one readable line per drug
    split = lambda s: tuple(x for x in s.split("|") if x)  # noqa: E731
    return Drug(name, drug_class, split(treats), split(adverse), split(synonyms), abbreviation)


DRUGS: tuple[Drug, ...] = (
    # analgesics and anti-inflammatory drugs
    _drug("ibuprofen", "a nonsteroidal anti-inflammatory drug", "pain|fever|inflammation|osteoarthritis",
          "gastrointestinal bleeding|peptic ulcer|acute kidney injury"),
    _drug("aspirin", "a nonsteroidal anti-inflammatory drug", "pain|fever|inflammation|myocardial infarction",
          "gastrointestinal bleeding|peptic ulcer|Reye's syndrome", synonyms="acetylsalicylic acid"),
    _drug("naproxen", "a nonsteroidal anti-inflammatory drug", "pain|osteoarthritis|rheumatoid arthritis|gout",
          "peptic ulcer|gastrointestinal bleeding"),
    _drug("diclofenac", "a nonsteroidal anti-inflammatory drug", "pain|osteoarthritis",
          "hepatotoxicity|gastrointestinal bleeding"),
    _drug("celecoxib", "a selective cyclooxygenase-2 inhibitor", "osteoarthritis|rheumatoid arthritis|pain",
          "myocardial infarction"),
    _drug("acetaminophen", "an analgesic and antipyretic agent", "pain|fever", "hepatotoxicity",
          synonyms="paracetamol"),
    _drug("morphine", "an opioid analgesic", "pain", "respiratory depression|constipation"),
    _drug("oxycodone", "an opioid analgesic", "pain", "respiratory depression|constipation"),
    _drug("fentanyl", "an opioid analgesic", "pain", "respiratory depression"),
    _drug("colchicine", "an anti-inflammatory alkaloid", "gout", "diarrhea"),
    _drug("allopurinol", "a xanthine oxidase inhibitor", "gout", "Stevens-Johnson syndrome"),
    # diabetes and metabolism
    _drug("metformin", "a biguanide", "type 2 diabetes", "lactic acidosis|diarrhea"),
    _drug("insulin", "a peptide hormone", "type 1 diabetes|type 2 diabetes", "hypoglycemia|weight gain"),
    _drug("glipizide", "a sulfonylurea", "type 2 diabetes", "hypoglycemia|weight gain"),
    _drug("pioglitazone", "a thiazolidinedione", "type 2 diabetes", "heart failure|weight gain"),
    _drug("sitagliptin", "a dipeptidyl peptidase-4 inhibitor", "type 2 diabetes", "pancreatitis"),
    _drug("empagliflozin", "a sodium-glucose cotransporter-2 inhibitor", "type 2 diabetes|heart failure",
          "urinary tract infection"),
    _drug("liraglutide", "a glucagon-like peptide-1 receptor agonist", "type 2 diabetes|obesity",
          "nausea|pancreatitis"),
    _drug("atorvastatin", "a statin", "hypercholesterolemia|coronary artery disease", "myopathy|rhabdomyolysis"),
    _drug("simvastatin", "a statin", "hypercholesterolemia", "myopathy|rhabdomyolysis"),
    _drug("rosuvastatin", "a statin", "hypercholesterolemia|familial hypercholesterolemia", "myopathy"),
    _drug("levothyroxine", "a synthetic thyroid hormone", "hypothyroidism", "atrial fibrillation|osteoporosis"),
    _drug("methimazole", "an antithyroid drug", "hyperthyroidism", "agranulocytosis"),
    _drug("alendronate", "a bisphosphonate", "osteoporosis", "osteonecrosis of the jaw"),
    # cardiovascular drugs
    _drug("lisinopril", "an angiotensin-converting enzyme inhibitor", "hypertension|heart failure",
          "cough|angioedema|hyperkalemia"),
    _drug("enalapril", "an angiotensin-converting enzyme inhibitor", "hypertension|heart failure",
          "cough|angioedema"),
    _drug("losartan", "an angiotensin II receptor blocker", "hypertension|heart failure", "hyperkalemia"),
    _drug("amlodipine", "a calcium channel blocker", "hypertension|angina pectoris", "peripheral edema"),
    _drug("metoprolol", "a β-adrenergic receptor blocker", "hypertension|angina pectoris|heart failure",
          "bradycardia"),
    _drug("propranolol", "a nonselective β-adrenergic receptor blocker", "hypertension|migraine",
          "bradycardia|bronchospasm"),
    _drug("hydrochlorothiazide", "a thiazide diuretic", "hypertension", "hypokalemia|hyponatremia"),
    _drug("furosemide", "a loop diuretic", "heart failure|hypertension", "hypokalemia|ototoxicity"),
    _drug("spironolactone", "a mineralocorticoid receptor antagonist", "heart failure|hypertension",
          "hyperkalemia|gynecomastia"),
    _drug("digoxin", "a cardiac glycoside", "heart failure|atrial fibrillation", "arrhythmia|nausea"),
    _drug("amiodarone", "an antiarrhythmic agent", "atrial fibrillation|ventricular tachycardia",
          "pulmonary fibrosis|hypothyroidism|hepatotoxicity"),
    _drug("warfarin", "an oral anticoagulant", "atrial fibrillation|deep vein thrombosis|pulmonary embolism",
          "hemorrhage"),
    _drug("heparin", "an injectable anticoagulant", "deep vein thrombosis|pulmonary embolism",
          "thrombocytopenia|hemorrhage"),
    _drug("apixaban", "a direct factor Xa inhibitor", "atrial fibrillation|deep vein thrombosis|pulmonary embolism",
          "hemorrhage"),
    _drug("clopidogrel", "a P2Y12 receptor antagonist", "myocardial infarction|stroke", "hemorrhage"),
    _drug("nitroglycerin", "a nitrate vasodilator", "angina pectoris", "headache|hypotension"),
    _drug("sildenafil", "a phosphodiesterase-5 inhibitor", "erectile dysfunction|pulmonary arterial hypertension",
          "headache|hypotension"),
    _drug("epinephrine", "a sympathomimetic catecholamine", "anaphylaxis", "tachycardia|arrhythmia",
          synonyms="adrenaline"),
    # neurology and psychiatry
    _drug("lithium", "a mood stabilizer", "bipolar disorder", "hypothyroidism|tremor|nephrogenic diabetes insipidus"),
    _drug("valproic acid", "an anticonvulsant", "epilepsy|bipolar disorder|migraine",
          "hepatotoxicity|pancreatitis|neural tube defects", synonyms="valproate"),
    _drug("carbamazepine", "an anticonvulsant", "epilepsy|trigeminal neuralgia",
          "Stevens-Johnson syndrome|hyponatremia|agranulocytosis"),
    _drug("phenytoin", "an anticonvulsant", "epilepsy", "gingival hyperplasia|Stevens-Johnson syndrome"),
    _drug("lamotrigine", "an anticonvulsant", "epilepsy|bipolar disorder", "Stevens-Johnson syndrome"),
    _drug("levodopa", "a dopamine precursor", "Parkinson's disease", "dyskinesia|nausea"),
    _drug("donepezil", "an acetylcholinesterase inhibitor", "Alzheimer's disease", "bradycardia|nausea"),
    _drug("haloperidol", "a typical antipsychotic", "schizophrenia",
          "tardive dyskinesia|neuroleptic malignant syndrome"),
    _drug("clozapine", "an atypical antipsychotic", "schizophrenia", "agranulocytosis|seizures|myocarditis"),
    _drug("olanzapine", "an atypical antipsychotic", "schizophrenia|bipolar disorder", "weight gain|hyperglycemia"),
    _drug("risperidone", "an atypical antipsychotic", "schizophrenia|bipolar disorder", "hyperprolactinemia"),
    _drug("fluoxetine", "a selective serotonin reuptake inhibitor",
          "major depressive disorder|obsessive-compulsive disorder", "insomnia|sexual dysfunction"),
    _drug("sertraline", "a selective serotonin reuptake inhibitor",
          "major depressive disorder|obsessive-compulsive disorder", "sexual dysfunction|nausea"),
    _drug("amitriptyline", "a tricyclic antidepressant", "major depressive disorder|migraine",
          "constipation|arrhythmia"),
    _drug("diazepam", "a benzodiazepine", "generalized anxiety disorder|epilepsy", "respiratory depression"),
    _drug("methylphenidate", "a central nervous system stimulant", "attention-deficit/hyperactivity disorder",
          "insomnia|tachycardia"),
    _drug("sumatriptan", "a serotonin receptor agonist", "migraine", "coronary vasospasm"),
    _drug("interferon-β", "an immunomodulatory cytokine", "multiple sclerosis", "depression"),
    # oncology
    _drug("cisplatin", "a DNA cross-linking chemotherapeutic agent",
          "testicular cancer|ovarian cancer|non-small cell lung cancer",
          "nephrotoxicity|ototoxicity|peripheral neuropathy|nausea"),
    _drug("carboplatin", "a DNA cross-linking chemotherapeutic agent", "ovarian cancer|non-small cell lung cancer",
          "thrombocytopenia|bone marrow suppression"),
    _drug("doxorubicin", "an anthracycline antibiotic", "breast cancer|Hodgkin lymphoma",
          "cardiotoxicity|bone marrow suppression|alopecia"),
    _drug("5-fluorouracil", "a pyrimidine analogue", "colorectal cancer|pancreatic cancer",
          "mucositis|diarrhea|hand-foot syndrome", abbreviation="5-FU"),
    _drug("methotrexate", "a folate antagonist",
          "rheumatoid arthritis|psoriasis|acute lymphoblastic leukemia", "hepatotoxicity|mucositis"),
    _drug("cyclophosphamide", "an alkylating agent", "breast cancer|Hodgkin lymphoma",
          "hemorrhagic cystitis|bone marrow suppression"),
    _drug("paclitaxel", "a taxane", "breast cancer|ovarian cancer|non-small cell lung cancer",
          "peripheral neuropathy|neutropenia"),
    _drug("vincristine", "a vinca alkaloid", "acute lymphoblastic leukemia|Hodgkin lymphoma",
          "peripheral neuropathy"),
    _drug("bleomycin", "an antitumor antibiotic", "testicular cancer|Hodgkin lymphoma", "pulmonary fibrosis"),
    _drug("tamoxifen", "a selective estrogen receptor modulator", "breast cancer",
          "endometrial cancer|deep vein thrombosis"),
    _drug("imatinib", "a tyrosine kinase inhibitor", "chronic myeloid leukemia|gastrointestinal stromal tumor",
          "peripheral edema"),
    _drug("trastuzumab", "a monoclonal antibody against HER2", "breast cancer", "cardiotoxicity"),
    _drug("gemcitabine", "a nucleoside analogue", "pancreatic cancer|non-small cell lung cancer",
          "bone marrow suppression"),
    # infectious diseases
    _drug("amoxicillin", "a penicillin antibiotic", "pneumonia|otitis media", "diarrhea|anaphylaxis"),
    _drug("ciprofloxacin", "a fluoroquinolone antibiotic", "urinary tract infection", "tendon rupture|QT prolongation"),
    _drug("vancomycin", "a glycopeptide antibiotic", "Clostridioides difficile infection|sepsis",
          "nephrotoxicity|ototoxicity"),
    _drug("gentamicin", "an aminoglycoside antibiotic", "sepsis|urinary tract infection", "nephrotoxicity|ototoxicity"),
    _drug("azithromycin", "a macrolide antibiotic", "pneumonia", "QT prolongation|diarrhea"),
    _drug("doxycycline", "a tetracycline antibiotic", "Lyme disease|malaria", "photosensitivity"),
    _drug("isoniazid", "an antitubercular agent", "tuberculosis", "hepatotoxicity|peripheral neuropathy"),
    _drug("rifampicin", "an antitubercular antibiotic", "tuberculosis", "hepatotoxicity", synonyms="rifampin"),
    _drug("chloroquine", "an antimalarial agent", "malaria", "retinopathy"),
    _drug("hydroxychloroquine", "an antimalarial agent", "systemic lupus erythematosus|rheumatoid arthritis|malaria",
          "retinopathy"),
    _drug("oseltamivir", "a neuraminidase inhibitor", "influenza", "nausea"),
    _drug("acyclovir", "a nucleoside analogue antiviral", "herpes zoster", "nephrotoxicity"),
    _drug("remdesivir", "a nucleotide analogue antiviral", "COVID-19", "hepatotoxicity"),
    _drug("tenofovir", "a nucleotide reverse transcriptase inhibitor", "HIV infection|hepatitis B infection",
          "nephrotoxicity|osteoporosis"),
    _drug("zidovudine", "a nucleoside reverse transcriptase inhibitor", "HIV infection", "anemia|myopathy"),
    _drug("sofosbuvir", "an NS5B polymerase inhibitor", "hepatitis C infection"),
    # respiratory, gastrointestinal and immunology
    _drug("salbutamol", "a short-acting β2-adrenergic agonist", "asthma|chronic obstructive pulmonary disease",
          "tachycardia|tremor", synonyms="albuterol"),
    _drug("dexamethasone", "a corticosteroid", "COVID-19|inflammation", "hyperglycemia|osteoporosis"),
    _drug("prednisone", "a corticosteroid", "asthma|rheumatoid arthritis|systemic lupus erythematosus|inflammation",
          "osteoporosis|hyperglycemia|Cushing's syndrome"),
    _drug("omeprazole", "a proton pump inhibitor", "gastroesophageal reflux disease|peptic ulcer",
          "Clostridioides difficile infection"),
    _drug("ondansetron", "a serotonin 5-HT3 receptor antagonist", "nausea", "QT prolongation|constipation"),
    _drug("adalimumab", "a TNF-α inhibitor", "rheumatoid arthritis|Crohn's disease|psoriasis", "tuberculosis"),
    _drug("infliximab", "a TNF-α inhibitor", "Crohn's disease|ulcerative colitis|rheumatoid arthritis",
          "tuberculosis"),
)

DISEASES: tuple[Disease, ...] = (
    # symptoms and conditions treated by the drugs above
    Disease("pain", "a common symptom"),
    Disease("fever", "a common symptom of infection"),
    Disease("inflammation", "a protective response of tissues to injury"),
    Disease("nausea", "a common symptom"),
    Disease("osteoarthritis", "a degenerative joint disease"),
    Disease("rheumatoid arthritis", "a chronic autoimmune disease", abbreviation="RA"),
    Disease("gout", "an inflammatory arthritis"),
    Disease("systemic lupus erythematosus", "a chronic autoimmune disease", abbreviation="SLE"),
    Disease("psoriasis", "a chronic inflammatory skin disease"),
    Disease("Crohn's disease", "a chronic inflammatory bowel disease"),
    Disease("ulcerative colitis", "a chronic inflammatory bowel disease"),
    Disease("multiple sclerosis", "a chronic demyelinating disease of the central nervous system"),
    Disease("type 1 diabetes", "a chronic autoimmune disease"),
    Disease("type 2 diabetes", "a chronic metabolic disorder"),
    Disease("obesity", "a chronic metabolic disorder"),
    Disease("hypercholesterolemia", "a common lipid disorder"),
    Disease("hypothyroidism", "a common endocrine disorder"),
    Disease("hyperthyroidism", "a common endocrine disorder"),
    Disease("osteoporosis", "a common bone disease"),
    Disease("hypertension", "a major cardiovascular risk factor"),
    Disease("heart failure", "a chronic cardiovascular syndrome"),
    Disease("coronary artery disease", "a common cardiovascular disease", abbreviation="CAD"),
    Disease("myocardial infarction", "a life-threatening cardiovascular event"),
    Disease("angina pectoris", "a symptom of reduced blood flow to the heart"),
    Disease("atrial fibrillation", "the most common sustained heart rhythm disorder", abbreviation="AF"),
    Disease("ventricular tachycardia", "a life-threatening cardiac rhythm disorder"),
    Disease("stroke", "a leading cause of disability"),
    Disease("deep vein thrombosis", "a common venous thromboembolic disorder", abbreviation="DVT"),
    Disease("pulmonary embolism", "a life-threatening venous thromboembolic disorder"),
    Disease("pulmonary arterial hypertension", "a progressive disorder of the pulmonary vasculature"),
    Disease("erectile dysfunction", "a common disorder in older men"),
    Disease("anaphylaxis", "a severe allergic reaction"),
    Disease("asthma", "a chronic inflammatory airway disease"),
    Disease("chronic obstructive pulmonary disease", "a progressive lung disease", abbreviation="COPD"),
    Disease("gastroesophageal reflux disease", "a common digestive disorder", abbreviation="GERD"),
    Disease("peptic ulcer", "a common gastrointestinal disorder"),
    Disease("epilepsy", "a chronic neurological disorder"),
    Disease("migraine", "a common neurological disorder"),
    Disease("trigeminal neuralgia", "a chronic disorder of the trigeminal nerve"),
    Disease("Parkinson's disease", "a progressive neurodegenerative disorder"),
    Disease("Alzheimer's disease", "a progressive neurodegenerative disorder", abbreviation="AD"),
    Disease("bipolar disorder", "a chronic mood disorder"),
    Disease("schizophrenia", "a chronic psychiatric disorder"),
    Disease("major depressive disorder", "a common psychiatric disorder", abbreviation="MDD"),
    Disease("generalized anxiety disorder", "a common psychiatric disorder"),
    Disease("obsessive-compulsive disorder", "a chronic psychiatric disorder", abbreviation="OCD"),
    Disease("attention-deficit/hyperactivity disorder", "a common neurodevelopmental disorder",
            abbreviation="ADHD"),
    # cancers
    Disease("breast cancer", "the most common cancer in women"),
    Disease("ovarian cancer", "a gynecological malignancy"),
    Disease("testicular cancer", "a highly curable malignancy"),
    Disease("non-small cell lung cancer", "the most common type of lung cancer", abbreviation="NSCLC"),
    Disease("colorectal cancer", "a common gastrointestinal malignancy"),
    Disease("pancreatic cancer", "an aggressive gastrointestinal malignancy"),
    Disease("Hodgkin lymphoma", "a lymphoid malignancy"),
    Disease("acute lymphoblastic leukemia", "the most common childhood cancer"),
    Disease("chronic myeloid leukemia", "a myeloproliferative neoplasm", abbreviation="CML"),
    Disease("acute myeloid leukemia", "an aggressive hematologic malignancy", abbreviation="AML"),
    Disease("gastrointestinal stromal tumor", "a mesenchymal tumor of the digestive tract", abbreviation="GIST"),
    Disease("melanoma", "an aggressive skin cancer"),
    Disease("endometrial cancer", "a gynecological malignancy"),
    # infections
    Disease("COVID-19", "an infectious disease", pathogen="SARS-CoV-2"),
    Disease("influenza", "an acute respiratory infection"),
    Disease("tuberculosis", "an infectious disease", pathogen="Mycobacterium tuberculosis"),
    Disease("malaria", "a mosquito-borne infectious disease", pathogen="Plasmodium parasites"),
    Disease("HIV infection", "a chronic viral infection", pathogen="the human immunodeficiency virus"),
    Disease("hepatitis B infection", "a viral infection of the liver"),
    Disease("hepatitis C infection", "a viral infection of the liver"),
    Disease("herpes zoster", "a painful viral infection", pathogen="the varicella-zoster virus"),
    Disease("Lyme disease", "a tick-borne infectious disease", pathogen="Borrelia burgdorferi"),
    Disease("Clostridioides difficile infection", "a common healthcare-associated infection",
            pathogen="the bacterium Clostridioides difficile"),
    Disease("pneumonia", "an acute infection of the lungs"),
    Disease("otitis media", "a common childhood infection"),
    Disease("urinary tract infection", "a common bacterial infection", abbreviation="UTI"),
    Disease("sepsis", "a life-threatening response to infection"),
    # inherited and gene-defined disorders
    Disease("cystic fibrosis", "an autosomal recessive disorder"),
    Disease("sickle cell disease", "an inherited hemoglobin disorder"),
    Disease("β-thalassemia", "an inherited hemoglobin disorder"),
    Disease("Huntington's disease", "an autosomal dominant neurodegenerative disorder"),
    Disease("Duchenne muscular dystrophy", "an X-linked muscle disorder"),
    Disease("familial hypercholesterolemia", "an autosomal dominant lipid disorder"),
    Disease("Marfan syndrome", "an autosomal dominant connective tissue disorder"),
    Disease("hemochromatosis", "an inherited iron overload disorder"),
    Disease("polycythemia vera", "a myeloproliferative neoplasm"),
    # adverse effects (no description: they are named as consequences of a drug)
    Disease("gastrointestinal bleeding"),
    Disease("acute kidney injury", abbreviation="AKI"),
    Disease("Reye's syndrome"),
    Disease("hepatotoxicity"),
    Disease("respiratory depression"),
    Disease("constipation"),
    Disease("diarrhea"),
    Disease("lactic acidosis"),
    Disease("hypoglycemia"),
    Disease("hyperglycemia"),
    Disease("weight gain"),
    Disease("pancreatitis"),
    Disease("myopathy"),
    Disease("rhabdomyolysis"),
    Disease("cough"),
    Disease("angioedema"),
    Disease("hyperkalemia"),
    Disease("hypokalemia"),
    Disease("hyponatremia"),
    Disease("peripheral edema"),
    Disease("bradycardia"),
    Disease("tachycardia"),
    Disease("bronchospasm"),
    Disease("ototoxicity"),
    Disease("gynecomastia"),
    Disease("arrhythmia"),
    Disease("pulmonary fibrosis"),
    Disease("hemorrhage"),
    Disease("thrombocytopenia"),
    Disease("headache"),
    Disease("hypotension"),
    Disease("tremor"),
    Disease("nephrogenic diabetes insipidus"),
    Disease("neural tube defects"),
    Disease("Stevens-Johnson syndrome"),
    Disease("agranulocytosis"),
    Disease("gingival hyperplasia"),
    Disease("dyskinesia"),
    Disease("tardive dyskinesia"),
    Disease("neuroleptic malignant syndrome"),
    Disease("seizures"),
    Disease("myocarditis"),
    Disease("hyperprolactinemia"),
    Disease("insomnia"),
    Disease("sexual dysfunction"),
    Disease("coronary vasospasm"),
    Disease("depression"),
    Disease("nephrotoxicity"),
    Disease("peripheral neuropathy"),
    Disease("cardiotoxicity"),
    Disease("bone marrow suppression"),
    Disease("alopecia"),
    Disease("mucositis"),
    Disease("hand-foot syndrome"),
    Disease("hemorrhagic cystitis"),
    Disease("neutropenia"),
    Disease("tendon rupture"),
    Disease("QT prolongation"),
    Disease("photosensitivity"),
    Disease("retinopathy"),
    Disease("Cushing's syndrome"),
    Disease("osteonecrosis of the jaw"),
    Disease("anemia"),
)


def _gene(name: str, kind: GeneKind, diseases: str) -> Gene:
    return Gene(name, kind, tuple(diseases.split("|")))


GENES: tuple[Gene, ...] = (
    # single-gene disorders: mutations cause the disease
    _gene("CFTR", "mendelian", "cystic fibrosis"),
    _gene("HBB", "mendelian", "sickle cell disease|β-thalassemia"),
    _gene("HTT", "mendelian", "Huntington's disease"),
    _gene("DMD", "mendelian", "Duchenne muscular dystrophy"),
    _gene("FBN1", "mendelian", "Marfan syndrome"),
    _gene("HFE", "mendelian", "hemochromatosis"),
    _gene("LDLR", "mendelian", "familial hypercholesterolemia"),
    _gene("PCSK9", "mendelian", "familial hypercholesterolemia"),
    # susceptibility genes
    _gene("BRCA1", "risk", "breast cancer|ovarian cancer"),
    _gene("BRCA2", "risk", "breast cancer|ovarian cancer|pancreatic cancer"),
    _gene("TP53", "risk", "breast cancer"),
    _gene("APC", "risk", "colorectal cancer"),
    _gene("MLH1", "risk", "colorectal cancer|endometrial cancer"),
    _gene("APOE", "risk", "Alzheimer's disease"),
    _gene("PSEN1", "risk", "Alzheimer's disease"),
    _gene("LRRK2", "risk", "Parkinson's disease"),
    _gene("SNCA", "risk", "Parkinson's disease"),
    _gene("TCF7L2", "risk", "type 2 diabetes"),
    _gene("PPAR-γ", "risk", "type 2 diabetes"),
    _gene("KCNJ11", "risk", "type 2 diabetes"),
    _gene("HLA-DQ8", "risk", "type 1 diabetes"),
    _gene("NOD2", "risk", "Crohn's disease"),
    _gene("HLA-DRB1", "risk", "rheumatoid arthritis"),
    # somatic cancer drivers
    _gene("EGFR", "driver", "non-small cell lung cancer"),
    _gene("ALK", "driver", "non-small cell lung cancer"),
    _gene("KRAS", "driver", "pancreatic cancer|colorectal cancer|non-small cell lung cancer"),
    _gene("BRAF", "driver", "melanoma|colorectal cancer"),
    _gene("HER2", "driver", "breast cancer"),
    _gene("BCR-ABL1", "driver", "chronic myeloid leukemia"),
    _gene("KIT", "driver", "gastrointestinal stromal tumor"),
    _gene("JAK2", "driver", "polycythemia vera"),
    _gene("FLT3", "driver", "acute myeloid leukemia"),
    # cytokines raised in and driving inflammatory disease
    _gene("TNF-α", "mediator", "rheumatoid arthritis|Crohn's disease|psoriasis"),
    _gene("interleukin-6", "mediator", "rheumatoid arthritis|COVID-19"),
    _gene("interleukin-1β", "mediator", "gout|rheumatoid arthritis"),
)

DRUG_BY_NAME: dict[str, Drug] = {d.name: d for d in DRUGS}
DISEASE_BY_NAME: dict[str, Disease] = {d.name: d for d in DISEASES}
GENE_BY_NAME: dict[str, Gene] = {g.name: g for g in GENES}


def all_facts() -> frozenset[Fact]:
    """Every true statement the tables support; generated text may only express facts from this set."""
    facts: set[Fact] = set()
    for drug in DRUGS:
        facts.add(Fact("drug_class", drug.name, drug.drug_class))
        facts.update(Fact("treats", drug.name, d) for d in drug.treats)
        facts.update(Fact("adverse_effect", drug.name, e) for e in drug.adverse_effects)
    for disease in DISEASES:
        if disease.description:
            facts.add(Fact("disease_description", disease.name, disease.description))
        if disease.pathogen:
            facts.add(Fact("caused_by", disease.name, disease.pathogen))
    for gene in GENES:
        facts.update(Fact("gene_disease", gene.name, d) for d in gene.diseases)
    return frozenset(facts)


def _check_tables() -> None:
    # fail at import, not mid-training, if a relation names a disease the table lacks
    for drug in DRUGS:
        for name in drug.treats + drug.adverse_effects:
            if name not in DISEASE_BY_NAME:
                raise ValueError(f"{drug.name}: unknown disease {name!r}")
    for gene in GENES:
        for name in gene.diseases:
            if name not in DISEASE_BY_NAME:
                raise ValueError(f"{gene.name}: unknown disease {name!r}")
    if len(DRUG_BY_NAME) != len(DRUGS) or len(DISEASE_BY_NAME) != len(DISEASES) or len(GENE_BY_NAME) != len(GENES):
        raise ValueError("duplicate names in the fact tables")


_check_tables()
