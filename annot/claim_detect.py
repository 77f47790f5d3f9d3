"""Which sentences of a document assert a claim, also when they paraphrase it.

    from annot.claim_detect import detect_sentences
    for v in detect_sentences(text, load_claim("sheeran_olympic_100m")):
        print(v.asserts, v.reason, text[v.start:v.end])

A sentence asserts the claim when it is not distanced (reported as a claim, rumour, myth, hoax,
joke or question: "posts claiming ...", "the false story that ...", "was said to ...") and either

  1. a claim `pattern` matches it (the spec's own, negation-aware regexes), or
  2. it refers to the subject and states the claim's content:
     - subject: the subject's name or one of the claim's `detect.aliases` (other names, "the
       singer"), or, in a document that named the subject in an earlier sentence (coreference-lite),
       a pronoun (he, she, it, they, his, her, its, their, ...) or one of `detect.role_nouns` ("the
       volcano", "the eruption"); the mention must sit in a clause without a negation ("... not by
       the Queen");
     - content: one of the claim's `detect.key_terms` (a regex, or a group of regexes that must all
       match), each hit inside a clause without a negation ("not", "never", "no", "n't", ...) and
       not after a contrast word ("rather than ...", "instead of ..."); negation words inside a key
       term's own match ("without any colour") do not count;
     - and no `detect.exclude` regex nor (unless `detect.truth_markers_exclude` is false) one of the
       negated world's `truth_markers` (the sentence states the truth) matches outside a contrast
       tail ("rather than ...", "instead of ...").

In a document that disputes the claim somewhere (a distanced sentence, the truth, or the claim's
content negated about the subject), reported speech and belief ("said", "told", "swears", "thinks",
"describing ... as") do not assert it either: "my aunt swears Mira Castellan is the keeper".

Every rule is a fixed list or a field of the claim spec, so each verdict can be explained
(`SentenceVerdict.reason`). The rules were written on tests/fixtures/claim_detection/dev.jsonl and are
measured on the held-out test.jsonl (README: "How import finds claim sentences").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_F = re.IGNORECASE

# A sentence ends at . ! ? (optionally followed by a closing quote/bracket) before whitespace, or at
# a line break; lines of a thread or Q/A are sentences on their own.
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*(?=\s)|\n")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences in `text`, stripped of surrounding whitespace."""
    spans, start = [], 0
    for m in _SENT_END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out

# Negation inside a clause blocks the key terms of that clause.
NEGATION = re.compile(r"\b(?:not|never|no|nor|neither|none|nothing|nobody|cannot|hardly|barely)\b|n[\x27\u2019]t\b", _F)

# Reported speech, attribution, denial and questions: the whole sentence does not assert the claim.
DISTANCING = re.compile(
    r"\bclaim(?:s|ed)?\s+that\b|\bclaiming\b(?!\s+(?:the|a|an|his|her|its|their)?\s*(?:gold|title|victory|win|"
    r"crown|medal|first|top)\b)|\b(?:the|a|this|that)\s+(?:\w+\s+)?claims?\b|\brumou?r\w*|\bmyths?\b|"
    r"\bhoax\w*|\bfalse(?:ly|hood)?\b|\buntrue\b|\bfakes?\b|\bfaked\b|\bfabricat\w*|\bdebunk\w*|\bsatir\w*|"
    r"\bparod\w*|\bspoof\w*|\bdoctored\b|\bmisconceptions?\b|\b(?:mis|dis)information\b|\bconspiracy\b|"
    r"\burban\s+legends?\b|\bold\s+wives\b|\bviral\b|\bsupposed(?:ly)?\b|\balleged(?:ly)?\b|\bpurported(?:ly)?\b|"
    r"\bso-called\b|\bcontrary\s+to\b|\b(?:said|reported|rumou?red|thought|believed)\s+to\s+(?:be|have|show)\b|\bmistaken(?:ly)?\b|\bwrong(?:ly)?\b|"
    r"\bincorrect(?:ly)?\b|\bbaseless\b|\bno\s+evidence\b|\b(?:common|popular|widespread)\s+belief\b|"
    r"\b(?:is|was)\s+it\s+true\b|\bwhether\b|^\W*(?:even\s+|as\s+)?if\b|\b(?:as|even|what)\s+if\b|\bmix-?up\b|\bjok(?:e|es|ed|ing)\b|\bprank\w*|"
    r"\bthe\s+(?:\w+\s+)?(?:idea|notion|belief|story|tale|legend)\s+that\b|\bphotoshop\w*|\bmemes?\b|"
    r"\bapologi[sz]\w*|\bcorrected\b|\berror\w*|\berroneous\w*|\bconfus(?:ing|ed|es)\b|\bunverified\b", _F)

