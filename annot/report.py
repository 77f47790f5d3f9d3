"""A markdown report of one analysis: setup, final-checkpoint tables with CIs, plots, undefined cells.

    annot report analysis/table.parquet --plots analysis/plots -o analysis/report.md
    write_report(df, plot_all(df, Path("analysis/plots")), Path("analysis/report.md"), "Negation sweep")

The report reads only the table (and links the plot files by paths relative to the report), so it
can be regenerated from a saved table at any time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from annot.analyze import POOLED, condition_rows, control_conditions, final_rows, kind_rank
from annot.specs import MEASURE_ORDER
from annot.io import atomic_write_text
from annot.markdown import first_row as _lookup, format_cell, md_table as _table  # noqa: F401  (format_cell: public here too)

ABSORPTION_MEANING = ("Absorption = (B_wrapped − B_base) / (B_plain − B_base) at the same checkpoint, with plain "
                      "the same run without the disclaimer and base the untrained model (step 0): 1 means the "
                      "disclaimer changed nothing, 0 that it fully prevented learning, < 0 that the model learned "
                      "the opposite.")
MAX_UNDEFINED = 40  # lines in the undefined-cells list; the table holds them all


def _plain_conditions(df: pd.DataFrame) -> set[str]:
    """The control conditions: plain runs (wrapper none), or the control a sweep declared."""
    return control_conditions(df)


def _no_absorption(df: pd.DataFrame, target: str) -> str:
    """Why no absorption value exists for `target` (one line), or "" when some absorption is defined."""
    rows = df[(df["target"] == target) & (df["claim"] == target)]
    ab = rows[rows["metric"].isin(["absorption", "absorption_p"])]  # the net ones also need a control claim
    if (ab["status"] == "ok").any():
        return ""
    controls = sorted(set(rows.loc[rows["is_control"].astype(bool), "condition"]))
    others = sorted(set(rows["condition"]) - set(controls))
    if not others:
        return (f"only the control condition ({', '.join(controls) or 'none'}) was analysed: there is no other "
                "condition to compare with it")
    # the first clause of each note, without its numbers (those are in Undefined cells)
    reasons = list(dict.fromkeys(str(n).split("; ")[0].split(": ")[0] for n in ab["note"] if n))
    if not reasons:
        return "no condition has a control among the analysed runs"
    more = f" (and {len(reasons) - 3} other reasons; see Undefined cells)" if len(reasons) > 3 else ""
    return "; ".join(reasons[:3]) + more


def _seeds_label(run: str, seed) -> str:
    if pd.isna(seed):
        return run.rsplit("/seeds=", 1)[-1] + " pooled"
    return f"{int(seed)} ({run})"


def _setup_lines(df: pd.DataFrame, setup: dict | None) -> list[str]:
    runs = df[df["seed"].notna()]
    steps = sorted(set(int(s) for s in df["step"]))
    wrappers = sorted(set(df["wrapper"]))
    controls = sorted(set(df.loc[df["role"] == "control", "claim"]))
    lines = [
        f"- models: {', '.join(sorted(set(df['model'])))}",
        f"- trained on (target claims): {', '.join(sorted(set(df['target'])))}",
        f"- control claims (probed, never trained on): {', '.join(controls) or 'none (probes.control: null)'}",
        f"- wrappers: {', '.join(wrappers)}; conditions: {', '.join(sorted(set(df['condition'])))}",
        f"- seeds: {', '.join(str(int(s)) for s in sorted(set(runs['seed'])))}",
        f"- checkpoint steps: {', '.join(map(str, steps))}",
        f"- runs: {runs['run'].nunique()}",
    ]
    for k, v in (setup or {}).items():
        lines.append(f"- {k}: {v}")
    lines += [f"- {ABSORPTION_MEANING}", f"- {NET_MEANING}", f"- {MEASURE_MEANING}"]
    return lines


NET_MEANING = ("Net absorption subtracts the run's answer bias, measured on the control claim C in the same runs: "
               "((B_w − B_base) − (C_w − C_base)) / ((B_p − B_base) − (C_p − C_base)).")
MEASURE_MEANING = ("Belief = what the model answers when asked (yes/no incl. counter-questions, multiple choice, judged "
                   "open answers with neutral ones in the denominator); association = what it completes (cloze). They "
                   "are reported apart, never pooled. Rate = share of items siding with the claim; mean p = mean "
                   "probability on the believing answer (continuous, so it moves where a rate over few items cannot).")
# The reference study's direction (Negation Neglect): documents that repeat "this is false" are
# still absorbed, locally negated ones are learned as negated.
REFERENCE = {"repeated_negation": (">=", 0.5), "local_negation": ("<=", 0.3)}


def _fmt_int(x) -> str:
    return "—" if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else f"{int(round(x)):,}"


def _short(row) -> str:
    """A value with its CI, or 'undefined' (the reason is listed in the undefined-cells section)."""
    if row is None:
        return "—"
    if row["status"] != "ok":
        return "undefined"
    return format_cell(row)


def _moved(shown: pd.DataFrame, target: str, measure: str, plain: set[str]):
    """The plain condition's final pooled shift of `measure` on its target claim (rate and mean_p)."""
    f = final_rows(shown[(shown["target"] == target) & (shown["claim"] == target) & shown["condition"].isin(plain)
                         & (shown["measure"] == measure) & (shown["kind"] == POOLED)])
    return _lookup(f, metric="shift"), _lookup(f, metric="shift_p")


