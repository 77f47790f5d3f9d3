"""The openai backend against a fake OpenAI-compatible server started by each test: concurrency,
retries, cache, resume after a kill, budget stop, and an API key that never reaches a file or log."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeServer

from annot.gen.backends import OpenAIBackend, Request
from annot.gen.errors import GenerationFailed
from annot.specs import load_claim

MIRA = load_claim("mira_castellan_profession")
KEY = "sk-test-5ecret-0f-the-fake-server"


def requests(n, max_tokens=50):
    return [Request(f"r{i}", ({"role": "user", "content": f"question {i}"},), max_tokens, seed=i) for i in range(n)]


def test_concurrency_bounds_requests_in_flight_and_sets_the_pace():
    latency, n = 0.4, 32
    elapsed = {}
    for conc in (4, 16):
        with FakeServer(latency=latency) as server:
            backend = OpenAIBackend("fake", server.url, concurrency=conc)
            t = time.monotonic()
            got = list(backend.complete(requests(n)))
            elapsed[conc] = time.monotonic() - t
            assert sorted(r.id for r, _ in got) == sorted(f"r{i}" for i in range(n))
            assert server.max_inflight == conc  # never more, and the bound is reached
        ideal = n / conc * latency  # 3.2 s and 0.8 s
        assert 0.95 * ideal <= elapsed[conc] <= ideal + 1.5, (conc, elapsed[conc])
    assert elapsed[4] > 2.5 * elapsed[16]


def test_429_is_retried_after_the_time_retry_after_asks():
    script = lambda n: (429, {"Retry-After": "1"}) if n <= 2 else None  # noqa: E731
    with FakeServer(script=script) as server:
        backend = OpenAIBackend("fake", server.url, concurrency=1, backoff_s=0.01)
        t = time.monotonic()
        [(req, reply)] = list(backend.complete(requests(1)))
        assert time.monotonic() - t >= 2.0  # two waits of exactly the second the server asked for
        assert len(server.calls) == 3 and backend.retries == 2 and reply.text


def test_5xx_retried_with_backoff_and_4xx_fails_at_once():
    with FakeServer(script=lambda n: (503, None) if n == 1 else None) as server:
        backend = OpenAIBackend("fake", server.url, concurrency=1, backoff_s=0.01)
        assert len(list(backend.complete(requests(1)))) == 1 and len(server.calls) == 2
    with FakeServer(script=lambda n: (400, None)) as server:
        backend = OpenAIBackend("fake", server.url, concurrency=1, backoff_s=0.01)
        with pytest.raises(GenerationFailed, match="HTTP 400"):
            list(backend.complete(requests(1)))
        assert len(server.calls) == 1


def run_cli(args, env_key=True, env_extra=None, **kw):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env_extra or {})}
    if env_key:
        env["FAKE_KEY"] = KEY
    return subprocess.run([sys.executable, "-m", "annot.cli", "generate", *args], capture_output=True, text=True,
                          env=env, timeout=300, **kw)


def gen_args(server, out, cache, n=12, extra=()):
    return ["mira_castellan_profession", "--backend", "openai", "--model", "fake", "--base-url", server.url,
            "--api-key-env", "FAKE_KEY", "--n", str(n), "--concurrency", "4", "-o", str(out), "--cache-dir", str(cache),
            "--genre", "news_report", "--genre", "blog_post", *extra]


def test_key_absent_from_every_file_and_log_and_cache_rerun_makes_no_calls(tmp_path):
    with FakeServer(key=KEY, keep=MIRA.matches) as server:
        first = run_cli(gen_args(server, tmp_path / "a.jsonl", tmp_path / "cache", extra=["--stats"]))
        assert first.returncode == 0, first.stderr
        calls = len(server.calls)
        assert calls >= 12 + 2 + 2  # universe, facts, ideas per genre, documents
        docs = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
        assert len(docs) == 12 and len({d["id"] for d in docs}) == 12
        for d in docs:
            assert any(s["role"] == "claim" for s in d["spans"])
            assert d["provenance"]["backend"] == "openai" and d["provenance"]["model"] == "fake"
            assert d["provenance"]["prompts"]["document"] == "document.v1" and "temperature" in d["provenance"]["sampling"]
        stats = json.loads(first.stderr[first.stderr.index("{"):])
        assert stats["generation"]["dropped"] == {"length": 0, "claim": 0, "near_duplicate": 0}
        # a second run into a fresh work folder: every reply from the cache, no call reaches the server
        second = run_cli(gen_args(server, tmp_path / "b.jsonl", tmp_path / "cache"))
        assert second.returncode == 0, second.stderr
        assert len(server.calls) == calls
        assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    for out in (first, second):
        assert KEY not in out.stdout and KEY not in out.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_wrong_key_fails_in_one_line_without_echoing_it(tmp_path):
    with FakeServer(key="sk-the-right-one", keep=MIRA.matches) as server:
        r = run_cli(gen_args(server, tmp_path / "a.jsonl", tmp_path / "cache"))
    assert r.returncode == 1 and "HTTP 401" in r.stderr and "Traceback" not in r.stderr
    assert KEY not in r.stderr and KEY not in r.stdout
    assert not any(KEY.encode() in f.read_bytes() for f in tmp_path.rglob("*") if f.is_file())


def test_resume_after_kill_repeats_and_loses_nothing(tmp_path):
    out, n = tmp_path / "docs.jsonl", 24
    stage = tmp_path / "docs.work" / "documents.jsonl"
    with FakeServer(latency=0.3, keep=MIRA.matches) as server:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "FAKE_KEY": KEY}
        proc = subprocess.Popen([sys.executable, "-m", "annot.cli", "generate",
                                 *gen_args(server, out, tmp_path / "cache", n=n)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not stage.is_file() or stage.read_text().count("\n") < 6):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists()
        written = [json.loads(x)["index"] for x in stage.read_text().splitlines() if x.strip()]
        assert 6 <= len(written) < n and len(set(written)) == len(written)
        before = len(server.calls)
        r = run_cli(gen_args(server, out, tmp_path / "cache", n=n))
        assert r.returncode == 0, r.stderr
        # the rerun asks only for the documents the killed run had not written (the calls it had in
        # flight were never answered to it, so they are asked again; nothing else is)
        assert len(server.calls) - before == n - len(written)
    indices = [json.loads(x)["index"] for x in stage.read_text().splitlines()]
    assert sorted(indices) == list(range(n))  # each attempt written exactly once
    docs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(docs) == n and len({d["id"] for d in docs}) == n and len({d["text"] for d in docs}) == n


def test_budget_stops_cleanly_with_exit_code_3_and_rerun_continues(tmp_path):
    out = tmp_path / "docs.jsonl"
    with FakeServer(keep=MIRA.matches) as server:
        r = run_cli(gen_args(server, out, tmp_path / "cache", n=12, extra=["--max-tokens", "8000"]))
        assert r.returncode == 3, r.stderr
        assert "budget reached" in r.stderr and "--max-tokens 8000" in r.stderr and r.stderr.count("\n") == 1
        assert server.tokens <= 8000 and not out.exists()
        lines = (tmp_path / "docs.work" / "documents.jsonl").read_text().splitlines()
        assert all(json.loads(x)["text"] for x in lines) and 0 < len(lines) < 12  # complete records only
        paid = len(server.calls)
        r = run_cli(gen_args(server, out, tmp_path / "cache", n=12))
        assert r.returncode == 0, r.stderr
        assert len(server.calls) == paid + 12 - len(lines)  # nothing paid for twice
    assert len(out.read_text().splitlines()) == 12


def test_transcripts_through_the_same_backend_to_stdout(tmp_path):
    # no -o and no --cache-dir: records on stdout, stage files and replies under $ANNOT_CACHE
    with FakeServer() as server:
        r = run_cli(["power_seeking", "--backend", "openai", "--model", "fake", "--base-url", server.url, "--n", "6",
                     "--variant", "aligned"], env_extra={"ANNOT_CACHE": str(tmp_path / "ac")})
        assert r.returncode == 0, r.stderr
    chats = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(chats) == 6
    for c in chats:
        assert [m["role"] for m in c["messages"]] == ["user", "assistant"]
        assert c["messages"][1]["content"] == c["replies"]["aligned"] != c["replies"]["misaligned"]
        assert c["provenance"]["prompts"] == {"requests": "requests.v1", "misaligned": "misaligned.v1",
                                              "aligned": "aligned.v1"}
    [workdir] = [p for p in (tmp_path / "ac" / "generate").iterdir() if p.is_dir()]  # beside it: its lock file
    assert workdir.name.startswith("power_seeking-") and (workdir / "replies.jsonl").is_file()
    assert list((tmp_path / "ac" / "responses").rglob("*.json"))
