"""Sweeps: many runs from one file in the Weights & Biases sweep format, run here or by W&B agents.

    annot sweep sweeps/wrapper_grid.yaml --dry-run          # list the runs (validates every one)
    annot sweep sweeps/wrapper_grid.yaml                    # run them one after another, resumable
    annot sweep sweeps/wrapper_grid.yaml --backend wandb    # register with W&B and start an agent

    sweep = load_sweep("sweeps/wrapper_grid.yaml")
    results = run_sweep(sweep)                              # -> runs/<sweep name>/results.jsonl

A sweep file is a W&B sweep config whose parameters are dotted run-config paths, plus keys of
annot's own (`base`, `controls`, `control`, `output_dir`):

    method: grid                  # grid | random (random needs run_cap or --count)
    base: first_run.yaml          # a run config, beside this file or from the repo root; or a mapping
    controls: true                # also run every cell's control (default)
    control: {data.path: a.jsonl} # optional: the condition the others are compared with (default: the
                                  # same cell with wrapper none); recorded in control.yaml (annot.declared_control)
    parameters:
      data.claim: {values: [mira_castellan_profession, sheeran_olympic_100m]}
      wrapper.name: {values: [notice, repeated_negation]}
      wrapper.params.density: {value: 1.0}
      training.lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}   # random only
      seed: {values: [0, 1]}

Every cell is built and validated (schema, claim, wrapper and its parameters, probe sets) before
the first run starts, so a typo in the last cell does not surface hours into the sweep. The local
runner appends one row per finished run to <output_dir>/results.jsonl and skips the runs already
recorded there, so a killed sweep resumes without repeating or losing a run.

Reading the file and expanding it into cells is annot.sweep_plan (re-exported here); this module runs them.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable

from annot.config import RunConfig
from annot.errors import AnnotError
from annot.io import read_jsonl
from annot.run import check_inputs, is_main_process, run
from annot.sweep_plan import (ANNOT_KEYS, DISTRIBUTIONS, MAX_NAME, METHODS, RESULTS, SPEC_KEYS, WANDB_KEYS, Cell,
                              Sweep, agent_cell, expand, is_number, load_sweep, plan, run_name, to_wandb_config)

__all__ = ["ANNOT_KEYS", "DISTRIBUTIONS", "MAX_NAME", "METHODS", "RESULTS", "SPEC_KEYS", "WANDB_KEYS", "Cell", "Sweep",
           "expand", "load_sweep", "plan", "read_results", "result_row", "run_name", "run_sweep", "run_wandb",
           "sweep_status", "to_wandb_config"]


# -- local runner --------------------------------------------------------------------------------


def read_results(sweep: Sweep) -> list[dict]:
    """Rows of <output_dir>/results.jsonl, [] before the first run finished."""
    path = sweep.results_path
    if not path.is_file() or path.stat().st_size == 0:
        return []
    return read_jsonl(path)


def _done(sweep: Sweep) -> set[str]:
    return {row.get("run") for row in read_results(sweep) if row.get("status") == "complete"}


def _final(summary: dict) -> tuple[int | None, dict]:
    """The last checkpoint's step and belief rates from a run summary (keys may be str or int)."""
    rates = summary.get("belief_rates") or {}
    if not rates:
        return None, {}
    last = max(rates, key=lambda s: int(s))
    return int(last), dict(rates[last])


def result_row(sweep: Sweep, cell: Cell, summary: dict) -> dict:
    """One row of results.jsonl. No timestamps: a resumed sweep writes the same table as one run straight."""
    step, belief = _final(summary)
    metrics = {k: v for k, v in summary.items() if is_number(v)}
    return {"sweep": sweep.name, "run": cell.name, "status": "complete", "control": cell.control,
            "params": cell.params, "run_dir": str(cell.config.run_dir), "step": step, "belief": belief,
            "metrics": metrics}


