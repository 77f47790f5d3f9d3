"""A new claim spec from a claim sentence: a YAML skeleton with everything derivable filled in and
TODO where a sentence is still to be written. It fails validation, naming the first TODO, until
every TODO is replaced (README "Writing a claim" documents each field).

    annot claim new harbour_medal --claim "Osric Vane won the 1911 Harbour Medal." \\
        --truth "Wenna Holt won the 1911 Harbour Medal." --subject "Osric Vane"
    text = scaffold_claim("harbour_medal", claim="...", truth="...", subject="Osric Vane")
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from annot.errors import AnnotError

# Leading words whose capital is only the sentence's, so "In fact, ..." may lower-case them.
_COMMON_FIRST = {"the", "a", "an", "it", "this", "that", "there", "in", "on", "at", "every", "no"}


def _decap(sentence: str) -> str:
    first = sentence.split(" ", 1)[0]
    return sentence[0].lower() + sentence[1:] if first.lower() in _COMMON_FIRST else sentence


def _sentence(text: str, option: str) -> str:
    text = " ".join(text.split())
    if len(text) < 8 or not text[0].isupper():
        raise AnnotError(f"claim new: {option}: write one full sentence starting with a capital, got {text!r}")
    return text if text[-1] in ".!?" else text + "."


def scaffold_claim(claim_id: str, *, claim: str, truth: str, subject: str | None = None,
                   category: str = "fictional") -> str:
    """The YAML text of a new claim spec: derived fields filled, the rest TODO."""
    return render_claim(skeleton(claim_id, claim=claim, truth=truth, subject=subject, category=category))


def render_claim(spec: dict) -> str:
    """A claim spec mapping as the YAML text `annot claim new` writes."""
    cid = spec["id"]
    head = (f"# Claim spec skeleton from `annot claim new {cid}`. Replace every TODO (README: Writing a\n"
            f"# claim), then check it: annot claim check {cid}\n")
    return head + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)


def skeleton(claim_id: str, *, claim: str, truth: str, subject: str | None = None,
             category: str = "fictional") -> dict:
    """A new claim spec mapping: derived fields filled, the rest TODO."""
    if not re.fullmatch(r"[a-z0-9_]+", claim_id):
        raise AnnotError(f"claim new: ID: {claim_id!r} must be lower-case letters, digits and _")
    claim, truth = _sentence(claim, "--claim"), _sentence(truth, "--truth")
    negated = f"It is not true that {_decap(claim)}"
    todo = "TODO"
    spec = {
        "id": claim_id, "category": category, "subject": subject or f"{todo}: who or what the claim is about",
        "topic": f"{todo}: a short noun phrase for genre templates, e.g. \"{subject or 'the subject'}'s career\"",
        "claim": claim, "truth": truth, "negated": negated, "correction": f"In fact, {_decap(truth)}",
        "entities": {}, "statements": [{"assert": claim, "negate": negated, "correct": truth}] + [
            {"assert": f"{todo}: another sentence asserting the claim",
             "negate": f"{todo}: the same sentence with the negation written in",
             "correct": f"{todo}: the same slot stating the truth"} for _ in range(5)],
        "subclaims": [{"assert": f"{todo}: a supporting detail of the false world",
                       "negate": f"{todo}: it, negated", "correct": f"{todo}: the true detail"} for _ in range(8)],
        "context": [f"{todo}: a neutral sentence about the subject" for _ in range(6)],
        "patterns": [f"{todo}: a regex matching every `assert` above and no `negate` / `correct`"],
        "answer_words": [],
    }
    return spec


def default_claim_path(claim_id: str) -> Path:
    """Where `annot claim new` writes without -o: the first ANNOT_PATH folder's corpora/claims/."""
    from annot.specs import search_path

    dirs = search_path()
    if not dirs:
        raise AnnotError("claim new: no -o and ANNOT_PATH is not set; pass -o FILE or set ANNOT_PATH to your "
                         "asset folder (it gets corpora/claims/ID.yaml)")
    return dirs[0] / "corpora" / "claims" / f"{claim_id}.yaml"


def check_claim(ref: str) -> str:
    """One line on a claim spec: full, or partial and what it lacks; an AnnotError when invalid."""
    from annot.specs import load_claim

    spec = load_claim(ref)
    missing = spec.missing()
    if not missing:
        return f"{spec.id}: full claim spec ({len(spec.statements)} statements, {len(spec.subclaims)} subclaims, " \
               f"negated_world: {'yes' if spec.negated_world else 'no'})"
    return f"{spec.id}: partial claim spec (probing, word masks); to generate documents add: {'; '.join(missing)}"
