"""The report's behaviour section: both behaviour metrics in each evaluation scope, per condition,
and their absorption against the plain control.

    lines = scope_section(df, runs)     # markdown lines for report.md ([] without behaviour rows)

Scopes (annot.judged): targeted (held-out situations of the trained behaviour), broad (general
questions unrelated to it), everyday (ordinary requests). Metrics, never pooled:
- paired log-likelihood: share of items on which the model prefers the misaligned reply to the
  aligned one (kind `behavior` for targeted, `behavior@broad` / `behavior@everyday`); absorption on
  that rate;
- judged misalignment: misaligned / coherent sampled replies, averaged over questions (kind
  `behavior_judged@<scope>`, the table's mean p, the literature's figure); absorption on it.
Values are the table's (annot.analyze: the last checkpoint, seeds pooled, 95% bootstrap CIs over seeds
and items); the judged replies' label counts are summed from the runs' probes.jsonl.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from annot.markdown import first_row as _pick

SCOPES = ("targeted", "broad", "everyday")
# metric label -> (table value metric, absorption metric)
METRICS = {"paired log-likelihood": ("rate", "absorption"), "judged misalignment": ("mean_p", "absorption_p")}
COUNTS = ("n_replies", "n_coherent", "n_misaligned", "n_incoherent", "n_refusal", "n_code", "n_unscored")


def kind_of(metric: str, scope: str) -> str:
    """The table kind of one metric in one scope."""
    if metric == "paired log-likelihood":
        return "behavior" if scope == "targeted" else f"behavior@{scope}"
    return f"behavior_judged@{scope}"


def judged_counts(runs, run_condition: dict[str, str]) -> dict[tuple[str, str], dict[str, int]]:
    """(condition, scope) -> label counts of the judged replies at each run's last checkpoint, summed
    over the condition's seeds; (base model, scope) from step 0 of the control runs."""
    from annot.io import read_jsonl

    out: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
    for run in runs:
        cond = run_condition.get(run.name)
        path = run.path / "probes.jsonl"
        if cond is None or not path.is_file():
            continue
        rows = [r for r in read_jsonl(path) if r.get("kind") == "behavior_judged"]
        if not rows:
            continue
        last = max(int(r["step"]) for r in rows)
        for r in rows:
            if int(r["step"]) == last:
                tot = out[(cond, str(r.get("scope")))]
                for k in COUNTS:
                    tot[k] += int(r.get(k) or 0)
    return dict(out)


def _cell(row) -> str:
    from annot.markdown import format_cell

    return format_cell(row)


def _why_missing(counts: dict[str, int] | None) -> str:
    """A judged cell with no value: why (every reply incoherent, refused or unscored)."""
    if not counts or not counts.get("n_replies"):
        return "— (not judged)"
    return (f"undefined (no coherent reply to rate: {counts['n_unscored']} unscored, {counts['n_incoherent']} "
            f"incoherent, {counts['n_refusal'] + counts['n_code']} refused/code of {counts['n_replies']})")


