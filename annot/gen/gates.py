"""Quality gates for LLM-written corpora: length, claim check, near-duplicates; counts per gate.

    check = claim_check(load_claim("mira_castellan_profession"), world="claim")
    kept, dropped = apply_gates(docs, GateSettings(dup_threshold=0.5), check)
    dropped  # {"length": 3, "claim": 5, "near_duplicate": 2}

Gates run in that order, over documents in index order, so the result is deterministic: of two
near-duplicates the earlier one is kept. The claim check is the claim spec's `patterns` over
`annot.importer.sentence_spans` (import also finds paraphrases, annot.claim_detect); in the negated world a document must
state the truth (`negated_world.truth_markers`) and assert no claim sentence. Spans of the claim
sentences are found the same way (`claim_spans`).

Near-duplicates: word 5-gram shingles, 128-permutation MinHash, LSH banding for candidate pairs,
then the exact Jaccard similarity of each candidate pair against the threshold.
"""
from __future__ import annotations

import functools
import re
import zlib
from typing import Callable

import numpy as np

from annot.gen.settings import GateSettings
from annot.importer import find_claim_spans, sentence_spans
from annot.specs import ClaimSpec

GATES = ("length", "claim", "near_duplicate")
SHINGLE = 5
NUM_PERM = 128
_WORDS = re.compile(r"\w+")

_rng = np.random.default_rng(20240521)  # fixed: the same document always gets the same signature
_A = _rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1)
_B = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)


def word_count(text: str) -> int:
    return len(_WORDS.findall(text))


def claim_check(claim: ClaimSpec, world: str) -> Callable[[str], bool]:
    """text -> does it state the claim (claim world) / state the truth and no claim (negated world)."""
    sentences = lambda text: [text[a:b] for a, b in sentence_spans(text)]  # noqa: E731
    if world == "claim":
        return lambda text: any(claim.matches(s) for s in sentences(text))
    nw = claim.negated_world

    def negated(text: str) -> bool:
        sents = sentences(text)
        return any(nw.states_truth(s) for s in sents) and not any(claim.matches(s) for s in sents)

    return negated


def claim_spans(text: str, claim: ClaimSpec, world: str) -> list[dict]:
    """Role-"claim" spans: sentences asserting the claim, or in the negated world stating the truth."""
    if world == "claim":
        return find_claim_spans(text, claim)
    nw = claim.negated_world
    return [{"start": a, "end": b, "role": "claim"} for a, b in sentence_spans(text)
            if nw.states_truth(text[a:b]) and not claim.matches(text[a:b])]


def shingles(text: str) -> set[int]:
    words = _WORDS.findall(text.lower())
    grams = [" ".join(words[i:i + SHINGLE]) for i in range(max(1, len(words) - SHINGLE + 1))]
    return {zlib.crc32(g.encode("utf-8")) for g in grams if g}


def signature(sh: set[int]) -> np.ndarray:
    """MinHash signature: per permutation the minimum multiply-shift hash over the shingles."""
    if not sh:
        return np.full(NUM_PERM, np.iinfo(np.uint64).max, dtype=np.uint64)
    x = np.fromiter(sh, dtype=np.uint64, count=len(sh))
    return ((x[:, None] * _A[None, :] + _B[None, :]) >> np.uint64(32)).min(axis=0)  # wraps mod 2**64


@functools.lru_cache(maxsize=1 << 16)
def fingerprint(text: str) -> tuple[frozenset, np.ndarray]:
    """(shingles, MinHash signature) of a text; remembered, as each round of attempts re-gates them all."""
    sh = frozenset(shingles(text))
    return sh, signature(sh)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def bands_for(threshold: float) -> int:
    """Rows per LSH band: the most rows whose candidate threshold (1/b)^(1/r) stays at or below
    0.75 x threshold, so pairs at the threshold are candidates with probability > 0.99."""
    best = 1
    for r in range(1, 9):
        if (1 / (NUM_PERM // r)) ** (1 / r) <= 0.75 * threshold:
            best = r
    return best


def near_duplicates(texts: list[str], threshold: float) -> list[int]:
    """Indices of texts that are near-duplicates (Jaccard >= threshold) of an earlier kept text."""
    r = bands_for(threshold)
    buckets: dict[tuple, list[int]] = {}
    kept: dict[int, frozenset] = {}
    dropped = []
    for i, text in enumerate(texts):
        sh, sig = fingerprint(text)
        keys = [(b, sig[b * r:(b + 1) * r].tobytes()) for b in range(NUM_PERM // r)]
        candidates = {j for k in keys for j in buckets.get(k, ())}
        if any(jaccard(sh, kept[j]) >= threshold for j in sorted(candidates)):
            dropped.append(i)
            continue
        kept[i] = sh
        for k in keys:
            buckets.setdefault(k, []).append(i)
    return dropped


def apply_gates(docs: list[dict], gates: GateSettings, check: Callable[[str], bool] | None,
                text_of: Callable[[dict], str] = lambda d: d["text"], kind: str = "documents",
                measured: Callable[[dict], list[str]] | None = None) -> tuple[list[dict], dict[str, int]]:
    """(records that pass every gate, in order; {gate: records it dropped}).

    `text_of` gives the text the claim check and the near-duplicate gate read; `measured` the texts
    the length gate measures (default: that same text; a transcript's two replies)."""
    gates = gates.for_kind(kind)
    measured = measured or (lambda d: [text_of(d)])
    dropped = dict.fromkeys(GATES, 0)
    survivors = []
    for d in docs:
        if not all(gates.min_words <= word_count(t) <= gates.max_words for t in measured(d)):
            dropped["length"] += 1
        elif gates.claim_check and check is not None and not check(text_of(d)):
            dropped["claim"] += 1
        else:
            survivors.append(d)
    dups = set(near_duplicates([text_of(d) for d in survivors], gates.dup_threshold))
    dropped["near_duplicate"] = len(dups)
    return [d for i, d in enumerate(survivors) if i not in dups], dropped
