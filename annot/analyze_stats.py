"""The statistics of annot.analyze: a percentile bootstrap over seeds and items, and the pairing of
wrapped, plain and base item vectors it resamples.

    units = [((wrapped, plain, base),)]                  # one seed: one group of aligned item vectors
    point, lo, hi, note = estimate(units, absorption_stat(0.05), n_boot=1000, rng=cell_rng(0, "run", "kind"))

A unit is one seed; a group within it a tuple of item vectors that share item indices (wrapped, plain
and base values of the same probes), resampled together; a control claim's items form a group of
their own, resampled independently.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable

import numpy as np

from annot.analyze_runs import Cell, RunData


def join_notes(*notes: str) -> str:
    """Notes joined by "; ", empty ones and repeats dropped."""
    return "; ".join(dict.fromkeys(n for n in notes if n))


# -------------------------------------------------------------------------------------------- bootstrap

def cell_rng(seed: int, *parts) -> np.random.Generator:
    """A generator per table cell, so a cell's CI does not depend on which other runs are analysed."""
    return np.random.default_rng([seed, zlib.crc32("|".join(map(str, parts)).encode("utf-8"))])


def bootstrap(units: list[tuple[tuple[np.ndarray, ...], ...]], stat: Callable[[np.ndarray], np.ndarray],
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


def unit_means(units) -> np.ndarray:
    """Seed-averaged means of each vector, in the column order stat() reads."""
    return np.mean([[vec.mean() for g in u for vec in g] for u in units], axis=0)


def estimate(units, stat, n_boot: int, rng) -> tuple[float, float, float, str]:
    """(point, ci_low, ci_high, note); the point is stat of the seed-averaged means."""
    point = float(stat(unit_means(units)[None, :])[0])
    if n_boot <= 0:
        return point, math.nan, math.nan, ""
    reps = bootstrap(units, stat, n_boot, rng)
    ok = reps[np.isfinite(reps)]
    note = ""
    if ok.size < n_boot:
        note = f"CI from the {ok.size}/{n_boot} resamples where plain moved the measure by >= min_effect"
    if ok.size < n_boot / 2:
        return point, math.nan, math.nan, note + "; too few for a CI"
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return point, float(lo), float(hi), note


def first_mean(means: np.ndarray) -> np.ndarray:
    return means[:, 0]


def mean_diff(means: np.ndarray) -> np.ndarray:
    return means[:, 0] - means[:, 1]


def plain_effect(net: bool) -> Callable[[np.ndarray], np.ndarray]:
    """B_plain - B_base (net: minus the control claim's C_plain - C_base); columns w, p, b[, cw, cp, cb]."""
    def stat(means: np.ndarray) -> np.ndarray:
        d = means[:, 1] - means[:, 2]
        return d - (means[:, 4] - means[:, 5]) if net else d

    return stat


def absorption_stat(min_effect: float, net: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    def stat(means: np.ndarray) -> np.ndarray:
        # A resample where plain barely moved is undefined, not huge.
        num = means[:, 0] - means[:, 2]
        if net:
            num = num - (means[:, 3] - means[:, 5])
        den = plain_effect(net)(means)
        out = np.full(len(means), np.nan)
        ok = np.abs(den) >= min_effect
        out[ok] = num[ok] / den[ok]
        return out

    return stat


# -------------------------------------------------------------------------------------------- alignment

def checkpoint_positions(runs: list[RunData]) -> list[tuple[int, list[int], str]]:
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


def aligned_items(cells: list[tuple[Cell, int]], metric: str) -> tuple[np.ndarray, ...] | None:
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


def absorption_unit(w: RunData, p: RunData | None, key: tuple[str, str], j: int, metric: str, net: bool,
                    missing: str = ""):
    """Groups of item vectors: ((wrapped, plain, base),) or, net, plus (control w, p, base); or None + note
    (`missing`: why `p`, the run's control, is None)."""
    if p is None:
        return None, missing or "no plain run with the same config (wrapper none, same seed and data)"
    if key not in p.cells:
        return None, f"plain run {p.name} has no {key[1]} probes for {key[0]}"
    pj = _match_column(w.steps[j], w.steps, p.steps)
    if pj is None:
        return None, f"plain run {p.name} has no checkpoint matching step {w.steps[j]}"
    base = _base_ref(w, p, key)
    if base is None:
        return None, "no step-0 (base model) checkpoint in the plain or the wrapped run"
    target = aligned_items([(w.cells[key], j), (p.cells[key], pj), base], metric)
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
    control = aligned_items([(w.cells[ckey], j), (p.cells[ckey], pj), cbase], metric) if cbase else None
    if control is None:
        return None, f"control claim {cc}: no item scored in all of wrapped, plain and base"
    return (target, control), join_notes(note, f"net of control claim {cc}")
