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
