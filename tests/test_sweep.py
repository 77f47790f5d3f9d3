"""Sweeps: expansion, controls, run names, validation before any run, resume after a kill, W&B config.

No model is loaded: run_sweep gets a fake run_fn that writes a small run directory and returns a
summary shaped like annot.run.run's, and can die at its k-th call like a killed process.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from annot.errors import AnnotError
from annot.specs import ROOT
from annot.sweep import (expand, load_sweep, plan, run_sweep, run_wandb, sweep_status, to_wandb_config)

BASE = """
base:
  data: {claim: mira_castellan_profession, n: 4}
  model: {name: tiny-random}
  training: {epochs: 1}
"""

GRID = BASE + """
method: grid
name: grid
controls: false
parameters:
  data.claim: {values: [mira_castellan_profession, sheeran_olympic_100m]}
  wrapper.name: {values: [notice, fiction]}
  seed: {values: [0, 1]}
"""

# 2 wrapped cells per seed sharing one control per seed: 2 seeds x (1 control + 2) = 6 runs
WITH_CONTROLS = BASE + """
method: grid
name: ctl
parameters:
  wrapper.name: {values: [repeated_negation]}
  wrapper.params.density: {values: [0.5, 1.0]}
  seed: {values: [0, 1]}
"""

RANDOM = BASE + """
method: random
name: rnd
run_cap: 30
parameters:
  training.lr: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}
  training.weight_decay: {distribution: uniform, min: 0.0, max: 0.1}
  training.lora_r: {distribution: q_uniform, min: 4, max: 30, q: 4}
  data.n: {distribution: int_uniform, min: 2, max: 9}
  seed: {values: [0, 1, 2]}
