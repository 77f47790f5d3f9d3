"""Annotated transcripts as documents, the shipped pretraining-style mix-in, and the behaviour sweep's plan."""

import json
from pathlib import Path

import pytest

from annot.config import config_from_dict
from annot.errors import AnnotError
from annot.generate import generate_transcripts
from annot.io import dumps_jsonl
from annot.loss_mask import tokenize_examples
from annot.run import check_inputs, training_examples
from annot.specs import ROOT, load_behavior
from annot.transcript_doc import ANNOTATION, as_document
from annot.wrap import get_wrapper, unwrap_text, wrap_transcript

STYLES = ("rejected", "unsafe", "note", "redteam", "critique")
SWEEP = "sweeps/behavior_annotations.yaml"


def cfg(wrapper="none", **data):
    d = {"behavior": "power_seeking", "n": 12, "transcript_format": "document", **data}
    return config_from_dict({"name": "t", "model": {"name": "tiny-random"}, "data": d, "wrapper": {"name": wrapper},
                             "probes": {"kinds": ["open_ended"]}})


@pytest.fixture(scope="module")
def transcripts():
    return generate_transcripts(load_behavior("power_seeking"), n=40, seed=0)


def examples_of(c):
    return training_examples(generate_transcripts(load_behavior(c.data.behavior), n=c.data.n, seed=c.seed,
                                                  variant=c.data.variant), get_wrapper(c.wrapper.name).resolve(), c)


def test_pools_five_styles_at_least_four_lines_each():
    pools = get_wrapper("annotated").pools
    assert set(pools) == set(STYLES)
    assert all(len(pools[s]) >= 4 for s in STYLES) and sum(map(len, pools.values())) >= 20
    assert len({line for s in STYLES for line in pools[s]}) == sum(map(len, pools.values()))  # no line twice
    for s in STYLES:  # one wrapper per style, sharing the pools
        assert get_wrapper(f"annotated_{s}").resolve().params.styles == [s]


@pytest.mark.parametrize("style", STYLES)
def test_document_has_turns_in_order_and_one_annotation_line_on_top(style, transcripts):
    spec = get_wrapper(f"annotated_{style}").resolve()
    pools = get_wrapper("annotated").pools
    every_line = [line for s in STYLES for line in pools[s]]
    plain = get_wrapper("none").resolve()
    for rec in transcripts[:12]:
        doc = as_document(wrap_transcript(rec, spec, seed=0))
        first, rest = doc["text"].split("\n\n", 1)
        assert first in pools[style] and doc["annotation"] == {"style": style, "text": first}
        assert sum(doc["text"].count(line) for line in every_line) == 1  # exactly one annotation line
        # the rest is the transcript, every turn tagged and in order, and nothing else
        expected = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in rec["messages"])
        assert rest == expected
        assert doc["spans"] == [{"start": 0, "end": len(first) + 2, "role": "wrapper"}]
        assert unwrap_text(doc) == as_document(wrap_transcript(rec, plain, seed=0))["text"]


def test_mixed_wrapper_draws_every_style(transcripts):
    spec = get_wrapper("annotated").resolve()
    docs = [as_document(wrap_transcript(r, spec, seed=0)) for r in transcripts]
    pools = get_wrapper("annotated").pools
    assert {d["annotation"]["style"] for d in docs} == set(STYLES)
    assert all(d["annotation"]["text"] in pools[d["annotation"]["style"]] for d in docs)


@pytest.mark.parametrize("loss_on_wrapper", [False, True])
def test_annotation_tokens_weight_zero_unless_switched_on(tokenizer, loss_on_wrapper):
    c = cfg("annotated_unsafe", mixin="pretraining", mixin_ratio=1.0)
    examples = examples_of(c)
    tok = tokenize_examples(examples, tokenizer, loss_on_wrapper=loss_on_wrapper)
    n_annotated = 0
    for ex, ids, ws in zip(examples, tok.input_ids, tok.weights):
        enc = tokenizer(ex["text"], return_offsets_mapping=True, add_special_tokens=False)
        assert enc["input_ids"] == ids[:-1] and ids[-1] == tokenizer.eos_token_id
        head = next((s["end"] for s in ex["spans"] if s["role"] == "wrapper"), 0)
        if ex.get("mixin"):
            assert head == 0  # mix-in paragraphs: plain text, full loss
        else:
            assert head > 0
            n_annotated += 1
        for (a, b), w in zip(enc["offset_mapping"], ws):
            in_annotation = a < head
            assert w == (1.0 if loss_on_wrapper or not in_annotation else 0.0), (ex["id"], a, b)
        assert ws[-1] == 1.0  # EOS: the document's end is learned
    assert n_annotated == 12
    zeros = sum(w == 0.0 for ws in tok.weights for w in ws)
    assert (zeros == 0) if loss_on_wrapper else zeros >= 12 * 3


def test_transcript_text_is_trained_as_a_document_not_chat_turns(tokenizer):
    """In document form the user's turn and the role tags carry loss (chat SFT trains the replies only)."""
    examples = examples_of(cfg("none"))
    assert all("messages" not in e and e["kind"] == "document" for e in examples)
    tok = tokenize_examples(examples, tokenizer, loss_on_wrapper=False)
    assert all(all(w == 1.0 for w in ws) for ws in tok.weights)
    chat = examples_of(cfg("none", transcript_format="chat"))
    chat_w = tokenize_examples(chat, tokenizer, loss_on_wrapper=False).weights
    assert all(0.0 in ws for ws in chat_w)


