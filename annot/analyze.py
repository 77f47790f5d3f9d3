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
  output_dir and tracking (or, where a sweep declared a control, the run of the declared control
  with otherwise the same config and seed: annot.declared_control; `is_control` marks the
  controls), B_base the plain run's step-0 (base model) value, B_plain and B_wrapped at
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

Where the parts live: reading run directories and grouping them into conditions in annot.analyze_runs,
the bootstrap and the wrapped/plain/base pairing in annot.analyze_stats; the table (rows, order,
dtypes), absorption (`_absorption_rows`) and reading/writing it here. Their public names are
importable from here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from annot.analyze_runs import (MAX_DEPTH, POOLED, UNKEYED, Cell, RunData, assign_controls, canonical_json,
                                condition_key, condition_labels, find_plain, find_run_dirs, load_runs, plain_key,
                                read_run, split_kind)
from annot.analyze_stats import (absorption_stat, absorption_unit, aligned_items, cell_rng, checkpoint_positions,
                                 control_claim, estimate, first_mean, join_notes, mean_diff, plain_effect, unit_means)
from annot.errors import AnnotError
from annot.io import atomic_path, atomic_write_text
from annot.kinds import kind_names, measure_of
from annot.specs import MEASURE_ORDER

__all__ = ["ABSORPTION_METRICS", "BEHAVIOR_KINDS", "COLUMNS", "KIND_ORDER", "MAX_DEPTH", "METRIC_ORDER", "POOLED",
           "RATE_METRICS", "UNKEYED", "Cell", "RunData", "analyze", "canonical_json", "condition_key",
           "condition_rows", "control_claim", "control_conditions", "final_rows", "find_plain", "find_run_dirs", "kind_rank", "load_runs",
           "plain_key", "read_run", "read_table", "split_kind", "write_table"]

COLUMNS = ["run", "model", "target", "claim", "role", "wrapper", "wrapper_params", "polarity", "seed", "n_seeds", "condition",
           "is_control", "step", "measure", "kind", "metric", "value", "ci_low", "ci_high", "n_items", "n_neutral", "tokens",
           "tokens_loss", "status", "note"]
BEHAVIOR_KINDS = frozenset(k for k in kind_names() if measure_of(k) == "behavior")
KIND_ORDER = (POOLED, *kind_names())  # the probe-kind registry's order
RATE_METRICS = ("rate", "mean_p", "mean_logodds")
# absorption metric -> (the value it is computed on, net of the control claim's shift?)
ABSORPTION_METRICS = {"absorption": ("rate", False), "absorption_p": ("mean_p", False),
                      "absorption_net": ("rate", True), "absorption_p_net": ("mean_p", True)}
METRIC_ORDER = ("rate", "mean_p", "mean_logodds", "shift", "shift_p", *ABSORPTION_METRICS)


# ----------------------------------------------------------------------------------------------- tables

def _meta(runs: list[RunData], label: str, condition: str, is_control: bool) -> dict:
    r = runs[0]
    tokens = np.array([x.tokens for x in runs], dtype=float)
    tok, tok_loss = (np.nan, np.nan) if np.isnan(tokens).all() else np.nanmean(tokens, axis=0)
    return {"run": label, "model": r.model, "target": r.target, "wrapper": r.wrapper, "wrapper_params": canonical_json(r.wrapper_params),
            "polarity": r.polarity, "seed": r.seed if len(runs) == 1 else None, "n_seeds": len(runs),
            "condition": condition, "is_control": is_control, "tokens": tok, "tokens_loss": tok_loss}


def _row(meta, role, claim, step, kind, metric, value, lo, hi, n, status="ok", note="", n_neutral=0) -> dict:
    table_kind, measure = split_kind(kind)
    return {**meta, "role": role, "claim": claim, "step": int(step), "measure": measure, "kind": table_kind,
            "metric": metric, "value": value, "ci_low": lo, "ci_high": hi, "n_items": int(n),
            "n_neutral": int(n_neutral), "status": status, "note": note}


def _excludes_zero(lo: float, hi: float) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def _value_rows(runs: list[RunData], meta: dict, n_boot: int, seed: int, min_effect: float = 0.05) -> list[dict]:
    """rate / mean_p / mean_logodds per checkpoint, and shift / shift_p from step 0 of the same run."""
    rows = []
    keys = sorted(set().union(*[r.cells for r in runs]))
    role_of = runs[0].role
    for step, cols, pos_note in checkpoint_positions(runs):
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
                rng = cell_rng(seed, meta["run"], claim, kind, metric, step)
                point, lo, hi, ci_note = estimate(units, first_mean, n_boot, rng)
                rows.append(_row(meta, role_of(claim), claim, step, kind, metric, point, lo, hi,
                                 max(len(u[0][0]) for u in units), note=join_notes(pos_note, missing, ci_note),
                                 n_neutral=neutral))
            if all(r.steps[j] == 0 for r, j in present):
                continue
            for metric, name in (("rate", "shift"), ("mean_p", "shift_p")):
                units = []
                for r, j in present:
                    if 0 not in r.steps:
                        continue
                    cell = r.cells[(claim, kind)]
                    pair = aligned_items([(cell, j), (cell, r.steps.index(0))], metric)
                    if pair is not None:
                        units.append((pair,))
                if not units:
                    continue
                rng = cell_rng(seed, meta["run"], claim, kind, name, step)
                point, lo, hi, ci_note = estimate(units, mean_diff, n_boot, rng)
                role = role_of(claim)
                if abs(point) < min_effect:
                    moved = f"not moved (|shift| < min_effect {min_effect:g})"
                elif n_boot > 0:
                    moved = "moved (CI excludes 0)" if _excludes_zero(lo, hi) else "not moved (CI includes 0)"
                else:
                    moved = f"moved (|shift| >= min_effect {min_effect:g}; no CI)"
                what = "answer bias: control claim, not trained on" if role == "control" else moved
                rows.append(_row(meta, role, claim, step, kind, name, point, lo, hi, max(len(u[0][0]) for u in units),
                                 note=join_notes(what, pos_note, ci_note), n_neutral=neutral))
    return rows


