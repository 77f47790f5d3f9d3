"""Finished runs read back for analysis, and grouped into conditions.

    runs = load_runs([Path("runs")])     # every complete run dir under the paths (others: one warning each)
    runs[0].cells[(claim, "yes_no")]     # Cell: outcomes [items x checkpoints]
    find_plain(run, runs)                # the run's plain control: same config but the wrapper
    controls = assign_controls(runs)     # id(run) -> Control: is it a control, else which run is (or why none)

A run directory is what `annot run` leaves: config.yaml, manifest.json, summary.json, probes.jsonl.
The table itself (rates, shifts, absorption) is built by annot.analyze.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from annot.declared_control import (DATA_FILE_FIELDS, describe, file_label, matches, names_wrapper, read_control,
                                     without_control_fields)
from annot.errors import AnnotError
from annot.io import read_json_if_exists, read_jsonl, read_yaml
from annot.specs import MEASURE_ORDER, measure_of

POOLED = "pooled"
# Config fields that say where a run lives or how it is logged, not what was trained.
UNKEYED = ("name", "output_dir", "tracking")
MAX_DEPTH = 4  # how deep load_runs looks for run directories under a folder


def canonical_json(obj) -> str:
    """Byte-stable JSON (sorted keys, no spaces): equal values give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass
class Cell:
    """One claim x kind of a run, each array [items, checkpoints], NaN where not probed:
    matrix = 0/1 outcomes, p = probability on the believing answer, logodds = its log-odds,
    neutral = neutral/unparseable answers among the item's samples (0 for log-probability kinds)."""

    items: list[str]
    matrix: np.ndarray
    p: np.ndarray | None = None
    logodds: np.ndarray | None = None
    neutral: np.ndarray | None = None

    def values(self, metric: str) -> np.ndarray:
        return {"rate": self.matrix, "mean_p": self.p, "mean_logodds": self.logodds}[metric]


def _pooled_key(measure: str) -> str:
    """The internal kind of a claim's pooled cell for one measure (shown as kind "pooled")."""
    return f"{POOLED}:{measure}"


def split_kind(kind: str) -> tuple[str, str]:
    """(table kind, measure) of an internal cell kind: "pooled:belief" -> ("pooled", "belief")."""
    if kind.startswith(POOLED + ":"):
        return POOLED, kind.split(":", 1)[1]
    return kind, measure_of(kind)


@dataclass
class RunData:
    """A complete run directory, read once: config, manifest, summary and probe outcomes."""

    name: str  # label in the table; the directory name unless two runs share it
    path: Path
    config: dict
    manifest: dict
    summary: dict
    steps: list[int] = field(default_factory=list)  # checkpoint steps, ascending
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (claim, kind) -> outcomes
    declared_control: dict = field(default_factory=dict)  # control.yaml beside the run (annot.declared_control)

    @property
    def model(self) -> str:
        return str((self.config.get("model") or {}).get("name", ""))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def polarity(self) -> str:
        return str((self.config.get("data") or {}).get("polarity", "affirm"))

    @property
    def wrapper(self) -> str:
        return str((self.config.get("wrapper") or {}).get("name", "none"))

    @property
    def given_params(self) -> dict:
        """Wrapper parameters as written in the config (what the user chose)."""
        return dict((self.config.get("wrapper") or {}).get("params") or {})

    @property
    def wrapper_params(self) -> dict:
        """Resolved wrapper parameters (defaults filled in), as recorded when the run was made."""
        for src in (self.summary.get("wrapper_params"), (self.manifest.get("data") or {}).get("wrapper_params")):
            if isinstance(src, dict):
                return dict(src)
        return self.given_params

    @property
    def target(self) -> str:
        """The claim (or behaviour) id the run trained on."""
        data = self.manifest.get("data") or {}
        cfg = self.config.get("data") or {}
        return str(data.get("claim") or data.get("behavior") or self.summary.get("claim")
                   or self.summary.get("behavior") or cfg.get("claim") or cfg.get("behavior") or "")

    def role(self, claim: str) -> str:
        return "target" if claim == self.target else "control"

    @property
    def tokens(self) -> tuple[float, float]:
        """(tokens trained, tokens with a non-zero loss weight); NaN when the run did not record them."""
        def num(key):
            v = self.summary.get(key)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
        return num("tokens_seen"), num("tokens_loss")

    @property
    def is_plain(self) -> bool:
        """The no-disclaimer control: wrapper none, with at most a doc tag."""
        return self.wrapper == "none" and set(self.wrapper_params) <= {"doc_tag"}