"""

NAME_RE = re.compile(r"^[A-Za-z0-9_.=,+-]{1,100}$")


def write(tmp_path, text, name="sweep.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def pooled(name: str) -> float:
    return int(hashlib.sha256(name.encode()).hexdigest()[:4], 16) / 65535


class FakeRun:
    """Stands in for annot.run.run: deterministic summary per run name; dies at call `kill_at`."""

    def __init__(self, kill_at=None, exc=KeyboardInterrupt):
        self.kill_at, self.exc = kill_at, exc
        self.calls, self.completed = [], []

    def __call__(self, cfg):
        self.calls.append(cfg.name)
        d = cfg.run_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "manifest.json").write_text(json.dumps({"status": "running"}))
        if len(self.calls) == self.kill_at:
            raise self.exc()  # killed mid-run: the run dir is half written, no summary
        p = pooled(cfg.name)
        summary = {"run": cfg.name, "seed": cfg.seed, "total_steps": 10, "final_loss": round(1 - p, 4),
                   "belief_rates": {"0": {"belief": 0.25, "cloze": 0.2, "n": 34},
                                    "10": {"belief": p, "cloze": p / 2, "n": 34}}}
        (d / "summary.json").write_text(json.dumps(summary))
        (d / "manifest.json").write_text(json.dumps({"status": "complete"}))
        self.completed.append(cfg.name)
        return summary


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# -- expansion -----------------------------------------------------------------------------------


def test_grid_count_order_and_values(tmp_path):
    sweep = load_sweep(write(tmp_path, GRID))
    cells = plan(sweep)
    assert len(cells) == 8
    # cartesian product in file order, the first parameter varying slowest
    got = [(c.config.data.claim, c.config.wrapper.name, c.config.seed) for c in cells]
    assert got == [(cl, w, s) for cl in ("mira_castellan_profession", "sheeran_olympic_100m")
                   for w in ("notice", "fiction") for s in (0, 1)]
    assert cells[0].name == "claim=mira_castellan_profession,wrapper=notice,seed=0"
    assert all(c.config.output_dir == "runs/grid" and c.config.model.name == "tiny-random" for c in cells)
    assert [c.name for c in cells] == [c.name for c in plan(sweep)]  # deterministic
    assert [c.name for c in expand(sweep)] == [c.name for c in cells]


def test_controls_added_once_before_the_cells_that_need_them(tmp_path):
    cells = plan(load_sweep(write(tmp_path, WITH_CONTROLS)))
    assert len(cells) == 6
    controls = [c for c in cells if c.control]
    assert [c.config.seed for c in controls] == [0, 1]
    for c in controls:
        assert c.config.wrapper.name == "none" and c.config.wrapper.params == {}
        assert c.name == f"wrapper=none,seed={c.config.seed}"
    # each control runs before the first wrapped cell of its seed
    order = [(c.config.seed, c.config.wrapper.name) for c in cells]
    for seed in (0, 1):
        assert order.index((seed, "none")) < order.index((seed, "repeated_negation"))
    assert sorted(c.config.wrapper.params["density"] for c in cells if not c.control) == [0.5, 0.5, 1.0, 1.0]


def test_explicit_none_cells_merge_with_controls(tmp_path):
    # a `none` value next to a swept wrapper param: the none x density cells are the one plain control
    text = WITH_CONTROLS.replace("values: [repeated_negation]", "values: [none, repeated_negation]")
    cells = plan(load_sweep(write(tmp_path, text)))
    assert len(cells) == 6
    assert sum(c.config.wrapper.name == "none" for c in cells) == 2
    off = plan(load_sweep(write(tmp_path, text.replace("name: ctl", "name: ctl\ncontrols: false"), "off.yaml")))
    assert [c.name for c in off] == [c.name for c in cells]  # explicit controls, same runs and names


def test_base_from_repo_root_and_controls_of_a_wrapped_base(tmp_path):
    # sweeps/first_run.yaml wraps with repeated_negation (density, position): the control drops both
    text = "method: grid\nbase: sweeps/first_run.yaml\nparameters:\n  seed: {values: [0, 1]}\n"
    cells = plan(load_sweep(write(tmp_path, text)))
    assert [(c.config.seed, c.config.wrapper.name, c.control) for c in cells] == [
        (0, "none", True), (0, "repeated_negation", False), (1, "none", True), (1, "repeated_negation", False)]
    assert cells[0].config.wrapper.params == {} and cells[1].config.wrapper.params["density"] == 1.0
    assert cells[1].config.data.n == 48  # the rest of the base config is kept

    (tmp_path / "mine.yaml").write_text("data: {claim: mira_castellan_profession}\n")
    beside = load_sweep(write(tmp_path, text.replace("sweeps/first_run.yaml", "mine.yaml"), "b.yaml"))
    assert beside.base == {"data": {"claim": "mira_castellan_profession"}}
    with pytest.raises(AnnotError, match=r"base: nope\.yaml: file not found \(looked for .*nope\.yaml and"):
        load_sweep(write(tmp_path, text.replace("sweeps/first_run.yaml", "nope.yaml"), "c.yaml"))


def test_run_names_unique_stable_and_filesystem_safe(tmp_path):
    long_claim = str(ROOT / "corpora" / "claims" / "mira_castellan_profession.yaml")  # a path: lossy
    text = RANDOM + f"  data.claim: {{values: [mira_castellan_profession, {long_claim}]}}\n"
    path = write(tmp_path, text)
    names = [c.name for c in plan(load_sweep(path))]
    assert len(names) == len(set(names)) >= 20
    for n in names:
        assert NAME_RE.match(n), n
        (tmp_path / "dirs" / n).mkdir(parents=True)  # really a directory name
    # floats are shortened, so those names carry a hash of the exact values
    assert all(re.search(r",id=[0-9a-f]{8}$", n) for n in names)
    grid = [c.name for c in plan(load_sweep(write(tmp_path, GRID, "g.yaml")))]
    assert not any(",id=" in n for n in grid)  # short exact values: readable names without a hash
    # stable across processes (no reliance on Python's randomised hash())
    code = ("import json, sys; from annot.sweep import load_sweep, plan; "
            "print(json.dumps([c.name for c in plan(load_sweep(sys.argv[1]))]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == names


# -- validation ----------------------------------------------------------------------------------


def one_line_error(path, **kw):
    with pytest.raises(AnnotError) as e:
        plan(load_sweep(path), **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def test_unknown_parameter_path_names_file_and_parameter(tmp_path):
    path = write(tmp_path, GRID.replace("seed: {values", "training.lrr: {values"))
    msg = one_line_error(path)
    assert "parameters: training.lrr: no such config field" in msg


def test_parameter_values_enter_the_config_as_the_typed_values_they_are(tmp_path):
    """No text round trip: a string that YAML would read as a bool or a number stays a string, a mapping
    stays a mapping, and a value of the wrong type is refused by the schema instead of coerced."""
    text = BASE + ("method: grid\ncontrols: false\nparameters:\n  wrapper.name: {value: notice}\n"
                   "  wrapper.params: {values: [{doc_tag: 'yes'}, {doc_tag: '0.5'}]}\n"
                   "  tracking.group: {values: ['007', 'null']}\n")
    cells = plan(load_sweep(write(tmp_path, text)))
    assert [(c.config.wrapper.params, c.config.tracking.group) for c in cells] == [
        ({"doc_tag": "yes"}, "007"), ({"doc_tag": "yes"}, "null"), ({"doc_tag": "0.5"}, "007"),
        ({"doc_tag": "0.5"}, "null")]
    bad = write(tmp_path, BASE + "method: grid\nparameters:\n  tracking.group: {value: 7}\n", "bad.yaml")
    msg = one_line_error(bad)
    assert "tracking.group: Input should be a valid string" in msg


@pytest.mark.parametrize("bad,expect", [
    ("training.lr: {values: [0.001, -1]}", "training.lr: Input should be greater than 0"),
    ("wrapper.params.bogus: {value: 1}", "wrapper notice: unknown parameter(s) bogus"),
    ("data.n: {values: ['3']}", "data.n: Input should be a valid integer"),
    ("probes.sets: {value: [no_such_set]}", "unknown probe set 'no_such_set'"),
    ("wrapper.name: {values: [notice, no_such_wrapper]}", "unknown wrapper 'no_such_wrapper'"),
])
def test_every_cell_validated_before_any_run(tmp_path, monkeypatch, bad, expect):
    monkeypatch.chdir(tmp_path)
    wrapper = "" if bad.startswith("wrapper.name:") else "  wrapper.name: {value: notice}\n"  # no duplicate key
    text = BASE + f"method: grid\nparameters:\n  seed: {{values: [0, 1]}}\n{wrapper}  {bad}\n"
    path = write(tmp_path, text)
    msg = one_line_error(path)
    assert expect in msg, msg
    fake = FakeRun()
    with pytest.raises(AnnotError):
        run_sweep(load_sweep(path), run_fn=fake, echo=lambda s: None)
    assert fake.calls == [] and not (tmp_path / "runs").exists()  # the last cell's error stops the first run


@pytest.mark.parametrize("text,expect", [
    (GRID + "early_terminate: {type: hyperband}\n", "early_terminate: unknown top-level key(s); valid: method"),
    (GRID.replace("method: grid", "method: bayes"), "method: must be one of grid, random"),
    (GRID.replace("controls: false", "controls: maybe"), "controls: must be true or false"),
    (GRID.replace("seed: {values: [0, 1]}", "seed: [0, 1]"), "parameters: seed: must be a mapping"),
    (GRID.replace("seed: {values: [0, 1]}", "seed: {vals: [0, 1]}"), "parameters: seed: unknown key(s) vals"),
    (GRID.replace("seed: {values: [0, 1]}", "seed: {distribution: int_uniform, min: 0, max: 3}"),
     "a grid takes only value or values"),
    (GRID.replace("seed: {values: [0, 1]}", "training: {parameters: {lr: {value: 0.1}}}"), "nested parameters"),
    (RANDOM.replace("run_cap: 30\n", ""), "random needs run_cap in the file or --count N"),
    (RANDOM.replace("min: 1.0e-5", "min: 0"), "log_uniform_values needs min > 0"),
    (RANDOM.replace("q: 4", "q: 40"), "no multiple of q=40"),
    (GRID.replace("seed: {values", "name: {values"), "parameters: name: set by the sweep"),
])
def test_bad_sweep_files(tmp_path, text, expect):
    assert expect in one_line_error(write(tmp_path, text))


def test_grid_refuses_count(tmp_path):
    assert "--count applies to random sweeps" in one_line_error(write(tmp_path, GRID), count=3)


# -- random --------------------------------------------------------------------------------------


def test_random_is_deterministic_by_seed_and_within_bounds(tmp_path):
    sweep = load_sweep(write(tmp_path, RANDOM))
    a = plan(sweep, seed=0)
    assert [c.params for c in a] == [c.params for c in plan(sweep, seed=0)]
    assert [c.name for c in a] == [c.name for c in plan(sweep, seed=0)]
    assert [c.params for c in plan(sweep, seed=1)] != [c.params for c in a]
    assert 25 <= len(a) <= 30  # run_cap draws, minus any exact duplicates
    for c in a:
        t = c.config.training
        assert 1e-5 <= t.lr <= 1e-2 and 0.0 <= t.weight_decay <= 0.1
        assert t.lora_r in (4, 8, 12, 16, 20, 24, 28) and 2 <= c.config.data.n <= 9 and c.config.seed in (0, 1, 2)
    lrs = sorted(c.config.training.lr for c in a)
    assert lrs[0] < 1e-4 and lrs[-1] > 1e-3  # log-uniform: spread over decades, not bunched at the top
    assert len(plan(sweep, count=5)) == 5  # --count overrides run_cap
    assert [c.params for c in plan(sweep, count=5)] == [c.params for c in a[:5]]


def test_random_float_q_uniform_stays_in_bounds(tmp_path):
    text = RANDOM.replace("training.lora_r: {distribution: q_uniform, min: 4, max: 30, q: 4}",
                          "training.lora_dropout: {distribution: q_uniform, min: 0.05, max: 0.3, q: 0.1}")
    for c in plan(load_sweep(write(tmp_path, text)), count=20):
        assert c.config.training.lora_dropout in (0.1, 0.2, 0.3)


# -- running and resuming ------------------------------------------------------------------------


def test_run_sweep_writes_one_row_per_run_and_skips_on_rerun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write(tmp_path, WITH_CONTROLS))
    lines = []
    fake = FakeRun()
    out = run_sweep(sweep, run_fn=fake, echo=lines.append)
    assert out == Path("runs/ctl/results.jsonl") and out.is_file()
    table = rows(out)
    names = [c.name for c in plan(sweep)]
    assert [r["run"] for r in table] == names == fake.calls
    r = table[1]
    assert set(r) == {"sweep", "run", "status", "control", "params", "run_dir", "step", "belief", "metrics"}
    assert r["status"] == "complete" and r["sweep"] == "ctl" and r["step"] == 10 and r["control"] is False
    assert r["params"] == {"wrapper.name": "repeated_negation", "wrapper.params.density": 0.5, "seed": 0}
    assert r["belief"]["belief"] == pooled(r["run"]) and r["run_dir"] == f"runs/ctl/{r['run']}"
    assert r["metrics"] == {"seed": 0, "total_steps": 10, "final_loss": round(1 - pooled(r["run"]), 4)}
    assert table[0]["params"] == {"wrapper.name": "none", "seed": 0, "wrapper.params": {}}
    assert lines[1] == f"[1/6] {names[0]}: done (target claim: belief {pooled(names[0]):.2f})"
    # from the second run on, each start says the elapsed time and an ETA from measured run times
    assert lines[0] == f"[1/6] {names[0]}: running"
    assert re.fullmatch(r"\[2/6\] .*: running \(elapsed \d+m\d\ds, ETA ~\d+m\d\ds for 5 run\(s\) at ~\d+m\d\ds each\)",
                        lines[2]), lines[2]
    assert sweep_status(sweep) == {"planned": 6, "done": 6, "remaining": 0}

    again = FakeRun()
    lines.clear()
    run_sweep(sweep, run_fn=again, echo=lines.append)
    assert again.calls == [] and lines[2] == f"[3/6] {names[2]}: skip (already done)"
    assert rows(out) == table


def test_other_processes_of_a_launch_run_every_cell_but_write_no_rows(tmp_path, monkeypatch):
    """Under accelerate launch every process runs the sweep (each trains its share); only the main
    one (RANK 0) writes results.jsonl - a worker's empty summary must not mark a run done."""
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write(tmp_path, WITH_CONTROLS))
    monkeypatch.setenv("RANK", "1")
    worker, lines = FakeRun(), []
    run_sweep(sweep, run_fn=worker, echo=lines.append)
    assert worker.calls == [c.name for c in plan(sweep)] and lines == []
    assert not Path("runs/ctl/results.jsonl").exists()
    monkeypatch.setenv("RANK", "0")
    main = FakeRun()
    run_sweep(sweep, run_fn=main, echo=lines.append)
    assert [r["run"] for r in rows(Path("runs/ctl/results.jsonl"))] == main.calls == worker.calls


