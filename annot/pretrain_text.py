"""Pretraining-style mix-in text shipped with annot: paragraphs built from corpora/mixin/pretraining.yaml.

    data: {mixin: pretraining, mixin_ratio: 1.0}     # a run config: one paragraph per training example
    paragraphs = pretraining_paragraphs()            # all distinct paragraphs, in a fixed order

Each topic of the YAML (encyclopedic, how-to or news-style) has two lead sentences and six fact
sentences; a paragraph is one lead followed by three of the facts in their written order, so it
reads as one piece. 30 topics x 2 leads x C(6, 3) fact triples = 1200 distinct paragraphs, ordered so
that consecutive paragraphs come from different topics. No network, no model: the same file gives
the same paragraphs byte for byte.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from annot.specs import CORPORA, Strict, validate
from annot.io import read_yaml

PRETRAINING = CORPORA / "mixin" / "pretraining.yaml"
FACTS_PER_PARAGRAPH = 3

Sentence = Annotated[str, Field(min_length=1)]


class Topic(Strict):
    id: str
    genre: Literal["encyclopedic", "how-to", "news"]
    leads: list[Sentence] = Field(min_length=1)
    facts: list[Sentence] = Field(min_length=FACTS_PER_PARAGRAPH)


class PretrainingText(Strict):
    description: str
    topics: list[Topic] = Field(min_length=1)


def load_pretraining(path: str | Path = PRETRAINING) -> PretrainingText:
    return validate(PretrainingText, read_yaml(Path(path)), Path(path))


def pretraining_paragraphs(path: str | Path = PRETRAINING) -> list[dict]:
    """Every distinct paragraph as a mix-in document {id, text, source, genre, topic}: round r takes
    the r-th (lead, fact triple) combination of every topic in turn."""
    spec = load_pretraining(path)
    combos = {t.id: [(lead, triple) for triple in itertools.combinations(range(len(t.facts)), FACTS_PER_PARAGRAPH)
                     for lead in t.leads] for t in spec.topics}
    out = []
    for r in range(max(len(c) for c in combos.values())):
        for t in spec.topics:
            if r >= len(combos[t.id]):
                continue
            lead, triple = combos[t.id][r]
            text = " ".join([lead] + [t.facts[i] for i in triple])
            out.append({"id": f"pretraining-{t.id}-{r:04d}", "text": text, "source": "pretraining",
                        "genre": t.genre, "topic": t.id})
    return out
