"""Belief rates over probe rows, and the console table `annot probe` and `annot run` print.

    rates = belief_rates(rows)        # step -> {"yes_no": 0.5, "yes_no@monitored": 0.43, "belief": 0.29, ..., "n": 39}
    print(format_rates(rates))

Rates here are quick per-step summaries of one run; absorption, confidence intervals and the tidy
table across runs are annot.analyze's.
"""

from __future__ import annotations

from collections import defaultdict

from annot.kinds import MEASURE_ORDER, measure_of


def kind_key(row: dict) -> str:
    """A row's kind, qualified by its context when it has one (yes_no@monitored)."""
    return f"{row['kind']}@{row['context']}" if row.get("context") else row["kind"]


def belief_rates(rows: list[dict]) -> dict[int, dict[str, float]]:
    """step -> {kind[@context]: rate, <measure>: rate over that measure's default-context items
    ("belief": yes_no/mcq/open_ended, "association": cloze, "behavior"), "n": default-context items}.

    Belief and association are different measures (annot.kinds): never one pooled number."""
    by: dict[int, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["step"]][kind_key(r)].append(bool(r["believes"]))
        if not r.get("context"):
            by[r["step"]][measure_of(r["kind"])].append(bool(r["believes"]))
            by[r["step"]]["n"].append(True)
    return {step: {k: round(sum(v) / len(v), 4) for k, v in kinds.items() if k != "n"} | {"n": len(kinds["n"])}
            for step, kinds in sorted(by.items())}


def format_rates(rates: dict[int, dict[str, float]]) -> str:
    """The rates as a fixed-width table: one line per step, kinds (default context first), then measures."""
    measures = [m for m in MEASURE_ORDER if any(m in r for r in rates.values())]
    kinds = sorted({k for r in rates.values() for k in r if k not in (*MEASURE_ORDER, "n")},
                   key=lambda k: ("@" in k, k))
    width = max([7, *map(len, kinds)])
    cols = kinds + measures
    head = f"{'step':>6}  " + "  ".join(f"{k:>{max(width, len(k))}}" for k in cols) + f"  {'n':>4}"
    lines = [head]
    for step, r in rates.items():
        lines.append(f"{step:>6}  " + "  ".join(f"{r.get(k, float('nan')):>{max(width, len(k))}.3f}" for k in cols)
                     + f"  {r['n']:>4}")
    return "\n".join(lines)


def gap_table(rates: dict[str, float]) -> dict[str, float]:
    """Compliance gaps: for each kind@context rate, its difference from the same kind by default."""
    return {k: round(v - rates[k.split("@")[0]], 4) for k, v in rates.items()
            if "@" in k and k.split("@")[0] in rates}
