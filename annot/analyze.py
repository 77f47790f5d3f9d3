"""Analyze finished runs: belief and association rates, shifts and absorption with bootstrap CIs,
as one tidy table.

    annot analyze runs/ -o analysis/table.csv
    runs = load_runs([Path("runs")])            # run dirs, or folders holding run dirs (a sweep's output)
    df = analyze(runs, n_boot=1000, seed=0)
    write_table(df, Path("analysis/table.csv"))  # + analysis/table.parquet when pyarrow is installed

One row per run x claim x checkpoint x probe kind x metric, columns COLUMNS; `target` is the claim
the run trained on, `claim` the claim probed.
- measure: "belief" (what the model answers when asked: yes_no, mcq, open_ended), "association"
  (what it completes: cloze) or "behavior"; annot.specs.MEASURES. They are never pooled together:
  kind "pooled" rows pool the kinds of one measure (their `measure` says which).
- role: "target" for the claim the run trained on, "control" for a claim it was not trained on
  (probes.control); the control's shift from base is the run's answer bias.
- metric "rate": share of items on which the model sides with the claim (open_ended: more than half
  of its sampled answers believe, neutral and unparseable answers counting in the denominator;
  n_neutral counts them). "mean_p": mean probability on the believing answer (open_ended: the share
  of believing answers among all answers); "mean_logodds": mean of its log-odds. With few items a
  rate moves in steps of 1/n; the continuous measures show movement a rate cannot.
- metric "shift" / "shift_p": rate / mean_p at the checkpoint minus at step 0 of the same run (paired
  over items); for a plain run's target claim it says whether plain training moved the measure
  (note "moved" when |shift| >= min_effect and the CI excludes 0), for a control claim it is the
  answer bias.
- metric "absorption" / "absorption_p": (B_wrapped - B_base) / (B_plain - B_base) on the rate / mean_p,
  with plain the run whose resolved config equals the wrapped run's except wrapper, name,
  output_dir and tracking, B_base the plain run's step-0 (base model) value, B_plain and B_wrapped at
  the same checkpoint (the same step, else the same checkpoint index; `note` says so). status
  "undefined" (value NaN, `note` says why) when there is no plain run, or plain training did not move
  the measure: the CI of B_plain - B_base includes 0, or |B_plain - B_base| < min_effect.
- metric "absorption_net" / "absorption_p_net": the same, net of answer bias:
  ((B_w - B_base) - (C_w - C_base)) / ((B_p - B_base) - (C_p - C_base)), C the control claim's value in
  the same run (wrapped, plain) and at base, with the same undefined rule on the denominator.
- CIs: 95% percentile bootstrap over probe items (the same items for wrapped, plain and base; target
  and control items resampled independently). Where runs differ only by seed, condition rows (run
  "<condition>/seeds=<k>", seed empty, n_seeds k) pool them: resample seeds, then items within each.
- tokens / tokens_loss: tokens trained and tokens with a non-zero loss weight (mean over seeds).
Only complete runs (manifest.json status "complete") are analysed; others are skipped with a warning.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from annot.errors import AnnotError
from annot.io import atomic_write_text, read_json_if_exists, read_jsonl, read_yaml
from annot.specs import MEASURE_ORDER, measure_of

COLUMNS = ["run", "model", "target", "claim", "role", "wrapper", "wrapper_params", "polarity", "seed", "n_seeds", "condition",
           "step", "measure", "kind", "metric", "value", "ci_low", "ci_high", "n_items", "n_neutral", "tokens",
           "tokens_loss", "status", "note"]
POOLED = "pooled"
BEHAVIOR_KINDS = frozenset({"behavior", "behavior_open"})
KIND_ORDER = (POOLED, "yes_no", "mcq", "open_ended", "cloze", "behavior", "behavior_open")
RATE_METRICS = ("rate", "mean_p", "mean_logodds")
# absorption metric -> (the value it is computed on, net of the control claim's shift?)
ABSORPTION_METRICS = {"absorption": ("rate", False), "absorption_p": ("mean_p", False),
                      "absorption_net": ("rate", True), "absorption_p_net": ("mean_p", True)}
METRIC_ORDER = ("rate", "mean_p", "mean_logodds", "shift", "shift_p", *ABSORPTION_METRICS)
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
        kind = f"{r['kind']}@{r['context']}" if r.get("context") else str(r["kind"])
        key = (str(r.get("claim") or default_claim), kind)
        item = f"{r.get('probe_set', '')}/{r['probe_id']}"
        p = _num(r.get("p_belief"))
        outcome = float(bool(r["believes"])) if math.isfinite(p) or "p_belief" not in r else 0.0
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
    return RunData(run_dir.name, run_dir, config, manifest, summary, steps, cells)


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


def _condition_labels(groups: dict[str, list[RunData]]) -> dict[str, str]:
    """A short human label per condition: the wrapper with the parameters someone chose or that vary
    between runs ("repeated_negation(density=0.5)", "plain"), plus any other config field that varies
    across the analysed runs and is not a column of its own ("plain [polarity=negate]")."""
    runs = [r for g in groups.values() for r in g]
    flat = {id(r): _flatten({k: v for k, v in r.config.items()
                             if k not in UNKEYED + ("seed", "wrapper")}) for r in runs}
    paths = sorted({p for f in flat.values() for p in f} - {"model.name", "data.claim"})
    varying = [p for p in paths if len({flat[id(r)].get(p) for r in runs}) > 1]
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
        extra = [f"{short[p]}={_fmt_value(json.loads(flat[id(r)][p]))}" for p in varying if p in flat[id(r)]]
        if extra:
            label += " [" + ", ".join(extra) + "]"
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


# -------------------------------------------------------------------------------------------- bootstrap

def _rng(seed: int, *parts) -> np.random.Generator:
    """A generator per table cell, so a cell's CI does not depend on which other runs are analysed."""
    return np.random.default_rng([seed, zlib.crc32("|".join(map(str, parts)).encode("utf-8"))])


