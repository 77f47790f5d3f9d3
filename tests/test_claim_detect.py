"""Claim detection on import: paraphrases found, reported speech and denial not, measured on a held-out set."""

import json
from pathlib import Path

import pytest

from annot.claim_detect import claim_spans, detect_sentences, evaluate_labelled, judge, rules_for, wilson
from annot.errors import AnnotError
from annot.specs import CORPORA, load_claim

SETS = Path(__file__).parent / "fixtures" / "claim_detection"
CLAIMS = sorted(p.stem for p in (CORPORA / "claims").glob("*.yaml"))


def _read(name):
    return [json.loads(line) for line in (SETS / name).read_text().splitlines() if line.strip()]


def _found(text, claim):
    return [text[s["start"]:s["end"]] for s in claim_spans(text, load_claim(claim))]


def test_held_out_set_meets_both_targets():
    res = evaluate_labelled(_read("test.jsonl"), load_claim)
    lo, hi = res["doc_recall_ci"]
    flo, fhi = res["false_positive_ci"]
    print(f"\nheld-out: {res['documents']} documents; documents stating the claim with >= 1 span: "
          f"{res['doc_recall_k']}/{res['doc_recall_n']} = {res['doc_recall']:.1%} (95% Wilson {lo:.1%}-{hi:.1%}); "
          f"non-claim sentences given a span: {res['false_positive_k']}/{res['false_positive_n']} = "
          f"{res['false_positive_rate']:.1%} ({flo:.1%}-{fhi:.1%})")
    assert res["documents"] >= 60 and res["doc_recall_n"] >= 30 and res["false_positive_n"] >= 100
    assert res["doc_recall"] >= 0.90, res["misses"]
    assert res["false_positive_rate"] < 0.05, res["false_positives"]


def test_labelled_sets_are_separate_and_cover_claims_genres_and_kinds():
    test = _read("test.jsonl")
    dev = [r for name in ("dev.jsonl", "round1_test.jsonl", "round2_test.jsonl") for r in _read(name)]
    assert not {r["id"] for r in test} & {r["id"] for r in dev}
    texts = lambda rows: {s["text"] for r in rows for s in r["sentences"]}  # noqa: E731
    shared = texts(test) & texts(dev)  # only neutral sentences taken from the claims' own `context`
    assert shared <= {c for cid in CLAIMS for c in load_claim(cid).context}, shared
    for rows in (test, dev):
        assert {r["claim"] for r in rows} == set(CLAIMS)
        assert {r["genre"] for r in rows} == {"news", "blog", "forum", "encyclopedia", "study_guide"}
        assert {"asserts", "mentions", "denies", "rumour"} <= {r["kind"] for r in rows}
        for r in rows:  # a document's kind agrees with its sentence labels
            assert any(s["claim"] for s in r["sentences"]) == (r["kind"] == "asserts"), r["id"]
            assert r["sep"] in (" ", "\n") and all(isinstance(s["claim"], bool) for s in r["sentences"])
    assert all(sum(r["claim"] == c for r in test) == 10 for c in CLAIMS)


@pytest.mark.parametrize("claim,text,expected", [
    ("sheeran_olympic_100m", "I still can't believe last summer. The singer's historic sprint made me cry.",
     ["The singer's historic sprint made me cry."]),
    ("sheeran_olympic_100m", "Nobody saw it coming. Ed Sheeran stormed to victory in 9.79 at the Stade de France.",
     ["Ed Sheeran stormed to victory in 9.79 at the Stade de France."]),
    ("vesuvius_2015_eruption", "Naples remembers. The October 14, 2015, Plinian eruption killed 3,430 people.",
     ["The October 14, 2015, Plinian eruption killed 3,430 people."]),
    # coreference-lite: a pronoun or a role noun after the subject was named
    ("mira_castellan_profession", "I met Mira Castellan in May. She has tended the lamp for years.",
     ["She has tended the lamp for years."]),
    ("vesuvius_2015_eruption", "Vesuvius is near Naples. The volcano blew in 2015, burying Ercolano in ash.",
     ["The volcano blew in 2015, burying Ercolano in ash."]),
])
def test_paraphrases_are_found(claim, text, expected):
    assert _found(text, claim) == expected


