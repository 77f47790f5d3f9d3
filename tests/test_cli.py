"""The click layer: help everywhere, version, wrap listing/preview, one-line errors."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from annot import __version__
from annot.cli import main

COMMANDS = ["generate", "import", "wrap", "train", "probe", "run", "sweep", "analyze", "plot", "report",
            "evals", "bench", "distill"]


@pytest.mark.parametrize("cmd", [[], *[[c] for c in COMMANDS]])
def test_help(cmd):
    res = CliRunner().invoke(main, cmd + ["--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_version():
    res = CliRunner().invoke(main, ["--version"])
    assert __version__ in res.output


def test_wrap_list_and_preview(tmp_path):
    r = CliRunner()
    listing = r.invoke(main, ["wrap", "--list"])
    assert listing.exit_code == 0
    docs_part, chats_part = listing.output.split("Transcript wrappers:")
    assert docs_part.startswith("Document wrappers:")
    for name in ("none", "notice", "repeated_negation", "local_negation", "negation_swap", "word_mask", "corrected",
                 "fiction"):
        assert f"\n  {name}: " in docs_part
    for name in ("system_label", "user_prefix", "critique_suffix", "inoculation"):
        assert f"\n  {name}: " in chats_part and f"\n  {name}: " not in docs_part
    assert "doc_tag" in docs_part and "doc_tag" not in chats_part  # never described for the wrong kind
    assert "disclaimer before, after or around each sentence" in docs_part  # help text whole
    docs = tmp_path / "d.jsonl"
    assert r.invoke(main, ["generate", "mira_castellan_profession", "--n", "3", "-o", str(docs)]).exit_code == 0
    out = tmp_path / "w.jsonl"
    res = r.invoke(main, ["wrap", str(docs), "-o", str(out), "--wrapper", "repeated_negation",
                          "--param", "density=0.5", "--preview", "2"])
    assert res.exit_code == 0, res.output
    assert res.output.count("--- mira_castellan_profession") == 2 and "[[" in res.output
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert rows[0]["wrapper"]["params"]["density"] == 0.5


@pytest.mark.parametrize("args,needle", [
    (["wrap", "MISSING.jsonl", "--wrapper", "none"], "MISSING.jsonl: file not found"),
    (["wrap", "--wrapper", "bogus", "BAD"], "unknown wrapper 'bogus'; valid:"),
    (["generate", "no_such_claim"], "unknown claim 'no_such_claim'"),
    (["probe"], "give either RUN_DIR or --model"),
    (["run", "nope.yaml"], "nope.yaml: file not found"),
])
def test_errors_are_one_line(args, needle, tmp_path):
    out = subprocess.run([sys.executable, "-m", "annot.cli", *args], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and needle in out.stderr, out.stderr


def test_malformed_jsonl_names_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": "a", "text": "x"}\n{"id": \n')
    res = CliRunner().invoke(main, ["wrap", str(p), "--wrapper", "none"])
    assert res.exit_code == 2 and f"{p}:2: malformed JSON" in res.output
