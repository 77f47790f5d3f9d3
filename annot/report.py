"""A markdown report of one analysis: setup, final-checkpoint tables with CIs, plots, undefined cells.

    annot report analysis/table.parquet --plots analysis/plots -o analysis/report.md
    write_report(df, plot_all(df, Path("analysis/plots")), Path("analysis/report.md"), "Negation sweep")

The report reads only the table (and links the plot files by paths relative to the report), so it
can be regenerated from a saved table at any time.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from annot.analyze import POOLED, condition_rows, final_rows, kind_rank
from annot.io import atomic_write_text

ABSORPTION_MEANING = ("Absorption = (B_wrapped − B_base) / (B_plain − B_base) at the same checkpoint, with plain "
                      "the same run without the disclaimer and base the untrained model (step 0): 1 means the "
                      "disclaimer changed nothing, 0 that it fully prevented learning, < 0 that the model learned "
                      "the opposite.")
MAX_UNDEFINED = 40  # lines in the undefined-cells list; the table holds them all


def _md(text) -> str:
    """A table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_cell(row) -> str:
    """'0.500 [0.300, 0.700]', 'undefined (reason)', or '—' when there is no row."""
    if row is None:
        return "—"
    if row["status"] != "ok":
        return f"undefined ({row['note']})"
    if not math.isfinite(row["value"]):
        return "—"
    out = f"{row['value']:.3f}"
    if math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"]):
        out += f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    return out


def _table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(map(_md, header)) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(map(_md, r)) + " |" for r in rows]
    return "\n".join(lines)


def _plain_conditions(df: pd.DataFrame) -> set[str]:
    rows = df[df["wrapper"] == "none"]
    return {c for c, p in zip(rows["condition"], rows["wrapper_params"]) if set(json.loads(p or "{}")) <= {"doc_tag"}}


def _lookup(df: pd.DataFrame, **eq):
    m = pd.Series(True, index=df.index)
    for k, v in eq.items():
        m &= df[k] == v
    hit = df[m]
    return None if hit.empty else hit.iloc[0]


def _seeds_label(run: str, seed) -> str:
    if pd.isna(seed):
        return run.rsplit("/seeds=", 1)[-1] + " pooled"
    return f"{int(seed)} ({run})"


def _setup_lines(df: pd.DataFrame, setup: dict | None) -> list[str]:
    runs = df[df["seed"].notna()]
    steps = sorted(set(int(s) for s in df["step"]))
    wrappers = sorted(set(df["wrapper"]))
    lines = [
        f"- models: {', '.join(sorted(set(df['model'])))}",
        f"- claims: {', '.join(sorted(set(df['claim'])))}",
        f"- wrappers: {', '.join(wrappers)}; conditions: {', '.join(sorted(set(df['condition'])))}",
        f"- seeds: {', '.join(str(int(s)) for s in sorted(set(runs['seed'])))}",
        f"- checkpoint steps: {', '.join(map(str, steps))}",
        f"- runs: {runs['run'].nunique()}",
    ]
    for k, v in (setup or {}).items():
        lines.append(f"- {k}: {v}")
    lines.append(f"- {ABSORPTION_MEANING}")
    return lines


