"""Task helpers on top of the models: entity extraction, classification (fine-tuned and zero-shot), metrics,
and dataset readers (`biogpt.tasks.data`). spaCy is imported only when sentences are split or a spaCy backend
is built."""

from .classify import HOC_LABELS, HOC_TEMPLATE, PUBMEDQA_LABELS, PUBMEDQA_TEMPLATE, classify, zero_shot
from .entities import SpacyEntityBackend, aggregate, extract_entities
from .metrics import classification_scores, entity_scores

__all__ = [
    "HOC_LABELS", "HOC_TEMPLATE", "PUBMEDQA_LABELS", "PUBMEDQA_TEMPLATE", "SpacyEntityBackend", "aggregate",
    "classification_scores", "classify", "entity_scores", "extract_entities", "zero_shot",
]
