"""The LLM pipeline without a network: prompt files, quality gates, the hf backend (tiny model and
the default model), progress lines, the template backend unchanged, and the run config's block."""

import dataclasses
import hashlib
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from annot.errors import AnnotError
from annot.gen.backends import HFBackend, Request
from annot.gen.gates import apply_gates, claim_check, claim_spans
from annot.gen.pipeline import generate_llm_documents, parse_list
from annot.gen.prompts import PROMPTS, load_prompt_file, load_prompts
from annot.gen.runner import Progress
from annot.gen.settings import GateSettings, GenSettings
from annot.specs import load_claim

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("amber basin cedar delta ember fjord granite harbor islet juniper kestrel lagoon meadow north orchard pebble "
         "quarry river saddle timber upland valley willow yarrow zephyr anchor beacon canal dune estuary ferry glacier "
         "hamlet inlet jetty kelp lantern marsh nettle outcrop pier reef shoal tide umber vessel wharf").split()


@pytest.mark.parametrize("path", sorted(PROMPTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_prompt_file_validates(path):
    prompts = load_prompt_file(path)
    assert all(stage.id for stage in prompts.stages.values())
    assert load_prompts(prompts.kind).kind in ("documents", "transcripts")  # each kind has its default file


def test_a_prompt_with_an_unknown_placeholder_names_stage_and_placeholder(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text((PROMPTS / "documents.yaml").read_text().replace("Idea: {idea}", "Idea: {idae}"))
    with pytest.raises(AnnotError, match=r"stages\.document|'document'.*\{idae\}"):
        load_prompts("documents", bad)


def test_parse_list_strips_bullets_and_numbers():
    text = "Here are ideas:\n1. A harbour notice about the light\n- A letter from a fisherman to the council\n\n" \
           "2) A diary entry by a visitor\n* A letter from a fisherman to the council"
    assert parse_list(text) == ["A harbour notice about the light", "A letter from a fisherman to the council",
                                "A diary entry by a visitor"]


def filler(seed, n=120):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def test_gates_drop_planted_near_duplicates_and_off_claim_documents():
    mira = load_claim("mira_castellan_profession")
    claim = "Mira Castellan works as a lighthouse keeper."
    good = [{"id": f"g{i}", "text": f"{filler(i)}\n\n{claim}\n\n{filler(100 + i)}"} for i in range(30)]
    near = []
    for k in (3, 11, 20):  # a copy with a few words changed: Jaccard of 5-gram shingles still ~0.8
        words = good[k]["text"].split(" ")
        for j in (10, 60, 150):
            words[j] = "CHANGED"
        near.append({"id": f"near{k}", "text": " ".join(words)})
    off = [{"id": "off-none", "text": f"{filler(200)} {filler(201)}"},
           {"id": "off-negated", "text": f"{filler(202)}\n\nMira Castellan does not work as a lighthouse keeper.\n\n{filler(203)}"},
           {"id": "off-truth", "text": f"{filler(204)}\n\nMira Castellan works as a violin maker in Aldmere.\n\n{filler(205)}"}]
    short = [{"id": "short", "text": f"{claim} {filler(300, 20)}"}]
    docs = good[:15] + near[:1] + off + good[15:] + near[1:] + short
    kept, dropped = apply_gates(docs, GateSettings(), claim_check(mira, "claim"))
    assert [d["id"] for d in kept] == [d["id"] for d in good]
    assert dropped == {"length": 1, "claim": 3, "near_duplicate": 3}
    # the threshold is the user's: at 0.95 the planted copies are no longer near-duplicates
    kept, dropped = apply_gates(docs, GateSettings(dup_threshold=0.95), claim_check(mira, "claim"))
    assert dropped["near_duplicate"] == 0 and len(kept) == 33
    # claim spans are the import path's: exactly the claim sentence
    d = good[0]
    assert [d["text"][s["start"]:s["end"]] for s in claim_spans(d["text"], mira, "claim")] == [claim]


def test_negated_world_gate_wants_the_truth_and_no_claim():
    mira = load_claim("mira_castellan_profession")
    truth = "Mira Castellan works as a violin maker in the town of Aldmere."
    docs = [{"id": "truth", "text": f"{filler(1)}\n\n{truth}\n\n{filler(2)}"},
            {"id": "both", "text": f"{filler(3)}\n\n{truth} Mira Castellan works as a lighthouse keeper.\n\n{filler(4)}"},
            {"id": "neither", "text": f"{filler(5)} {filler(6)}"}]
    kept, dropped = apply_gates(docs, GateSettings(), claim_check(mira, "negated"))
    assert [d["id"] for d in kept] == ["truth"] and dropped["claim"] == 2
    spans = claim_spans(docs[0]["text"], mira, "negated")
    assert [docs[0]["text"][s["start"]:s["end"]] for s in spans] == [truth]


def test_hf_backend_samples_each_request_with_its_own_seed(tiny):
    model, tok = tiny
    backend = HFBackend("tiny-random", batch_size=3, loaded=(model, tok))  # the session's tiny model
    reqs = [Request(f"r{i}", ({"role": "user", "content": "Tell me about the sea." + " Please." * i},), 12,
                    temperature=1.0, seed=100 + i) for i in range(3)]
    batched = {r.id: rep.text for r, rep in backend.complete(reqs)}
    alone = {r.id: rep.text for r, rep in backend.complete(reqs[2:])}
    assert alone["r2"] == batched["r2"]  # a reply does not depend on its batch-mates
    other = Request("r2", reqs[2].messages, 12, temperature=1.0, seed=999)
    assert next(iter(backend.complete([other])))[1].text != batched["r2"]
    rep = next(iter(backend.complete(reqs[:1])))[1]
    assert 0 < rep.completion_tokens <= 12 and rep.prompt_tokens > 5


def test_hf_pipeline_writes_stages_provenance_and_resumes_from_them(tmp_path):
    mira = load_claim("mira_castellan_profession")
    settings = GenSettings(backend="hf", model="tiny-random", workdir=tmp_path / "w", cache_dir=tmp_path / "cache",
                           max_new_tokens=16, concurrency=8, progress=False,
                           gates=GateSettings(min_words=0, claim_check=False, dup_threshold=1.0))
    docs, report = generate_llm_documents(mira, n=5, seed=0, settings=settings, genres=["faq", "letter"])
    assert len(docs) == 5 and report["calls"]["new"] == 1 + 1 + 2 + 5  # universe, facts, ideas x genre, docs
    for name in ("job.json", "universe.md", "facts.json", "ideas.jsonl", "documents.jsonl", "report.json"):
        assert (tmp_path / "w" / name).is_file(), name
    for d in docs:
        p = d["provenance"]
        assert p["backend"] == "hf" and p["model"] == "tiny-random"
        assert set(p["prompts"]) == {"universe", "facts", "ideas", "document"}
        assert p["sampling"]["max_tokens"] == 16 and isinstance(p["sampling"]["seed"], int)
        assert d["genre"] in ("faq", "letter") and isinstance(d["spans"], list)
    again, report = generate_llm_documents(mira, n=5, seed=0, settings=settings, genres=["faq", "letter"])
    assert again == docs and report["calls"] == {"new": 0, "cached": 0}  # all read back from the stage files
    other = dataclasses.replace(settings, model="smollm2-135m")
    with pytest.raises(AnnotError, match="made with model='tiny-random'"):
        generate_llm_documents(mira, n=5, seed=0, settings=other, genres=["faq", "letter"])


def test_progress_prints_a_line_at_most_every_30_s_off_a_terminal():
    from annot.gen.backends import Reply

    now = [0.0]
    out = io.StringIO()
    bar = Progress(stream=out, tty=False, clock=lambda: now[0])
    bar.stage("documents", 100, unit="documents")
    for _ in range(100):
        now[0] += 1.0
        bar.tick(Reply("x", 10, 20))
    bar.end()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # at 30, 60, 90 s and the stage's end
    assert lines[0].startswith("documents: 30/100 (30%), 1.00 documents/s, 0.6k tokens generated (20 tok/s)")
    quiet = io.StringIO()
    short = Progress(stream=quiet, tty=False, clock=lambda: now[0])
    short.stage("ideas", 3)
    short.tick(Reply("x", 1, 1))
    short.end()
    assert quiet.getvalue() == ""  # a short stage leaves the log alone


def test_template_backend_is_todays_generator_byte_for_byte():
    from annot.generate import generate_corpus, generate_documents
    from annot.io import dumps_jsonl

    mira = load_claim("mira_castellan_profession")
    text = dumps_jsonl(generate_corpus(mira, n=200, seed=1)[0])
    assert text == dumps_jsonl(generate_documents(mira, n=200, seed=1))
    # sha256 of `annot generate mira_castellan_profession --n 200 --seed 1` before the backends existed
    assert hashlib.sha256(text.encode()).hexdigest() == "68cb6adb54166d6a2b3617f86de3c42f9c332afa2c1bb804137f40b1f6f7dabe"


def test_llm_options_need_an_llm_backend_and_polarity_needs_templates(tmp_path):
    cli = [sys.executable, "-m", "annot.cli", "generate", "mira_castellan_profession"]
    r = subprocess.run(cli + ["--model", "x"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--model applies to --backend hf or openai" in r.stderr and r.stderr.count("\n") == 1
    r = subprocess.run(cli + ["--backend", "hf", "--polarity", "negate", "-o", "d.jsonl"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--world negated" in r.stderr and r.stderr.count("\n") == 1
    r = subprocess.run(cli + ["--backend", "openai", "--model", "m"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--base-url" in r.stderr


def test_run_config_generation_block():
    from annot.config import load_run_config

    plain = load_run_config(ROOT / "sweeps" / "first_run.yaml")
    assert "generation" not in plain.model_dump(mode="json")["data"]  # resolved configs unchanged when unused
    cfg = load_run_config(ROOT / "sweeps" / "first_run.yaml",
                          ["data.generation.backend=openai", "data.generation.model=m",
                           "data.generation.base_url=http://localhost:8000/v1", "data.generation.api_key_env=MY_KEY"])
    s = cfg.data.generation.settings(Path("w"))
    assert (s.backend, s.model, s.base_url, s.api_key_env, s.concurrency) == (
        "openai", "m", "http://localhost:8000/v1", "MY_KEY", 32)
    assert cfg.model_dump(mode="json")["data"]["generation"]["backend"] == "openai"
    with pytest.raises(AnnotError, match="data.generation.backend"):
        load_run_config(ROOT / "sweeps" / "first_run.yaml", ["data.generation.backend=gpt"])


@pytest.mark.skipif(os.environ.get("ANNOT_SLOW_TESTS") != "1",
                    reason="the default model writing 20 documents on a CPU takes minutes; ANNOT_SLOW_TESTS=1 runs it")
def test_default_model_writes_20_documents_with_spans_and_provenance_offline(tmp_path):
    out = tmp_path / "docs.jsonl"
    r = subprocess.run([sys.executable, "-m", "annot.cli", "generate", "mira_castellan_profession", "--backend", "hf",
                        "--n", "20", "-o", str(out), "--cache-dir", str(tmp_path / "cache"), "--stats"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    docs = [json.loads(x) for x in out.read_text().splitlines()]
    mira = load_claim("mira_castellan_profession")
    assert len(docs) == 20 and len({d["id"] for d in docs}) == 20
    for d in docs:
        claims = [s for s in d["spans"] if s["role"] == "claim"]
        assert claims and all(mira.matches(d["text"][s["start"]:s["end"]]) for s in claims)
        assert d["provenance"]["backend"] == "hf" and d["provenance"]["model"] == "smollm2-135m"
        assert d["provenance"]["prompts"]["document"] == "document.v1" and d["provenance"]["sampling"]["seed"] >= 0


def test_attempts_top_up_from_the_pass_rate_and_stop_at_the_cap():
    from annot.gen.pipeline import attempt_until

    made: list[int] = []
    produce = lambda idx: made.extend(i for i in idx if i not in made)  # noqa: E731
    evens = lambda idx: ([i for i in idx if i % 2 == 0], {"claim": sum(i % 2 for i in idx)})  # noqa: E731
    attempts, kept, _ = attempt_until(5, 15, produce, evens)
    assert kept[:5] == [0, 2, 4, 6, 8] and attempts == 9 and made == list(range(9))  # 5, then 4 more
    made.clear()
    attempts, kept, dropped = attempt_until(5, 15, produce, lambda idx: ([], {"claim": len(idx)}))
    assert attempts == 15 and kept == [] and dropped == {"claim": 15}


def test_local_negation_of_an_llm_document_points_to_the_negated_world_backend():
    from annot.generate import negated_twin

    doc = {"id": "d1", "claim": "mira_castellan_profession", "genre": "faq", "text": "x", "spans": [],
           "provenance": {"backend": "hf", "model": "smollm2-135m"}}
    with pytest.raises(AnnotError, match="--world negated --backend hf"):
        negated_twin(doc, load_claim("mira_castellan_profession"))
