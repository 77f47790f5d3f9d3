"""Console tables that fit a terminal: rates per checkpoint with probe contexts as rows.

    print(rates_table(belief_rates(rows)))

     step  context        yes_no     mcq   cloze  belief  association     n
        0  default         0.500   0.000   0.182   0.304        0.182    34
        0  adversarial     0.429   0.111       —       —            —    34

A rate keyed "kind@context" (a probe asked under a context such as an adversarial system prompt)
is shown on that context's row under its kind, not as a column of its own, so the width does not
grow with the number of contexts. The measures (belief, association) are pooled over the default
context only. The full table, every column, is in the run's files (probes.jsonl, summary.json).
"""
from __future__ import annotations

import math

from annot.specs import MEASURE_ORDER

DEFAULT_CONTEXT = "default"
MAX_WIDTH = 100


def _cell(v, width: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"{'—':>{width}}"
    return f"{v:>{width}.3f}"


def rates_table(rates: dict[int, dict[str, float]], max_width: int = MAX_WIDTH) -> str:
    """{step: {kind or kind@context or measure: rate, "n": items}} as a fixed-width table; rows are
    (step, context), columns the probe kinds then the measures. Columns that would pass `max_width`
    are left out and named in a last line (the files hold them)."""
    measures = [m for m in MEASURE_ORDER if any(m in r for r in rates.values())]
    kinds: list[str] = []
    contexts = [DEFAULT_CONTEXT]
    for r in rates.values():
        for key in r:
            if key == "n" or key in MEASURE_ORDER:
                continue
            kind, _, ctx = key.partition("@")
            if kind not in kinds:
                kinds.append(kind)
            if ctx and ctx not in contexts:
                contexts.append(ctx)
    kinds.sort()
    ctx_w = max(len(c) for c in contexts) if len(contexts) > 1 else 0
    head = [f"{'step':>6}"] + ([f"{'context':<{ctx_w}}"] if ctx_w else [])
    # (is a measure, name): a kind and a measure may share a name (behavior), so never key by name alone
    cols = [(False, k) for k in kinds] + [(True, m) for m in measures]
    widths = {c: max(6, len(c[1])) for c in cols}
    used = sum(len(h) + 2 for h in head) + 6  # the n column
    shown, hidden = [], []
    for c in cols:
        if used + widths[c] + 2 <= max_width:
            shown.append(c)
            used += widths[c] + 2
        else:
            hidden.append(c[1])
    lines = ["  ".join(head + [f"{c[1]:>{widths[c]}}" for c in shown] + [f"{'n':>4}"])]
    for step, r in rates.items():
        for ctx in contexts:
            keyed = {(False, k): r.get(k if ctx == DEFAULT_CONTEXT else f"{k}@{ctx}") for k in kinds}
            if ctx != DEFAULT_CONTEXT and all(v is None for v in keyed.values()):
                continue
            vals = {**keyed, **{(True, m): r.get(m) if ctx == DEFAULT_CONTEXT else None for m in measures}}
            row = [f"{step:>6}"] + ([f"{ctx:<{ctx_w}}"] if ctx_w else [])
            lines.append("  ".join(row + [_cell(vals[c], widths[c]) for c in shown] + [f"{r.get('n', 0):>4}"]))
    if hidden:
        lines.append(f"(not shown for width: {', '.join(hidden)}; see the run's summary.json)")
    return "\n".join(lines)