def write_report(df: pd.DataFrame, plots: list[Path], out: Path, title: str, setup: dict | None = None) -> Path:
    """Write the markdown report to `out` (atomically) and return its path. `setup` adds lines to
    the setup section (e.g. {"bootstrap": "1000 resamples, seed 0", "runs from": "runs/"}).

        write_report(df, plots, Path("analysis/report.md"), "Repeated negation", {"bootstrap": 1000})
    """
    out = Path(out)
    parts = [f"# {title}", ""]
    if df.empty:
        parts += ["No results: the table is empty (no complete runs were analysed).", ""]
        return atomic_write_text(out, "\n".join(parts))
    parts += ["## Setup", "", *_setup_lines(df, setup), ""]

    shown = condition_rows(df)
    final = final_rows(shown)
    plain = _plain_conditions(df)
    cells = sorted(set(zip(final["model"], final["claim"], final["condition"])),
                   key=lambda k: (k[0], k[1], k[2] not in plain, k[2]))

    # Final checkpoint, pooled: one line per condition, preceded by the base model per model x claim.
    rows, seen_base = [], set()
    for model, claim, cond in cells:
        f = final[(final["model"] == model) & (final["claim"] == claim) & (final["condition"] == cond)]
        b = _lookup(f, metric="belief_rate", kind=POOLED)
        if b is None:
            continue
        if (model, claim) not in seen_base:
            seen_base.add((model, claim))
            s0 = shown[(shown["model"] == model) & (shown["claim"] == claim) & (shown["step"] == 0)
                       & (shown["metric"] == "belief_rate") & (shown["kind"] == POOLED)]
            s0 = s0[s0["condition"].isin(plain)] if s0["condition"].isin(plain).any() else s0
            if not s0.empty:
                r0 = s0.iloc[0]
                rows.append([model, claim, "base model (step 0)", "", 0, format_cell(r0), "—", int(r0["n_items"])])
        a = _lookup(f, metric="absorption", kind=POOLED)
        rows.append([model, claim, cond, _seeds_label(b["run"], b["seed"]), int(b["step"]), format_cell(b),
                     format_cell(a) if cond not in plain else "— (the control)", int(b["n_items"])])
    parts += ["## Final checkpoint, pooled probes", "",
              "Belief rate (share of probes siding with the claim; for behaviour probes, preferring the misaligned "
              "reply) and absorption at each condition's last checkpoint, with 95% bootstrap CIs over probe items "
              "(and over seeds where a condition has several).", "",
              _table(["model", "claim", "condition", "seeds", "step", "belief rate [95% CI]",
                      "absorption [95% CI]", "items"], rows, "lllrrllr"), ""]

    # Per probe kind, same checkpoint.
    rows = []
    for model, claim, cond in cells:
        f = final[(final["model"] == model) & (final["claim"] == claim) & (final["condition"] == cond)]
        for kind in sorted(set(f["kind"]) - {POOLED}, key=kind_rank):
            b = _lookup(f, metric="belief_rate", kind=kind)
            a = _lookup(f, metric="absorption", kind=kind)
            if b is None:
                continue
            rows.append([model, claim, cond, kind, int(b["step"]), format_cell(b),
                         "—" if cond in plain else format_cell(a), int(b["n_items"])])
    if rows:
        parts += ["## Per probe kind (final checkpoint)", "",
                  _table(["model", "claim", "condition", "kind", "step", "belief rate [95% CI]",
                          "absorption [95% CI]", "items"], rows, "llllrllr"), ""]

    # Plots: PNGs embedded, SVGs linked, paths relative to the report so the folder can move.
    pngs = [Path(p) for p in plots if Path(p).suffix == ".png"]
    if pngs:
        parts += ["## Plots", ""]
        svgs = {Path(p).with_suffix("").name: Path(p) for p in plots if Path(p).suffix == ".svg"}
        for p in pngs:
            rel = Path(os.path.relpath(p.resolve(), out.resolve().parent)).as_posix()
            line = f"![{p.stem}]({rel})"
            if p.stem in svgs:
                line += f" ([SVG]({Path(os.path.relpath(svgs[p.stem].resolve(), out.resolve().parent)).as_posix()}))"
            parts += [f"**{p.stem.replace('_', ' ')}**", "", line, ""]

    # Undefined cells, one line per run x kind x reason, steps collapsed.
    und = df[df["status"] != "ok"]
    parts += ["## Undefined cells", ""]
    if und.empty:
        parts += ["None: every cell has a value.", ""]
    else:
        lines = []
        for (run, kind, metric, note), g in und.groupby(["run", "kind", "metric", "note"], sort=False):
            steps = ", ".join(str(int(s)) for s in sorted(set(g["step"])))
            lines.append(f"- `{run}` {metric} ({kind}) at step {steps}: {note}")
        parts += lines[:MAX_UNDEFINED]
        if len(lines) > MAX_UNDEFINED:
            parts.append(f"- ... and {len(lines) - MAX_UNDEFINED} more (status == 'undefined' in the table)")
        parts.append("")
    return atomic_write_text(out, "\n".join(parts))


def build_report(paths: list[Path], out_dir: Path, title: str | None = None, n_boot: int = 1000,
                 seed: int = 0, setup: dict | None = None) -> Path:
    """analyze -> table (CSV + Parquet) -> plots -> report.md, all under `out_dir`.

        build_report([Path("runs/quickstart")], Path("runs/quickstart/report"))
    """
    from annot.analyze import analyze, load_runs, write_table
    from annot.plot import plot_all

    out_dir = Path(out_dir)
    runs = load_runs([Path(p) for p in paths])
    if not runs:
        from annot.errors import AnnotError

        raise AnnotError(f"{', '.join(map(str, paths))}: no complete runs to report on; run `annot run` or "
                         "`annot sweep` first")
    df = analyze(runs, n_boot=n_boot, seed=seed)
    write_table(df, out_dir / "table.csv")
    plots = plot_all(df, out_dir / "plots")
    title = title or f"annot report: {', '.join(sorted(set(df['claim'])))}"
    return write_report(df, plots, out_dir / "report.md", title,
                        {"runs from": ", ".join(map(str, paths)), "bootstrap": f"{n_boot} resamples, seed {seed}",
                         **(setup or {})})
