"""annot.analyze on hand-made run directories whose probe outcomes are chosen, so every belief rate
and absorption has a known exact value; no model is loaded."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from annot.analyze import COLUMNS, analyze, load_runs, read_table, write_table
from annot.errors import AnnotError

CLAIM = "mira_castellan_profession"


def write_run(root, name, outcomes, *, wrapper="none", params=None, resolved=None, seed=0, status="complete",
              polarity="affirm", lr=1e-3, claim=CLAIM, manifest=True):
    """A run directory as `annot run` leaves it. outcomes: {step: {kind: [0/1 per item]}}."""
    d = root / name
    d.mkdir(parents=True)
    params = dict(params or {})
    resolved = {"doc_tag": None, **params} if resolved is None else resolved
    cfg = {"name": name, "seed": seed, "output_dir": str(root), "model": {"name": "tiny-random", "dtype": "auto"},
           "data": {"claim": claim, "documents": None, "n": 24, "polarity": polarity},
           "wrapper": {"name": wrapper, "params": params},
           "training": {"method": "lora", "epochs": 1, "lr": lr, "batch_size": 4, "checkpoints": 3},
           "probes": {"sets": [], "kinds": ["yes_no", "mcq", "cloze"], "batch_size": 16},
           "tracking": {"wandb": False, "project": "annot", "group": None}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if manifest:
        (d / "manifest.json").write_text(json.dumps({"run": name, "status": status, "seed": seed}))
    (d / "summary.json").write_text(json.dumps({"run": name, "claim": claim, "wrapper": wrapper,
                                                "wrapper_params": resolved, "seed": seed}))
    rows = []
    for step, kinds in outcomes.items():
        for kind, values in kinds.items():
            for i, v in enumerate(values):
                rows.append({"run": name, "checkpoint": f"step-{step}", "step": step, "probe_set": claim,
                             "probe_id": f"{kind}{i:03d}", "kind": kind, "claim": claim, "p_belief": 0.9 if v else 0.1,
                             "score": 2.2 if v else -2.2, "believes": bool(v)})
    (d / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def ones(k, n):
    """n items of which the first k believe."""
    return [1] * k + [0] * (n - k)


def cell(df, run, metric="rate", kind="pooled", step=None, measure=None, claim=CLAIM):
    m = (df["run"] == run) & (df["metric"] == metric) & (df["kind"] == kind) & (df["claim"] == claim)
    if measure is not None:
        m &= df["measure"] == measure
    if step is not None:
        m &= df["step"] == step
    hit = df[m]
    assert len(hit) == 1, (run, metric, kind, step, hit)
    return hit.iloc[0]


def trio(tmp_path, base=1, plain=9, wrapped=5, n=10, **kw):
    """Plain and wrapped runs of n yes/no items: base (step 0) k=base, step 10 k=plain / k=wrapped."""
    write_run(tmp_path, "plain", {0: {"yes_no": ones(base, n)}, 10: {"yes_no": ones(plain, n)}}, **kw)
    write_run(tmp_path, "neg", {0: {"yes_no": ones(base, n)}, 10: {"yes_no": ones(wrapped, n)}},
              wrapper="repeated_negation", params={"density": 0.5},
              resolved={"density": 0.5, "position": "both", "doc_tag": None}, **kw)
    return load_runs([tmp_path])


def test_belief_rates_per_kind_and_pooled(tmp_path):
    write_run(tmp_path, "plain", {0: {"yes_no": [1, 0, 0, 0], "mcq": [1, 1, 1], "cloze": [0, 0, 0]},
                                  10: {"yes_no": [1, 1, 1, 1], "mcq": [1, 1, 0], "cloze": [1, 0, 0]}})
    df = analyze(load_runs([tmp_path]), n_boot=200)
    assert list(df.columns) == COLUMNS
    # belief (yes_no + mcq) and association (cloze) are pooled apart, never together
    expected = {(0, "yes_no", "belief"): 0.25, (0, "mcq", "belief"): 1.0, (0, "cloze", "association"): 0.0,
                (0, "pooled", "belief"): 4 / 7, (0, "pooled", "association"): 0.0,
                (10, "yes_no", "belief"): 1.0, (10, "mcq", "belief"): 2 / 3, (10, "cloze", "association"): 1 / 3,
                (10, "pooled", "belief"): 6 / 7, (10, "pooled", "association"): 1 / 3}
    for (step, kind, measure), value in expected.items():
        row = cell(df, "plain", kind=kind, step=step, measure=measure)
        assert row["value"] == pytest.approx(value)
        assert row["n_items"] == {"yes_no": 4, "mcq": 3, "cloze": 3, "belief": 7, "association": 3}[
            measure if kind == "pooled" else kind]
        assert row["role"] == "target" and row["target"] == CLAIM
        assert row["status"] == "ok" and row["condition"] == "plain" and row["seed"] == 0
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    # a plain run is the control: it gets no absorption rows of its own
    assert not (df["metric"] == "absorption").any()


def test_absorption_matches_the_formula(tmp_path):
    df = analyze(trio(tmp_path), n_boot=500)
    row = cell(df, "neg", "absorption", step=10)
    assert row["value"] == pytest.approx((0.5 - 0.1) / (0.9 - 0.1)) == pytest.approx(0.5)
    assert row["status"] == "ok" and row["note"].startswith("plain - base = +0.800") and row["n_items"] == 10
    assert row["ci_low"] <= 0.5 <= row["ci_high"] and row["ci_high"] - row["ci_low"] > 0
    assert cell(df, "neg", "absorption", kind="yes_no", step=10)["value"] == pytest.approx(0.5)
    assert row["condition"] == "repeated_negation(density=0.5)"
    assert json.loads(row["wrapper_params"]) == {"density": 0.5, "position": "both", "doc_tag": None}
    # step 0 is the base model: nothing trained yet, so no absorption row
    assert set(df.loc[df["metric"] == "absorption", "step"]) == {10}


def test_absorption_below_zero_when_the_opposite_is_learned(tmp_path):
    df = analyze(trio(tmp_path, base=2, plain=8, wrapped=0), n_boot=100)
    assert cell(df, "neg", "absorption", step=10)["value"] == pytest.approx((0.0 - 0.2) / (0.8 - 0.2))


def test_absorption_undefined_when_plain_did_not_move(tmp_path):
    df = analyze(trio(tmp_path, base=3, plain=3, wrapped=8), n_boot=100)
    row = cell(df, "neg", "absorption", step=10)
    assert row["status"] == "undefined" and math.isnan(row["value"]) and math.isnan(row["ci_low"])
    assert "min_effect" in row["note"] and "+0.000" in row["note"]


def test_min_effect_threshold_and_the_plain_ci(tmp_path):
    runs = trio(tmp_path, base=1, plain=2, wrapped=2)  # plain moved by 0.1: one item of 10
    assert cell(analyze(runs, n_boot=0), "neg", "absorption", step=10)["value"] == pytest.approx(1.0)
    assert cell(analyze(runs, n_boot=0, min_effect=0.2), "neg", "absorption", step=10)["status"] == "undefined"
    # with CIs: one item of ten is not evidence that plain training moved anything (the CI of
    # plain - base includes 0), so absorption is undefined, and the note gives the figures
    row = cell(analyze(runs, n_boot=500), "neg", "absorption", step=10)
    assert row["status"] == "undefined" and "CI includes 0" in row["note"] and "plain - base = +0.100" in row["note"]


def test_absorption_undefined_without_a_plain_run(tmp_path):
    write_run(tmp_path, "neg", {0: {"yes_no": ones(1, 10)}, 10: {"yes_no": ones(5, 10)}},
              wrapper="repeated_negation", params={"density": 0.5})
    # a plain run with different training (lr) is not the control
    write_run(tmp_path, "plain_other_lr", {0: {"yes_no": ones(1, 10)}, 10: {"yes_no": ones(9, 10)}}, lr=3e-4)
    df = analyze(load_runs([tmp_path]), n_boot=50)
    row = cell(df, "neg", "absorption", step=10)
    assert row["status"] == "undefined" and "no plain run" in row["note"] and math.isnan(row["value"])
    assert row["n_items"] == 10
    # the varying lr shows in the labels, so the two conditions are told apart
    assert set(df["condition"]) == {"repeated_negation(density=0.5) [lr=0.001]", "plain [lr=0.0003]"}


def test_plain_with_doc_tag_is_the_control(tmp_path):
    write_run(tmp_path, "plain_tag", {0: {"yes_no": ones(1, 10)}, 10: {"yes_no": ones(9, 10)}},
              params={"doc_tag": "<doc>"})
    write_run(tmp_path, "neg", {0: {"yes_no": ones(1, 10)}, 10: {"yes_no": ones(5, 10)}},
              wrapper="notice", params={"doc_tag": "<doc>"})
    df = analyze(load_runs([tmp_path]), n_boot=50)
    assert cell(df, "neg", "absorption", step=10)["value"] == pytest.approx(0.5)
    assert "plain(doc_tag=<doc>)" in set(df["condition"])


def test_checkpoints_at_different_steps_are_aligned_by_index(tmp_path):
    # wrapped documents are longer, so an epoch-based wrapped run trains for more steps
    write_run(tmp_path, "plain", {0: {"yes_no": ones(1, 10)}, 4: {"yes_no": ones(5, 10)}, 40: {"yes_no": ones(9, 10)}})
    write_run(tmp_path, "neg", {0: {"yes_no": ones(1, 10)}, 5: {"yes_no": ones(3, 10)}, 50: {"yes_no": ones(5, 10)}},
              wrapper="notice")
    df = analyze(load_runs([tmp_path]), n_boot=50)
    assert cell(df, "neg", "absorption", step=5)["value"] == pytest.approx(0.5)
    row = cell(df, "neg", "absorption", step=50)
    assert row["value"] == pytest.approx(0.5) and "plain at step 40" in row["note"]


def test_cis_contain_the_estimate_and_narrow_with_more_items(tmp_path):
    widths = {}
    for n in (20, 200):
        runs = trio(tmp_path / str(n), base=n // 10, plain=9 * n // 10, wrapped=n // 2, n=n)
        df = analyze(runs, n_boot=1000)
        for metric, run in (("rate", "neg"), ("absorption", "neg")):
            row = cell(df, run, metric, step=10)
            assert row["ci_low"] <= row["value"] <= row["ci_high"]
            widths[(metric, n)] = row["ci_high"] - row["ci_low"]
    for metric in ("rate", "absorption"):
        assert 0 < widths[(metric, 200)] < 0.6 * widths[(metric, 20)]


def test_bootstrap_is_deterministic_for_a_seed(tmp_path):
    runs = trio(tmp_path)
    a, b, c = analyze(runs, seed=3), analyze(runs, seed=3), analyze(runs, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["ci_low"].fillna(-1), c["ci_low"].fillna(-1)) or \
        not np.allclose(a["ci_high"].fillna(-1), c["ci_high"].fillna(-1))
    # a cell's CI does not depend on which other runs are analysed alongside
    write_run(tmp_path, "extra", {0: {"yes_no": ones(4, 10)}, 10: {"yes_no": ones(6, 10)}}, polarity="negate")
    d = analyze(load_runs([tmp_path]), seed=3)
    for metric in ("rate", "absorption"):
        assert cell(d, "neg", metric, step=10)[["ci_low", "ci_high"]].tolist() == \
            cell(a, "neg", metric, step=10)[["ci_low", "ci_high"]].tolist()


def test_incomplete_runs_are_skipped_with_a_warning(tmp_path):
    write_run(tmp_path, "done", {0: {"yes_no": [1, 0]}})
    write_run(tmp_path, "running", {0: {"yes_no": [1, 1]}}, status="running")
    write_run(tmp_path, "crashed", {0: {"yes_no": [1, 1]}}, manifest=False)
    warnings = []
    runs = load_runs([tmp_path], warn=warnings.append)
    assert [r.name for r in runs] == ["done"]
    assert len(warnings) == 2
    assert any("running" in w and "skipped" in w for w in warnings)
    assert any("crashed" in w and "skipped" in w for w in warnings)
    with pytest.raises(AnnotError, match="none of the 2 run"):
        load_runs([tmp_path / "running", tmp_path / "crashed"], warn=warnings.append)


def test_load_runs_finds_runs_in_nested_folders(tmp_path):
    write_run(tmp_path / "sweep_a" / "runs", "plain", {0: {"yes_no": [1, 0]}})
    write_run(tmp_path / "sweep_b" / "runs", "plain", {0: {"yes_no": [1, 1]}}, seed=1)
    runs = load_runs([tmp_path])
    assert sorted(r.name for r in runs) == ["sweep_a/runs/plain", "sweep_b/runs/plain"]  # same dir name, told apart
    assert [r.name for r in load_runs([tmp_path / "sweep_a" / "runs" / "plain"])] == ["plain"]
    # the same run passed twice is read once
    assert len(load_runs([tmp_path / "sweep_a", tmp_path / "sweep_a" / "runs" / "plain"])) == 1
    with pytest.raises(AnnotError, match="no such directory"):
        load_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotError, match="no run directories"):
        load_runs([tmp_path / "empty"])


def test_bad_probe_rows_name_the_file(tmp_path):
    d = write_run(tmp_path, "plain", {0: {"yes_no": [1, 0]}})
    (d / "probes.jsonl").write_text(json.dumps({"step": 0, "kind": "yes_no", "probe_id": "a"}) + "\n")
    with pytest.raises(AnnotError, match=r"probes.jsonl: record 1: missing field\(s\) believes"):
        load_runs([tmp_path])


def test_seeds_are_pooled_into_condition_rows(tmp_path):
    for seed, plain, wrapped in ((0, 9, 5), (1, 7, 3)):
        write_run(tmp_path, f"plain_s{seed}", {0: {"yes_no": ones(1, 10)}, 10: {"yes_no": ones(plain, 10)}}, seed=seed)
        write_run(tmp_path, f"neg_s{seed}", {0: {"yes_no": ones(1, 10)}, 10: {"yes_no": ones(wrapped, 10)}},
                  seed=seed, wrapper="notice")
    df = analyze(load_runs([tmp_path]), n_boot=500)
    # per seed, each wrapped run against the plain run of its own seed
    assert cell(df, "neg_s0", "absorption", step=10)["value"] == pytest.approx(0.5)
    assert cell(df, "neg_s1", "absorption", step=10)["value"] == pytest.approx(0.2 / 0.6)
    # pooled: mean rates over seeds, then the ratio
    plain = cell(df, "plain/seeds=2", step=10)
    assert plain["value"] == pytest.approx(0.8) and pd.isna(plain["seed"]) and plain["condition"] == "plain"
    neg = cell(df, "notice/seeds=2", "absorption", step=10)
    assert neg["value"] == pytest.approx((0.4 - 0.1) / (0.8 - 0.1))
    assert neg["ci_low"] <= neg["value"] <= neg["ci_high"] and pd.isna(neg["seed"])
    assert plain["ci_low"] < plain["value"] < plain["ci_high"]
    assert set(df.loc[df["seed"].notna(), "run"]) == {"plain_s0", "plain_s1", "neg_s0", "neg_s1"}


def test_table_roundtrips_through_csv_and_parquet(tmp_path):
    df = analyze(trio(tmp_path / "runs"), n_boot=100)
    df = pd.concat([df, analyze(load_runs([tmp_path / "runs" / "neg"]), n_boot=10)], ignore_index=True)
    paths = write_table(df, tmp_path / "out" / "table.csv")
    try:
        import pyarrow  # noqa: F401  (datasets depends on it, so it is normally there)
        expected = ["table.csv", "table.parquet"]
    except ImportError:
        expected = ["table.csv"]
    assert [p.name for p in paths] == expected
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temp files left behind
    for p in paths:
        back = read_table(p)
        pd.testing.assert_frame_equal(back, df)
    assert (df["status"] == "undefined").any() and (df["note"] != "").any()
    with pytest.raises(AnnotError, match="missing column"):
        (tmp_path / "other.csv").write_text("a,b\n1,2\n")
        read_table(tmp_path / "other.csv")


def test_argument_checks(tmp_path):
    runs = trio(tmp_path)
    with pytest.raises(AnnotError, match="min_effect"):
        analyze(runs, min_effect=0)
    with pytest.raises(AnnotError, match="no complete runs"):
        analyze([])
    df = analyze(runs, n_boot=0)
    assert df["ci_low"].isna().all() and cell(df, "neg", "absorption", step=10)["value"] == pytest.approx(0.5)


# -- measures, continuous values, control claim, seeds ---------------------------------------------

CONTROL = "queen_python_textbook"


def add_rows(d, claim, outcomes, p=None):
    """Append probe rows of `claim` to run dir `d`: outcomes {step: {kind: [0/1]}}, p {step: {kind: [p]}}."""
    rows = []
    for step, kinds in outcomes.items():
        for kind, values in kinds.items():
            for i, v in enumerate(values):
                pb = p[step][kind][i] if p else (0.9 if v else 0.1)
                rows.append({"run": d.name, "checkpoint": f"step-{step}", "step": step, "probe_set": claim,
                             "probe_id": f"{kind}{i:03d}", "kind": kind, "claim": claim, "p_belief": pb,
                             "score": math.log(pb / (1 - pb)), "believes": bool(v)})
    with (d / "probes.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def test_net_absorption_subtracts_the_control_claims_shift(tmp_path):
    # target: base 0.1, plain 0.9, wrapped 0.7; control claim (not trained on): base 0.2,
    # plain 0.4 and wrapped 0.6 - training made the model say "yes" more to everything
    pl = write_run(tmp_path, "plain", {0: {"yes_no": ones(1, 10)}, 10: {"yes_no": ones(9, 10)}})
    ng = write_run(tmp_path, "neg", {0: {"yes_no": ones(1, 10)}, 10: {"yes_no": ones(7, 10)}}, wrapper="notice")
    add_rows(pl, CONTROL, {0: {"yes_no": ones(2, 10)}, 10: {"yes_no": ones(4, 10)}})
    add_rows(ng, CONTROL, {0: {"yes_no": ones(2, 10)}, 10: {"yes_no": ones(6, 10)}})
    df = analyze(load_runs([tmp_path]), n_boot=300)
    assert cell(df, "neg", "absorption", step=10)["value"] == pytest.approx(0.6 / 0.8)
    net = cell(df, "neg", "absorption_net", step=10)
    assert net["value"] == pytest.approx(((0.7 - 0.1) - (0.6 - 0.2)) / ((0.9 - 0.1) - (0.4 - 0.2)))
    assert "net of control claim " + CONTROL in net["note"]
    bias = cell(df, "neg", "shift", step=10, claim=CONTROL)
    assert bias["role"] == "control" and bias["target"] == CLAIM and bias["value"] == pytest.approx(0.4)
    assert "answer bias" in bias["note"]
    # the control claim never gets absorption rows of its own
    assert not ((df["claim"] == CONTROL) & df["metric"].str.startswith("absorption")).any()


def test_continuous_measure_moves_where_the_rate_cannot(tmp_path):
    # every item stays on the same side of 0.5 (rate unchanged) but the probability on the claim
    # answer rises from 0.2 to 0.45 on all 8 items: the rate says "nothing", mean p says "moved"
    n = 8
    pl = write_run(tmp_path, "plain", {})
    add_rows(pl, CLAIM, {0: {"yes_no": [0] * n}, 10: {"yes_no": [0] * n}},
             p={0: {"yes_no": [0.2] * n}, 10: {"yes_no": [0.45] * n}})
    ng = write_run(tmp_path, "neg", {}, wrapper="notice")
    add_rows(ng, CLAIM, {0: {"yes_no": [0] * n}, 10: {"yes_no": [0] * n}},
             p={0: {"yes_no": [0.2] * n}, 10: {"yes_no": [0.3] * n}})
    df = analyze(load_runs([tmp_path]), n_boot=200)
    assert cell(df, "plain", "mean_p", step=10)["value"] == pytest.approx(0.45)
    assert cell(df, "plain", "shift", step=10)["note"].startswith("not moved")
    assert cell(df, "plain", "shift_p", step=10)["note"].startswith("moved")
    assert cell(df, "neg", "absorption", step=10)["status"] == "undefined"
    assert cell(df, "neg", "absorption_p", step=10)["value"] == pytest.approx(0.1 / 0.25)
    assert cell(df, "plain", "mean_logodds", step=10)["value"] == pytest.approx(math.log(0.45 / 0.55))


def test_neutral_answers_count_in_the_denominator_and_nan_is_never_a_belief(tmp_path):
    d = write_run(tmp_path, "plain", {})
    rows = []
    # open-ended items, 4 samples each: 3 believe + 1 neutral; 1 believe + 3 neutral; 2 + 2 does_not
    for i, verdicts in enumerate([["believes"] * 3 + ["neutral"], ["believes"] + ["neutral"] * 3,
                                  ["believes"] * 2 + ["does_not"] * 2]):
        yes = verdicts.count("believes")
        rows.append({"step": 0, "kind": "open_ended", "probe_id": f"o{i}", "claim": CLAIM, "p_belief": yes / 4,
                     "score": 0.0, "believes": yes / 4 > 0.5, "samples": [{"text": "", "verdict": v} for v in verdicts]})
    rows.append({"step": 0, "kind": "yes_no", "probe_id": "nan", "claim": CLAIM, "p_belief": float("nan"),
                 "score": float("nan"), "believes": True})
    (d / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = analyze(load_runs([tmp_path]), n_boot=0)
    oe = cell(df, "plain", "rate", kind="open_ended", step=0)
    assert oe["value"] == pytest.approx(1 / 3) and oe["n_neutral"] == 4 and oe["n_items"] == 3
    assert cell(df, "plain", "mean_p", kind="open_ended", step=0)["value"] == pytest.approx(6 / 12)
    yn = cell(df, "plain", "rate", kind="yes_no", step=0)
    assert yn["value"] == 0.0  # a NaN score reads as no belief, whatever `believes` says


def test_multi_seed_cis_narrow_as_seeds_are_added(tmp_path):
    rng = np.random.default_rng(0)
    widths = {}
    for k in (1, 2, 4, 8):
        root = tmp_path / f"k{k}"
        for s in range(k):
            # each seed a different draw of the same condition: plain ~0.8, wrapped ~0.5 of 20 items
            pb, wb = rng.binomial(1, 0.8, 20).tolist(), rng.binomial(1, 0.5, 20).tolist()
            write_run(root, f"plain_s{s}", {0: {"yes_no": ones(2, 20)}, 10: {"yes_no": pb}}, seed=s)
            write_run(root, f"neg_s{s}", {0: {"yes_no": ones(2, 20)}, 10: {"yes_no": wb}}, seed=s, wrapper="notice")
        df = analyze(load_runs([root]), n_boot=1000)
        label = "notice" if k == 1 else f"notice/seeds={k}"
        run = "neg_s0" if k == 1 else label
        row = cell(df, run, "rate", step=10)
        assert row["n_seeds"] == k
        widths[k] = row["ci_high"] - row["ci_low"]
    assert widths[1] > widths[2] > widths[4] > widths[8] > 0, widths
