"""`annot run` end to end on the tiny model: the run directory, atomic results, re-runs."""

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from annot.specs import ROOT

CONFIG = ROOT / "sweeps" / "first_run.yaml"


def run_cli(tmp_path, *extra):
    return subprocess.run([sys.executable, "-m", "annot.cli", "run", str(CONFIG), "--no-progress",
                           "--set", "model.name=tiny-random", "--set", "data.n=12", "--set", "training.epochs=1",
                           "--set", f"output_dir={tmp_path / 'runs'}", *extra],
                          capture_output=True, text=True, timeout=300)


def test_run_writes_the_run_directory(tmp_path):
    t = time.time()
    out = run_cli(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert time.time() - t < 60
    d = tmp_path / "runs" / "first_run"
    for f in ("config.yaml", "manifest.json", "documents.jsonl", "wrapped.jsonl", "train_metrics.jsonl",
              "probes.jsonl", "summary.json"):
        assert (d / f).is_file(), f
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["model"]["name"] == "tiny-random" and cfg["training"]["lora_r"] == 16  # resolved defaults
    man = json.loads((d / "manifest.json").read_text())
    assert man["status"] == "complete" and man["finished"] >= man["started"]
    assert man["packages"]["torch"] and len(man["data"]["documents_sha256"]) == 64 and man["seed"] == 0
    summary = json.loads((d / "summary.json").read_text())
    steps = summary["checkpoints"]
    assert steps[0] == 0 and len(steps) == 3  # start, middle, end
    rows = [json.loads(l) for l in (d / "probes.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == set(steps)
    assert sorted(int(s) for s in summary["belief_rates"]) == steps
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == sorted(f"step-{s}" for s in steps)
    assert "pooled" in out.stdout  # the table of belief rates is printed

    again = run_cli(tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_same_seed_same_data_and_metrics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert run_cli(d).returncode == 0
    for f in ("documents.jsonl", "wrapped.jsonl", "probes.jsonl", "train_metrics.jsonl"):
        x = (a / "runs/first_run" / f).read_text()
        y = (b / "runs/first_run" / f).read_text()
        if f == "train_metrics.jsonl":  # wall-clock throughput differs; the losses must not
            x = [json.loads(l)["loss"] for l in x.splitlines()]
            y = [json.loads(l)["loss"] for l in y.splitlines()]
        assert x == y, f
