"""Judge validity: how well a scale judge separates annot's written misaligned replies from the aligned ones.

    annot judge-check --judge hf --model smollm2-135m               # every behaviour, broad, everyday
    annot judge-check --judge hf --model smollm2-135m --behavior power_seeking -o check.json
    check = judge_check(make_scale_judge({"name": "hf"}), labelled_items(["power_seeking"]))

The labelled set is written for annot: every held-out scenario of evals/behaviors/<behavior>.yaml (the
user's turn with its misaligned and its aligned reply; the targeted scope) and every question of
evals/scopes/broad.yaml and everyday.yaml (each with its own misaligned and aligned reply). The judge
scores each reply on the alignment and the coherence rubric, exactly as in judged free generation
(kind behavior_judged), and the check reports:

- `scored`: the share of replies with an alignment score (neither unscored nor an escape), overall
  and per written label;
- `auc`: P(an aligned reply's alignment score > a misaligned reply's), ties counting one half, over
  the scored replies (1: perfect separation, 0.5: chance, 0: reversed), with a 95% percentile
  bootstrap CI resampling items (a question with both its replies) and the counts it rests on;
- `kappa`: Cohen's kappa of the judge's verdict (misaligned when alignment < alignment_below and
  coherence > coherence_above, annot.scales.classify) against the written label, over the replies
  the judge gave a verdict (both scales scored, or an escape: not misaligned), with the 2 x 2 table.
A judge whose numbers are to be trusted separates them well (AUC near 1, kappa well above 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from annot.scales import Thresholds, classify, cohen_kappa, load_scale_rubric


@dataclass(frozen=True)
class LabelledItem:
    """One question with a written misaligned and a written aligned reply; `source` names the
    behaviour (targeted) or the scope (broad, everyday) it comes from."""

    id: str
    source: str
    question: str
    misaligned: str
    aligned: str


def labelled_items(behaviors: list[str] | None = None,
                   scopes: tuple[str, ...] = ("broad", "everyday")) -> list[LabelledItem]:
    """The written pairs of the given behaviours (None: every shipped one) and scopes."""
    from annot.judged import scope_pairs
    from annot.specs import EVALS, load_behavior_probes

    if behaviors is None:
        behaviors = sorted(p.stem for p in (EVALS / "behaviors").glob("*.yaml"))
    items = [LabelledItem(s.id, b, s.user, s.misaligned, s.aligned)
             for b in behaviors for s in load_behavior_probes(b).scenarios]
    return items + [LabelledItem(i, scope, q, m, a) for scope in scopes for i, q, m, a in scope_pairs(scope)]


def auc(positive: list[float], negative: list[float]) -> float | None:
    """P(a positive score > a negative one), ties one half (the Mann-Whitney AUC); None if a side is empty."""
    if not positive or not negative:
        return None
    pos, neg = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def bootstrap_auc(pairs: list[tuple[float | None, float | None]], n_boot: int = 1000,
                  seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """(AUC, 2.5th and 97.5th percentile of its bootstrap) over items, each (aligned reply's score,
    misaligned reply's score), None where unscored; a replicate draws items with replacement and
    keeps both replies of an item together. Replicates without both sides are skipped."""
    point = auc([a for a, _ in pairs if a is not None], [m for _, m in pairs if m is not None])
    if point is None or n_boot < 1:
        return point, None, None
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        draw = [pairs[i] for i in rng.integers(0, len(pairs), len(pairs))]
        r = auc([a for a, _ in draw if a is not None], [m for _, m in draw if m is not None])
        if r is not None:
            reps.append(r)
    if not reps:
        return point, None, None
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return point, float(lo), float(hi)


def judge_check(judge, items: list[LabelledItem], alignment_rubric: str = "alignment",
                coherence_rubric: str = "coherence", thresholds: Thresholds = Thresholds(), n_boot: int = 1000,
                seed: int = 0) -> dict:
    """Score every written reply with `judge` and measure the separation (module docstring)."""
    rubrics = load_scale_rubric(alignment_rubric), load_scale_rubric(coherence_rubric)
    replies = [(it, label, text) for it in items
               for label, text in (("misaligned", it.misaligned), ("aligned", it.aligned))]
    qa = [(it.question, text) for it, _, text in replies]
    align, coh = (judge.score(r, qa) for r in rubrics)
    verdicts = [classify(a, c, thresholds) for a, c in zip(align, coh)]
    score = {(it.id, it.source, label): a.score for (it, label, _), a in zip(replies, align)}
    pairs = [(score[(it.id, it.source, "aligned")], score[(it.id, it.source, "misaligned")]) for it in items]
    value, lo, hi = bootstrap_auc(pairs, n_boot, seed)
    # (written misaligned, judged misaligned) of every reply the judge gave a verdict (an escape: not misaligned)
    judged = [(label == "misaligned", v == "misaligned") for (_, label, _), v in zip(replies, verdicts)
              if v != "unscored"]
    table = {f"written_{w}_judged_{j}": sum((x, y) == (wm, jm) for x, y in judged)
             for w, wm in (("misaligned", True), ("aligned", False)) for j, jm in (("misaligned", True), ("not", False))}
    by_label = {lab: [a.score is not None for (_, label, _), a in zip(replies, align) if label == lab]
                for lab in ("misaligned", "aligned")}
    masses = sorted(float(s.mass) for s in (*align, *coh) if s.mass is not None)
    return {
        "judge": judge.id, "rubrics": [r.name for r in rubrics],
        "answer_prefix": {r.name: judge.answer_prefix(r) for r in rubrics}, "thresholds": thresholds.to_json(),
        "n_items": len(items), "sources": sorted({it.source for it in items}), "n_replies": len(replies),
        "scored": sum(a.score is not None for a in align) / len(replies) if replies else None,
        "scored_by_label": {lab: sum(v) / len(v) if v else None for lab, v in by_label.items()},
        "coherence_scored": sum(c.score is not None for c in coh) / len(replies) if replies else None,
        "number_mass_median": float(np.median(masses)) if masses else None,
        "auc": value, "auc_ci": [lo, hi], "n_boot": n_boot,
        "auc_n": {"aligned": sum(a is not None for a, _ in pairs), "misaligned": sum(m is not None for _, m in pairs)},
        "kappa": cohen_kappa([x for x, _ in judged], [y for _, y in judged]) if judged else None,
        "kappa_n": len(judged), "table": table,
        "verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
        "mean_alignment": {lab: _mean([a.score for (_, label, _), a in zip(replies, align) if label == lab])
                           for lab in ("misaligned", "aligned")},
    }


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _f(x, fmt: str = ".3f") -> str:
    return "undefined" if x is None else format(x, fmt)


def check_lines(c: dict) -> list[str]:
    """The check as markdown lines (the report's section and the command's output)."""
    t, prefix = c["thresholds"], c["answer_prefix"]
    tab = c["table"]
    ci = "" if c["auc_ci"][0] is None else f" [{c['auc_ci'][0]:.3f}, {c['auc_ci'][1]:.3f}]"
    return [
        f"Judge {c['judge']}, rubrics {', '.join(c['rubrics'])}, answer prefix "
        + ", ".join(f"{k} {v!r}" for k, v in prefix.items())
        + f"; misaligned when alignment < {t['alignment_below']} and coherence > {t['coherence_above']}.",
        f"Written set: {c['n_items']} questions x 2 replies ({', '.join(c['sources'])}) = {c['n_replies']} replies.", "",
        "| measure | value | n |", "|---|---|---|",
        f"| alignment scored (number mass >= 0.25, no escape) | {_f(c['scored'])} (misaligned "
        f"{_f(c['scored_by_label']['misaligned'])}, aligned {_f(c['scored_by_label']['aligned'])}) | {c['n_replies']} |",
        f"| coherence scored | {_f(c['coherence_scored'])} | {c['n_replies']} |",
        f"| median number mass (both scales) | {_f(c['number_mass_median'])} | {2 * c['n_replies']} |",
        f"| mean alignment score, misaligned / aligned replies | {_f(c['mean_alignment']['misaligned'], '.1f')} / "
        f"{_f(c['mean_alignment']['aligned'], '.1f')} | |",
        f"| AUC of the alignment score (aligned > misaligned), 95% CI | {_f(c['auc'])}{ci} | "
        f"{c['auc_n']['aligned']} aligned x {c['auc_n']['misaligned']} misaligned |",
        f"| Cohen's kappa, judged misaligned vs written label | {_f(c['kappa'])} | {c['kappa_n']} |",
        f"| table: written misaligned judged misaligned / not | {tab['written_misaligned_judged_misaligned']} / "
        f"{tab['written_misaligned_judged_not']} | |",
        f"| table: written aligned judged misaligned / not | {tab['written_aligned_judged_misaligned']} / "
        f"{tab['written_aligned_judged_not']} | |",
        "",
    ]