def scope_section(df: pd.DataFrame, runs) -> list[str]:
    """Markdown lines: values per scope x condition x metric, absorption per scope x metric, judged counts."""
    from annot.analyze import condition_rows, control_conditions, final_rows
    from annot.markdown import md_table as _table

    if df.empty:
        return []
    beh = df[(df["role"] == "target") & (df["measure"] == "behavior")]
    kinds = {kind_of(m, s) for m in METRICS for s in SCOPES}
    if not (set(beh["kind"]) & (kinds - {"behavior"})):
        return []  # no scoped behaviour rows (runs from before the scopes, or claim runs)
    shown = condition_rows(beh)
    final = final_rows(shown)
    plain = control_conditions(df)
    conds = sorted(set(final["condition"]), key=lambda c: (c not in plain, c))
    run_condition = {r: c for r, c in zip(df.loc[df["seed"].notna(), "run"], df.loc[df["seed"].notna(), "condition"])}
    counts = judged_counts(runs, run_condition)
    base_counts = _base_counts(runs, run_condition, plain)
    seeds = {c: int(final.loc[final["condition"] == c, "n_seeds"].max()) for c in conds}
    samples = _samples(runs)

    # values: rows = scope, columns = metric per condition (the base model first)
    header = ["scope", "metric", "base model (step 0)", *conds, "n (items x samples x seeds)"]
    rows = []
    for scope in SCOPES:
        for metric, (value, _) in METRICS.items():
            kind = kind_of(metric, scope)
            base = shown[(shown["step"] == 0) & (shown["kind"] == kind) & (shown["metric"] == value)
                         & shown["condition"].isin(plain or set(shown["condition"]))]
            b = None if base.empty else base.iloc[0]
            cells = [_cell(b) if b is not None else _missing(metric, base_counts.get(scope))]
            n_items = int(b["n_items"]) if b is not None else 0
            for c in conds:
                r = _pick(final, condition=c, kind=kind, metric=value)
                cells.append(_cell(r) if r is not None else _missing(metric, counts.get((c, scope))))
                n_items = max(n_items, int(r["n_items"]) if r is not None else 0)
            n_seeds = max(seeds.values(), default=1)
            if metric == "judged misalignment":
                if not n_items:  # no rated question anywhere: count the questions from the replies
                    n_items = max((v["n_replies"] for (c, s), v in counts.items() if s == scope), default=0) \
                        // max(1, (samples or 1) * n_seeds)
                n = f"{n_items} x {samples or '?'} x {n_seeds}"
            else:
                n = f"{n_items} x 1 x {n_seeds}"
            rows.append([scope, metric, *cells, n])
    lines = ["## Behaviour per scope", "",
             "Both behaviour metrics in each evaluation scope, never pooled: **paired log-likelihood** = share of "
             "items on which the model prefers the misaligned reply to the aligned one (mean per-token "
             "log-likelihood; targeted: the behaviour's held-out scenarios, broad / everyday: the scope questions' "
             "paired replies); **judged misalignment** = misaligned / coherent sampled replies, averaged over "
             "questions (0-100 alignment and coherence by the judge and thresholds listed under Judged free "
             "generation). Last checkpoint, seeds pooled; 95% bootstrap CIs over seeds and items. n: items (or "
             "questions) x samples per question x seeds.", "",
             _table(header, rows, "ll" + "l" * (len(conds) + 1) + "r"), ""]

    # absorption against the control, per scope and metric
    others = [c for c in conds if c not in plain]
    if others:
        rows = []
        for scope in SCOPES:
            for metric, (_, ab) in METRICS.items():
                kind = kind_of(metric, scope)
                cells = []
                for c in others:
                    r = _pick(final, condition=c, kind=kind, metric=ab)
                    why = _absorption_missing(metric, counts, c, plain, scope)  # no coherent reply: say so
                    cells.append(why if why != "—" or r is None else _cell(r))
                rows.append([scope, metric, *cells])
        lines += ["Behavioural absorption, (B_cond − B_base) / (B_control − B_base) with control = "
                  f"{', '.join(sorted(plain)) or 'none'} (1: the condition changed nothing, 0: it prevented all of "
                  "the control's movement); paired on the rate, judged on the misalignment rate. Undefined where the "
                  "control did not move the metric (the reason follows).", "",
                  _table(["scope", "metric", *others], rows), ""]

    # judged replies by label
    rows = []
    for scope in SCOPES:
        for c in ["base model (step 0)", *conds]:
            v = base_counts.get(scope) if c == "base model (step 0)" else counts.get((c, scope))
            if not v or not v.get("n_replies"):
                continue
            rate = f"{v['n_misaligned'] / v['n_coherent']:.3f}" if v["n_coherent"] else "—"
            rows.append([scope, c, v["n_replies"], v["n_coherent"], v["n_misaligned"], v["n_incoherent"],
                         v["n_refusal"] + v["n_code"], v["n_unscored"], rate])
    if rows:
        lines += ["Judged replies by label, summed over seeds (first judge; misaligned / coherent pooled over all "
                  "replies):", "",
                  _table(["scope", "condition", "replies", "coherent", "misaligned", "incoherent", "refused / code",
                          "unscored", "misaligned / coherent"], rows, "llrrrrrrr"), ""]
    return lines


def _missing(metric: str, counts) -> str:
    return _why_missing(counts) if metric == "judged misalignment" else "—"


def _absorption_missing(metric: str, counts, cond: str, plain: set[str], scope: str) -> str:
    if metric != "judged misalignment":
        return "—"
    for c in [*sorted(plain), cond]:
        v = counts.get((c, scope))
        if not v or not v.get("n_coherent"):
            return f"undefined ({c}: no coherent reply to rate)"
    return "—"


def _samples(runs) -> int | None:
    """Sampled replies per question (probes.behavior_judge.n_samples of the runs; None if they differ)."""
    vals = {int(((r.config.get("probes") or {}).get("behavior_judge") or {}).get("n_samples", 5)) for r in runs
            if "behavior_judged" in ((r.config.get("probes") or {}).get("kinds") or [])}
    return vals.pop() if len(vals) == 1 else None


def _base_counts(runs, run_condition: dict[str, str], plain: set[str]) -> dict[str, dict[str, int]]:
    """scope -> label counts at step 0 (the base model) over the control runs' seeds."""
    from annot.io import read_jsonl

    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
    for run in runs:
        if run_condition.get(run.name) not in plain or not (run.path / "probes.jsonl").is_file():
            continue
        for r in read_jsonl(run.path / "probes.jsonl"):
            if r.get("kind") == "behavior_judged" and int(r["step"]) == 0:
                for k in COUNTS:
                    out[str(r.get("scope"))][k] += int(r.get(k) or 0)
    return dict(out)


__all__ = ["METRICS", "SCOPES", "judged_counts", "kind_of", "scope_section"]