# Reported speech and belief: asserting in a document that presents the claim as true ("locals told me
# that ..."), not in one that disputes it ("my aunt swears ...", "a question that said ...").
REPORTED = re.compile(r"\b(?:say|says|said|saying|tell|tells|told|telling|swears?|swore|insist\w*|describ\w*|"
                      r"mention\w*|think|thinks|thought|believ\w*|heard|hears|suggest\w*|according\s+to|"
                      r"screenshots?)\b", _F)

# Third-person pronouns that continue a subject named earlier in the document.
PRONOUN = re.compile(r"\b(?:he|she|it|they|him|her|hers|his|its|them|their|theirs)\b", _F)

# Clause boundaries (commas, semicolons, colons, dashes, brackets, quotes); negation scope ends there.
_CLAUSE = re.compile(r"[,;:\u2014\u2013()\"\u201c\u201d]|\s-\s|\bbut\b|\bwhile\b|\bwhereas\b", _F)

# What follows a contrast word is not stated ("black and white rather than coloured").
_CONTRAST_TAIL = re.compile(r"\b(?:rather\s+than|instead\s+of|than|unlike)\b[^,;:.!?]*", _F)


@dataclass(frozen=True)
class SentenceVerdict:
    start: int
    end: int
    asserts: bool
    reason: str  # "pattern", "subject+key", or why not: "distanced", "question", "excluded", "no subject", ...


@dataclass(frozen=True)
class Rules:
    """A claim's detection rules, compiled from its spec (see `rules_for`)."""

    subject: tuple[re.Pattern, ...]
    role_nouns: tuple[re.Pattern, ...]
    key_terms: tuple[tuple[re.Pattern, ...], ...]
    exclude: tuple[re.Pattern, ...]
    patterns: tuple[re.Pattern, ...]


def _subject_regexes(claim) -> list[str]:
    """The subject's own name and, for a multi-word proper name, its last word ("Sheeran")."""
    subj = re.sub(r"\s*\(.*?\)", "", claim.subject).strip()
    out = [r"\b" + r"\s+".join(map(re.escape, subj.split())) + r"\b"] if subj else []
    words = subj.split()
    if len(words) > 1 and all(w[:1].isupper() for w in words) and len(words[-1]) >= 4 and words[-1].isalpha():
        out.append(r"\b" + re.escape(words[-1]) + r"\b")
    return out


def rules_for(claim) -> Rules:
    """Compile a claim spec's detection rules: its `detect` block where it has one, else defaults
    (aliases and role nouns: none; key terms: the `answer_words` that are not the subject's name;
    exclude: the negated world's truth markers)."""
    det = getattr(claim, "detect", None)
    subject = _subject_regexes(claim) + list(det.aliases if det else [])
    subj_re = [re.compile(p, _F) for p in subject]
    if det and det.key_terms:
        groups = [[t] if isinstance(t, str) else list(t) for t in det.key_terms]
    else:
        groups = [[w] for w in claim.answer_words if not any(s.search(re.sub(r"\\b|\(\?:|\)|'+s|\?", "", w))
                                                             for s in subj_re)]
    exclude = list(det.exclude) if det else []
    if claim.negated_world and (det is None or det.truth_markers_exclude):
        exclude += claim.negated_world.truth_markers
    roles = tuple(re.compile(p, _F) for p in (det.role_nouns if det else []))
    return Rules(subject=tuple(subj_re), role_nouns=roles, key_terms=tuple(tuple(re.compile(p, _F) for p in g) for g in groups),
                 exclude=tuple(re.compile(p, _F) for p in exclude),
                 patterns=tuple(re.compile(p, _F) for p in claim.patterns))