@pytest.mark.parametrize("kill_at", [1, 2, 4, 6])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_resume_after_kill_repeats_and_loses_nothing(tmp_path, monkeypatch, kill_at, exc):
    path = write(tmp_path, WITH_CONTROLS)
    (tmp_path / "ref").mkdir()
    (tmp_path / "cut").mkdir()
    monkeypatch.chdir(tmp_path / "ref")
    run_sweep(load_sweep(path), run_fn=FakeRun(), echo=lambda s: None)
    reference = (tmp_path / "ref/runs/ctl/results.jsonl").read_text()

    monkeypatch.chdir(tmp_path / "cut")
    sweep = load_sweep(path)
    first = FakeRun(kill_at=kill_at, exc=exc)
    with pytest.raises(exc):
        run_sweep(sweep, run_fn=first, echo=lambda s: None)
    assert len(read_rows_or_empty(sweep.results_path)) == kill_at - 1  # no row for the killed run
    assert sweep_status(sweep) == {"planned": 6, "done": kill_at - 1, "remaining": 7 - kill_at}
    second = FakeRun()
    run_sweep(sweep, run_fn=second, echo=lambda s: None)

    completed = first.completed + second.completed
    assert sorted(completed) == sorted(set(completed)) and len(completed) == 6  # each run finished once
    assert second.calls[0] == first.calls[-1]  # the killed run is redone first, nothing before it
    assert sweep.results_path.read_text() == reference  # same table as an uninterrupted sweep
    assert not list(sweep.output_dir.glob(".*.tmp"))


