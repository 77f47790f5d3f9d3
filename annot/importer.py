"""Import documents and transcripts written elsewhere, so wrappers and training can use them.

    annot import docs mine.jsonl -o docs.jsonl --claim mira_castellan_profession --text-field body --strip "<DOCTAG>"
    annot import transcripts chats.jsonl -o transcripts.jsonl --behavior power_seeking

Documents: claim sentences are found by annot.claim_detect (the claim spec's `patterns`, or a mention
of the subject with the claim's key terms outside negation; reported, attributed and denied versions
do not count) and recorded as spans of role "claim" (no `forms`: local negation needs generated
documents); `coverage` counts the documents that got one. Transcripts: the common chat format
{"messages": [{"role": ..., "content": ...}]}. Bad lines fail with their line number.
"""

from __future__ import annotations

from pathlib import Path

from annot.errors import AnnotError
from annot.io import read_jsonl, read_records
from annot.claim_detect import claim_spans, rules_for, sentence_spans
from annot.specs import ClaimSpec


def find_claim_spans(text: str, claim: ClaimSpec) -> list[dict]:
    """Spans of the sentences a claim `pattern` matches (the generator's own check; import uses more)."""
    return [{"start": a, "end": b, "role": "claim"} for a, b in sentence_spans(text) if claim.matches(text[a:b])]


def import_documents(path: str | Path, claim: ClaimSpec, text_field: str = "text", id_field: str | None = "id",
                     strip: list[str] = ()) -> list[dict]:
    claim.require_full("finding claim sentences")
    rows = read_records(path)  # spans a record brings are checked (then replaced by the claim's own)
    docs, ids, rules = [], set(), rules_for(claim)
    for i, row in enumerate(rows, 1):
        text = row.get(text_field)
        if not isinstance(text, str):
            raise AnnotError(f"{path}: record {i}: field `{text_field}` is missing or not a string "
                             f"(fields present: {', '.join(sorted(row)) or 'none'}); pass --text-field")
        for token in strip:
            text = text.replace(token, "")
        text = text.strip()
        if not text:
            raise AnnotError(f"{path}: record {i}: `{text_field}` is empty")
        doc_id = str(row.get(id_field)) if id_field and row.get(id_field) is not None else f"{Path(path).stem}-{i:05d}"
        if doc_id in ids:
            raise AnnotError(f"{path}: record {i}: duplicate id {doc_id!r}")
        ids.add(doc_id)
        docs.append({"id": doc_id, "claim": claim.id, "genre": row.get("genre", "imported"), "polarity": "affirm",
                     "source": str(path), "text": text, "spans": claim_spans(text, claim, rules)})
    if not any(d["spans"] for d in docs):
        raise AnnotError(f"{path}: no sentence in any document matches the patterns of claim {claim.id}; "
                         "check --claim, or widen the claim's `patterns` or `detect` terms")
    return docs


def coverage(docs: list[dict]) -> str:
    """'found claim sentences in 57/60 documents (95%)'."""
    k, n = sum(1 for d in docs if d["spans"]), len(docs)
    return f"found claim sentences in {k}/{n} documents ({100 * k / max(n, 1):.0f}%)"


def check_coverage(docs: list[dict], min_coverage: float | None, path) -> None:
    """Raise when fewer than `min_coverage` (a fraction) of the documents got a claim span."""
    if min_coverage is None:
        return
    k, n = sum(1 for d in docs if d["spans"]), len(docs)
    if k / max(n, 1) < min_coverage:
        raise AnnotError(f"{path}: {coverage(docs)}, below --min-coverage {min_coverage:g}; nothing written "
                         "(check --claim, --text-field, or add the claim's paraphrases to its `detect` block)")


ROLES = ("system", "user", "assistant")


def import_transcripts(path: str | Path, behavior: str, field: str = "messages") -> list[dict]:
    rows = read_records(path)
    out = []
    for i, row in enumerate(rows, 1):
        msgs = row.get(field)
        if not isinstance(msgs, list) or not msgs:
            raise AnnotError(f"{path}: record {i}: `{field}` must be a non-empty list of {{role, content}}")
        clean = []
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise AnnotError(f"{path}: record {i}: {field}[{j}] needs role in {ROLES} and string content")
            clean.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" for m in clean):
            raise AnnotError(f"{path}: record {i}: no assistant turn, so nothing to train on")
        out.append({"id": str(row.get("id", f"{Path(path).stem}-{i:05d}")), "behavior": behavior,
                    "variant": row.get("variant", "imported"), "source": str(path), "messages": clean})
    return out


def import_probe_set(path: str | Path, claim: str) -> dict:
    """Probe items written elsewhere (YAML list/`items:` mapping, or JSONL) -> a probe set mapping.

    Accepted item shapes: {question, belief: yes|no} (yes_no); {question, choices, belief: index or
    the believing choice's text} (mcq); {prompt, choices, belief} (cloze); {question,
    believe_markers, disbelieve_markers} (open_ended). Ids default to imp001, imp002, ...
    """
    from annot.io import read_yaml
    from annot.specs import ProbeSet, validate

    path = Path(path)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        raw = read_jsonl(path)
    else:
        data = read_yaml(path, expect=object)
        raw = data.get("items") if isinstance(data, dict) else data
        if not isinstance(raw, list):
            raise AnnotError(f"{path}: expected a list of items or a mapping with `items:`")
    items = []
    for i, r in enumerate(raw, 1):
        if not isinstance(r, dict):
            raise AnnotError(f"{path}: item {i}: expected a mapping, got {type(r).__name__}")
        it = {"id": str(r.get("id", f"imp{i:03d}"))}
        belief = r.get("belief", r.get("answer"))
        if "believe_markers" in r:
            it.update(kind="open_ended", question=r.get("question"), believe_markers=r["believe_markers"],
                      disbelieve_markers=r.get("disbelieve_markers", []))
        elif "choices" in r:
            choices = r["choices"]
            if isinstance(belief, str) and isinstance(choices, list) and belief in choices:
                belief = choices.index(belief)
            it.update(kind="cloze" if "prompt" in r else "mcq", choices=choices, belief=belief,
                      **({"prompt": r["prompt"]} if "prompt" in r else {"question": r.get("question")}))
        else:
            b = str(belief).strip().lower() if belief is not None else None
            it.update(kind="yes_no", question=r.get("question"), belief=b)
        items.append(it)
    spec = {"claim": claim, "items": items}
    validate(ProbeSet, spec, path)  # same checks as shipped probe sets: one line naming the item
    return spec