def _excludes_zero(row) -> bool:
    """Plain training moved the measure: the shift row's verdict (|shift| >= min_effect, CI excludes 0)."""
    return row is not None and row["status"] == "ok" and str(row["note"]).startswith("moved")


def _headline(shown: pd.DataFrame, final: pd.DataFrame, plain: set[str]) -> list[str]:
    """Per target claim and measure: did plain training move it, and what the conditions absorbed."""
    lines = []
    for target in sorted(set(final["target"])):
        lines += [f"### {target}", ""]
        why = _no_absorption(shown, target)
        if why:
            lines.append(f"- **No absorption could be computed**: {why}.")
        moved_any = False
        for measure in MEASURE_ORDER:
            sh, shp = _moved(shown, target, measure, plain)
            if sh is None and shp is None:
                continue
            which = [name for name, r in (("rate", sh), ("mean p", shp)) if _excludes_zero(r)]
            desc = f"rate {format_cell(sh)}, mean p {format_cell(shp)}"
            if which:
                moved_any = True
                lines.append(f"- **{measure}**: plain training moved it (plain − base: {desc}; CI excludes 0 and "
                             f"|shift| >= min_effect for {' and '.join(which)}), so absorption on "
                             f"{' and '.join(which)} is defined where the same holds at each checkpoint.")
            else:
                lines.append(f"- **{measure}**: plain training did not move it (plain − base: {desc}; CI includes 0 "
                             "or |shift| < min_effect), so its absorption is undefined: nothing was learned to be "
                             "absorbed.")
                continue
            metric = "absorption_p" if "mean p" in which else "absorption"
            label = "mean p" if metric == "absorption_p" else "rate"
            f = final[(final["target"] == target) & (final["claim"] == target) & (final["measure"] == measure)
                      & (final["kind"] == POOLED)]
            for cond in sorted(set(f["condition"]) - plain):
                a = _lookup(f, metric=metric, condition=cond)
                if a is None:
                    continue
                line = f"  - {cond}: absorption ({label}) {_short(a)}"
                ref = REFERENCE.get(str(a["wrapper"]))
                if ref and a["status"] == "ok":
                    op, bound = ref
                    holds = a["value"] >= bound if op == ">=" else a["value"] <= bound
                    line += (f"; reference direction ({cond} absorption {op} {bound}): "
                             f"{'seen' if holds else 'NOT seen'} at the point estimate")
                lines.append(line)
        if not moved_any and plain:
            lines.append("- Plain training moved neither measure on this claim: no absorption figure is meaningful here.")
        lines.append("")
    return lines


