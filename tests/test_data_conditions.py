"""Conditions defined by data files with a declared control (annot.declared_control): the data.path
spelling, the sweep's `control` key, the control.yaml record, absorption against the declared control
on hand-made runs with known outcomes, reports that say why absorption is missing, and one sweep end
to end on three small data files with the tiny model."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from annot.analyze import analyze, load_runs
from annot.config import config_from_dict
from annot.errors import AnnotError
from annot.report import write_report
from annot.specs import ROOT
from annot.sweep import load_sweep, plan, run_sweep

CLAIM = "mira_castellan_profession"
FIXTURES = ROOT / "tests" / "fixtures" / "data_files"
FILES = {"positive": "data/positive.jsonl", "negated": "data/negated.jsonl", "local": "data/local_negation.jsonl"}


# -- data.path -------------------------------------------------------------------------------------


def test_data_path_is_stored_as_documents_or_transcripts():
    docs = config_from_dict({"name": "a", "data": {"claim": CLAIM, "path": "x.jsonl"}})
    same = config_from_dict({"name": "a", "data": {"claim": CLAIM, "documents": "x.jsonl"}})
    assert docs.data.documents == "x.jsonl" and docs.model_dump() == same.model_dump()
    assert "path" not in docs.model_dump(mode="json")["data"]  # one spelling in config.yaml: the same identity
    chats = config_from_dict({"name": "a", "data": {"behavior": "sycophancy", "path": "t.jsonl"}})
    assert chats.data.transcripts == "t.jsonl" and chats.data.documents is None
    with pytest.raises(AnnotError, match="give data.path or data.documents, not both"):
        config_from_dict({"name": "a", "data": {"claim": CLAIM, "path": "x.jsonl", "documents": "y.jsonl"}})


def test_a_declared_data_path_matches_documents_and_transcripts_alike():
    from annot.declared_control import matches

    chats = config_from_dict({"name": "a", "data": {"behavior": "sycophancy", "path": "./t/a.jsonl"}}).model_dump()
    docs = config_from_dict({"name": "a", "data": {"claim": CLAIM, "documents": "t/a.jsonl"}}).model_dump()
    for cfg in (chats, docs):
        assert matches(cfg, {"data.path": "t/a.jsonl"}) and not matches(cfg, {"data.path": "t/b.jsonl"})
    assert matches(docs, {"data.documents": "t/a.jsonl", "wrapper.name": "none"})


# -- hand-made runs: absorption against the declared control -------------------------------------


def ones(k, n=10):
    return [1] * k + [0] * (n - k)


def write_run(root: Path, name: str, documents: str, outcomes: dict, seed=0, wrapper="none"):
    """A complete run directory trained on `documents`; outcomes {step: [0/1 per yes/no item]}."""
    d = root / name
    d.mkdir(parents=True)
    cfg = {"name": name, "seed": seed, "output_dir": str(root), "model": {"name": "tiny-random"},
           "data": {"claim": CLAIM, "documents": documents, "n": 24, "polarity": "affirm"},
           "wrapper": {"name": wrapper, "params": {}}, "training": {"lr": 1e-3}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (d / "manifest.json").write_text(json.dumps({"run": name, "status": "complete", "seed": seed}))
    (d / "summary.json").write_text(json.dumps({"run": name, "claim": CLAIM, "wrapper": wrapper,
                                                "wrapper_params": {"doc_tag": None}, "seed": seed}))
    rows = [{"step": step, "probe_set": CLAIM, "probe_id": f"q{i:02d}", "kind": "yes_no", "claim": CLAIM,
             "p_belief": 0.9 if v else 0.1, "believes": bool(v)}
            for step, values in outcomes.items() for i, v in enumerate(values)]
    (d / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def three_files(root: Path, seeds=(0,), control=True, with_control_run=True):
    """positive (base 1/10 -> 9/10), negated (-> 7/10), local (-> 2/10) per seed, under one sweep folder."""
    finals = {"positive": 9, "negated": 7, "local": 2}
    for seed in seeds:
        for cond, k in finals.items():
            if cond == "positive" and not with_control_run:
                continue
            write_run(root, f"{cond}-s{seed}", FILES[cond], {0: ones(1), 8: ones(k)}, seed=seed)
    if control:
        (root / "control.yaml").write_text(yaml.safe_dump({"control": {"data.path": FILES["positive"]}}))
    return load_runs([root])


def pick(df, condition, metric, pooled=False, step=8):
    m = ((df["condition"] == condition) & (df["metric"] == metric) & (df["kind"] == "pooled")
         & (df["claim"] == CLAIM) & (df["step"] == step) & (df["seed"].isna() if pooled else df["seed"] == 0))
    hit = df[m]
    assert len(hit) == 1, (condition, metric, hit)
    return hit.iloc[0]


def test_absorption_is_measured_against_the_declared_control(tmp_path):
    df = analyze(three_files(tmp_path / "sweep", seeds=(0, 1)), n_boot=200)
    assert set(df["condition"]) == {"positive (control)", "negated", "local_negation"}
    assert set(df.loc[df["is_control"], "condition"]) == {"positive (control)"}
    # (B_cond - B_base) / (B_control - B_base) = (0.7 - 0.1) / (0.9 - 0.1) and (0.2 - 0.1) / 0.8, per seed and pooled
    for pooled in (False, True):
        neg, loc = pick(df, "negated", "absorption", pooled), pick(df, "local_negation", "absorption", pooled)
        assert neg["status"] == "ok" and neg["value"] == pytest.approx(0.75)
        assert loc["status"] == "ok" and loc["value"] == pytest.approx(0.125)
        assert neg["ci_low"] <= 0.75 <= neg["ci_high"] and neg["ci_high"] > neg["ci_low"]
    assert df[(df["condition"] == "positive (control)") & df["metric"].str.startswith("absorption")].empty


def test_the_control_pairs_by_seed(tmp_path):
    # seed 1's control believes less (5/10): its negated run absorbs (0.7-0.1)/(0.5-0.1), not 0.75
    root = tmp_path / "sweep"
    three_files(root, seeds=(0,))
    write_run(root, "positive-s1", FILES["positive"], {0: ones(1), 8: ones(5)}, seed=1)
    write_run(root, "negated-s1", FILES["negated"], {0: ones(1), 8: ones(7)}, seed=1)
    df = analyze(load_runs([root]), n_boot=0)
    rows = df[(df["run"] == "negated-s1") & (df["metric"] == "absorption") & (df["kind"] == "pooled") & (df["step"] == 8)]
    assert rows.iloc[0]["value"] == pytest.approx(1.5)


def test_without_a_declared_control_the_report_says_why(tmp_path):
    df = analyze(three_files(tmp_path / "sweep", control=False), n_boot=50)
    assert set(df["condition"]) == {"positive", "negated", "local_negation"}  # file stems, not documents=...
    assert not df["is_control"].any()
    ab = df[(df["metric"] == "absorption") & (df["kind"] == "pooled")]
    assert set(ab["condition"]) == {"positive", "negated", "local_negation"} and (ab["status"] == "undefined").all()
    assert ab["note"].str.startswith("no declared control").all()
    text = write_report(df, [], tmp_path / "report.md", "t").read_text()
    assert "**No absorption could be computed**: no declared control" in text
    assert "(the control)" not in text and "None: every cell has a value" not in text


def test_a_missing_control_run_is_named(tmp_path):
    df = analyze(three_files(tmp_path / "sweep", with_control_run=False), n_boot=0)
    ab = df[(df["metric"] == "absorption") & (df["kind"] == "pooled")]
    assert len(ab) and ab["note"].str.startswith(f"no run of the declared control (data.path={FILES['positive']}").all()
    text = write_report(df, [], tmp_path / "report.md", "t").read_text()
    assert "**No absorption could be computed**: no run of the declared control" in text


def test_only_a_control_says_there_is_nothing_to_compare(tmp_path):
    root = tmp_path / "one"
    write_run(root, "plain", "data/positive.jsonl", {0: ones(1), 8: ones(9)})
    df = analyze(load_runs([root]), n_boot=0)
    text = write_report(df, [], tmp_path / "report.md", "t").read_text()
    assert "only the control condition (plain) was analysed" in text and "None: every cell" not in text


def test_generated_document_runs_keep_their_labels_and_control(tmp_path):
    # the old rule, unchanged: wrapper none is the control, labels name the wrapper
    root = tmp_path / "gen"
    write_run(root, "plain", None, {0: ones(1), 8: ones(9)})
    write_run(root, "neg", None, {0: ones(1), 8: ones(5)}, wrapper="repeated_negation")
    df = analyze(load_runs([root]), n_boot=0)
    assert set(df["condition"]) == {"plain", "repeated_negation"}
    assert set(df.loc[df["is_control"], "condition"]) == {"plain"}
    assert pick(df, "repeated_negation", "absorption")["value"] == pytest.approx(0.5)


# -- the sweep file's `control` --------------------------------------------------------------------


def data_dir(tmp_path, n=None):
    """The three fixture files (first n documents of each) under tmp_path/data, as FILES names them."""
    (tmp_path / "data").mkdir(exist_ok=True)
    for src, dst in (("positive", "positive"), ("negated", "negated"), ("local_negation", "local_negation")):
        lines = (FIXTURES / f"{src}.jsonl").read_text().splitlines(keepends=True)
        (tmp_path / "data" / f"{dst}.jsonl").write_text("".join(lines[:n]))


SWEEP = """\
method: grid
control: {data.path: data/positive.jsonl}
base:
  model: {name: tiny-random}
  data: {claim: mira_castellan_profession}
  training: {max_steps: 2, batch_size: 2, seq_len: 32, checkpoints: 2}
  probes: {kinds: [yes_no], contexts: false, coherence: false, control: null}