# ---------------------------------------------------------------------------------------------- loading

def _is_run_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / "probes.jsonl").is_file()


def find_run_dirs(path: Path) -> list[Path]:
    """`path` itself when it is a run directory, else the run directories below it (sorted)."""
    path = Path(path)
    if not path.exists():
        raise AnnotError(f"{path}: no such directory; pass a run directory (runs/<name>) or a folder of them")
    if not path.is_dir():
        raise AnnotError(f"{path}: not a directory; pass a run directory (runs/<name>) or a folder of them")
    if _is_run_dir(path):
        return [path]
    found = []
    base_depth = len(path.parts)
    for root, dirs, _ in os.walk(path):
        here = Path(root)
        if _is_run_dir(here):
            found.append(here)
            dirs.clear()  # never descend into a run (checkpoints/ holds no runs)
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if len(here.parts) - base_depth < MAX_DEPTH else []
    return sorted(found)


def _check_rows(path: Path, rows: list[dict]) -> None:
    for i, r in enumerate(rows, 1):
        missing = [k for k in ("step", "kind", "probe_id", "believes") if k not in r]
        if missing:
            raise AnnotError(f"{path}: record {i}: missing field(s) {', '.join(missing)}; probe rows come from "
                             "`annot probe` / `annot run`")
        if r["believes"] not in (0, 1) or isinstance(r["believes"], float):
            raise AnnotError(f"{path}: record {i}: believes: expected true/false (or 0/1), got {r['believes']!r}")
        if isinstance(r["step"], bool) or not isinstance(r["step"], int) or r["step"] < 0:
            raise AnnotError(f"{path}: record {i}: step: expected a non-negative integer, got {r['step']!r}")


def _neutral(r: dict) -> float:
    if isinstance(r.get("n_neutral"), int):
        return float(r["n_neutral"])
    samples = r.get("samples")
    if isinstance(samples, list):
        return float(sum(1 for x in samples if isinstance(x, dict) and x.get("verdict") not in ("believes", "does_not")))
    return 0.0


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _build_cells(rows: list[dict], default_claim: str) -> tuple[list[int], dict[tuple[str, str], Cell]]:
    steps = sorted({int(r["step"]) for r in rows})
    col = {s: j for j, s in enumerate(steps)}
    # (claim, kind) -> item -> step -> (outcome, p, logodds, neutral); a later row for the same item
    # and step wins (re-probed)
    values: dict[tuple[str, str], dict[str, dict[int, tuple]]] = {}
    for r in rows:
        # a probe scored under a named context (monitored, pushback, in_context...) is its own kind
        # so is a judged generation's scope (behavior_judged@broad): never pooled with `behavior`
        qualifier = r.get("context") or r.get("scope")
        kind = f"{r['kind']}@{qualifier}" if qualifier else str(r["kind"])
        key = (str(r.get("claim") or default_claim), kind)
        item = f"{r.get('probe_set', '')}/{r['probe_id']}"
        p = _num(r.get("p_belief"))
        outcome = float(bool(r["believes"])) if math.isfinite(p) or "p_belief" not in r else 0.0
        if "p_belief" in r and r["p_belief"] is None:  # null: nothing to rate (no coherent judged reply)
            outcome = math.nan
        values.setdefault(key, {}).setdefault(item, {})[int(r["step"])] = (
            outcome, p, _num(r.get("score")), _neutral(r))
    cells = {}
    for key, per_item in values.items():
        items = sorted(per_item)
        arrays = [np.full((len(items), len(steps)), np.nan) for _ in range(4)]
        for i, item in enumerate(items):
            for s, vals in per_item[item].items():
                for a, v in zip(arrays, vals):
                    a[i, col[s]] = v
        cells[key] = Cell(items, *arrays)
    # One pooled cell per claim and measure, over the default context's kinds: belief and
    # association are never pooled together.
    for claim in sorted({c for c, _ in cells}):
        kinds = sorted(k for c, k in cells if c == claim and "@" not in k)
        for measure in MEASURE_ORDER:
            mine = [k for k in kinds if measure_of(k) == measure]
            if not mine:
                continue
            parts = [cells[(claim, k)] for k in mine]
            cells[(claim, _pooled_key(measure))] = Cell(
                [f"{k}:{it}" for k, c in zip(mine, parts) for it in c.items],
                *[np.vstack([getattr(c, a) for c in parts]) for a in ("matrix", "p", "logodds", "neutral")])
    return steps, cells