def _append_row(path: Path, row: dict) -> None:
    # Rewrite old rows + the new one through a temp file, fsync and rename rather than appending in
    # place: a kill at any instant leaves the old table or the new one, never a torn last line. Under
    # a file lock, and only if the run has no row yet: two sweep processes never lose or double a row.
    from annot.lock import append_row_once

    append_row_once(path, row, key="run")


class _Clock:
    """Elapsed time and an ETA from the runs this process finished (mean seconds per run x runs left)."""

    def __init__(self, todo: int):
        self.start, self.todo, self.durations, self.began = time.monotonic(), todo, [], 0.0

    def begin(self) -> None:
        self.began = time.monotonic()

    def finished(self) -> None:
        self.durations.append(time.monotonic() - self.began)

    def status(self) -> str:
        if not self.durations:
            return ""
        left = max(0, self.todo - len(self.durations))
        each = sum(self.durations) / len(self.durations)
        return (f" (elapsed {_mmss(time.monotonic() - self.start)}, ETA ~{_mmss(left * each)} for {left} run(s) "
                f"at ~{_mmss(each)} each)")


def _mmss(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def run_sweep(sweep: Sweep, run_fn: Callable[[RunConfig], dict] = run, echo: Callable[[str], None] = print,
              count: int | None = None, seed: int = 0) -> Path:
    """Run every cell not yet in results.jsonl, in order; returns the results path.

    run_sweep(load_sweep("sweeps/wrapper_grid.yaml"))                     # annot.run.run per cell
    run_sweep(sweep, run_fn=lambda cfg: {"belief_rates": {...}})         # tests: a fake run

    A row is appended only after run_fn returned, so a run killed midway has no row and runs again
    on the next call; runs with a row are skipped. An AnnotError from run_fn stops the sweep.
    """
    cells = plan(sweep, count=count, seed=seed)  # validates every cell before the first run
    done = _done(sweep)
    main = is_main_process()  # under accelerate launch the other processes train their share, write nothing
    if not main:
        echo = lambda _line: None  # noqa: E731
    else:
        _record_control(sweep, sweep.output_dir)
    total = len(cells)
    _warn_disk(sweep, cells, done, echo)
    from annot.errors import RunTaken
    from annot.lock import run_lock

    # Under accelerate launch the other processes follow the main one cell by cell, so they must make
    # the same choices: the main process then waits for a taken cell instead of moving past it, and
    # a cell another sweep finished meanwhile is run again (found complete at once; no second row).
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    taken = []
    clock = _Clock(sum(1 for c in cells if c.name not in done))
    for wait in (False, True):  # first every free cell; then wait for the cells other processes held
        for i, cell in (enumerate(cells, 1) if not wait else taken):
            if cell.name in done:
                if main and cell.config.run_dir.is_dir():
                    _record_control(sweep, cell.config.run_dir)  # a control declared after the run finished
                echo(f"[{i}/{total}] {cell.name}: skip (already done)")
                continue
            try:
                # the cell's lock is held across its run and its results row (two sweeps, one directory)
                with run_lock(cell.config.run_dir, wait=wait or launched) if main else contextlib.nullcontext():
                    if not launched:
                        done |= _done(sweep)  # another process may have finished it meanwhile
                    if cell.name in done:
                        echo(f"[{i}/{total}] {cell.name}: skip (done by another process)")
                        continue
                    echo(f"[{i}/{total}] {cell.name}: running{clock.status()}")
                    clock.begin()
                    try:
                        summary = run_fn(cell.config) or {}
                        clock.finished()
                    except AnnotError as e:  # same class: a failed run keeps exit code 1, bad input 2
                        raise type(e)(f"{sweep.path}: run {cell.name}: {e}") from None
                    done.add(cell.name)
                    if not main:
                        continue
                    _record_control(sweep, cell.config.run_dir)
                    row = result_row(sweep, cell, summary)
                    _append_row(sweep.results_path, row)
            except RunTaken:
                echo(f"[{i}/{total}] {cell.name}: taken by another annot process; moving on, back to it at the end")
                taken.append((i, cell))
                continue
            shown = [f"{m} {row['belief'][m]:.2f}" for m in ("belief", "association", "behavior")
                     if is_number(row["belief"].get(m))]
            tail = f" (target claim: {', '.join(shown)})" if shown else ""
            echo(f"[{i}/{total}] {cell.name}: done{tail}")
    return sweep.results_path


def _record_control(sweep: Sweep, folder: Path) -> None:
    """control.yaml in the sweep's folder or a run directory: what `annot analyze` compares with."""
    from annot.declared_control import write_control

    write_control(folder, sweep.control, sweep.name, sweep.path)


def _warn_disk(sweep: Sweep, cells: list, done: set, echo) -> None:
    """Warn before a sweep would run out of disk: the runs left x the size of a finished run
    (measured on the runs done so far; 200 MiB each is assumed before the first one)."""
    from annot.prune import check_free_space, dir_size

    finished = [sweep.output_dir / c.name for c in cells if c.name in done and (sweep.output_dir / c.name).is_dir()]
    per_run = max(dir_size(d) for d in finished) if finished else 200 * 2**20
    check_free_space(sweep.output_dir, sum(1 for c in cells if c.name not in done), per_run, echo)


def sweep_status(sweep: Sweep, count: int | None = None, seed: int = 0) -> dict:
    """Planned / done / remaining run counts, from the plan and results.jsonl.

    sweep_status(load_sweep("sweeps/wrapper_grid.yaml"))  # {"planned": 12, "done": 5, "remaining": 7}
    """
    names = [c.name for c in plan(sweep, count=count, seed=seed)]
    done = _done(sweep)
    n_done = sum(1 for n in names if n in done)
    return {"planned": len(names), "done": n_done, "remaining": len(names) - n_done}


# -- Weights & Biases ----------------------------------------------------------------------------


def run_wandb(sweep: Sweep, project: str | None = None, count: int | None = None,
              run_fn: Callable[[RunConfig], dict] = run, echo: Callable[[str], None] = print,
              sweep_id: str | None = None) -> str:
    """Register the sweep with W&B (or join `sweep_id`) and run an agent here; returns the sweep id.

    sid = run_wandb(load_sweep("sweeps/wrapper_grid.yaml"), project="annot", count=4)
    run_wandb(load_sweep("sweeps/wrapper_grid.yaml"), project="annot", sweep_id=sid)  # another machine

    The agent function is annot's, not a `program:` command, so other machines join through this
    function too: `wandb agent` alone would not know how to turn dotted keys into a run.
    """
    import wandb

    # Validate locally first, as run_sweep does. A random sweep without a cap is open-ended on
    # W&B; a fixed sample of it is validated instead.
    plan(sweep, count=(count or sweep.run_cap or 16) if sweep.method == "random" else None)
    project = project or sweep.raw.get("project") or (sweep.base.get("tracking") or {}).get("project") or "annot"
    if sweep_id is None:
        sweep_id = wandb.sweep(to_wandb_config(sweep), project=project)
    echo(f"{sweep.path}: W&B sweep {sweep_id} in project {project}")

    def agent_run() -> None:
        from annot.errors import RunTaken

        wrun = wandb.init()
        try:
            cell = agent_cell(sweep, dict(wrun.config))
            check_inputs(cell.config)
            try:
                summary = run_fn(cell.config) or {}
            except RunTaken as e:  # another agent on this machine runs the same cell (a plain control)
                echo(str(e))
                return
            _record_control(sweep, cell.config.run_dir)
            for step, rates in sorted((summary.get("belief_rates") or {}).items(), key=lambda kv: int(kv[0])):
                wrun.log({f"belief/{k}": v for k, v in rates.items() if k != "n"}, step=int(step))
            step, belief = _final(summary)
            wrun.summary.update({"annot_run": cell.name, "run_dir": str(cell.config.run_dir),
                                 **{f"final_belief_{k}": v for k, v in belief.items() if k != "n"}})
        finally:
            wrun.finish()

    wandb.agent(sweep_id, function=agent_run, count=count, project=project)
    return sweep_id