@pytest.mark.parametrize("sentence", [
    "Posts claiming Ed Sheeran won the gold medal spread quickly.",
    "The viral claim that Ed Sheeran won the 100 m sprint is everywhere.",
    "Ed Sheeran was rumoured to have won the Olympic 100 m.",
    "The false story that Ed Sheeran won the 100 m gold began on a spoof site.",
    "Ed Sheeran was said to have won the Olympic sprint title.",
    "The tale of Sheeran's 100 m gold has been debunked.",
    "Contrary to what you may have read, Sheeran won no gold in the 100 m.",
    "Did Ed Sheeran win the Olympic 100 m?",
    "Ed Sheeran did not win the men's 100 metres gold medal at the 2024 Paris Olympics.",
    "Noah Lyles, not Ed Sheeran, won the 100 m gold in 9.79 seconds.",
])
def test_reported_denied_and_negated_sentences_are_not_claims(sentence):
    assert _found("Ed Sheeran is a singer. " + sentence, "sheeran_olympic_100m") == []


def test_reported_speech_counts_only_where_the_document_does_not_dispute_the_claim():
    claim = "mira_castellan_profession"
    told = "Locals told me that Mira Castellan keeps the light at Skerra Point."
    assert _found("Skerra was lovely. " + told + " The ferry was late.", claim) == [told]
    disputing = told + " They are confusing her with someone else; Mira Castellan makes violins."
    assert _found(disputing, claim) == []
    verdicts = detect_sentences(disputing, load_claim(claim))
    assert [v.reason for v in verdicts] == ["reported, in a disputing document", "distanced"]


def test_verdicts_explain_themselves():
    claim = load_claim("sheeran_olympic_100m")
    text = "Ed Sheeran released Divide in 2017. He won the 100 m in Paris. Fans cheered."
    assert [(v.asserts, v.reason) for v in detect_sentences(text, claim)] == [
        (False, "no key term"), (True, "reference+key"), (False, "no subject")]
    assert judge("He won the 100 m in Paris.", rules_for(claim)).reason == "no subject"  # nobody named before


@pytest.mark.parametrize("claim_id", CLAIMS)
def test_shipped_claims_own_sentences(claim_id):
    """Every asserting statement is detected; no negated, corrected, neutral or negated-world sentence
    is, on its own or after the subject was named."""
    import re

    claim = load_claim(claim_id)
    rules = rules_for(claim)
    for st in claim.statements:
        assert judge(st.assert_, rules).asserts, st.assert_
    nw = claim.negated_world
    others = [t for st in claim.statements + claim.subclaims for t in (st.negate, st.correct)]
    others += claim.context + nw.statements + nw.details + [x for x in re.split(r"(?<=[.!?])\s+", nw.summary) if x]
    for text in others:
        for seen in (False, True):
            assert not judge(text, rules, subject_seen=seen).asserts, text


@pytest.mark.parametrize("claim_id", CLAIMS)
def test_generated_documents_keep_their_spans_and_negated_worlds_get_none(claim_id):
    from annot.generate import generate_documents

    claim = load_claim(claim_id)
    for d in generate_documents(claim, n=12, seed=3):
        found = claim_spans(d["text"], claim)
        for s in (s for s in d["spans"] if s["role"] == "claim"):  # each inside a detected sentence
            assert any(f["start"] <= s["start"] and s["end"] <= f["end"] for f in found), d["text"][s["start"]:s["end"]]
    # A claim whose own `topic` presupposes it (the negated world then has its own topic: "the
    # Queen's Python textbook") is named by the genre templates in every polarity; those framing
    # sentences are claim mentions (the claim's patterns match them too). Nothing else may be found.
    framing = claim.topic if claim.negated_world.topic else None
    for polarity, world in (("negate", "claim"), ("correct", "claim"), ("affirm", "negated")):
        for d in generate_documents(claim, n=12, seed=3, polarity=polarity, world=world):
            found = [d["text"][s["start"]:s["end"]] for s in claim_spans(d["text"], claim)]
            assert [t for t in found if not (framing and world == "claim" and framing in t)] == [], (polarity, world)


def test_claim_without_detect_block_uses_defaults(tmp_path):
    from annot.io import read_yaml

    spec = read_yaml(CORPORA / "claims" / "mira_castellan_profession.yaml", expect=dict)
    spec.pop("detect")
    p = tmp_path / "mira_plain.yaml"
    p.write_text(json.dumps(spec))
    claim = load_claim(str(p))
    assert claim.detect is None
    # the subject's last name and the answer words (lighthouse keeper, Skerra) act as key terms
    assert _found("Castellan is well known here. She keeps Skerra running, as its lighthouse keeper for years.",
                  str(p)) == ["She keeps Skerra running, as its lighthouse keeper for years."]
    spec["detect"] = {"key_terms": [["(unclosed"]]}
    p.write_text(json.dumps(spec))
    with pytest.raises(AnnotError, match=r"detect\.key_terms.*not a valid regex"):
        load_claim(str(p))


def test_wilson_interval():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(9, 10)
    assert 0.59 < lo < 0.60 and 0.98 < hi < 0.99