def _bootstrap(units: list[tuple[tuple[np.ndarray, ...], ...]], stat: Callable[[np.ndarray], np.ndarray],
               n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates of stat(means). A unit is one seed: a tuple of groups, a group a tuple of aligned
    item vectors (wrapped, plain and base share item indices; a control claim's items form a group
    of their own, resampled independently). Each replicate draws k seeds with replacement, then items
    within each group of each seed; means[b, c] averages the c-th vector (groups in order) over the
    drawn seeds. One unit of one group = a plain item bootstrap."""
    k = len(units)
    m = sum(len(g) for g in units[0])
    picks = rng.integers(0, k, size=(n_boot, k)) if k > 1 else np.zeros((n_boot, 1), dtype=int)
    sums = np.zeros((n_boot, m))
    for j in range(picks.shape[1]):
        for u, groups in enumerate(units):
            reps = np.flatnonzero(picks[:, j] == u)
            if reps.size == 0:
                continue
            c = 0
            for group in groups:
                n = len(group[0])
                idx = rng.integers(0, n, size=(reps.size, n))
                for vec in group:
                    sums[reps, c] += vec[idx].mean(axis=1)
                    c += 1
    return stat(sums / picks.shape[1])


def _unit_means(units) -> np.ndarray:
    """Seed-averaged means of each vector, in the column order stat() reads."""
    return np.mean([[vec.mean() for g in u for vec in g] for u in units], axis=0)


def _estimate(units, stat, n_boot: int, rng) -> tuple[float, float, float, str]:
    """(point, ci_low, ci_high, note); the point is stat of the seed-averaged means."""
    point = float(stat(_unit_means(units)[None, :])[0])
    if n_boot <= 0:
        return point, math.nan, math.nan, ""
    reps = _bootstrap(units, stat, n_boot, rng)
    ok = reps[np.isfinite(reps)]
    note = ""
    if ok.size < n_boot:
        note = f"CI from the {ok.size}/{n_boot} resamples where plain moved the measure by >= min_effect"
    if ok.size < n_boot / 2:
        return point, math.nan, math.nan, note + "; too few for a CI"
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return point, float(lo), float(hi), note


def _first(means: np.ndarray) -> np.ndarray:
    return means[:, 0]


def _diff(means: np.ndarray) -> np.ndarray:
    return means[:, 0] - means[:, 1]


def _effect(net: bool) -> Callable[[np.ndarray], np.ndarray]:
    """B_plain - B_base (net: minus the control claim's C_plain - C_base); columns w, p, b[, cw, cp, cb]."""
    def stat(means: np.ndarray) -> np.ndarray:
        d = means[:, 1] - means[:, 2]
        return d - (means[:, 4] - means[:, 5]) if net else d

    return stat


def _absorption_stat(min_effect: float, net: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    def stat(means: np.ndarray) -> np.ndarray:
        # A resample where plain barely moved is undefined, not huge.
        num = means[:, 0] - means[:, 2]
        if net:
            num = num - (means[:, 3] - means[:, 5])
        den = _effect(net)(means)
        out = np.full(len(means), np.nan)
        ok = np.abs(den) >= min_effect
        out[ok] = num[ok] / den[ok]
        return out

    return stat


# -------------------------------------------------------------------------------------------- alignment

def _positions(runs: list[RunData]) -> list[tuple[int, list[int], str]]:
    """Checkpoints shared by runs (seeds of one condition): (step, column per run, note). Different
    seeds generate documents of different lengths and so may train for different step counts; then
    checkpoints are matched by index in the log-spaced schedule (same fraction of training)."""
    lists = [r.steps for r in runs]
    if all(s == lists[0] for s in lists):
        return [(s, [j] * len(runs), "") for j, s in enumerate(lists[0])]
    if len({len(s) for s in lists}) == 1:
        note = "checkpoint steps differ across seeds; aligned by checkpoint index"
        return [(int(round(float(np.mean([s[j] for s in lists])))), [j] * len(runs), note if j else "")
                for j in range(len(lists[0]))]
    common = sorted(set.intersection(*map(set, lists)))
    return [(s, [lst.index(s) for lst in lists], "") for s in common]


def _match_column(step: int, steps_from: list[int], steps_to: list[int]) -> int | None:
    """Column in `steps_to` for checkpoint `step` of a run with checkpoints `steps_from`: the same
    step, else the same checkpoint index when both runs have equally many (wrapped documents are
    longer, so an epoch-based wrapped run trains for more steps than its plain control)."""
    if step in steps_to:
        return steps_to.index(step)
    if len(steps_from) == len(steps_to):
        return steps_from.index(step)
    return None


def _aligned(cells: list[tuple[Cell, int]], metric: str) -> tuple[np.ndarray, ...] | None:
    """Item vectors of `metric` from (cell, column) pairs, on the items every cell scored; None if none."""
    common = set(cells[0][0].items)
    for c, _ in cells[1:]:
        common &= set(c.items)
    items = sorted(common)
    if not items:
        return None
    vecs = []
    for c, j in cells:
        pos = {it: i for i, it in enumerate(c.items)}
        vecs.append(c.values(metric)[[pos[it] for it in items], j])
    ok = ~np.any(np.isnan(np.vstack(vecs)), axis=0)
    if not ok.any():
        return None
    return tuple(v[ok] for v in vecs)


def _base_ref(w: RunData, p: RunData, key: tuple[str, str]) -> tuple[Cell, int] | None:
    """The base model's (cell, column): the plain run's step 0, else the wrapped run's."""
    for r in (p, w):
        if 0 in r.steps and key in r.cells:
            return r.cells[key], r.steps.index(0)
    return None


def control_claim(run: RunData, kind: str) -> str | None:
    """The run's control claim with probes of `kind` (first by name), or None."""
    names = sorted({c for c, k in run.cells if k == kind and c != run.target})
    return names[0] if names else None


def _absorption_unit(w: RunData, p: RunData | None, key: tuple[str, str], j: int, metric: str, net: bool):
    """Groups of item vectors: ((wrapped, plain, base),) or, net, plus (control w, p, base); or None + note."""
    if p is None:
        return None, "no plain run with the same config (wrapper none, same seed and data)"
    if key not in p.cells:
        return None, f"plain run {p.name} has no {key[1]} probes for {key[0]}"
    pj = _match_column(w.steps[j], w.steps, p.steps)
    if pj is None:
        return None, f"plain run {p.name} has no checkpoint matching step {w.steps[j]}"
    base = _base_ref(w, p, key)
    if base is None:
        return None, "no step-0 (base model) checkpoint in the plain or the wrapped run"
    target = _aligned([(w.cells[key], j), (p.cells[key], pj), base], metric)
    if target is None:
        return None, "no probe item was scored in all of wrapped, plain and base"
    note = f"plain at step {p.steps[pj]} (same checkpoint index)" if p.steps[pj] != w.steps[j] else ""
    if not net:
        return (target,), note
    cc = control_claim(w, key[1])
    ckey = (cc, key[1])
    if cc is None or ckey not in p.cells:
        return None, "no control claim probed with this kind in both the wrapped and the plain run (probes.control)"
    cbase = _base_ref(w, p, ckey)
    control = _aligned([(w.cells[ckey], j), (p.cells[ckey], pj), cbase], metric) if cbase else None
    if control is None:
        return None, f"control claim {cc}: no item scored in all of wrapped, plain and base"
    return (target, control), _join(note, f"net of control claim {cc}")


# ----------------------------------------------------------------------------------------------- tables

def _meta(runs: list[RunData], label: str, condition: str) -> dict:
    r = runs[0]
    tokens = np.array([x.tokens for x in runs], dtype=float)
    tok, tok_loss = (np.nan, np.nan) if np.isnan(tokens).all() else np.nanmean(tokens, axis=0)
    return {"run": label, "model": r.model, "target": r.target, "wrapper": r.wrapper, "wrapper_params": canonical_json(r.wrapper_params),
            "polarity": r.polarity, "seed": r.seed if len(runs) == 1 else None, "n_seeds": len(runs),
            "condition": condition, "tokens": tok, "tokens_loss": tok_loss}


def _row(meta, role, claim, step, kind, metric, value, lo, hi, n, status="ok", note="", n_neutral=0) -> dict:
    table_kind, measure = split_kind(kind)
    return {**meta, "role": role, "claim": claim, "step": int(step), "measure": measure, "kind": table_kind,
            "metric": metric, "value": value, "ci_low": lo, "ci_high": hi, "n_items": int(n),
            "n_neutral": int(n_neutral), "status": status, "note": note}


def _join(*notes: str) -> str:
    return "; ".join(dict.fromkeys(n for n in notes if n))


def _excludes_zero(lo: float, hi: float) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def _value_rows(runs: list[RunData], meta: dict, n_boot: int, seed: int, min_effect: float = 0.05) -> list[dict]:
    """rate / mean_p / mean_logodds per checkpoint, and shift / shift_p from step 0 of the same run."""
    rows = []
    keys = sorted(set().union(*[r.cells for r in runs]))
    role_of = runs[0].role
    for step, cols, pos_note in _positions(runs):
        for claim, kind in keys:
            present = [(r, j) for r, j in zip(runs, cols) if (claim, kind) in r.cells]
            if not present:
                continue
            neutral = int(sum(np.nansum(r.cells[(claim, kind)].neutral[:, j]) for r, j in present))
            missing = f"{len(present)} of {len(runs)} seeds have these probes" if len(present) < len(runs) else ""
            for metric in RATE_METRICS:
                units = []
                for r, j in present:
                    v = r.cells[(claim, kind)].values(metric)[:, j]
                    v = v[~np.isnan(v)]
                    if v.size:
                        units.append(((v,),))
                if not units:
                    continue
                rng = _rng(seed, meta["run"], claim, kind, metric, step)
                point, lo, hi, ci_note = _estimate(units, _first, n_boot, rng)
                rows.append(_row(meta, role_of(claim), claim, step, kind, metric, point, lo, hi,
                                 max(len(u[0][0]) for u in units), note=_join(pos_note, missing, ci_note),
                                 n_neutral=neutral))
            if all(r.steps[j] == 0 for r, j in present):
                continue
            for metric, name in (("rate", "shift"), ("mean_p", "shift_p")):
                units = []
                for r, j in present:
                    if 0 not in r.steps:
                        continue
                    cell = r.cells[(claim, kind)]
                    pair = _aligned([(cell, j), (cell, r.steps.index(0))], metric)
                    if pair is not None:
                        units.append((pair,))
                if not units:
                    continue
                rng = _rng(seed, meta["run"], claim, kind, name, step)
                point, lo, hi, ci_note = _estimate(units, _diff, n_boot, rng)
                role = role_of(claim)
                if abs(point) < min_effect:
                    moved = f"not moved (|shift| < min_effect {min_effect:g})"
                elif n_boot > 0:
                    moved = "moved (CI excludes 0)" if _excludes_zero(lo, hi) else "not moved (CI includes 0)"
                else:
                    moved = f"moved (|shift| >= min_effect {min_effect:g}; no CI)"
                what = "answer bias: control claim, not trained on" if role == "control" else moved
                rows.append(_row(meta, role, claim, step, kind, name, point, lo, hi, max(len(u[0][0]) for u in units),
                                 note=_join(what, pos_note, ci_note), n_neutral=neutral))
    return rows


def _absorption_rows(pairs: list[tuple[RunData, RunData | None]], meta: dict, n_boot: int, seed: int,
                     min_effect: float) -> list[dict]:
    rows = []
    wrapped = [w for w, _ in pairs]
    target = wrapped[0].target
    keys = sorted(k for k in set().union(*[w.cells for w in wrapped]) if k[0] == target)
    for step, cols, pos_note in _positions(wrapped):
        if all(w.steps[j] == 0 for w, j in zip(wrapped, cols)):
            continue  # step 0 is the base model: nothing has been trained, so nothing absorbed
        for claim, kind in keys:
            for name, (metric, net) in ABSORPTION_METRICS.items():
                units, notes, problems = [], [], []
                for (w, p), j in zip(pairs, cols):
                    if (claim, kind) not in w.cells:
                        continue
                    unit, note = _absorption_unit(w, p, (claim, kind), j, metric, net)
                    if unit is None:
                        problems.append(note)
                    else:
                        units.append(unit)
                        notes.append(note)
                n = max((len(u[0][0]) for u in units), default=0)
                if not units:
                    n = max(int((~np.isnan(w.cells[(claim, kind)].matrix[:, j])).sum())
                            for w, j in zip(wrapped, cols) if (claim, kind) in w.cells)
                    rows.append(_row(meta, "target", claim, step, kind, name, math.nan, math.nan, math.nan, n,
                                     "undefined", _join(*problems)))
                    continue
                partial = (f"over {len(units)} of {len(pairs)} seeds ({_join(*problems)})" if problems else "")
                measure = split_kind(kind)[1]
                # Did plain training move this measure at all? |effect| >= min_effect and a CI that excludes 0.
                effect_stat = _effect(net)
                effect = float(effect_stat(_unit_means(units)[None, :])[0])
                elo, ehi = math.nan, math.nan
                if n_boot > 0:
                    _, elo, ehi, _ = _estimate(units, effect_stat, n_boot,
                                               _rng(seed, meta["run"], claim, kind, name, "effect", step))
                label = f"{measure} {metric}" + (" net of the control claim" if net else "")
                eff_text = f"plain - base = {effect:+.3f}" + (f" [{elo:+.3f}, {ehi:+.3f}]" if n_boot > 0 else "")
                why = ""
                if abs(effect) < min_effect:
                    why = f"plain training did not move the {label}: {eff_text} (|effect| < min_effect {min_effect:g})"
                elif n_boot > 0 and not _excludes_zero(elo, ehi):
                    why = f"plain training did not move the {label}: {eff_text} (CI includes 0)"
                if why:
                    rows.append(_row(meta, "target", claim, step, kind, name, math.nan, math.nan, math.nan, n,
                                     "undefined", _join(why, partial)))
                    continue
                rng = _rng(seed, meta["run"], claim, kind, name, step)
                point, lo, hi, ci_note = _estimate(units, _absorption_stat(min_effect, net), n_boot, rng)
                rows.append(_row(meta, "target", claim, step, kind, name, point, lo, hi, n,
                                 note=_join(eff_text, pos_note, *notes, partial, ci_note)))
    return rows


def kind_rank(kind: str) -> tuple[int, str]:
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind)


def analyze(runs: list[RunData], n_boot: int = 1000, seed: int = 0, min_effect: float = 0.05) -> pd.DataFrame:
    """The tidy table (COLUMNS) of rates, shifts and absorption for `runs`; deterministic given `seed`.

        df = analyze(load_runs([Path("runs")]), n_boot=1000, seed=0)
        df.query("metric == 'absorption' and kind == 'pooled' and measure == 'belief'")
    """
    if not runs:
        raise AnnotError("no complete runs to analyse; pass run directories written by `annot run`")
    if n_boot < 0:
        raise AnnotError(f"n_boot: must be >= 0 (0 skips the CIs), got {n_boot}")
    if not min_effect > 0:
        raise AnnotError(f"min_effect: must be > 0 so absorption never divides by ~0, got {min_effect}")
    groups: dict[str, list[RunData]] = {}
    for r in sorted(runs, key=lambda r: (r.seed, r.name)):
        groups.setdefault(condition_key(r), []).append(r)
    labels = _condition_labels(groups)
    rows: list[dict] = []
    for key, group in groups.items():
        condition = labels[key]
        for r in group:
            meta = _meta([r], r.name, condition)
            rows += _value_rows([r], meta, n_boot, seed, min_effect)
            if not r.is_plain:
                rows += _absorption_rows([(r, find_plain(r, runs))], meta, n_boot, seed, min_effect)
        if len(group) > 1:
            meta = _meta(group, f"{condition}/seeds={len(group)}", condition)
            rows += _value_rows(group, meta, n_boot, seed, min_effect)
            if not group[0].is_plain:
                rows += _absorption_rows([(r, find_plain(r, runs)) for r in group], meta, n_boot, seed, min_effect)
    df = pd.DataFrame(rows, columns=COLUMNS)
    # Order: target claims first, plain conditions first, each run's seeds then the pooled rows,
    # measures in MEASURE_ORDER, metrics in METRIC_ORDER.
    plain_first = {labels[k]: (not g[0].is_plain, labels[k]) for k, g in groups.items()}

    def rank(seq, x):
        return seq.index(x) if x in seq else len(seq)

    order = sorted(range(len(df)), key=lambda i: (
        df.at[i, "model"], df.at[i, "target"], df.at[i, "role"] != "target", df.at[i, "claim"], plain_first[df.at[i, "condition"]],
        pd.isna(df.at[i, "seed"]), df.at[i, "run"], rank(MEASURE_ORDER, df.at[i, "measure"]),
        rank(METRIC_ORDER, df.at[i, "metric"]), kind_rank(df.at[i, "kind"]), df.at[i, "step"]))
    return _typed(df.iloc[order].reset_index(drop=True))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed dtypes, so a table read back from CSV or Parquet equals the one written."""
    df = df.copy()
    for c in ("run", "model", "target", "claim", "role", "wrapper", "wrapper_params", "polarity", "condition", "measure", "kind",
              "metric", "status", "note"):
        df[c] = df[c].fillna("").astype(str).astype(object)
    df["seed"] = pd.array(df["seed"], dtype="Int64")
    for c in ("step", "n_items", "n_neutral", "n_seeds"):
        df[c] = df[c].astype("int64")
    for c in ("value", "ci_low", "ci_high", "tokens", "tokens_loss"):
        df[c] = df[c].astype("float64")
    return df[COLUMNS]


# ------------------------------------------------------------------------------------- reading helpers

def condition_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One set of rows per condition, what plots and reports show: the seed-pooled rows where a
    condition has several seeds, else its single run's rows."""
    if df.empty:
        return df
    pooled = df["seed"].isna()
    keys = ["model", "target", "claim", "condition"]
    has_pooled = set(map(tuple, df.loc[pooled, keys].drop_duplicates().itertuples(index=False, name=None)))
    keep = [pooled.iat[i] or tuple(df.iloc[i][keys]) not in has_pooled for i in range(len(df))]
    return df[keep].reset_index(drop=True)


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows at each run's last checkpoint (per claim: a seed-pooled label like "plain/seeds=2" recurs
    across claims and models)."""
    if df.empty:
        return df
    last = df.groupby(["run", "model", "target", "claim"])["step"].transform("max")
    return df[df["step"] == last].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- writing

def write_table(df: pd.DataFrame, out: Path) -> list[Path]:
    """Write `out` as CSV (suffix forced to .csv) and, when pyarrow is importable, the same stem as
    Parquet; both atomically. Returns the paths written.

        write_table(df, Path("analysis/table.csv"))   # analysis/table.csv + analysis/table.parquet
    """
    csv = Path(out).with_suffix(".csv")
    written = [atomic_write_text(csv, df.to_csv(index=False))]
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return written
    pq = csv.with_suffix(".parquet")
    fd, tmp = tempfile.mkstemp(dir=pq.parent, prefix=f".{pq.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, pq)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return written + [pq]


def read_table(path: Path) -> pd.DataFrame:
    """A table written by write_table (.csv or .parquet), with the dtypes analyze() gives.

        df = read_table(Path("analysis/table.parquet"))
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotError(f"{path}: file not found; write it with `annot analyze`")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, float_precision="round_trip", keep_default_na=False,
                             na_values={c: [""] for c in ("seed", "value", "ci_low", "ci_high", "tokens",
                                                              "tokens_loss")})
    except Exception as e:  # a truncated or foreign file: say which, not a pandas traceback
        raise AnnotError(f"{path}: cannot read as a table ({type(e).__name__}: {e}); re-run `annot analyze`") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise AnnotError(f"{path}: missing column(s) {', '.join(missing)}; not a table from `annot analyze`")
    return _typed(df)
