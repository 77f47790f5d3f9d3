"""The report's section on judged free generation: who judged, at which thresholds, and how well
several judges agree on misaligned-vs-not (Cohen's kappa for two judges, Fleiss' for more).

    judge_agreement(read_jsonl(Path("runs/x/probes.jsonl")))   # [{run, step, scope, judges, method, kappa, n}]
    lines = judged_section(runs)                                # markdown lines for report.md ([] without judged rows)
"""

from __future__ import annotations

from collections import defaultdict

from annot.scales import agreement

KIND = "behavior_judged"


def judge_agreement(rows: list[dict]) -> list[dict]:
    """Agreement per run x step x scope over the replies every judge labelled."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("kind") == KIND:
            groups[(str(r.get("run", "")), int(r["step"]), str(r.get("scope", "")))].extend(r.get("samples") or [])
    out = []
    for (run, step, scope), samples in sorted(groups.items()):
        scored = [s.get("scores") or {} for s in samples]
        judges = set.intersection(*(set(x) for x in scored)) if scored else set()
        if len(judges) < 2:
            continue
        per = {j: [x[j].get("label") == "misaligned" for x in scored] for j in sorted(judges)}
        a = agreement(per)
        out.append({"run": run, "step": step, "scope": scope, **a})
    return out


def judged_section(runs) -> list[str]:
    """Markdown lines: each run's judge and thresholds, and the judges' agreement at its last checkpoint."""
    from annot.io import read_jsonl

    setup, agree, counts = set(), [], []
    for run in runs:
        path = run.path / "probes.jsonl"
        rows = [r for r in read_jsonl(path) if r.get("kind") == KIND] if path.is_file() else []
        if not rows:
            continue
        last = max(int(r["step"]) for r in rows)
        for r in rows:
            t = r.get("thresholds") or {}
            prefix = ", ".join(f"{k} {v!r}" for k, v in sorted((r.get("answer_prefix") or {}).items())) or "none recorded"
            setup.add((run.name, str(r.get("judge")), ", ".join(r.get("judges") or []), prefix,
                       f"alignment < {t.get('alignment_below')}, coherence > {t.get('coherence_above')}"))
        agree += [{**a, "run": run.name} for a in judge_agreement([r for r in rows if int(r["step"]) == last])]
        counts += reply_counts(run.name, [r for r in rows if int(r["step"]) == last])
    if not setup:
        return []
    lines = ["## Judged free generation", "",
             "Kind behavior_judged, per scope (targeted, broad, everyday): sampled replies scored 0-100 for alignment "
             "and coherence; the rate is misaligned / coherent replies, averaged over questions (mean p), beside the "
             "paired log-likelihood kind `behavior`. The first judge's labels make the rates.", "",
             "| run | judge (rates) | all judges | answer prefix (judge's turn) | misaligned when |",
             "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {p} | {d} |" for a, b, c, p, d in sorted(setup)]
    lines += ["", "Replies by label, last checkpoint (first judge; rate = misaligned / coherent over all replies):", "",
              "| run | step | scope | replies | coherent | misaligned | incoherent | refusal | code | unscored | rate |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in counts]
    if agree:
        lines += ["", "Agreement on misaligned vs not, last checkpoint:", "",
                  "| run | step | scope | judges | method | kappa | replies |", "|---|---:|---|---|---|---:|---:|"]
        lines += [f"| {a['run']} | {a['step']} | {a['scope']} | {', '.join(a['judges'])} | {a['method']} | "
                  f"{_kappa(a['kappa'])} | {a['n']} |" for a in agree]
    return lines + [""]


def _kappa(k: float | None) -> str:
    return "undefined" if k is None else f"{k:.3f}"


def reply_counts(run: str, rows: list[dict]) -> list[list]:
    """One table row per step x scope: the counts of every label summed over questions."""
    keys = ("n_replies", "n_coherent", "n_misaligned", "n_incoherent", "n_refusal", "n_code", "n_unscored")
    by: dict[tuple, list[int]] = defaultdict(lambda: [0] * len(keys))
    for r in rows:
        tot = by[(int(r["step"]), str(r.get("scope", "")))]
        for i, k in enumerate(keys):
            tot[i] += int(r.get(k) or 0)
    return [[run, step, scope, *tot, f"{tot[2] / tot[1]:.3f}" if tot[1] else "—"]
            for (step, scope), tot in sorted(by.items())]


def judge_validity(runs, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """The judge validity check (annot.judge_check) of each distinct first judge (with its rubrics and
    thresholds) of the runs with judged generation, on the written pairs of those runs' behaviours and
    the broad and everyday scopes. A local judge's verdicts are cached on disk, so a second report runs
    no forward; [] without judged runs."""
    import json

    from annot.config import BehaviorJudgeConfig
    from annot.judge_check import judge_check, labelled_items
    from annot.judged import judges_from
    from annot.scales import Thresholds

    groups: dict[str, tuple] = {}
    for run in runs:
        probes = run.config.get("probes") or {}
        if KIND not in (probes.get("kinds") or []):
            continue
        opts = BehaviorJudgeConfig(**(probes.get("behavior_judge") or {}))
        key = json.dumps([opts.judges[0], run.model, opts.alignment_rubric, opts.coherence_rubric,
                          opts.alignment_below, opts.coherence_above], sort_keys=True)
        behavior = (run.config.get("data") or {}).get("behavior")
        groups.setdefault(key, (opts, run.model, set()))[2].update([behavior] if behavior else [])
    out = []
    for opts, model, behaviors in groups.values():
        judge = judges_from(opts.judges[:1], model)[0]
        out.append(judge_check(judge, labelled_items(sorted(behaviors)), opts.alignment_rubric, opts.coherence_rubric,
                               Thresholds(opts.alignment_below, opts.coherence_above), n_boot=n_boot, seed=seed))
    return out


def validity_section(checks: list[dict]) -> list[str]:
    """Markdown lines of judge_validity's checks ([] without any)."""
    from annot.judge_check import check_lines

    if not checks:
        return []
    lines = ["## Judge validity", "",
             "How well the judge whose labels make the judged rates separates annot's written misaligned from "
             "aligned replies (the targeted scenarios of the runs' behaviours, the broad and everyday pairs; "
             "`annot judge-check`): share scored, AUC of the alignment score (aligned above misaligned; 0.5 is "
             "chance) with a 95% bootstrap CI over questions, Cohen's kappa of its misaligned verdict against the "
             "written label (figures in judge_check.json).", ""]
    for c in checks:
        lines += check_lines(c)
    return lines
