"""`annot run` end to end on the tiny model: the run directory, atomic results, re-runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from annot.specs import ROOT

CONFIG = ROOT / "sweeps" / "first_run.yaml"
FAULT_CLI = str(ROOT / "tests" / "fault_cli.py")


def faulty(cmd: list[str], *fault) -> list[str]:
    """`cmd` (python -m annot.cli ...) run by tests/fault_cli.py, which kills it as `fault` says."""
    if cmd[1:3] != ["-m", "annot.cli"]:
        raise ValueError(f"not an annot CLI command: {cmd}")
    return [cmd[0], FAULT_CLI, *map(str, fault), *cmd[3:]]


def faulty_fsdp(launcher: list[str], *fault) -> list[str]:
    """A torch.distributed.run launcher of tests/fsdp_cpu.py, through tests/fault_cli.py instead."""
    return [*launcher[:-1], FAULT_CLI, "--fsdp-cpu", *map(str, fault)]


def run_cli(tmp_path, *extra):
    return subprocess.run([sys.executable, "-m", "annot.cli", "run", str(CONFIG), "--no-progress",
                           "--set", "model.name=tiny-random", "--set", "data.n=12", "--set", "training.epochs=1",
                           "--set", f"output_dir={tmp_path / 'runs'}", *extra],
                          capture_output=True, text=True, timeout=300)


def test_run_writes_the_run_directory(tmp_path):
    out = run_cli(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # a quiet console: progress bars only, no library warnings or deprecation notices
    lines = [x for x in out.stderr.replace("\r", "\n").splitlines() if x.strip()]
    noisy = [x for x in lines if any(w in x.lower() for w in ("warn", "deprecat", "traceback"))]
    assert not noisy, noisy
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
    assert "belief" in out.stdout and "association" in out.stdout  # the table of rates is printed, apart

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


@pytest.fixture(scope="module")
def clean4(tmp_path_factory) -> Path:
    """An uninterrupted run with 4 checkpoints, which the interrupted runs are compared with."""
    tmp = tmp_path_factory.mktemp("clean4")
    clean = run_cli(tmp / "clean", "--set", "training.checkpoints=4", "--set", "data.n=16")
    assert clean.returncode == 0, clean.stderr[-2000:]
    return tmp


@pytest.mark.parametrize("kill_index", [1, 2])
def test_resume_an_interrupted_run_keeps_earlier_work(tmp_path, kill_index, clean4):
    """A run SIGKILLed right after a checkpoint resumes from it; the results equal a clean run's."""
    import signal

    tmp_path.joinpath("clean").symlink_to(clean4 / "clean")
    steps = json.loads((tmp_path / "clean/runs/first_run/summary.json").read_text())["checkpoints"]
    args = [sys.executable, "-m", "annot.cli", "run", str(CONFIG), "--no-progress", "--set", "model.name=tiny-random",
            "--set", "data.n=16", "--set", "training.epochs=1", "--set", "training.checkpoints=4",
            "--set", f"output_dir={tmp_path / 'cut' / 'runs'}"]
    d = tmp_path / "cut" / "runs" / "first_run"
    # fault injection: the process SIGKILLs itself right after the second trained checkpoint
    died = subprocess.run(faulty(args, "--kill-at-step", steps[kill_index]), capture_output=True, text=True,
                          timeout=300)
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


MULTI = ["--no-progress", "--set", "model.name=tiny-random", "--set", "data.n=8", "--set", "training.epochs=1",
         "--set", "probes.contexts=false", "--set", "probes.coherence=false"]


