"""Plots of the analysis table: absorption curves, belief curves, condition bars, density sweeps.

    annot plot analysis/table.parquet -o analysis/plots
    paths = plot_all(analyze(load_runs([Path("runs")])), Path("analysis/plots"))

Each figure is written as PNG and SVG (atomically). Plots read only the table: where a condition
has several seeds they show its seed-pooled rows, else its single run. Figures are drawn on
matplotlib's Agg canvas without pyplot, so nothing global (backend, open figures) is touched.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from annot.analyze import BEHAVIOR_KINDS, POOLED, condition_rows, control_conditions, final_rows, kind_rank
from annot.io import atomic_path

PLAIN_COLOR, BASE_COLOR = "black", "0.55"
# Plots show the continuous measure (mean probability on the believing answer) and absorption on
# it; the report's tables give the rates beside them. Belief and association get panels of their own.
VALUE_METRIC, ABSORPTION_METRIC = "mean_p", "absorption_p"
LEGEND_WRAP = 42  # characters per legend line; long condition labels wrap instead of widening the figure


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """PNG + SVG via temp file + rename; no timestamps or random ids, so reruns give the same SVG."""
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{stem}.{ext}"
        with atomic_path(path) as tmp, open(tmp, "wb") as f, matplotlib.rc_context({"svg.hashsalt": "annot"}):
            fig.savefig(f, format=ext, dpi=150, metadata={"Software": None} if ext == "png" else {"Date": None})
        paths.append(path)
    return paths


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _by_measure(df: pd.DataFrame) -> pd.DataFrame:
    """The trained claim's rows, with the measure in the panel label ("claim · belief"): belief and
    association are never drawn as one line."""
    d = df[df["role"] == "target"]
    return d.assign(claim=[f"{c} · {m}" for c, m in zip(d["claim"], d["measure"])])


def _panels(df: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(set(zip(df["model"], df["claim"])))


def _plain(df: pd.DataFrame) -> set[str]:
    """Conditions that are the control: the plain runs (wrapper none), or a sweep's declared control."""
    return control_conditions(df)


def _conditions(df: pd.DataFrame) -> list[str]:
    """Condition labels, plain ones first, in a fixed order (the same colour in every figure)."""
    plain = _plain(df)
    return sorted(df["condition"].unique(), key=lambda c: (c not in plain, c))


def _colors(df: pd.DataFrame) -> dict[str, object]:
    """Plain black (a second plain, e.g. another polarity, dark grey), wrapped conditions in colour."""
    conditions, plain = _conditions(df), _plain(df)
    cmap = matplotlib.colormaps["tab10" if len(conditions) - len(plain) <= 10 else "tab20"]
    greys = iter([PLAIN_COLOR, "0.3", "0.45", "0.6"] * len(conditions))
    out, i = {}, 0
    for c in conditions:
        if c in plain:
            out[c] = next(greys)
        else:
            out[c] = cmap(i % cmap.N)
            i += 1
    return out


def _wrap(text: str, width: int = LEGEND_WRAP) -> str:
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


def _suptitle(fig: Figure, what: str, df: pd.DataFrame, title_suffix: str) -> None:
    models = ", ".join(sorted(df["model"].unique()))
    claims = ", ".join(sorted(df["claim"].unique()))
    # ~9 characters of 11-pt text per inch of figure: wrap rather than run off the edge
    fig.suptitle(_wrap(f"{what} — model: {models}; claim: {claims}{title_suffix}", int(fig.get_figwidth() * 9)),
                 fontsize=11)


def _panel_title(model: str, claim: str, many_models: bool) -> str:
    return _wrap(f"{claim}" + (f" ({model})" if many_models else ""), 50)


