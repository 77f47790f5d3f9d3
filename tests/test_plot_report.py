"""annot.plot and annot.report on a synthetic sweep (hand-made run directories, no model): every
figure is written as a real PNG + SVG, the density plot appears only when density varies, and the
report carries the table's numbers and links the plots."""

import json
import re

import numpy as np
import pytest
import yaml

from annot.analyze import POOLED, analyze, condition_rows, final_rows, load_runs
from annot.plot import plot_all
from annot.report import format_cell, write_report

KINDS = {"yes_no": 14, "mcq": 9, "cloze": 11}  # items per kind, as in evals/<claim>.yaml
STEPS = (0, 3, 12, 42)


def write_run(root, name, claim, wrapper, params, seed, target):
    """A complete run whose belief rises from 0.1 (base) towards `target` along log-spaced steps;
    outcomes drawn once from a seeded generator, so the numbers are fixed."""
    rng = np.random.default_rng([seed, len(name), sum(map(ord, name))])
    d = root / name
    d.mkdir(parents=True)
    cfg = {"name": name, "seed": seed, "output_dir": str(root), "model": {"name": "smollm2-135m", "dtype": "auto"},
           "data": {"claim": claim, "documents": None, "n": 48, "polarity": "affirm"},
           "wrapper": {"name": wrapper, "params": params}, "training": {"method": "lora", "epochs": 2, "lr": 1e-3},
           "probes": {"sets": [], "kinds": list(KINDS), "batch_size": 16}, "tracking": {"wandb": False}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (d / "manifest.json").write_text(json.dumps({"status": "complete"}))
    (d / "summary.json").write_text(json.dumps({"claim": claim, "wrapper_params": {"doc_tag": None, **params}}))
    base = np.random.default_rng(sum(map(ord, claim))).random(sum(KINDS.values())) < 0.1  # same base model
    rows = []
    for step in STEPS:
        p = target * np.log1p(step) / np.log1p(STEPS[-1])
        believes = base | (rng.random(len(base)) < p) if step else base
        ids = [(k, i) for k, n in KINDS.items() for i in range(n)]
        rows += [{"run": name, "checkpoint": f"step-{step}", "step": step, "probe_set": claim, "probe_id": f"{k}{i}",
                  "kind": k, "claim": claim, "p_belief": 0.8 if b else 0.2, "score": 1.386 if b else -1.386,
                  "believes": bool(b)}
                 for (k, i), b in zip(ids, believes)]
    (d / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_sweep(root, densities=(0.25, 0.5, 1.0), seeds=(0, 1), claims=("mira_castellan_profession",)):
    """Plain + repeated_negation at each density + fiction, for every seed and claim."""
    for claim in claims:
        for seed in seeds:
            write_run(root, f"{claim[:4]}-plain-s{seed}", claim, "none", {}, seed, 0.9)
            write_run(root, f"{claim[:4]}-fiction-s{seed}", claim, "fiction", {}, seed, 0.75)
            for dens in densities:
                write_run(root, f"{claim[:4]}-neg{dens}-s{seed}", claim, "repeated_negation", {"density": dens}, seed,
                          0.9 - 0.4 * dens)
    return load_runs([root])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The analysed sweep and its plots (drawn once: rendering is the slow part)."""
    root = tmp_path_factory.mktemp("sweep")
    df = analyze(make_sweep(root / "runs"), n_boot=200)
    return df, plot_all(df, root / "out" / "plots", title_suffix=" (synthetic)"), root


def check_png_svg(paths):
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 5000, p
        if p.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert data.lstrip().startswith(b"<?xml") and b"<svg" in data[:2000]


def test_plot_all_writes_every_figure(sweep):
    _, paths, root = sweep
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{stem}.{ext}" for stem in ("absorption_curve", "belief_curves", "condition_bars",
                                                       "absorption_vs_density") for ext in ("png", "svg"))
    check_png_svg(paths)
    assert all(p.parent == root / "out" / "plots" for p in paths)
    assert not list((root / "out" / "plots").glob(".*"))  # no temp files left
    # the title names the model and the claim (matplotlib keeps each text as a comment in the SVG)
    svg = (root / "out" / "plots" / "belief_curves.svg").read_text()
    assert "smollm2-135m" in svg and "mira_castellan_profession" in svg


def test_density_plot_skipped_when_density_does_not_vary(tmp_path):
    df = analyze(make_sweep(tmp_path / "runs", densities=(0.5,), seeds=(0,)), n_boot=50)
    paths = plot_all(df, tmp_path / "plots")
    assert {p.stem for p in paths} == {"absorption_curve", "belief_curves", "condition_bars"}
    assert not (tmp_path / "plots" / "absorption_vs_density.png").exists()
    check_png_svg(paths)


def test_plots_of_plain_runs_only_skip_absorption(tmp_path):
    write_run(tmp_path / "runs", "plain", "mira_castellan_profession", "none", {}, 0, 0.9)
    paths = plot_all(analyze(load_runs([tmp_path / "runs"]), n_boot=20), tmp_path / "plots")
    assert {p.stem for p in paths} == {"belief_curves", "condition_bars"}
    check_png_svg(paths)


def test_report_has_the_numbers_and_links_the_plots(sweep):
    df, plots, root = sweep
    out = write_report(df, plots, root / "out" / "report.md", "Synthetic sweep",
                       setup={"bootstrap": "200 resamples, seed 0"})
    text = out.read_text()
    assert text.startswith("# Synthetic sweep\n")
    assert "- bootstrap: 200 resamples, seed 0" in text and "Absorption = (B_wrapped" in text
    assert "- seeds: 0, 1" in text and "- runs: 10" in text and "- checkpoint steps: 0, 3, 12, 42" in text
    final = final_rows(condition_rows(df))
    pooled = final[(final["kind"] == POOLED) & final["metric"].isin(["rate", "mean_p", "absorption", "absorption_p"])]
    # 5 conditions x 2 measures x (rate, mean p) + 4 wrapped conditions x 2 measures x 2 absorptions
    assert len(pooled) == 5 * 2 * 2 + 4 * 2 * 2
    assert set(pooled["measure"]) == {"belief", "association"}
    for _, row in pooled.iterrows():
        assert re.fullmatch(r"-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]", format_cell(row))
        assert format_cell(row) in text
        assert f"| {row['condition']} |" in text
    assert "## Final checkpoint: belief" in text and "## Final checkpoint: association" in text
    assert "## Headline" in text and "plain training moved it" in text
    # per-kind table
    yes_no = final[(final["kind"] == "yes_no") & (final["metric"] == "rate")]
    assert all(format_cell(r) in text for _, r in yes_no.iterrows())
    assert "| base model (step 0) |" in text
    for stem in ("absorption_curve", "belief_curves", "condition_bars", "absorption_vs_density"):
        assert f"![{stem}](plots/{stem}.png)" in text and f"([SVG](plots/{stem}.svg))" in text
    # these synthetic runs probed no control claim, so the net absorption is undefined, and says why
    assert "## Undefined cells" in text and "no control claim probed" in text


def test_report_lists_undefined_cells(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "plain", "mira_castellan_profession", "none", {}, 0, 0.9)
    write_run(root, "lonely", "vesuvius_2015_eruption", "notice", {}, 0, 0.5)  # no plain run for this claim
    df = analyze(load_runs([root]), n_boot=50)
    out = write_report(df, [], tmp_path / "report.md", "Undefined")
    text = out.read_text()
    assert "| lonely |" not in text and "| notice |" in text and "| undefined |" in text  # in the results table
    assert ("- `lonely` vesuvius_2015_eruption absorption (belief, pooled) at step 3, 12, 42: no plain run"
            in text)
    assert "## Plots" not in text
    assert format_cell(None) == "—"


def test_out_of_range_points_and_cis_are_marked_not_hidden(sweep, tmp_path, monkeypatch):
    """A point above the y-limit (2.75 with the axis capped at 2.5) is drawn as a marker at the edge
    with its value; a CI end below the axis gets a caret. Checked on the plotting data, not pixels."""
    import annot.plot as plot

    df = sweep[0].copy()
    sel = ((df["metric"] == plot.ABSORPTION_METRIC) & (df["kind"] == POOLED) & (df["measure"] == "belief")
           & (df["role"] == "target") & (df["status"] == "ok") & df["seed"].isna())
    cond = sorted(set(df.loc[sel, "condition"]))[0]
    last = df.loc[sel & (df["condition"] == cond), "step"].max()
    hit = sel & (df["condition"] == cond) & (df["step"] == last)
    df.loc[hit, ["value", "ci_low", "ci_high"]] = [2.75, 2.0, 3.5]
    low = sel & (df["condition"] != cond) & (df["step"] == last)
    df.loc[low, "ci_low"] = -2.0
    figs = {}
    monkeypatch.setattr(plot, "_save", lambda fig, out_dir, stem: figs.setdefault(stem, fig) and [])
    plot.plot_absorption_curve(df, tmp_path)
    plot.plot_condition_bars(df, tmp_path)
    for stem, vertical in (("absorption_curve", False), ("condition_bars", True)):
        axes = [ax for ax in figs[stem].axes if any(a.get_gid() == plot.CLIPPED for a in ax.lines)]
        assert axes, stem
        marks = [ln for ax in axes for ln in ax.lines if ln.get_gid() == plot.CLIPPED]
        lo, hi = axes[0].get_xlim() if vertical else axes[0].get_ylim()
        assert hi < 2.75  # the point lies outside the axis...
        pos = [float(ln.get_xdata()[0] if vertical else ln.get_ydata()[0]) for ln in marks]
        assert any(p > hi - 0.1 * (hi - lo) for p in pos)  # ...and is marked at the top edge
        assert any(p < lo + 0.1 * (hi - lo) for p in pos)  # the CI end below the axis too
        texts = [t.get_text() for ax in axes for t in ax.texts]
        assert "2.75" in texts  # with its value


def test_equal_conditions_stay_visible_and_bands_are_outlined(sweep, tmp_path, monkeypatch):
    """Two conditions with the same values (a wrapper that changed nothing, drawn over plain) are
    both visible: different markers, sideways offsets, and every CI band has its own outline; the
    bar plot's value labels sit in a column right of the axes, clear of bars and whiskers."""
    import annot.plot as plot

    df = sweep[0].copy()
    sel = (df["metric"] == plot.VALUE_METRIC) & (df["role"] == "target") & (df["kind"] == POOLED) & df["seed"].isna()
    conds = sorted(set(df.loc[sel, "condition"]))
    assert len(conds) >= 2
    a, b = conds[:2]
    cols = ["value", "ci_low", "ci_high"]
    key = ["model", "claim", "measure", "step"]
    src = df[sel & (df["condition"] == a)].set_index(key)[cols]
    for i in df.index[sel & (df["condition"] == b)]:
        k = tuple(df.loc[i, key])
        if k in src.index:
            df.loc[i, cols] = src.loc[k].to_numpy()
    figs = {}
    monkeypatch.setattr(plot, "_save", lambda fig, out_dir, stem: figs.setdefault(stem, fig) and [])
    plot.plot_belief_curves(df, tmp_path)
    plot.plot_condition_bars(df, tmp_path)
    ax = figs["belief_curves"].axes[0]
    lines = {ln.get_label(): ln for ln in ax.lines if (ln.get_gid() or "").startswith("line:")}
    la, lb = lines[a], lines[b]
    assert la.get_marker() != lb.get_marker()
    assert list(la.get_ydata()) == list(lb.get_ydata())  # same values...
    xa, xb = np.asarray(la.get_xdata(), float), np.asarray(lb.get_xdata(), float)
    assert np.all(xa != xb)  # ...drawn apart
    n_curves = len(lines)
    assert sum(ln.get_gid() == plot.CI_EDGE for ln in ax.lines) == 2 * n_curves
    assert sum(c.get_gid() == plot.CI_BAND for c in ax.collections) == n_curves
    bars_ax = figs["condition_bars"].axes[0]
    labels = [t for t in bars_ax.texts if t.get_gid() == plot.VALUE_COLUMN]
    assert labels and all(t.get_position()[0] > 1.0 for t in labels)  # axes fraction: right of the axes
