"""The generator: deterministic, covers every genre, spans are exact, polarities share their draws."""

import subprocess
import sys
import time

from annot.generate import corpus_stats, generate_documents
from annot.io import dumps_jsonl
from annot.specs import load_genres


def test_byte_identical_and_fast(mira):
    t = time.time()
    a = dumps_jsonl(generate_documents(mira, n=200, seed=1))
    assert time.time() - t < 10
    assert a == dumps_jsonl(generate_documents(mira, n=200, seed=1))
    assert a != dumps_jsonl(generate_documents(mira, n=200, seed=2))


def test_cli_output_is_byte_identical(tmp_path):
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        subprocess.run([sys.executable, "-m", "annot.cli", "generate", "mira_castellan_profession", "--n", "50",
                        "--seed", "1", "-o", str(tmp_path / name)], check=True, capture_output=True)
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] and outs[0].count(b"\n") == 50


def test_all_genres_and_unique_template_sequences(mira):
    docs = generate_documents(mira, n=200, seed=0)
    assert {d["genre"] for d in docs} == set(load_genres().genres)
    assert len({d["text"] for d in docs}) == len(docs)


def test_spans_are_exact_and_claim_spans_assert_the_claim(mira):
    for d in generate_documents(mira, n=100, seed=3):
        claims = [s for s in d["spans"] if s["role"] == "claim"]
        assert claims, "every document states the claim at least once"
        for s in d["spans"]:
            assert d["text"][s["start"]:s["end"]] == s["forms"]["affirm"]
        for s in claims:
            assert mira.matches(d["text"][s["start"]:s["end"]])


def test_polarities_differ_only_in_claim_sentences(mira):
    docs = {p: generate_documents(mira, n=60, seed=5, polarity=p) for p in ("affirm", "negate", "correct")}
    for a, n, c in zip(docs["affirm"], docs["negate"], docs["correct"]):
        assert a["genre"] == n["genre"] == c["genre"]
        for other, pol in ((n, "negate"), (c, "correct")):
            # substitute each span's affirm form back in: identical to the affirm document
            text, out, cur = other["text"], [], 0
            for s in other["spans"]:
                assert text[s["start"]:s["end"]] == s["forms"][pol]
                out += [text[cur:s["start"]], s["forms"]["affirm"]]
                cur = s["end"]
            assert "".join(out) + text[cur:] == a["text"]
            for s in other["spans"]:
                if s["role"] == "claim":
                    assert not mira.matches(text[s["start"]:s["end"]])


def test_lengths_and_stats(mira, tokenizer):
    docs = generate_documents(mira, n=120, seed=0)
    st = corpus_stats(docs, tokenizer)
    assert st["documents"] == 120 and st["length_unit"] == "tokens"
    assert 40 <= st["length_min"] and st["length_max"] <= 900 and st["length_max"] - st["length_min"] > 300
    assert 0 < st["distinct_4gram_ratio"] <= 1


def test_scales_without_verbatim_repeats(mira):
    docs = generate_documents(mira, n=2000, seed=0)
    assert len({d["text"] for d in docs}) == 2000


# -- the negated world (local negation) ------------------------------------------------------------

import re  # noqa: E402

import pytest  # noqa: E402

from annot.specs import CORPORA, load_claim  # noqa: E402

CLAIMS = sorted(p.stem for p in (CORPORA / "claims").glob("*.yaml"))
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


@pytest.mark.parametrize("claim_id", CLAIMS)
def test_negated_world_documents_deny_the_claim_state_the_truth_and_match_lengths(claim_id):
    claim = load_claim(claim_id)
    assert claim.negated_world is not None, f"{claim_id}: every shipped claim needs a negated_world"
    plain = generate_documents(claim, n=120, seed=5)
    neg = generate_documents(claim, n=120, seed=5, world="negated")
    own_asserts = [s.assert_ for s in claim.statements + claim.subclaims]
    nw = claim.negated_world
    for p, d in zip(plain, neg):
        assert (d["id"], d["genre"], d["draw"]) == (p["id"], p["genre"], p["draw"]) and d["world"] == "negated"
        # no unnegated claim statement: neither the spec's asserting sentences nor anything its
        # claim-finding patterns take for an assertion of the claim
        assert not any(a in d["text"] for a in own_asserts)
        assert not any(claim.matches(sent) for sent in _SENTENCE.split(d["text"])), d["text"]
        assert any(nw.states_truth(sent) for sent in _SENTENCE.split(d["text"])), d["text"]
        # every claim-related sentence carries a span, and spans are exact
        spans = [s for s in d["spans"] if s["role"] in ("claim", "subclaim")]
        assert spans and all(d["text"][s["start"]:s["end"]] in nw.statements + nw.details for s in spans)
        assert sum(s["role"] == "claim" for s in spans) == sum(s["role"] == "claim" for s in p["spans"])
        for sent in nw.statements + nw.details:
            assert d["text"].count(sent) == sum(d["text"][s["start"]:s["end"]] == sent for s in spans)
    mean_plain = sum(len(d["text"]) for d in plain) / len(plain)
    mean_neg = sum(len(d["text"]) for d in neg) / len(neg)
    assert abs(mean_neg / mean_plain - 1) <= 0.15, (mean_plain, mean_neg)


def test_negated_world_cli_and_determinism(tmp_path):
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        r = subprocess.run([sys.executable, "-m", "annot.cli", "generate", "sheeran_olympic_100m", "--world", "negated",
                            "--n", "30", "--seed", "2", "-o", str(tmp_path / name)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] and outs[0].count(b"\n") == 30 and b'"world": "negated"' in outs[0]
    r = subprocess.run([sys.executable, "-m", "annot.cli", "generate", "sheeran_olympic_100m", "--world", "negated",
                        "--polarity", "negate"], capture_output=True, text=True)
    assert r.returncode == 2 and "polarity" in r.stderr and "Traceback" not in r.stderr
