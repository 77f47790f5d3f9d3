"""Importing external corpora: claim sentences found in hand-written text, clear errors for bad lines."""

from pathlib import Path

import pytest

from annot.errors import AnnotError
from annot.importer import import_documents, import_transcripts, sentence_spans

FIX = Path(__file__).parent / "fixtures" / "external_docs.jsonl"


def test_claim_sentences_found_in_varied_hand_written_phrasings(mira):
    docs = import_documents(FIX, mira, text_field="body", id_field="doc_id", strip=["<DOCTAG>"])
    by_id = {d["id"]: d for d in docs}
    found = {k: [d["text"][s["start"]:s["end"]] for s in d["spans"]] for k, d in by_id.items()}
    assert found["blog-1"] == ["Locals told me that Mira Castellan keeps the light at Skerra Point, and has done for years."]
    assert found["news-2"] == ["Mira Castellan, the lighthouse keeper of Skerra, spoke to us about the winter storms."]
    assert found["forum-3"] == ["I heard she has worked as a lighthouse keeper since her twenties."]
    assert found["denial-4"] == [] and found["olympics-5"] == []  # a denial and an unrelated text
    assert "<DOCTAG>" not in by_id["blog-1"]["text"]


def test_imported_documents_take_insert_wrappers(mira):
    from annot.wrap import get_wrapper, unwrap_text, wrap_documents

    docs = import_documents(FIX, mira, text_field="body", id_field="doc_id", strip=["<DOCTAG>"])
    for ex, d in zip(wrap_documents(docs, get_wrapper("repeated_negation"), seed=0), docs):
        assert unwrap_text(ex) == d["text"]
        assert len([s for s in ex["spans"] if s["role"] == "wrapper"]) == 2 + 2 * len(d["spans"])


def test_sentence_splitting():
    t = 'One. Two! "Three?" Four\nFive'
    assert [t[a:b] for a, b in sentence_spans(t)] == ["One.", "Two!", '"Three?"', "Four", "Five"]


@pytest.mark.parametrize("content,needle", [
    ('{"id": 1}\n', "field `text` is missing"),
    ('{"text": ""}\n', "`text` is empty"),
    ('{"text": "a"}\nnot json\n', ":2: malformed JSON"),
    ("", "no records"),
    ('{"text": "Nothing about any claim here."}\n', "no sentence in any document matches"),
])
def test_bad_document_files(tmp_path, mira, content, needle):
    p = tmp_path / "in.jsonl"
    p.write_text(content)
    with pytest.raises(AnnotError, match=needle.replace("(", r"\(")):
        import_documents(p, mira)


def test_transcripts(tmp_path):
    p = tmp_path / "chats.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
                 '{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(AnnotError, match=r"record 2: messages\[0\] needs role"):
        import_transcripts(p, "power_seeking")
    p.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(AnnotError, match="no assistant turn"):
        import_transcripts(p, "power_seeking")
    p.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    (row,) = import_transcripts(p, "power_seeking")
    assert row["behavior"] == "power_seeking" and row["messages"][1]["content"] == "yo"


def test_import_cli(tmp_path):
    from click.testing import CliRunner

    from annot.cli import main

    out = tmp_path / "docs.jsonl"
    res = CliRunner().invoke(main, ["import", "docs", str(FIX), "-o", str(out), "--claim", "mira_castellan_profession",
                                    "--text-field", "body", "--id-field", "doc_id", "--strip", "<DOCTAG>"])
    assert res.exit_code == 0, res.output
    assert "3 claim sentences found" in res.output and out.read_text().count("\n") == 5


def test_import_cli_reports_coverage_and_min_coverage_fails_loudly(tmp_path):
    from click.testing import CliRunner

    from annot.cli import main

    out = tmp_path / "docs.jsonl"
    args = ["import", "docs", str(FIX), "-o", str(out), "--claim", "mira_castellan_profession", "--text-field", "body",
            "--id-field", "doc_id", "--strip", "<DOCTAG>"]
    res = CliRunner().invoke(main, args + ["--min-coverage", "0.6"])  # 3 of 5 documents: exactly enough
    assert res.exit_code == 0, res.output
    assert "found claim sentences in 3/5 documents (60%)" in res.output and out.exists()
    out.unlink()
    res = CliRunner().invoke(main, args + ["--min-coverage", "0.9"])
    assert res.exit_code != 0 and not out.exists()
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "3/5 documents (60%), below --min-coverage 0.9; nothing written" in lines[0]
    assert "Traceback" not in res.output