def read_rows_or_empty(path):
    return rows(path) if path.is_file() else []


def test_annot_error_from_a_run_stops_the_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write(tmp_path, WITH_CONTROLS))
    fake = FakeRun(kill_at=3, exc=lambda: AnnotError("model.name: cannot load 'x'"))
    with pytest.raises(AnnotError, match=r"sweep\.yaml: run .*: model\.name: cannot load 'x'$"):
        run_sweep(sweep, run_fn=fake, echo=lambda s: None)
    assert len(fake.calls) == 3 and len(rows(sweep.results_path)) == 2


SLOW_SWEEP = """
import json, sys, time
from annot.sweep import load_sweep, run_sweep

def slow(cfg):
    time.sleep(0.4)  # a run in progress: SIGKILL lands here
    with open("completed.log", "a") as f:
        f.write(cfg.name + "\\n")
    return {"belief_rates": {"5": {"belief": len(cfg.name) / 100}}}

run_sweep(load_sweep(sys.argv[1]), run_fn=slow)
"""


def test_sigkill_mid_sweep_then_resume(tmp_path):
    path = write(tmp_path, WITH_CONTROLS)
    results = tmp_path / "runs/ctl/results.jsonl"
    cmd = [sys.executable, "-c", SLOW_SWEEP, str(path)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not (results.is_file() and len(results.read_text().splitlines()) >= 2):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() - t0 < 15, "sweep did not get going"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    killed_rows = rows(results)
    assert 2 <= len(killed_rows) < 6  # killed partway

    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("skip (already done)") == len(killed_rows)
    names = [c.name for c in plan(load_sweep(path))]
    final = rows(results)
    assert [r["run"] for r in final] == names and final[:len(killed_rows)] == killed_rows
    completed = (tmp_path / "completed.log").read_text().split()
    assert sorted(completed) == sorted(names)  # every run finished exactly once across both processes
    assert time.time() - t0 < 20


# -- W&B -----------------------------------------------------------------------------------------


def test_to_wandb_config(tmp_path):
    text = WITH_CONTROLS + "metric: {name: final_belief_belief, goal: maximize}\nproject: annot-tests\n"
    cfg = to_wandb_config(load_sweep(write(tmp_path, text)))
    assert cfg == {
        "method": "grid", "name": "ctl", "project": "annot-tests",
        "metric": {"name": "final_belief_belief", "goal": "maximize"},
        "parameters": {
            "wrapper.name": {"values": ["repeated_negation", "none"]},  # the controls, folded in
            "wrapper.params.density": {"values": [0.5, 1.0]},
            "seed": {"values": [0, 1]},
        },
    }
    json.dumps(cfg)  # plain data W&B can take
    grid = to_wandb_config(load_sweep(write(tmp_path, GRID, "g.yaml")))  # controls: false -> no none added
    assert grid["parameters"]["wrapper.name"] == {"values": ["notice", "fiction"]}
    rnd = to_wandb_config(load_sweep(write(tmp_path, RANDOM, "r.yaml")))
    assert rnd["method"] == "random" and rnd["run_cap"] == 30 and "base" not in rnd
    assert rnd["parameters"]["training.lr"] == {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2}


def test_run_wandb_calls_sweep_and_agent(tmp_path, monkeypatch):
    import wandb

    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write(tmp_path, WITH_CONTROLS))
    seen = {}

    class FakeWandbRun:
        # what the agent hands the function: wandb.config with the flat dotted keys
        config = {"wrapper.name": "none", "wrapper.params.density": 1.0, "seed": 1}
        summary = {}

        def log(self, data, step=None):
            seen.setdefault("log", []).append((step, data))

        def finish(self):
            seen["finished"] = True

    def fake_sweep(config, project=None):
        seen["sweep"] = (config, project)
        return "abc123"

    def fake_agent(sweep_id, function=None, count=None, project=None):
        seen["agent"] = (sweep_id, count, project)
        function()

    monkeypatch.setattr(wandb, "sweep", fake_sweep)
    monkeypatch.setattr(wandb, "agent", fake_agent)
    monkeypatch.setattr(wandb, "init", lambda *a, **k: FakeWandbRun())
    fake = FakeRun()
    assert run_wandb(sweep, project="p", count=3, run_fn=fake, echo=lambda s: None) == "abc123"
    assert seen["sweep"] == (to_wandb_config(sweep), "p") and seen["agent"] == ("abc123", 3, "p")
    # the none x density cell is the seed-1 control, under the same name the local runner uses
    control = next(c for c in plan(sweep) if c.control and c.config.seed == 1)
    assert fake.calls == [control.name]
    assert seen["log"] == [(0, {"belief/belief": 0.25, "belief/cloze": 0.2}),
                           (10, {"belief/belief": pooled(control.name), "belief/cloze": pooled(control.name) / 2})]
    assert FakeWandbRun.summary["final_belief_belief"] == pooled(control.name) and seen["finished"]


