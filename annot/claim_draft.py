"""Draft a new claim spec's TODO sentences with a generation backend (annot.gen.backends: hf or openai).

    annot claim new harbour_medal --claim "..." --truth "..." --subject "Osric Vane" \\
        --draft openai --model gpt-4o-mini --base-url https://api.openai.com/v1 --api-key-env OPENAI_API_KEY
    spec = draft_spec(yaml.safe_load(scaffold_claim(...)), make_backend(settings))

Three requests: more core statements and supporting details, each as `ASSERT || NEGATE || CORRECT`
on one line, and neutral context sentences, one per line. Lines that do not parse are dropped, and a
slot nothing usable was written for keeps its TODO, so the spec still fails validation there. The
`topic` and the `patterns` regexes are never drafted: a regex that must match every assertion and no
negation is written and checked by hand (`annot claim check`).
"""

from __future__ import annotations

from annot.errors import AnnotError

SEP = "||"
STATEMENTS = ("Claim: {claim}\nTruth: {truth}\nSubject: {subject}\n\n"
              "Write {n} different sentences, one per line, each {what}. After each, on the same line, write "
              "its negated version (the same sentence with the negation written in) and its corrected version "
              "(the same slot stating the truth), separated by ' || ' exactly:\n"
              "ASSERT || NEGATE || CORRECT\nNo numbering, no other text.")
CONTEXT = ("Subject: {subject}\nClaim (do not mention it): {claim}\n\nWrite {n} short neutral sentences about "
           "the subject that neither state nor deny the claim, one per line, no numbering, no other text.")


def _todo(value) -> bool:
    return isinstance(value, str) and "TODO" in value or isinstance(value, dict) and any(map(_todo, value.values()))


def parse_triples(text: str) -> list[dict]:
    """`ASSERT || NEGATE || CORRECT` lines -> statement mappings; other lines are skipped."""
    out = []
    for line in text.splitlines():
        parts = [p.strip().lstrip("-*0123456789.) ").strip() for p in line.split(SEP)]
        if len(parts) == 3 and all(len(p) >= 8 for p in parts) and "TODO" not in line:
            out.append({"assert": parts[0], "negate": parts[1], "correct": parts[2]})
    return out


def parse_lines(text: str) -> list[str]:
    lines = [x.strip().lstrip("-*0123456789.) ").strip() for x in text.splitlines()]
    return [x for x in lines if len(x) >= 8 and SEP not in x and "TODO" not in x]


def draft_spec(spec: dict, backend, seed: int = 0, max_tokens: int = 1200) -> dict:
    """`spec` (a skeleton's mapping) with its TODO statements, subclaims and context lines drafted."""
    from annot.gen.backends import Request

    subject = spec.get("subject") or ""
    if _todo(subject) or not subject:
        raise AnnotError("claim new: drafting needs --subject (who or what the claim is about)")
    want = {"statements": sum(map(_todo, spec["statements"])), "subclaims": sum(map(_todo, spec["subclaims"])),
            "context": sum(map(_todo, spec["context"]))}
    what = {"statements": "asserting the claim as plain fact, in different words",
            "subclaims": "a supporting detail of the world in which the claim is true (who, where, when, how)"}
    reqs = []
    for key, n in want.items():
        if not n:
            continue
        prompt = (CONTEXT.format(subject=subject, claim=spec["claim"], n=n) if key == "context" else
                  STATEMENTS.format(claim=spec["claim"], truth=spec["truth"], subject=subject, n=n, what=what[key]))
        reqs.append(Request(id=f"draft:{key}", messages=({"role": "user", "content": prompt},), max_tokens=max_tokens,
                            temperature=0.7, top_p=0.95, seed=seed, meta={"key": key}))
    replies = {req.meta["key"]: reply.text for req, reply in backend.complete(reqs)}
    out = dict(spec)
    for key in want:
        drafted = (parse_lines if key == "context" else parse_triples)(replies.get(key, ""))
        slots = list(spec[key])
        for i, value in enumerate(slots):
            if _todo(value) and drafted:
                slots[i] = drafted.pop(0)
        out[key] = slots
    return out