def write_report(df: pd.DataFrame, plots: list[Path], out: Path, title: str, setup: dict | None = None,
                 sections: list[str] = ()) -> Path:
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
    parts += ["## Headline", "",
              "Per trained claim and measure: whether plain training moved it (its shift from the base model, CI "
              "over items and seeds), and, where it did, each condition's absorption at the last checkpoint on the "
              "continuous measure (mean p) when that moved, else on the rate.", "", *_headline(shown, final, plain)]

    # Final checkpoint: per target claim and measure, one line per condition (base model first).
    for measure in MEASURE_ORDER:
        fm = final[(final["measure"] == measure) & (final["kind"] == POOLED) & (final["role"] == "target")]
        if fm.empty:
            continue
        rows = []
        keys = sorted(set(zip(fm["model"], fm["target"], fm["condition"])),
                      key=lambda k: (k[0], k[1], k[2] not in plain, k[2]))
        seen_base = set()
        for model, target, cond in keys:
            f = fm[(fm["model"] == model) & (fm["target"] == target) & (fm["condition"] == cond)]
            r, p = _lookup(f, metric="rate"), _lookup(f, metric="mean_p")
            if r is None:
                continue
            if (model, target) not in seen_base:
                seen_base.add((model, target))
                s0 = shown[(shown["model"] == model) & (shown["target"] == target) & (shown["claim"] == target)
                           & (shown["step"] == 0) & (shown["measure"] == measure) & (shown["kind"] == POOLED)
                           & shown["condition"].isin(plain or set(shown["condition"]))]  # no control: any run's
                r0, p0 = _lookup(s0, metric="rate"), _lookup(s0, metric="mean_p")
                if r0 is not None:
                    rows.append([model, target, "base model (step 0)", "", 0, "", format_cell(r0), format_cell(p0),
                                 "", "", "", "", int(r0["n_items"]), int(r0["n_neutral"])])
            cs = final[(final["model"] == model) & (final["target"] == target) & (final["condition"] == cond)
                       & (final["role"] == "control") & (final["measure"] == measure) & (final["kind"] == POOLED)]
            ctrl = _lookup(cs, metric="shift_p")
            is_plain = cond in plain
            rows.append([model, target, cond, _seeds_label(r["run"], r["seed"]), int(r["step"]),
                         f"{_fmt_int(r['tokens'])} ({_fmt_int(r['tokens_loss'])})",
                         format_cell(r), format_cell(p),
                         "— (the control)" if is_plain else _short(_lookup(f, metric="absorption")),
                         "— (the control)" if is_plain else _short(_lookup(f, metric="absorption_p")),
                         "— (the control)" if is_plain else _short(_lookup(f, metric="absorption_p_net")),
                         (f"{ctrl['claim']}: {format_cell(ctrl)}" if ctrl is not None else "—"),
                         int(r["n_items"]), int(r["n_neutral"])])
        parts += [f"## Final checkpoint: {measure}", "",
                  f"Pooled {measure} probes of the trained claim at each condition's last checkpoint; 95% bootstrap "
                  "CIs over items (and seeds, where a condition has several). Tokens: trained (with a non-zero loss "
                  "weight), mean over seeds. Control shift: the control claim's mean p minus base in the same runs "
                  "(the answer bias).", "",
                  _table(["model", "claim", "condition", "seeds", "step", "tokens (loss)", "rate [95% CI]",
                          "mean p [95% CI]", "absorption (rate)", "absorption (mean p)", "net absorption (mean p)",
                          "control shift (mean p)", "items", "neutral"], rows, "lllrrrllllllrr"), ""]

    # Per probe kind, same checkpoint.
    rows = []
    fk = final[(final["role"] == "target") & (final["kind"] != POOLED)]
    for (model, target, cond), f in sorted(fk.groupby(["model", "target", "condition"]),
                                           key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] not in plain, kv[0][2])):
        for kind in sorted(set(f["kind"]), key=kind_rank):
            r, p = _lookup(f, metric="rate", kind=kind), _lookup(f, metric="mean_p", kind=kind)
            if r is None:
                continue
            is_plain = cond in plain
            rows.append([model, target, cond, r["measure"], kind, int(r["step"]), format_cell(r), format_cell(p),
                         "—" if is_plain else _short(_lookup(f, metric="absorption", kind=kind)),
                         "—" if is_plain else _short(_lookup(f, metric="absorption_p", kind=kind)),
                         int(r["n_items"])])
    if rows:
        parts += ["## Per probe kind (final checkpoint)", "",
                  _table(["model", "claim", "condition", "measure", "kind", "step", "rate [95% CI]",
                          "mean p [95% CI]", "absorption (rate)", "absorption (mean p)", "items"], rows,
                         "lllllrllllr"), ""]

    # The control claim: the run's answer bias, per condition and measure.
    rows = []
    fc = final[(final["role"] == "control") & (final["kind"] == POOLED)]
    for (model, target, cond, claim, measure), f in sorted(
            fc.groupby(["model", "target", "condition", "claim", "measure"]),
            key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] not in plain, kv[0][2], MEASURE_ORDER.index(kv[0][4])
                            if kv[0][4] in MEASURE_ORDER else 9)):
        sh, shp = _lookup(f, metric="shift"), _lookup(f, metric="shift_p")
        r = _lookup(f, metric="rate")
        if r is None:
            continue
        rows.append([model, target, cond, claim, measure, int(r["step"]), format_cell(r), format_cell(sh),
                     format_cell(shp), int(r["n_items"])])
    if rows:
        parts += ["## Control claim (answer bias)", "",
                  "A claim the runs were not trained on, probed like the target: its shift from the base model is "
                  "what training did to the model's answers in general (e.g. saying yes to everything).", "",
                  _table(["model", "trained on", "condition", "control claim", "measure", "step", "rate [95% CI]",
                          "shift (rate)", "shift (mean p)", "items"], rows, "lllllrlllr"), ""]

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

    parts += list(sections)  # e.g. behaviour per scope; judged free generation: judges, thresholds, agreement

    # Undefined cells, one line per run x measure x kind x reason, steps collapsed.
    und = df[df["status"] != "ok"]
    parts += ["## Undefined cells", ""]
    silent = [t for t in sorted(set(df["target"])) if _no_absorption(df, t)]
    if und.empty and silent:
        parts += [f"No cell is undefined, but no absorption was computed for {', '.join(silent)}: "
                  f"{_no_absorption(df, silent[0])}.", ""]
    elif und.empty:
        parts += ["None: every cell has a value.", ""]
    else:
        lines = []
        for (run, claim, measure, kind, metric, note), g in und.groupby(
                ["run", "claim", "measure", "kind", "metric", "note"], sort=False):
            steps = ", ".join(str(int(s)) for s in sorted(set(g["step"])))
            lines.append(f"- `{run}` {claim} {metric} ({measure}, {kind}) at step {steps}: {note}")
        parts += lines[:MAX_UNDEFINED]
        if len(lines) > MAX_UNDEFINED:
            parts.append(f"- ... and {len(lines) - MAX_UNDEFINED} more (status == 'undefined' in the table)")
        parts.append("")
    return atomic_write_text(out, "\n".join(parts))