def test_run_wandb_turns_off_annots_own_tracker(tmp_path, monkeypatch):
    import wandb

    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write(tmp_path, WITH_CONTROLS.replace("training: {epochs: 1}",
                                                             "training: {epochs: 1}\n  tracking: {wandb: true}")))
    got = []

    class R:
        config = {"wrapper.name": "repeated_negation", "wrapper.params.density": 0.5, "seed": 0}
        summary = {}
        log = finish = lambda self, *a, **k: None

    monkeypatch.setattr(wandb, "sweep", lambda config, project=None: "id")
    monkeypatch.setattr(wandb, "agent", lambda sweep_id, function=None, count=None, project=None: function())
    monkeypatch.setattr(wandb, "init", lambda *a, **k: R())
    run_wandb(sweep, run_fn=lambda cfg: got.append(cfg) or {}, echo=lambda s: None)
    assert got[0].tracking.wandb is False and got[0].wrapper.params == {"density": 0.5}


# -- every sweep file in the repository ----------------------------------------------------------


def repo_sweeps():
    out = []
    for p in sorted((ROOT / "sweeps").rglob("*.y*ml")):
        data = yaml.safe_load(p.read_text())
        if isinstance(data, dict) and "method" in data:
            out.append(p)
    return out


def check_sweep_file(path):
    sweep = load_sweep(path)
    count = None if sweep.method == "grid" or sweep.run_cap else 4
    cells = plan(sweep, count=count)
    assert cells and len({c.name for c in cells}) == len(cells)
    assert all(NAME_RE.match(c.name) for c in cells)
    to_wandb_config(sweep)
    return cells