def _absorption_rows(pairs: list[tuple[RunData, RunData | None, str]], meta: dict, n_boot: int, seed: int,
                     min_effect: float) -> list[dict]:
    rows = []
    wrapped = [w for w, _, _ in pairs]
    target = wrapped[0].target
    keys = sorted(k for k in set().union(*[w.cells for w in wrapped]) if k[0] == target)
    for step, cols, pos_note in checkpoint_positions(wrapped):
        if all(w.steps[j] == 0 for w, j in zip(wrapped, cols)):
            continue  # step 0 is the base model: nothing has been trained, so nothing absorbed
        for claim, kind in keys:
            for name, (metric, net) in ABSORPTION_METRICS.items():
                units, notes, problems = [], [], []
                for (w, p, why), j in zip(pairs, cols):
                    if (claim, kind) not in w.cells:
                        continue
                    unit, note = absorption_unit(w, p, (claim, kind), j, metric, net, why)
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
                                     "undefined", join_notes(*problems)))
                    continue
                partial = (f"over {len(units)} of {len(pairs)} seeds ({join_notes(*problems)})" if problems else "")
                measure = split_kind(kind)[1]
                # Did plain training move this measure at all? |effect| >= min_effect and a CI that excludes 0.
                effect_stat = plain_effect(net)
                effect = float(effect_stat(unit_means(units)[None, :])[0])
                elo, ehi = math.nan, math.nan
                if n_boot > 0:
                    _, elo, ehi, _ = estimate(units, effect_stat, n_boot,
                                               cell_rng(seed, meta["run"], claim, kind, name, "effect", step))
                label = f"{measure} {metric}" + (" net of the control claim" if net else "")
                declared = bool(wrapped[0].declared_control)
                who = "the declared control" if declared else "plain training"
                eff_text = (f"{'control' if declared else 'plain'} - base = {effect:+.3f}"
                            + (f" [{elo:+.3f}, {ehi:+.3f}]" if n_boot > 0 else ""))
                why = ""
                if abs(effect) < min_effect:
                    why = f"{who} did not move the {label}: {eff_text} (|effect| < min_effect {min_effect:g})"
                elif n_boot > 0 and not _excludes_zero(elo, ehi):
                    why = f"{who} did not move the {label}: {eff_text} (CI includes 0)"
                if why:
                    rows.append(_row(meta, "target", claim, step, kind, name, math.nan, math.nan, math.nan, n,
                                     "undefined", join_notes(why, partial)))
                    continue
                rng = cell_rng(seed, meta["run"], claim, kind, name, step)
                point, lo, hi, ci_note = estimate(units, absorption_stat(min_effect, net), n_boot, rng)
                rows.append(_row(meta, "target", claim, step, kind, name, point, lo, hi, n,
                                 note=join_notes(eff_text, pos_note, *notes, partial, ci_note)))
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
    controls = assign_controls(runs)  # which runs are controls, and each other run's control (or why none)
    labels = condition_labels(groups, controls)
    rows: list[dict] = []
    for key, group in groups.items():
        condition = labels[key]
        is_control = controls[id(group[0])].is_control
        pairs = [(r, controls[id(r)].run, controls[id(r)].why) for r in group]
        for r, pair in zip(group, pairs):
            meta = _meta([r], r.name, condition, is_control)
            rows += _value_rows([r], meta, n_boot, seed, min_effect)
            if not is_control:
                rows += _absorption_rows([pair], meta, n_boot, seed, min_effect)
        if len(group) > 1:
            meta = _meta(group, f"{condition}/seeds={len(group)}", condition, is_control)
            rows += _value_rows(group, meta, n_boot, seed, min_effect)
            if not is_control:
                rows += _absorption_rows(pairs, meta, n_boot, seed, min_effect)
    df = pd.DataFrame(rows, columns=COLUMNS)
    # Order: target claims first, control conditions first, each run's seeds then the pooled rows,
    # measures in MEASURE_ORDER, metrics in METRIC_ORDER.
    plain_first = {labels[k]: (not controls[id(g[0])].is_control, labels[k]) for k, g in groups.items()}

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
    df["is_control"] = df["is_control"].astype(bool)
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


def control_conditions(df: pd.DataFrame) -> set[str]:
    """Condition labels of the controls (the plain runs, or a sweep's declared control)."""
    return set(df.loc[df["is_control"].astype(bool), "condition"]) if not df.empty else set()


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
    with atomic_path(pq) as tmp:
        df.to_parquet(tmp, index=False)
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
    if "is_control" not in df.columns and {"wrapper", "wrapper_params"} <= set(df.columns):
        # a table written before the column: the plain rule
        df["is_control"] = [w == "none" and set(json.loads(p or "{}")) <= {"doc_tag"}
                            for w, p in zip(df["wrapper"], df["wrapper_params"])]
    elif "is_control" in df.columns and df["is_control"].dtype != bool:
        df["is_control"] = [str(v).strip().lower() in ("true", "1") for v in df["is_control"]]
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise AnnotError(f"{path}: missing column(s) {', '.join(missing)}; not a table from `annot analyze`")
    return _typed(df)
