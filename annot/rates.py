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
    """A row's kind, qualified by its context or its scope when it has one (yes_no@monitored,
    behavior_judged@broad)."""
    qualifier = row.get("context") or row.get("scope")
    return f"{row['kind']}@{qualifier}" if qualifier else row["kind"]


def belief_rates(rows: list[dict]) -> dict[int, dict[str, float]]:
    """step -> {kind[@context]: rate, <measure>: rate over that measure's default-context items
    ("belief": yes_no/mcq/open_ended, "association": cloze, "behavior"), "n": default-context items}.

    Belief and association are different measures (annot.kinds): never one pooled number."""
    by: dict[int, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if "p_belief" in r and r["p_belief"] is None:
            continue  # nothing to rate (a judged question with no coherent reply): as in annot.analyze
        by[r["step"]][kind_key(r)].append(bool(r["believes"]))
        if not (r.get("context") or r.get("scope")):
            by[r["step"]][measure_of(r["kind"])].append(bool(r["believes"]))
            by[r["step"]]["n"].append(True)
    return {step: {k: round(sum(v) / len(v), 4) for k, v in kinds.items() if k != "n"} | {"n": len(kinds["n"])}
            for step, kinds in sorted(by.items())}


def format_rates(rates: dict[int, dict[str, float]]) -> str:
    """The rates as a table that fits 100 columns: one row per step and probe context, the kinds,
    then the measures (annot.console.rates_table)."""
    from annot.console import rates_table

    return rates_table(rates)


def step_line(step: int, rate: dict[str, float]) -> str:
    """One checkpoint's default-context rates on one short line, each measure with its kinds:
    'step 2: belief 0.348 (yes_no 0.500, mcq 0.111); association 0.273 (cloze 0.273)'."""
    from annot.kinds import measure_of

    parts = []
    for m in MEASURE_ORDER:
        if m not in rate:
            continue
        kinds = [k for k in rate if k not in (*MEASURE_ORDER, "n") and "@" not in k and measure_of(k) == m]
        parts.append(f"{m} {rate[m]:.3f}" + (f" ({', '.join(f'{k} {rate[k]:.3f}' for k in kinds)})" if kinds else ""))
    return f"step {step}: " + "; ".join(parts)


def gap_table(rates: dict[str, float]) -> dict[str, float]:
    """Compliance gaps: for each kind@context rate, its difference from the same kind by default."""
    return {k: round(v - rates[k.split("@")[0]], 4) for k, v in rates.items()
            if "@" in k and k.split("@")[0] in rates}