def read_run(run_dir: Path, warn: Callable[[str], None] | None = None) -> RunData | None:
    """One run directory; None (after a warning) when the run is not complete."""
    warn = warn or _warn
    run_dir = Path(run_dir)
    manifest = read_json_if_exists(run_dir / "manifest.json")
    if not isinstance(manifest, dict):
        warn(f"warning: {run_dir}: no readable manifest.json (run not finished?); skipped")
        return None
    if manifest.get("status") != "complete":
        warn(f"warning: {run_dir}: status {manifest.get('status')!r}, not 'complete'; skipped")
        return None
    if not (run_dir / "config.yaml").is_file():
        raise AnnotError(f"{run_dir / 'config.yaml'}: file not found; a complete run directory written by "
                         "`annot run` has one (re-run it with --force)")
    config = read_yaml(run_dir / "config.yaml")
    summary = read_json_if_exists(run_dir / "summary.json")
    summary = summary if isinstance(summary, dict) else {}
    rows = read_jsonl(run_dir / "probes.jsonl")
    _check_rows(run_dir / "probes.jsonl", rows)
    claim = str(summary.get("claim") or (config.get("data") or {}).get("claim") or "")
    steps, cells = _build_cells(rows, claim)
    return RunData(run_dir.name, run_dir, config, manifest, summary, steps, cells, read_control(run_dir))


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def load_runs(paths: list[Path], warn: Callable[[str], None] | None = None) -> list[RunData]:
    """Every complete run under `paths` (run dirs or folders of them); incomplete runs are skipped
    with one warning line each.

        runs = load_runs([Path("runs")])
        runs = load_runs([Path("runs/plain"), Path("sweeps_out/negation")])
    """
    dirs: list[Path] = []
    for p in paths:
        for d in find_run_dirs(Path(p)):
            if d.resolve() not in {x.resolve() for x in dirs}:
                dirs.append(d)
    if not dirs:
        raise AnnotError(f"{', '.join(map(str, paths))}: no run directories found (a run directory holds "
                         "manifest.json and probes.jsonl, as `annot run` writes them)")
    runs = [r for r in (read_run(d, warn) for d in dirs) if r is not None]
    if not runs:
        raise AnnotError(f"{', '.join(map(str, paths))}: none of the {len(dirs)} run(s) is complete; "
                         "wait for them to finish or re-run them")
    # The table names runs by directory; two sweeps may both have a "plain" run, so runs sharing a
    # name are named by their path below the folder they have in common (sweep_a/runs/plain).
    for name in {r.name for r in runs}:
        same = [r for r in runs if r.name == name]
        if len(same) > 1:
            top = os.path.commonpath([str(r.path.resolve()) for r in same])
            for r in same:
                r.name = Path(os.path.relpath(r.path.resolve(), top)).as_posix()
    return runs


# ------------------------------------------------------------------------------------------- conditions