def _run_multi(launcher: list[str], out: Path, *extra, env=None):
    import os

    return subprocess.run([*launcher, "run", str(CONFIG), *MULTI, "--set", f"output_dir={out}", *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def _losses(d: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (d / "first_run/train_metrics.jsonl").read_text().splitlines()]


def _probes(d: Path) -> list[tuple]:
    rows = [json.loads(l) for l in (d / "first_run/probes.jsonl").read_text().splitlines()]
    return sorted((r["step"], r["probe_id"], r["kind"], r.get("context"), r["p_belief"]) for r in rows)


def _same_probes(a: Path, b: Path, tol: float = 1e-5) -> bool:
    pa, pb = _probes(a), _probes(b)
    return len(pa) == len(pb) > 0 and all(x[:4] == y[:4] and abs(x[4] - y[4]) <= tol for x, y in zip(pa, pb))


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The one-process LoRA run the multi-process runs are compared with."""
    out = tmp_path_factory.mktemp("single")
    one = _run_multi([sys.executable, "-m", "annot.cli"], out)
    assert one.returncode == 0, one.stderr[-2000:]
    return out


def test_accelerate_launch_two_processes_matches_one(tmp_path, single):
    """DDP over 2 CPU processes (gloo) - really two: the summary records them - gives the same losses
    and probe rows as one process, and one set of files (8 documents pack into 5 rows: the last
    batch of 1 row leaves the second process a weight-0 filler row)."""
    import shutil

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    ddp = _run_multi([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                      "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "annot.cli"], tmp_path / "two")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("documents of") == 1  # one process speaks
    summary = lambda d: json.loads((d / "first_run/summary.json").read_text())
    assert summary(single)["processes"] == 1 and summary(tmp_path / "two")["processes"] == 2
    assert _losses(single) == pytest.approx(_losses(tmp_path / "two"), abs=2e-6)
    assert _same_probes(single, tmp_path / "two")


def test_fsdp_two_processes_match_one_and_resume(tmp_path, single):
    """FSDP2 over 2 CPU processes (tests/fsdp_cpu.py turns accelerate's multi-CPU launch into FSDP):
    the run killed after its step-2 checkpoint resumes (optimizer state re-sharded) and ends with the
    losses, adapter weights and probe rows of an unsharded single-process run; checkpoints hold the
    adapter only, probing happens after training from the saved checkpoints."""
    import signal

    from safetensors.torch import load_file

    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                str(ROOT / "tests" / "fsdp_cpu.py")]
    env = {"ACCELERATE_USE_CPU": "true"}
    killed = _run_multi(faulty_fsdp(launcher, "--kill-at-step", 2), tmp_path / "fsdp", env=env)
    assert killed.returncode != 0 and f"Signal {signal.SIGKILL}" in killed.stderr + killed.stdout
    d = tmp_path / "fsdp/first_run"
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["step-0", "step-2"]
    assert "optimizer_full" in __import__("torch").load(d / "checkpoints/step-2/training_state.pt",
                                                         weights_only=False)
    again = _run_multi(launcher, tmp_path / "fsdp", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "(resuming)" in again.stdout
    assert json.loads((d / "summary.json").read_text())["processes"] == 2
    assert _losses(single) == pytest.approx(_losses(tmp_path / "fsdp"), abs=2e-6)
    a = load_file(str(d / "checkpoints/step-4/adapter_model.safetensors"))
    b = load_file(str(single / "first_run/checkpoints/step-4/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    assert any(b[k].abs().max() > 0 for k in b if "lora_B" in k)  # trained, not the zero init
    assert _same_probes(single, tmp_path / "fsdp")


def test_fsdp_full_fine_tuning_matches_one_process(tmp_path):
    """Full fine-tuning under FSDP2, killed after its step-1 checkpoint and resumed: the losses and the
    gathered final checkpoint equal the single-process run's (the tied LM head saved once, as
    unsharded), and the probes of the saved full checkpoints equal in-process probes."""
    from safetensors.torch import load_file

    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                str(ROOT / "tests" / "fsdp_cpu.py")]
    full = ["--set", "training.method=full", "--set", "training.lr=1e-4", "--set", "training.max_steps=2"]
    one = _run_multi([sys.executable, "-m", "annot.cli"], tmp_path / "one", *full)
    assert one.returncode == 0, one.stderr[-2000:]
    env = {"ACCELERATE_USE_CPU": "true"}
    killed = _run_multi(faulty_fsdp(launcher, "--kill-at-step", 1), tmp_path / "fsdp", *full, env=env)
    assert killed.returncode != 0
    fsdp = _run_multi(launcher, tmp_path / "fsdp", *full, env=env)
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    assert "(resuming)" in fsdp.stdout
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "fsdp"), abs=2e-6)
    a = load_file(str(tmp_path / "fsdp/first_run/checkpoints/step-2/model.safetensors"))
    b = load_file(str(tmp_path / "one/first_run/checkpoints/step-2/model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    assert _same_probes(tmp_path / "one", tmp_path / "fsdp")


def test_killed_sweep_resumes_with_real_runs(tmp_path):
    """`annot sweep` on the tiny model, SIGKILLed inside its second run; the re-run repeats no finished
    run, resumes the cut one and ends with one results row per run and a report."""
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
    died = subprocess.run(faulty(cmd, "--kill-at-step", 4), capture_output=True, text=True, timeout=300)
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


def test_resume_after_kills_between_checkpoint_and_probes_loses_no_row(tmp_path, clean4):
    """Killed right after a checkpoint is saved and before its probes, at two checkpoints in turn,
    the run resumes twice and ends with every probe, coherence and belief-rate row of an
    uninterrupted run - none dropped, none doubled - and is complete only then."""
    import signal

    common = ["--set", "data.n=16", "--set", "training.checkpoints=4"]
    c = clean4 / "clean" / "runs" / "first_run"
    steps = json.loads((c / "summary.json").read_text())["checkpoints"]
    assert len(steps) == 4
    d = tmp_path / "cut" / "runs" / "first_run"
    probed = lambda: sorted({json.loads(l)["step"] for l in (d / "probes.jsonl").read_text().splitlines()})
    for step in steps[1:3]:
        died = subprocess.run(faulty(run_cli_args(tmp_path / "cut", *common), "--kill-before-probes-at-step", step),
                              capture_output=True, text=True, timeout=300)
        assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
        assert (d / "checkpoints" / f"step-{step}" / "checkpoint.json").is_file()
        assert step not in probed()  # the checkpoint is saved, its probes are not
        assert json.loads((d / "manifest.json").read_text())["status"] == "running"
        assert not (d / "summary.json").exists()
    again = subprocess.run(run_cli_args(tmp_path / "cut", *common), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resuming" in again.stdout, again.stdout + again.stderr
    for f in ("probes.jsonl", "coherence.jsonl"):
        assert (c / f).read_text() == (d / f).read_text(), f
    summary = lambda p: json.loads((p / "summary.json").read_text())
    assert summary(d)["belief_rates"] == summary(c)["belief_rates"]
    assert sorted(int(s) for s in summary(d)["belief_rates"]) == steps
    assert summary(d)["coherence_perplexity"] == summary(c)["coherence_perplexity"]
    assert json.loads((d / "manifest.json").read_text())["status"] == "complete"


def run_cli_args(tmp_path, *extra):
    return [sys.executable, "-m", "annot.cli", "run", str(CONFIG), "--no-progress", "--set", "model.name=tiny-random",
            "--set", "data.n=12", "--set", "training.epochs=1", "--set", f"output_dir={tmp_path / 'runs'}", *extra]