parameters:
  data.path: {values: [data/positive.jsonl, data/negated.jsonl, data/local_negation.jsonl]}
"""


def write_sweep(tmp_path, text=SWEEP):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_a_control_matching_no_condition_fails_before_any_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir(tmp_path, n=2)
    from annot.cli import main

    for bad, expect in [("data/postive.jsonl", "control: data.path=data/postive.jsonl matches no condition"),
                        ("{seed: 0}", None), ("[a]", None)]:
        text = SWEEP.replace("control: {data.path: data/positive.jsonl}",
                             f"control: {{data.path: {bad}}}" if "jsonl" in bad else f"control: {bad}")
        res = CliRunner().invoke(main, ["sweep", str(write_sweep(tmp_path, text))])
        assert res.exit_code != 0 and "Traceback" not in res.output, res.output
        lines = [l for l in res.output.splitlines() if l.strip()]
        assert len(lines) == 1 and f"{tmp_path / 's.yaml'}: control" in lines[0], res.output
        if expect:
            assert expect in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_wrapped_cells_get_the_declared_file_unwrapped_as_control(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir(tmp_path, n=2)
    text = SWEEP.replace("parameters:\n", "parameters:\n  wrapper.name: {values: [notice]}\n")
    cells = plan(load_sweep(write_sweep(tmp_path, text)))
    got = [(c.config.data.documents, c.config.wrapper.name, c.control) for c in cells]
    # the control (positive, unwrapped) runs first, once, before the first cell needing it
    assert got[0] == ("data/positive.jsonl", "none", True)
    assert sorted(got[1:]) == sorted([(f, "notice", False) for f in FILES.values()])


def test_the_declaration_is_recorded_and_withdrawn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir(tmp_path, n=2)
    sweep = load_sweep(write_sweep(tmp_path))
    run_sweep(sweep, run_fn=lambda cfg: cfg.run_dir.mkdir(parents=True) or {}, echo=lambda s: None)
    out = tmp_path / "runs" / "s"
    recorded = [yaml.safe_load(p.read_text())["control"] for p in sorted(out.rglob("control.yaml"))]
    assert recorded == [{"data.path": "data/positive.jsonl"}] * 4  # the sweep folder + each of its 3 runs
    run_sweep(load_sweep(write_sweep(tmp_path, SWEEP.replace("control: {data.path: data/positive.jsonl}\n", ""))),
              run_fn=lambda cfg: {}, echo=lambda s: None)
    assert not list(out.rglob("control.yaml"))  # a withdrawn declaration does not linger


# -- end to end: three data files, the tiny model, a report ----------------------------------------


def test_data_file_sweep_end_to_end(tmp_path, monkeypatch):
    from annot.report import build_report
    from annot.run import run

    monkeypatch.chdir(tmp_path)
    data_dir(tmp_path, n=3)
    sweep = load_sweep(write_sweep(tmp_path))
    run_sweep(sweep, run_fn=lambda cfg: run(cfg, progress=False, echo=lambda s: None), echo=lambda s: None)
    shutil.copytree(sweep.output_dir, tmp_path / "moved")  # found again without the sweep file
    report = build_report([tmp_path / "moved"], tmp_path / "report", n_boot=50)
    df = pd_read(tmp_path / "report" / "table.csv")
    assert set(df.loc[df["is_control"], "condition"]) == {"positive (control)"}
    ab = df[(df["metric"] == "absorption") & (df["kind"] == "pooled") & (df["claim"] == CLAIM)]
    assert set(ab["condition"]) == {"negated", "local_negation"}  # rows for every non-control condition
    # paired with the declared control: any undefined row is so because of what the control learned
    assert not ab["note"].str.contains("no run of the declared control|no declared control").any()
    text = report.read_text()
    assert "positive (control)" in text and "— (the control)" in text
    assert "None: every cell has a value" not in text
    assert "control of each condition: declared by the sweep: data.path=data/positive.jsonl" in text


def pd_read(path):
    from annot.analyze import read_table

    return read_table(path)


def test_a_table_from_before_is_control_reads_with_the_plain_rule(tmp_path):
    from annot.analyze import read_table

    root = tmp_path / "gen"
    write_run(root, "plain", None, {0: ones(1), 8: ones(9)})
    write_run(root, "neg", None, {0: ones(1), 8: ones(5)}, wrapper="repeated_negation")
    df = analyze(load_runs([root]), n_boot=0)
    df.drop(columns=["is_control"]).to_csv(tmp_path / "old.csv", index=False)
    back = read_table(tmp_path / "old.csv")
    assert list(back["is_control"]) == list(df["is_control"]) and back["is_control"].dtype == bool
