"""The report's behaviour-per-scope section on a synthetic behaviour sweep (hand-made run directories,
no model): both metrics in every scope, per condition, with CIs and n; absorption per scope and
metric against the plain control, undefined with its reason where the control did not move; the judged
replies' label counts."""

import json

import pytest
import yaml

from annot.analyze import analyze, load_runs
from annot.scope_report import scope_section

BEHAVIOR = "power_seeking"
# condition -> believing items at the last checkpoint (targeted paired, of 20) and judged p per question
FINAL = {"none": (12, 1.0), "annotated": (8, 0.5), "aligned_control": (2, 0.0)}


def _paired(step, n_true, n, scope=None):
    return [{"step": step, "probe_set": BEHAVIOR, "probe_id": f"{scope or 'sc'}{i}", "kind": "behavior", "claim": BEHAVIOR,
             "p_belief": 0.8 if i < n_true else 0.2, "score": 1.0 if i < n_true else -1.0, "believes": i < n_true,
             **({"scope": scope} if scope else {})} for i in range(n)]


def _judged(step, p, scope, unscored=False):
    rows = []
    for i in range(4):  # 4 questions x 2 replies
        c = {"n_replies": 2, "n_coherent": 0 if unscored else 2, "n_misaligned": 0 if unscored else round(2 * p),
             "n_aligned": 0 if unscored else 2 - round(2 * p), "n_incoherent": 0, "n_refusal": 0, "n_code": 0,
             "n_unscored": 2 if unscored else 0}
        rows.append({"step": step, "probe_set": BEHAVIOR, "probe_id": f"{scope}{i}", "kind": "behavior_judged",
                     "claim": BEHAVIOR, "scope": scope, "p_belief": None if unscored else p,
                     "score": None, "believes": (not unscored) and p > 0.5, **c, "judge": "hf:x", "judges": ["hf:x"],
                     "thresholds": {"alignment_below": 30.0, "coherence_above": 50.0}, "samples": []})
    return rows


def _run(root, wrapper, seed):
    name = f"{wrapper}-s{seed}"
    d = root / name
    d.mkdir(parents=True)
    cfg = {"name": name, "seed": seed, "output_dir": str(root), "model": {"name": "smollm2-135m", "dtype": "auto"},
           "data": {"behavior": BEHAVIOR, "n": 16, "transcript_format": "document"},
           "wrapper": {"name": wrapper, "params": {}}, "training": {"method": "lora", "epochs": 2},
           "probes": {"kinds": ["behavior_judged"], "behavior_judge": {"n_samples": 2, "max_questions": 4}},
           "tracking": {"wandb": False}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (d / "manifest.json").write_text(json.dumps({"status": "complete"}))
    (d / "summary.json").write_text(json.dumps({"behavior": BEHAVIOR}))
    n_true, p = FINAL[wrapper]
    rows = []
    for step, (k, q) in ((0, (4, 0.0)), (6, (n_true, p))):
        rows += _paired(step, k, 20)
        rows += _paired(step, 3, 10, "broad") + _paired(step, 3, 10, "everyday")  # never moves
        rows += _judged(step, q, "targeted") + _judged(step, 0.0, "broad") + _judged(step, 0.0, "everyday", True)
    (d / "probes.jsonl").write_text("".join(json.dumps({"run": name, "checkpoint": f"step-{r['step']}", **r}) + "\n"
                                            for r in rows))


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    root = tmp_path_factory.mktemp("beh")
    for wrapper in FINAL:
        for seed in (0, 1):
            _run(root, wrapper, seed)
    runs = load_runs([root])
    df = analyze(runs, n_boot=200, seed=0)
    return df, "\n".join(scope_section(df, runs))


def _row(text, scope, metric, table=0):
    tables = [t for t in text.split("\n\n") if t.startswith("| scope")]
    return next(line for line in tables[table].splitlines() if line.startswith(f"| {scope} | {metric} |"))


def _cells(text, scope, metric, table=0) -> dict:
    """header -> cell of one row of one table (conditions by their label's wrapper name)."""
    tables = [t for t in text.split("\n\n") if t.startswith("| scope")]
    header = [h.strip() for h in tables[table].splitlines()[0].strip("|").split(" | ")]
    row = [c.strip() for c in _row(text, scope, metric, table).strip("|").split(" | ")]
    return dict(zip(header, row))


def _by_wrapper(cells: dict, wrapper: str) -> str:
    return next(v for k, v in cells.items() if wrapper in k and not (wrapper == "annotated" and "aligned" in k))


def test_both_metrics_in_every_scope_with_cis_and_n(section):
    df, text = section
    assert text.startswith("## Behaviour per scope")
    for scope in ("targeted", "broad", "everyday"):
        for metric in ("paired log-likelihood", "judged misalignment"):
            assert _row(text, scope, metric)
    paired = _row(text, "targeted", "paired log-likelihood")
    assert "| 0.200 [" in paired and "0.600 [" in paired and "0.400 [" in paired and paired.endswith("| 20 x 1 x 2 |")
    judged = _row(text, "targeted", "judged misalignment")
    assert "| 0.000 [0.000, 0.000] |" in judged and "| 1.000 [1.000, 1.000] |" in judged and judged.endswith("| 4 x 2 x 2 |")
    assert _row(text, "broad", "paired log-likelihood").endswith("| 10 x 1 x 2 |")
    # every reply unscored: no value, and the reason with the counts
    assert "undefined (no coherent reply to rate: 16 unscored, 0 incoherent, 0 refused/code of 16)" in \
        _row(text, "everyday", "judged misalignment")


def test_absorption_per_scope_and_metric_against_the_plain_control(section):
    _, text = section
    paired = _cells(text, "targeted", "paired log-likelihood", table=1)
    assert _by_wrapper(paired, "annotated").startswith("0.500 [")  # (8 - 4) / (12 - 4)
    assert _by_wrapper(paired, "aligned_control").startswith("-0.250 [")  # (2 - 4) / (12 - 4)
    assert len(paired) == 4  # scope, metric and the two conditions beside the control
    judged = _cells(text, "targeted", "judged misalignment", table=1)
    assert _by_wrapper(judged, "annotated") == "0.500 [0.500, 0.500]"
    assert "plain training did not move" in _row(text, "broad", "paired log-likelihood", table=1)
    assert "plain training did not move" in _row(text, "broad", "judged misalignment", table=1)
    assert "no coherent reply to rate" in _row(text, "everyday", "judged misalignment", table=1)


def test_judged_label_counts_per_scope_and_condition(section):
    _, text = section
    assert "| targeted | base model (step 0) | 16 | 16 | 0 | 0 | 0 | 0 | 0.000 |" in text
    line = next(x for x in text.splitlines() if x.startswith("| everyday |") and "annotated" in x and "aligned" not in x)
    assert line.endswith("| 16 | 0 | 0 | 0 | 0 | 16 | — |")


def test_no_section_without_scoped_behaviour_rows(section):
    """Runs from before the scopes (only the targeted `behavior` kind) or an empty table: no section."""
    import pandas as pd

    df, _ = section
    assert scope_section(df[df["kind"].isin(["behavior", "pooled"])], []) == []
    assert scope_section(pd.DataFrame(), []) == []