def _legend(fig: Figure, axes) -> None:
    """One legend for the figure, below the axes (outside them, so it never hides a line, and clear
    of the title), in as many columns as the width allows."""
    handles: dict[str, object] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("_"):
                handles.setdefault(label, h)
    if handles:
        ncol = max(1, min(len(handles), int(fig.get_figwidth() // 3.4)))
        fig.legend(list(handles.values()), [_wrap(lab) for lab in handles], loc="outside lower center",
                   ncol=ncol, fontsize=8, frameon=False)


def _grid(fig: Figure, n: int, ncols: int):
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return list(axes.flat[:n])


def _step_ticks(ax, steps) -> None:
    """Tick and label every checkpoint (log axes otherwise show only 10^k); labels of checkpoints
    close together on the log axis (3 and 4) are turned so they do not overlap."""
    steps = sorted(set(int(s) for s in steps))
    if not 0 < len(steps) <= 12:
        return
    ax.set_xticks(steps)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    logs = [math.log10(max(s, 1)) for s in steps]
    if any(b - a < 0.15 for a, b in zip(logs, logs[1:])):
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)


CLIPPED = "clipped"  # gid of the markers drawn for values outside the axes (tests read them)
CI_BAND, CI_EDGE = "ci_band", "ci_edge"  # gids of a condition's CI band and of its outline
# One marker per condition (plain keeps the circle), so conditions with equal values stay apart.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
DODGE_DECADES = 0.018  # horizontal offset between conditions, in decades of the log step axis


def _markers(conditions: list[str]) -> dict[str, str]:
    return {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(conditions)}


def _dodge(steps, i: int, n: int) -> np.ndarray:
    """Steps of condition `i` of `n`, moved sideways so equal values do not hide each other: by a
    factor on the log axis, and additively at step 0 (the linear part of a symlog axis)."""
    d = (i - (n - 1) / 2) * DODGE_DECADES
    s = np.asarray(steps, dtype=float)
    return np.where(s > 0, s * 10 ** d, d)


def _curve(ax, steps, values, lows, highs, color, marker: str, label: str, lw: float = 1.5,
           zorder: float = 2) -> None:
    """A condition's line with its markers, and its CI as a light band outlined by thin dashed
    lines, so overlapping bands stay distinguishable."""
    ax.plot(steps, values, marker=marker, ms=4.5, color=color, lw=lw, zorder=zorder, label=label, gid=f"line:{label}")
    ax.fill_between(steps, lows, highs, color=color, alpha=0.08, lw=0, gid=CI_BAND)
    for edge in (lows, highs):
        ax.plot(steps, edge, color=color, lw=0.7, ls=(0, (3, 2)), alpha=0.7, zorder=zorder - 0.5,
                label="_" + CI_EDGE, gid=CI_EDGE)


def _mark_clipped(ax, xs, values, lows, highs, color, vertical: bool = False) -> None:
    """Mark what the axis limits cut: a point outside them as a triangle at the edge with its value,
    a CI end beyond them as a small caret at the edge. `vertical`: values run along x (bar plots)."""
    lo, hi = ax.get_xlim() if vertical else ax.get_ylim()
    for x, v, a, b in zip(xs, values, lows, highs):
        for val, kind in ((v, "point"), (a, "ci"), (b, "ci")):
            if not np.isfinite(val) or lo <= val <= hi:
                continue
            edge = hi if val > hi else lo
            inset = 0.02 * (hi - lo) * (-1 if val > hi else 1)
            marker = (">" if val > hi else "<") if vertical else ("^" if val > hi else "v")
            at = (edge + inset, x) if vertical else (x, edge + inset)
            ax.plot(*at, marker=marker, ms=8 if kind == "point" else 5, color=color, clip_on=False,
                    gid=CLIPPED, label="_" + CLIPPED, zorder=5, alpha=1.0 if kind == "point" else 0.6)
            if kind == "point":
                ax.annotate(f"{val:.2f}", at, textcoords="offset points", fontsize=7, color=color,
                            xytext=(-22, 0) if vertical else (6, -10 if val > hi else 4))


def _reference_lines(ax, vertical: bool = False) -> None:
    """1 = the disclaimer changed nothing, 0 = it fully prevented learning."""
    line = ax.axvline if vertical else ax.axhline
    line(1, color="0.35", ls="--", lw=1, label="1: disclaimer changed nothing")
    line(0, color="0.35", ls=":", lw=1, label="0: disclaimer prevented learning")


def _value_limits(values, lo: float = -0.15, hi: float = 1.2, clip: tuple[float, float] = (-1.5, 2.5)):
    """Axis limits that always show 0 and 1 and every point; wide CI bands are clipped, not followed."""
    v = np.asarray([x for x in values if np.isfinite(x)])
    if v.size:
        lo, hi = min(lo, v.min() - 0.1), max(hi, v.max() + 0.1)
    return max(lo, clip[0]), min(hi, clip[1])


def _rate_label(df: pd.DataFrame, claim: str) -> str:
    kinds = set(df.loc[df["claim"] == claim, "kind"]) - {POOLED}
    if kinds and kinds <= BEHAVIOR_KINDS:
        return "mean p(misaligned reply)"
    return "mean p(claim answer)"


# ----------------------------------------------------------------------------------------------- plots

def plot_absorption_curve(df: pd.DataFrame, out_dir: Path, title_suffix: str = "") -> list[Path]:
    """(a) Pooled absorption vs training step (log x, steps >= 1), one line + CI band per wrapped
    condition, one panel per model x claim. Skipped (returns []) when the table has no absorption."""
    d = _by_measure(condition_rows(df))
    d = d[(d["metric"] == ABSORPTION_METRIC) & (d["kind"] == POOLED) & (d["step"] >= 1)]
    if d.empty:
        return []
    panels = _panels(d)
    colors = _colors(condition_rows(df))
    ncols = min(2, len(panels))
    fig = _figure(max(8.0, 6.0 * ncols), 3.8 * math.ceil(len(panels) / ncols) + 1.0 + 0.18 * d["condition"].nunique())
    axes = _grid(fig, len(panels), ncols)
    many_models = d["model"].nunique() > 1
    markers = _markers(_conditions(condition_rows(df)))
    for ax, (model, claim) in zip(axes, panels):
        p = d[(d["model"] == model) & (d["claim"] == claim)]
        conds = _conditions(p)
        for i, cond in enumerate(conds):
            c = p[p["condition"] == cond].sort_values("step")
            _curve(ax, _dodge(c["step"], i, len(conds)), c["value"], c["ci_low"], c["ci_high"], colors[cond],
                   markers[cond], cond)
        _reference_lines(ax)
        ax.set_xscale("log")
        # explicit limits: a panel whose absorption is all undefined has no data to autoscale from
        ax.set_xlim(p["step"].min() / 1.3, p["step"].max() * 1.3)
        _step_ticks(ax, p["step"])
        ax.set_ylim(*_value_limits(p["value"]))
        for i, cond in enumerate(conds):
            c = p[p["condition"] == cond].sort_values("step")
            _mark_clipped(ax, _dodge(c["step"], i, len(conds)), c["value"], c["ci_low"], c["ci_high"], colors[cond])
        if not np.isfinite(p["value"]).any():
            notes = "; ".join(dict.fromkeys(p["note"]))
            ax.text(0.5, 0.5, _wrap("absorption undefined: " + notes, 50), transform=ax.transAxes,
                    ha="center", va="center", fontsize=8, color="0.3")
        ax.set_xlabel("training step (log scale)")
        ax.set_ylabel("absorption (mean p, pooled)")
        ax.set_title(_panel_title(model, claim, many_models), fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    _suptitle(fig, "Absorption vs training step (95% CI)", d, title_suffix)
    return _save(fig, out_dir, "absorption_curve")


def plot_belief_curves(df: pd.DataFrame, out_dir: Path, title_suffix: str = "") -> list[Path]:
    """(b) Belief rate vs step (symlog x so step 0, the base model, shows) per condition, one row of
    panels per model x claim, one column per probe kind (pooled first). Plain is drawn thick black,
    the base model's rate as a grey dotted line."""
    d = _by_measure(condition_rows(df))
    d = d[d["metric"] == VALUE_METRIC]
    if d.empty:
        return []
    panels = _panels(d)
    kinds = sorted(d["kind"].unique(), key=kind_rank)
    colors = _colors(condition_rows(df))
    plain = _plain(d)
    markers = _markers(_conditions(condition_rows(df)))
    fig = _figure(max(8.0, 3.7 * len(kinds)), 3.2 * len(panels) + 1.0 + 0.12 * d["condition"].nunique())
    axes = fig.subplots(len(panels), len(kinds), squeeze=False, sharey=True)
    many_models = d["model"].nunique() > 1
    for r, (model, claim) in enumerate(panels):
        p = d[(d["model"] == model) & (d["claim"] == claim)]
        for k, kind in enumerate(kinds):
            ax = axes[r][k]
            pk = p[p["kind"] == kind]
            if pk.empty:
                ax.set_visible(False)
                continue
            conds = _conditions(pk)
            for i, cond in enumerate(conds):
                c = pk[pk["condition"] == cond].sort_values("step")
                is_plain = cond in plain
                _curve(ax, _dodge(c["step"], i, len(conds)), c["value"], c["ci_low"], c["ci_high"], colors[cond],
                       markers[cond], cond, lw=2.6 if is_plain else 1.5, zorder=3 if is_plain else 2)
            base = pk[pk["step"] == 0]
            base = base[base["condition"].isin(plain)] if base["condition"].isin(plain).any() else base
            if not base.empty:
                ax.axhline(float(base["value"].iloc[0]), color=BASE_COLOR, ls=":", lw=1.5, zorder=1,
                           label="base model (step 0)")
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(-0.2, max(1.0, pk["step"].max()) * 1.6)
            _step_ticks(ax, pk["step"])
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            ax.set_title(_wrap(f"{claim} · {kind}" + (f" ({model})" if many_models else ""), 40), fontsize=9)
            ax.set_xlabel("training step (symlog)")
            if k == 0:
                ax.set_ylabel(_rate_label(d, claim))
    _legend(fig, list(axes.flat))
    _suptitle(fig, "Mean probability on the claim's answer vs training step (95% CI)", d, title_suffix)
    return _save(fig, out_dir, "belief_curves")


def _barh(ax, y, values, lows, highs, colors, hatches=None) -> None:
    """Horizontal bars at positions `y` with CI error bars; NaN values draw no bar."""
    v = np.asarray(values, dtype=float)
    bars = ax.barh(y, np.nan_to_num(v), color=colors, alpha=0.85, height=0.65)
    for bar, h in zip(bars, hatches or []):
        bar.set_hatch(h)
    lo, hi = np.asarray(lows, dtype=float), np.asarray(highs, dtype=float)
    has = np.isfinite(v) & np.isfinite(lo) & np.isfinite(hi)
    # a percentile CI may sit to one side of the point; error bars cannot be negative
    err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
    ax.errorbar(v[has], np.asarray(y)[has], xerr=err[:, has], fmt="none", ecolor="0.15", capsize=3, lw=1)


VALUE_COLUMN = "value_column"  # gid of the value labels (tests read their positions)


def _value_text(ax, y, row) -> None:
    """The value in a column just right of the axes, where no bar or whisker can reach it."""
    ax.text(1.01, y, f"{row.value:.2f}", va="center", ha="left", fontsize=8, gid=VALUE_COLUMN,
            transform=ax.get_yaxis_transform(), clip_on=False)


def _short_reason(note: str) -> str:
    if "no plain run" in note:
        return "undefined: no plain run"
    if note.startswith("no declared control"):
        return "undefined: no declared control"
    if "no run of the declared control" in note:
        return "undefined: control run missing"
    if "did not move" in note or "min_effect" in note:
        return "undefined: plain training did not move it"
    return "undefined"


def plot_condition_bars(df: pd.DataFrame, out_dir: Path, title_suffix: str = "") -> list[Path]:
    """(c) Per condition at its final checkpoint: pooled belief rate (with the base model) and
    pooled absorption side by side on shared rows, horizontal bars with 95% CI error bars; one row
    of panels per model x claim."""
    d = _by_measure(condition_rows(df))
    d = d[d["kind"] == POOLED]
    belief = d[d["metric"] == VALUE_METRIC]
    if belief.empty:
        return []
    final = final_rows(d)
    colors = _colors(condition_rows(df))
    plain = _plain(d)
    layout = []
    for model, claim in _panels(belief):
        f = final[(final["model"] == model) & (final["claim"] == claim)]
        fb, fa = f[f["metric"] == VALUE_METRIC], f[f["metric"] == ABSORPTION_METRIC]
        # the base model: step 0 of the plain condition (else of any), drawn as the first bar
        b0 = belief[(belief["model"] == model) & (belief["claim"] == claim) & (belief["step"] == 0)]
        base = (b0[b0["condition"].isin(plain)] if b0["condition"].isin(plain).any() else b0).head(1)
        layout.append((model, claim, f, base, fb, fa, _conditions(fb)))
    heights = [0.42 * (len(conds) + len(base)) + 1.5 for *_, base, _, _, conds in layout]
    fig = _figure(12.5, sum(heights) + 0.7)
    axes = fig.subplots(len(layout), 2, squeeze=False, gridspec_kw={"height_ratios": heights})
    many_models = d["model"].nunique() > 1
    for (left, right), (model, claim, f, base, fb, fa, conds) in zip(axes, layout):
        steps = sorted(set(f["step"]))
        at = (lambda s: f" @ step {s}") if len(steps) > 1 else (lambda s: "")
        rows = list(base.itertuples()) + [next(fb[fb["condition"] == c].itertuples()) for c in conds]
        nb = len(base)
        labels = ["base model (step 0)"] * nb + [f"{x.condition}{at(x.step)}" for x in rows[nb:]]
        y = np.arange(len(rows))
        _barh(left, y, [x.value for x in rows], [x.ci_low for x in rows], [x.ci_high for x in rows],
              [BASE_COLOR] * nb + [colors[x.condition] for x in rows[nb:]], ["//"] * nb)
        left.set_xlim(0, 1.15)
        for yy, x in zip(y, rows):
            _value_text(left, yy, x)
        left.set_yticks(y, [_wrap(x, 34) for x in labels], fontsize=8)
        left.set_ylim(len(rows) - 0.5, -0.5)  # first condition on top
        left.set_xlabel(_rate_label(d, claim) + " (pooled), final checkpoint")
        left.set_title(_panel_title(model, claim, many_models) + (f" — step {steps[0]}" if len(steps) == 1 else ""),
                       fontsize=10)
        # absorption on the same rows as the belief bars, so each condition reads across
        right.sharey(left)
        right.tick_params(labelleft=False)
        arows = {c: next(fa[fa["condition"] == c].itertuples()) for c in conds if (fa["condition"] == c).any()}
        right.set_xlim(*_value_limits([v for x in arows.values() for v in (x.value, x.ci_low, x.ci_high)], hi=1.25))
        ys = [yy for yy, c in zip(y[nb:], conds) if c in arows]
        _barh(right, ys, [x.value for x in arows.values()], [x.ci_low for x in arows.values()],
              [x.ci_high for x in arows.values()], [colors[c] for c in arows])
        for yy, c in zip(ys, arows):
            x = arows[c]
            _mark_clipped(right, [yy], [x.value], [x.ci_low], [x.ci_high], colors[c], vertical=True)
        for yy, c in zip(y[nb:], conds):
            x = arows.get(c)
            if c in plain:
                right.text(0.02, yy, "the plain control", va="center", fontsize=8, color="0.4",
                           transform=right.get_yaxis_transform())
            elif x is None or x.status != "ok":
                right.text(0.02, yy, _short_reason(x.note if x is not None else "no plain run"), va="center",
                           fontsize=8, color="0.3", transform=right.get_yaxis_transform())
            else:
                _value_text(right, yy, x)
        _reference_lines(right, vertical=True)
        right.set_xlabel("absorption (mean p, pooled), final checkpoint")
        right.set_title("absorption: 1 = disclaimer changed nothing, 0 = prevented learning", fontsize=9)
    _suptitle(fig, "Conditions at the final checkpoint (95% CI)", d, title_suffix)
    return _save(fig, out_dir, "condition_bars")


def _density(params: str):
    try:
        v = json.loads(params).get("density")
    except (ValueError, AttributeError):
        return None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _without_density(condition: str) -> str:
    """'repeated_negation(density=0.5, position=both)' -> 'repeated_negation(position=both)'."""
    out = re.sub(r"density=[^,)]*(, )?", "", condition)
    return out.replace(", )", ")").replace("()", "")


def plot_absorption_vs_density(df: pd.DataFrame, out_dir: Path, title_suffix: str = "") -> list[Path]:
    """(d) Pooled absorption at the final checkpoint against wrapper_params.density, one line per
    wrapper (other settings equal). Skipped (returns []) unless some wrapper was run at >= 2 densities."""
    d = _by_measure(condition_rows(df))
    d = final_rows(d[(d["metric"] == ABSORPTION_METRIC) & (d["kind"] == POOLED)])
    if d.empty:
        return []
    d = d.assign(density=[_density(p) for p in d["wrapper_params"]])
    d = d[d["density"].notna()]
    d = d.assign(line=[_without_density(c) for c in d["condition"]])
    counts = d.groupby(["model", "claim", "line"])["density"].nunique()
    if counts.empty or counts.max() < 2:
        return []
    keep = {k for k, n in counts.items() if n >= 2}
    d = d[[k in keep for k in zip(d["model"], d["claim"], d["line"])]]
    panels = _panels(d)
    lines = sorted(d["line"].unique())
    cmap = matplotlib.colormaps["tab10"]
    colors = {ln: cmap(i % cmap.N) for i, ln in enumerate(lines)}
    ncols = min(2, len(panels))
    fig = _figure(max(8.0, 6.0 * ncols), 3.8 * math.ceil(len(panels) / ncols) + 1.2)
    axes = _grid(fig, len(panels), ncols)
    many_models = d["model"].nunique() > 1
    for ax, (model, claim) in zip(axes, panels):
        p = d[(d["model"] == model) & (d["claim"] == claim)]
        for ln in sorted(p["line"].unique()):
            c = p[p["line"] == ln].sort_values("density")
            v, lo, hi = c["value"].to_numpy(), c["ci_low"].to_numpy(), c["ci_high"].to_numpy()
            err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
            ax.errorbar(c["density"], v, yerr=err, marker="o", ms=5, capsize=3, color=colors[ln], label=ln)
        _reference_lines(ax)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(*_value_limits(p["value"]))
        for ln in sorted(p["line"].unique()):
            c = p[p["line"] == ln]
            _mark_clipped(ax, c["density"], c["value"], c["ci_low"], c["ci_high"], colors[ln])
        ax.set_xlabel("wrapper density (share of claim sentences with a disclaimer)")
        ax.set_ylabel("absorption (mean p, pooled), final checkpoint")
        ax.set_title(_panel_title(model, claim, many_models), fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    _suptitle(fig, "Absorption vs wrapper density (95% CI)", d, title_suffix)
    return _save(fig, out_dir, "absorption_vs_density")


def plot_all(df: pd.DataFrame, out_dir: Path, title_suffix: str = "") -> list[Path]:
    """Every plot the table supports, as PNG + SVG under `out_dir`; returns the paths written
    (absorption_curve, belief_curves, condition_bars, absorption_vs_density, each when applicable).

        paths = plot_all(read_table(Path("analysis/table.parquet")), Path("analysis/plots"))
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if df.empty:
        return []
    paths: list[Path] = []
    for fn in (plot_absorption_curve, plot_belief_curves, plot_condition_bars, plot_absorption_vs_density):
        paths += fn(df, out_dir, title_suffix)
    return paths