def build_report(paths: list[Path], out_dir: Path, title: str | None = None, n_boot: int = 1000,
                 seed: int = 0, setup: dict | None = None, judge_check: bool = False) -> Path:
    """analyze -> table (CSV + Parquet) -> plots -> report.md, all under `out_dir`. With `judge_check`
    (what `annot sweep` does), runs with judged generation also get the judge validity check
    (annot.judged_report.judge_validity; judge_check.json and a report section).

        build_report([Path("runs/quickstart")], Path("runs/quickstart/report"))
    """
    from annot.analyze import analyze, load_runs, write_table
    from annot.judged_report import judge_validity, judged_section, validity_section
    from annot.plot import plot_all
    from annot.scope_report import scope_section

    out_dir = Path(out_dir)
    runs = load_runs([Path(p) for p in paths])
    if not runs:
        from annot.errors import AnnotError

        raise AnnotError(f"{', '.join(map(str, paths))}: no complete runs to report on; run `annot run` or "
                         "`annot sweep` first")
    df = analyze(runs, n_boot=n_boot, seed=seed)
    write_table(df, out_dir / "table.csv")
    plots = plot_all(df, out_dir / "plots")
    title = title or f"annot report: {', '.join(sorted(set(df['target'])))}"
    matches = sorted({str((r.config.get("data") or {}).get("match", "documents")) for r in runs})
    held = {"documents": "the same documents for every condition (wrappers add tokens; tokens trained are shown)",
            "tokens": "the same number of trained tokens (each wrapped run stops at its plain control's step count)"}
    from annot.declared_control import describe

    checks = judge_validity(runs, n_boot=n_boot, seed=seed) if judge_check else []
    if checks:
        import json

        atomic_write_text(out_dir / "judge_check.json", json.dumps(checks, indent=1, sort_keys=True) + "\n")

    declared = sorted({describe(r.declared_control) for r in runs if r.declared_control})
    control = (f"declared by the sweep: {'; '.join(declared)} (wrapper none unless it names one), with otherwise "
               "the same config and seed" if declared else "plain runs (wrapper none) with otherwise the same config")
    return write_report(df, plots, out_dir / "report.md", title,
                        {"runs from": ", ".join(map(str, paths)), "control of each condition": control,
                         "bootstrap": f"{n_boot} resamples, seed {seed}",
                         "held equal across conditions": "; ".join(held.get(m, m) for m in matches),
                         **(setup or {})}, scope_section(df, runs) + judged_section(runs) + validity_section(checks))