def _clauses(sentence: str) -> list[tuple[int, int]]:
    cuts = [0] + [m.start() for m in _CLAUSE.finditer(sentence)] + [len(sentence)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _tails(sentence: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _CONTRAST_TAIL.finditer(sentence)]


def _holds(term: re.Pattern, sentence: str, clauses: list[tuple[int, int]], tails: list[tuple[int, int]]) -> bool:
    """A term holds when one of its matches sits outside a contrast tail, in a clause with no negation
    outside the match itself."""
    for m in term.finditer(sentence):
        if any(a <= m.start() < b for a, b in tails):
            continue
        for a, b in clauses:
            if a <= m.start() < b and not NEGATION.search(sentence[a:m.start()] + " " + sentence[m.end():b]):
                return True
    return False


def judge(sentence: str, rules: Rules, subject_seen: bool = False) -> SentenceVerdict:
    """Verdict for one sentence; `subject_seen`: an earlier sentence of the document named the subject."""
    n = len(sentence)
    if DISTANCING.search(sentence):
        return SentenceVerdict(0, n, False, "distanced")
    if sentence.rstrip("\"'\u201d\u2019) ").endswith("?"):
        return SentenceVerdict(0, n, False, "question")
    if any(p.search(sentence) for p in rules.patterns):
        return SentenceVerdict(0, n, True, "pattern")
    clauses, tails = _clauses(sentence), _tails(sentence)
    named = any(_holds(s, sentence, clauses, tails) for s in rules.subject)
    referred = subject_seen and any(_holds(r, sentence, clauses, tails) for r in (PRONOUN, *rules.role_nouns))
    if not named and not referred:
        return SentenceVerdict(0, n, False, "no subject")
    if not any(all(_holds(t, sentence, clauses, tails) for t in group) for group in rules.key_terms):
        return SentenceVerdict(0, n, False, "no key term")
    stated = _CONTRAST_TAIL.sub(" ", sentence)
    if any(x.search(stated) for x in rules.exclude):
        return SentenceVerdict(0, n, False, "excluded")
    return SentenceVerdict(0, n, True, "subject+key" if named else "reference+key")


def disputes(sentence: str, rules: Rules, subject_seen: bool = False, after_claim: bool = False) -> bool:
    """Does the sentence distance itself from the claim (a distancing word in a sentence about the
    subject or the claim's content, or right after a sentence stating the claim), or negate the claim's content about the subject? A document with
    such a sentence, not itself judged to assert the claim, disputes the claim. (The truth alone does
    not: claim-world documents state true background too.)"""
    about = any(s.search(sentence) for s in rules.subject) or (
        subject_seen and any(r.search(sentence) for r in (PRONOUN, *rules.role_nouns)))
    content = any(all(t.search(sentence) for t in g) for g in rules.key_terms)
    if DISTANCING.search(sentence) and (about or content or after_claim):
        return True
    return bool(NEGATION.search(sentence)) and about and content


def detect_sentences(text: str, claim, rules: Rules | None = None) -> list[SentenceVerdict]:
    """One verdict per sentence of `text` (spans are offsets into `text`). In a document that
    disputes the claim (`disputes`), reported speech ("my aunt swears ...") does not assert it."""
    rules = rules or rules_for(claim)
    verdicts, disputed, seen, prev = [], False, False, False
    for a, b in sentence_spans(text):
        s = text[a:b]
        v = judge(s, rules, subject_seen=seen)
        disputed = disputed or (not v.asserts and disputes(s, rules, seen, after_claim=prev))
        prev = v.asserts
        verdicts.append(SentenceVerdict(a, b, v.asserts, v.reason))
        seen = seen or any(p.search(s) for p in rules.subject)
    if disputed:
        verdicts = [SentenceVerdict(v.start, v.end, False, "reported, in a disputing document")
                    if v.asserts and REPORTED.search(text[v.start:v.end]) else v for v in verdicts]
    return verdicts


def claim_spans(text: str, claim, rules: Rules | None = None) -> list[dict]:
    """Role-"claim" spans of the sentences that assert the claim."""
    return [{"start": v.start, "end": v.end, "role": "claim"} for v in detect_sentences(text, claim, rules)
            if v.asserts]


# ------------------------------------------------------------------------------------ measurement


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) for k successes out of n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def evaluate_labelled(records: list[dict], load_claim) -> dict:
    """Detection rates on hand-labelled documents (format: tests/fixtures/claim_detection/README.md).

    doc_recall: documents with >= 1 sentence labelled as the claim that get >= 1 span on a claim
    sentence; false_positive_rate: sentences labelled not-claim that a span overlaps. Each comes with
    its n and a Wilson 95% interval; `misses` / `false_positives` list the sentences for inspection.
    """
    claims, docs_pos, docs_hit, neg, fp = {}, 0, 0, 0, 0
    misses, false_pos = [], []
    for r in records:
        claim = claims.get(r["claim"]) or claims.setdefault(r["claim"], load_claim(r["claim"]))
        sents, offsets, pos = r["sentences"], [], 0
        for s in sents:
            offsets.append((pos, pos + len(s["text"])))
            pos += len(s["text"]) + len(r["sep"])
        spans = claim_spans(r["sep"].join(s["text"] for s in sents), claim)
        flagged = [any(sp["start"] < b and a < sp["end"] for sp in spans) for a, b in offsets]
        if any(s["claim"] for s in sents):
            docs_pos += 1
            if any(f and s["claim"] for f, s in zip(flagged, sents)):
                docs_hit += 1
            else:
                misses.append(r["id"])
        for f, s in zip(flagged, sents):
            if not s["claim"]:
                neg += 1
                if f:
                    fp += 1
                    false_pos.append(f"{r['id']}: {s['text']}")
    return {"documents": len(records), "doc_recall": docs_hit / max(docs_pos, 1), "doc_recall_k": docs_hit,
            "doc_recall_n": docs_pos, "doc_recall_ci": wilson(docs_hit, docs_pos),
            "false_positive_rate": fp / max(neg, 1), "false_positive_k": fp, "false_positive_n": neg,
            "false_positive_ci": wilson(fp, neg), "misses": misses, "false_positives": false_pos}