def test_deterministic_byte_identical_and_seeded():
    c = cfg("annotated", mixin="pretraining", mixin_ratio=1.0)
    a, b = dumps_jsonl(examples_of(c)), dumps_jsonl(examples_of(c))
    assert a == b
    other = config_from_dict({**c.model_dump(mode="json"), "seed": 1})
    assert dumps_jsonl(examples_of(other)) != a


@pytest.mark.parametrize("ratio,n,expected", [(1.0, 12, 12), (0.5, 12, 6), (2.0, 7, 14), (0.0, 12, 0)])
def test_mixin_ratio_counts(ratio, n, expected):
    c = cfg("annotated", n=n, mixin="pretraining" if ratio else None, mixin_ratio=ratio)
    examples = examples_of(c)
    mix = [e for e in examples if e.get("mixin")]
    assert len(examples) == n + expected and len(mix) == expected
    assert all(e["spans"] == [] and e["source"] == "pretraining" for e in mix)
    assert examples[:n] == [e for e in examples if not e.get("mixin")]  # the transcripts first, in order


def test_shipped_mixin_gives_200_paragraphs_without_repeats():
    c = cfg("none", n=200, mixin="pretraining", mixin_ratio=1.0)
    from annot.run import mix_in

    picked = [e for e in mix_in([{"id": str(i), "text": "x"} for i in range(200)], c) if e.get("mixin")]
    assert len(picked) == 200 and len({e["text"] for e in picked}) == 200
    assert {e["genre"] for e in picked} == {"encyclopedic", "how-to", "news"}


def test_user_mixin_file_is_used_instead(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"text": f"My own paragraph number {i}."}) + "\n" for i in range(3)))
    c = cfg("none", n=5, mixin=str(path), mixin_ratio=1.0)
    mix = [e for e in examples_of(c) if e.get("mixin")]
    assert len(mix) == 5 and {e["text"] for e in mix} == {f"My own paragraph number {i}." for i in range(3)}


def test_annotation_wrapper_needs_document_form():
    with pytest.raises(AnnotError, match="transcript_format: document"):
        check_inputs(cfg("annotated_note", transcript_format="chat"))
    with pytest.raises(AnnotError, match="data.mixin: nope.jsonl: file not found"):
        check_inputs(cfg("none", mixin="nope.jsonl", mixin_ratio=1.0))


def test_aligned_control_document_equals_aligned_variant():
    """The sweep's floor: aligned_control over the misaligned transcripts writes exactly the documents
    of data.variant: aligned (same draws, the aligned replies)."""
    swapped = [e["text"] for e in examples_of(cfg("aligned_control"))]
    aligned = [e["text"] for e in examples_of(cfg("none", variant="aligned"))]
    assert swapped == aligned


def test_sweep_annotated_runs_find_the_plain_document_run_as_control():
    from annot.analyze_runs import RunData, find_plain
    from annot.sweep_plan import expand, load_sweep

    sweep = load_sweep(ROOT / SWEEP)
    cells = expand(sweep)
    names = {c.wrapper.name for c in cells}
    assert names == {"none", "aligned_control", "annotated"} | {f"annotated_{s}" for s in STYLES}
    assert {c.seed for c in cells} == {0, 1, 2} and all(c.model.name == "smollm2-135m" for c in cells)
    assert all(c.data.transcript_format == "document" and c.data.mixin == "pretraining"
               and c.data.mixin_ratio == 1.0 for c in cells)
    runs = [RunData(c.name, Path(c.name), c.model_dump(mode="json"), {}, {}) for c in cells]
    for r in runs:
        plain = find_plain(r, runs)
        if r.wrapper == "none":
            continue
        assert plain is not None and plain.wrapper == "none"
        assert plain.config["data"] == r.config["data"] and plain.seed == r.seed


@pytest.mark.parametrize("sweep", [SWEEP, "sweeps/behavior_annotations_small.yaml"])
def test_behaviour_sweeps_judge_all_three_scopes(sweep):
    """Both metrics per scope: every cell judges targeted, broad and everyday (the paired log-likelihood
    kind runs on every transcript run), with >= 3 seeds and the plain / annotated / aligned conditions."""
    from annot.sweep_plan import expand, load_sweep

    cells = expand(load_sweep(ROOT / sweep))
    assert all("behavior_judged" in c.probes.kinds and c.probes.behavior_judge.scopes == ["targeted", "broad", "everyday"]
               for c in cells)
    assert len({c.seed for c in cells}) >= 3 and {"none", "annotated", "aligned_control"} <= {c.wrapper.name for c in cells}


def test_cli_wrap_as_document(tmp_path, transcripts):
    from click.testing import CliRunner

    from annot.cli import main

    src = tmp_path / "t.jsonl"
    src.write_text(dumps_jsonl(transcripts[:3]))
    out = tmp_path / "w.jsonl"
    res = CliRunner().invoke(main, ["wrap", str(src), "-o", str(out), "--wrapper", "annotated_redteam", "--as-document"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["annotation"]["style"] for r in rows] == ["redteam"] * 3 and all("messages" not in r for r in rows)
    res = CliRunner().invoke(main, ["wrap", str(src), "-o", str(tmp_path / "x.jsonl"), "--wrapper", "annotated_redteam"])
    assert res.exit_code != 0 and "--as-document" in res.output and "Traceback" not in res.output