def _config_key(run: RunData, drop: tuple[str, ...]) -> str:
    """Canonical JSON of what the run trained: the resolved config minus UNKEYED and `drop`, with the
    wrapper's resolved params (so {} and {density: 1.0} are the same when 1.0 is the default)."""
    cfg = copy.deepcopy(run.config)
    for k in UNKEYED + drop:
        cfg.pop(k, None)
    if "wrapper" not in drop:
        cfg["wrapper"] = {"name": run.wrapper, "params": run.wrapper_params}
    return canonical_json(cfg)


def plain_key(run: RunData) -> str:
    """Runs with equal keys differ only in the wrapper: the plain one is the other's control."""
    return _config_key(run, ("wrapper",))


def condition_key(run: RunData) -> str:
    """Runs with equal keys differ only in the seed: one condition, pooled over seeds."""
    return _config_key(run, ("seed",))


def _flatten(d, prefix="") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = canonical_json(v)
    return out


def _fmt_value(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    return canonical_json(v)


def condition_labels(groups: dict[str, list[RunData]], controls: dict[int, "Control"] | None = None) -> dict[str, str]:
    """A short human label per condition: the wrapper with the parameters someone chose or that vary
    between runs ("repeated_negation(density=0.5)", "plain"), plus any other config field that varies
    across the analysed runs and is not a column of its own ("plain [polarity=negate]"). A training
    data file that varies leads the label by its short name ("negated", "negated + notice"), and the
    condition a sweep declared the control ends in " (control)"."""
    runs = [r for g in groups.values() for r in g]
    flat = {id(r): _flatten({k: v for k, v in r.config.items()
                             if k not in UNKEYED + ("seed", "wrapper")}) for r in runs}
    paths = sorted({p for f in flat.values() for p in f} - {"model.name", "data.claim"})
    varying = [p for p in paths if len({flat[id(r)].get(p) for r in runs}) > 1]
    files = {p: sorted({v for r in runs if isinstance(v := json.loads(flat[id(r)].get(p, "null")), str)})
             for p in varying if p in DATA_FILE_FIELDS}
    short = {p: p.rsplit(".", 1)[-1] for p in varying}
    short = {p: (s if list(short.values()).count(s) == 1 else p) for p, s in short.items()}
    params_vary: dict[str, set[str]] = {}
    for name in {r.wrapper for r in runs}:
        same = [r.wrapper_params for r in runs if r.wrapper == name]
        keys = {k for p in same for k in p}
        params_vary[name] = {k for k in keys if len({canonical_json(p.get(k)) for p in same}) > 1}
    labels = {}
    for key, group in groups.items():
        r = group[0]
        params = r.wrapper_params
        shown = ({k for g in group for k in g.given_params} | params_vary[r.wrapper]) & set(params)
        shown = sorted(k for k in shown if not (k == "doc_tag" and params.get(k) is None))
        label = "plain" if r.is_plain else r.wrapper
        if shown:
            label += "(" + ", ".join(f"{k}={_fmt_value(params[k])}" for k in shown) + ")"
        named = [file_label(v, files[p]) if isinstance(v := json.loads(flat[id(r)].get(p, "null")), str)
                 else "generated" for p in files]
        if named:
            lead = " + ".join(named)
            label = lead if r.is_plain and not shown else f"{lead} + {label}"
        extra = [f"{short[p]}={_fmt_value(json.loads(flat[id(r)][p]))}" for p in varying
                 if p in flat[id(r)] and p not in files]
        if extra:
            label += " [" + ", ".join(extra) + "]"
        if controls is not None and r.declared_control and controls[id(r)].is_control:
            label += " (control)"
        labels[key] = label
    # Two conditions of one model and claim could still print alike (a field nested in a list, say);
    # never merge them.
    seen: dict[tuple, int] = {}
    for key, group in groups.items():
        ident = (group[0].model, canonical_json((group[0].config.get("data") or {}).get("claim")), labels[key])
        seen[ident] = seen.get(ident, 0) + 1
        if seen[ident] > 1:
            labels[key] += f" #{seen[ident]}"
    return labels


def find_plain(run: RunData, runs: list[RunData]) -> RunData | None:
    """The plain control of `run`: same config except wrapper/name/output_dir/tracking. Prefers one
    with the same doc tag, then one without a tag (a tag alone is still plain)."""
    key = plain_key(run)
    cands = [r for r in runs if r.is_plain and r is not run and plain_key(r) == key]
    if not cands:
        return None
    tag = run.wrapper_params.get("doc_tag")
    cands.sort(key=lambda r: (r.wrapper_params.get("doc_tag") != tag, r.wrapper_params.get("doc_tag") is not None,
                              r.name))
    return cands[0]


# ---------------------------------------------------------------------------------- control assignment

NO_DECLARED_CONTROL = ("no declared control: these runs differ in their training data file and none is declared "
                       "the control; add `control: {data.path: FILE}` to the sweep file (README: Data-defined "
                       "conditions) and re-run `annot sweep` (finished runs are not trained again)")


@dataclass(frozen=True)
class Control:
    """How a run is compared: it is a control itself, or `run` is its control, or `why` says why it has none."""

    is_control: bool
    run: RunData | None = None
    why: str = ""


def _key_without(run: RunData, control: dict) -> str:
    cfg = without_control_fields(run.config, control)
    for k in UNKEYED:
        cfg.pop(k, None)
    return canonical_json(cfg)


def _is_declared_control(run: RunData) -> bool:
    c = run.declared_control
    return matches(run.config, c) and (names_wrapper(c) or run.is_plain)


def find_declared_control(run: RunData, runs: list[RunData]) -> RunData | None:
    """The run of the declared control (annot.declared_control) with otherwise the same config and seed
    as `run`; prefers one with the same doc tag, like find_plain."""
    control = run.declared_control
    key = _key_without(run, control)
    cands = [r for r in runs if r is not run and matches(r.config, control)
             and (names_wrapper(control) or r.is_plain) and _key_without(r, control) == key]
    tag = run.wrapper_params.get("doc_tag")
    cands.sort(key=lambda r: (r.wrapper_params.get("doc_tag") != tag, r.wrapper_params.get("doc_tag") is not None,
                              r.name))
    return cands[0] if cands else None


def assign_controls(runs: list[RunData]) -> dict[int, Control]:
    """id(run) -> Control for every run. With a declared control (control.yaml), the runs that match
    it are the controls and every other run is compared with its own (find_declared_control).
    Without one, the plain run (wrapper none) is the control of the same config with a wrapper, as
    always; but plain runs that differ only in their data file are conditions whose control nobody
    named, so their absorption is undefined with that reason, unless one is a wrapped run's plain
    control (then it is that)."""
    out: dict[int, Control] = {}
    wrapper_controls: set[int] = set()
    for r in runs:
        c = r.declared_control
        if c:
            if _is_declared_control(r):
                out[id(r)] = Control(True)
                continue
            found = find_declared_control(r, runs)
            out[id(r)] = Control(False, found, "" if found else (
                f"no run of the declared control ({describe(c)}{'' if names_wrapper(c) else ', wrapper none'}) "
                "with otherwise the same config and seed"))
        elif not r.is_plain:
            found = find_plain(r, runs)
            out[id(r)] = Control(False, found, "" if found else
                                 "no plain run with the same config (wrapper none, same seed and data)")
            if found is not None:
                wrapper_controls.add(id(found))
    plain = [r for r in runs if not r.declared_control and r.is_plain]
    by_key: dict[str, list[RunData]] = {}
    file_fields = dict.fromkeys(DATA_FILE_FIELDS)
    for r in plain:
        by_key.setdefault(_key_without(r, file_fields), []).append(r)
    for group in by_key.values():
        differ = len({canonical_json([(r.config.get("data") or {}).get(f.split(".")[1]) for f in DATA_FILE_FIELDS])
                      for r in group}) > 1
        for r in group:
            out[id(r)] = (Control(False, None, NO_DECLARED_CONTROL) if differ and id(r) not in wrapper_controls
                          else Control(True))
    return out
