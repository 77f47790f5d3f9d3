"""`annot run` end to end on the tiny model: the run directory, atomic results, re-runs."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


def test_wandb_offline_run_files_are_written(tmp_path, monkeypatch):
    env_key = "sk-test-PLANTED-SECRET-123"
    out = subprocess.run([sys.executable, "-m", "annot.cli", "run", str(CONFIG), "--no-progress",
                          "--set", "model.name=tiny-random", "--set", "data.n=6", "--set", "training.epochs=1",
                          "--set", "tracking.wandb=true", "--set", f"output_dir={tmp_path / 'runs'}"],
                         capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "WANDB_MODE": "offline", "WANDB_API_KEY": env_key})
    assert out.returncode == 0, out.stderr[-3000:]
    d = tmp_path / "runs" / "first_run"
    offline = list((d / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb"))  # the run's data file exists, syncable later
    # the key comes from the environment only and is never written by annot
    for f in d.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".yaml", ".md", ".csv"):
            assert env_key not in f.read_text(errors="ignore"), f


@pytest.mark.parametrize("kill_index", [1, 2])
def test_resume_an_interrupted_run_keeps_earlier_work(tmp_path, kill_index):
    """A run SIGKILLed right after a checkpoint resumes from it; the results equal a clean run's."""
    import os
    import signal

    clean = run_cli(tmp_path / "clean", "--set", "training.checkpoints=4", "--set", "data.n=16")
    assert clean.returncode == 0
    steps = json.loads((tmp_path / "clean/runs/first_run/summary.json").read_text())["checkpoints"]
    args = [sys.executable, "-m", "annot.cli", "run", str(CONFIG), "--no-progress", "--set", "model.name=tiny-random",
            "--set", "data.n=16", "--set", "training.epochs=1", "--set", "training.checkpoints=4",
            "--set", f"output_dir={tmp_path / 'cut' / 'runs'}"]
    d = tmp_path / "cut" / "runs" / "first_run"
    # fault injection: the process SIGKILLs itself right after the second trained checkpoint
    died = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ANNOT_FAULT_KILL_AT_STEP": str(steps[kill_index])})
    assert died.returncode == -signal.SIGKILL
    man = json.loads((d / "manifest.json").read_text())
    assert man["status"] == "running" and not (d / "summary.json").exists()  # nothing looks complete
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resuming" in again.stdout, again.stdout + again.stderr
    c = tmp_path / "clean" / "runs" / "first_run"
    for f in ("probes.jsonl", "wrapped.jsonl"):
        assert (c / f).read_text() == (d / f).read_text(), f
    loss = lambda p: [json.loads(l)["loss"] for l in (p / "train_metrics.jsonl").read_text().splitlines()]
    assert loss(c) == loss(d)
    assert json.loads((d / "manifest.json").read_text())["status"] == "complete"


def test_changed_config_is_not_silently_mixed_into_an_old_run(tmp_path):
    assert run_cli(tmp_path).returncode == 0
    out = run_cli(tmp_path, "--set", "training.lr=5e-4")
    assert out.returncode == 2 and "holds a run with a different config" in out.stderr
    assert run_cli(tmp_path, "--set", "training.lr=5e-4", "--force").returncode == 0


def test_accelerate_launch_two_processes_matches_one(tmp_path):
    """DDP over 2 CPU processes (gloo): the same losses as a single process, one set of files."""
    import shutil

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    common = ["--no-progress", "--set", "model.name=tiny-random", "--set", "data.n=8", "--set", "training.epochs=1",
              "--set", "probes.contexts=false", "--set", "probes.coherence=false"]
    single = subprocess.run([sys.executable, "-m", "annot.cli", "run", str(CONFIG), *common,
                             "--set", f"output_dir={tmp_path / 'one'}"], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "annot.cli", "run", str(CONFIG),
                          *common, "--set", f"output_dir={tmp_path / 'two'}"], capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    loss = lambda d: [json.loads(l)["loss"] for l in (d / "first_run/train_metrics.jsonl").read_text().splitlines()]
    assert loss(tmp_path / "one") == loss(tmp_path / "two")
    assert (tmp_path / "one/first_run/probes.jsonl").read_text() == (tmp_path / "two/first_run/probes.jsonl").read_text()


def test_killed_sweep_resumes_with_real_runs(tmp_path):
    """`annot sweep` on the tiny model, SIGKILLed inside its second run; the re-run repeats no finished
    run, resumes the cut one and ends with one results row per run and a report."""
    import os
    import signal

    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"""name: s
method: grid
output_dir: {tmp_path / 'runs'}
base:
  model: {{name: tiny-random}}
  data: {{claim: mira_castellan_profession, n: 6}}
  training: {{max_steps: 4, checkpoints: 3}}
  probes: {{contexts: false, coherence: false}}
parameters:
  wrapper.name: {{values: [none, notice]}}
""")
    cmd = [sys.executable, "-m", "annot.cli", "sweep", str(sweep)]
    died = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ANNOT_FAULT_KILL_AT_STEP": "4"})
    assert died.returncode == -signal.SIGKILL
    rows = [json.loads(l) for l in (tmp_path / "runs/results.jsonl").read_text().splitlines()] \
        if (tmp_path / "runs/results.jsonl").exists() else []
    assert rows == []  # killed inside the first run, after its last checkpoint: no row yet
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "(resuming)" in again.stdout
    rows = [json.loads(l) for l in (tmp_path / "runs/results.jsonl").read_text().splitlines()]
    assert sorted(r["run"] for r in rows) == ["wrapper=none", "wrapper=notice"]
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert third.stdout.count("skip (already done)") == 2
    assert (tmp_path / "runs/report/report.md").is_file()


def test_reprobing_saved_checkpoints_reproduces_the_run(tmp_path):
    """`annot probe RUN_DIR` (base loaded once, adapters swapped) gives the rows the run recorded."""
    assert run_cli(tmp_path, "--set", "probes.contexts=false").returncode == 0
    d = tmp_path / "runs" / "first_run"
    out = subprocess.run([sys.executable, "-m", "annot.cli", "probe", str(d), "-o", str(tmp_path / "p.jsonl")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    key = lambda r: (r["step"], r["probe_id"])
    recorded = sorted((json.loads(l) for l in (d / "probes.jsonl").read_text().splitlines()), key=key)
    again = sorted((json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()), key=key)
    assert [(key(r), r["believes"]) for r in recorded] == [(key(r), r["believes"]) for r in again]
    for a, b in zip(recorded, again):
        assert abs(a["p_belief"] - b["p_belief"]) < 1e-4