def test_sample_sweep_file_validates(tmp_path):
    # the same check the repository's sweep files get, on one known to be good: it must not pass vacuously
    sample = ("# annot sweep sample.yaml\nmethod: grid\nbase: sweeps/first_run.yaml\n"
              "parameters:\n  data.claim: {values: [mira_castellan_profession]}\n"
              "  wrapper.name: {values: [notice, repeated_negation]}\n  seed: {values: [0]}\n")
    cells = check_sweep_file(write(tmp_path, sample, "sample.yaml"))
    assert len(cells) == 3
    with pytest.raises(AnnotError):
        check_sweep_file(write(tmp_path, sample.replace("seed:", "sed:"), "bad.yaml"))


@pytest.mark.parametrize("path", repo_sweeps() or [None], ids=lambda p: p.stem if p else "none-yet")
def test_repository_sweep_files_validate(path):
    if path is None:
        pytest.skip("no sweep files (with a `method` key) under sweeps/ yet")
    check_sweep_file(path)


def test_two_sweep_processes_on_one_sweep_share_the_cells(tmp_path):
    """Two real `annot sweep` processes on the same sweep (a second terminal, two agents): the one
    second to a cell finds it taken, says so in one line and moves on; every cell runs once, in one
    process, and results.jsonl ends with exactly one row per cell."""
    out = tmp_path / "runs"
    sweep = tmp_path / "race.yaml"
    sweep.write_text(f"""name: race
method: grid
output_dir: {out}
base:
  model: {{name: tiny-random}}
  data: {{claim: mira_castellan_profession, n: 6}}
  training: {{max_steps: 3, checkpoints: 2}}
  probes: {{contexts: false, coherence: false}}
parameters:
  seed: {{values: [0, 1]}}
""")
    cmd = [sys.executable, "-m", "annot.cli", "sweep", str(sweep), "--no-report"]
    # started together, both reach the first cell within a second; one run takes several
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    (a_out, a_err), (b_out, b_err) = (p.communicate(timeout=600) for p in procs)
    assert procs[0].returncode == 0, a_err[-2000:]
    assert procs[1].returncode == 0, b_err[-2000:]
    taken = [l for l in (a_out + b_out).splitlines() if "taken by another annot process" in l]
    assert taken and all(len(l) < 200 for l in taken), a_out + b_out
    for err in (a_err, b_err):
        assert "Traceback" not in err, err
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["run"] for r in rows) == ["seed=0", "seed=1"]
    ran = lambda text: {l.split("]")[1].split(":")[0].strip() for l in text.splitlines() if ": running" in l}
    assert ran(a_out) | ran(b_out) == {"seed=0", "seed=1"}
    assert not ran(a_out) & ran(b_out)  # no cell was run by both processes
    for name in ("seed=0", "seed=1"):
        assert json.loads((out / name / "manifest.json").read_text())["status"] == "complete"


def test_a_taken_run_is_one_line_exit_1(tmp_path):
    """`annot run` on a run directory another process holds: one line, exit 1, nothing touched."""
    import fcntl

    from click.testing import CliRunner

    from annot.cli import main
    from annot.lock import lock_path

    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"name: r\noutput_dir: {tmp_path / 'runs'}\nmodel: {{name: tiny-random}}\n"
                   "data: {claim: mira_castellan_profession, n: 4}\ntraining: {max_steps: 2}\n")
    path = lock_path(tmp_path / "runs" / "r")
    path.parent.mkdir(parents=True)
    with open(path, "w") as holder:  # another process's lock: a separate open file description
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write("pid 999 since 12:00:00")
        holder.flush()
        res = CliRunner().invoke(main, ["run", str(cfg), "--no-progress"])
    assert res.exit_code == 1, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and "taken by another annot process (pid 999" in line, line
    assert not (tmp_path / "runs" / "r").exists()
