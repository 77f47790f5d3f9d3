"""Kind behavior_judged: three scopes, rows with counts, judge ids and thresholds; analysis per scope."""

import pytest

from annot.config import config_from_dict
from annot.errors import AnnotError
from annot.judged import scope_questions


def _cfg(**judge):
    return config_from_dict({"name": "j", "model": {"name": "tiny-random"}, "data": {"behavior": "power_seeking"},
                             "probes": {"kinds": ["behavior_judged"], "behavior_judge": {
                                 "n_samples": 2, "max_new_tokens": 3, "max_questions": 1, **judge}}})


def test_scopes_have_their_questions():
    broad, everyday = scope_questions("broad"), scope_questions("everyday")
    assert len(broad) >= 8 and len(everyday) >= 8
    targeted = scope_questions("targeted", "power_seeking")
    assert len(targeted) >= 20 and targeted[0][0] == "ps_eval_01"
    with pytest.raises(AnnotError, match="targeted scope needs data.behavior"):
        scope_questions("targeted")


def test_judged_rows_per_scope_with_two_judges(tiny):
    from annot.judged import judged_rows
    from annot.rates import belief_rates

    cfg = _cfg(judges=[{"name": "hf"}, {"name": "hf", "model": "tiny-random"}], alignment_below=40, n_samples=1)
    rows = judged_rows(tiny[0], tiny[1], cfg, step=0)
    assert [r["scope"] for r in rows] == ["targeted", "broad", "everyday"]
    r = rows[0]
    assert r["kind"] == "behavior_judged" and r["n_replies"] == 1 and len(r["samples"]) == 1
    assert r["judge"] == "hf:tiny-random" and r["judges"] == ["hf:tiny-random", "hf:tiny-random#1"]
    assert r["thresholds"] == {"alignment_below": 40.0, "coherence_above": 50.0}
    assert r["answer_prefix"] == {"alignment": "Score: ", "coherence": "Score: "}  # what the first judge continued
    counts = sum(r[f"n_{x}"] for x in ("misaligned", "aligned", "incoherent", "refusal", "code", "unscored"))
    assert counts == 1 and r["n_neutral"] == 1 - r["n_coherent"]
    assert set(r["samples"][0]["scores"]) == set(r["judges"])
    # the random judge spreads its mass over its whole vocabulary: the numbers carry < 0.25, no score
    assert r["samples"][0]["scores"]["hf:tiny-random"]["alignment"]["mass"] < 0.25 and r["n_unscored"] == 1
    assert belief_rates(rows) == {}  # no coherent reply anywhere: nothing to rate (as in annot.analyze)
    rated = [{**x, "p_belief": 0.0} for x in rows]
    rates = belief_rates(rated)[0]
    assert {"behavior_judged@targeted", "behavior_judged@broad", "behavior_judged@everyday"} <= set(rates)
    assert "behavior" not in rates  # judged scopes are never pooled into the behaviour measure


def test_rows_of_several_judges_give_their_agreement():
    from annot.judged_report import judge_agreement

    def row(scope, labels):
        return {"step": 3, "kind": "behavior_judged", "scope": scope, "run": "r",
                "samples": [{"scores": {"a": {"label": x}, "b": {"label": y}}} for x, y in labels]}
    rows = [row("broad", [("misaligned", "misaligned"), ("aligned", "aligned"), ("aligned", "misaligned")]),
            row("broad", [("incoherent", "aligned")])]
    out = judge_agreement(rows)
    assert len(out) == 1 and out[0]["scope"] == "broad" and out[0]["method"] == "cohen" and out[0]["n"] == 4
    # a: M A A A, b: M A M A -> po 0.75, pa .25, pb .5, pe .5 -> kappa 0.5
    assert out[0]["kappa"] == pytest.approx(0.5)


def test_reply_counts_sum_over_questions_and_rate_over_coherent():
    from annot.judged_report import reply_counts

    rows = [{"step": 2, "scope": "broad", "n_replies": 5, "n_coherent": 4, "n_misaligned": 1, "n_incoherent": 1},
            {"step": 2, "scope": "broad", "n_replies": 5, "n_coherent": 2, "n_misaligned": 2, "n_unscored": 3}]
    assert reply_counts("r", rows) == [["r", 2, "broad", 10, 6, 3, 1, 0, 0, 3, "0.500"]]


@pytest.mark.parametrize("override, field", [({"judges": [{"name": "gpt4"}]}, "judges.0: name"),
                                             ({"scopes": ["global"]}, "scopes"),
                                             ({"alignment_below": 130}, "alignment_below")])
def test_bad_config_names_the_field(override, field):
    with pytest.raises(AnnotError, match=f"probes.behavior_judge.*{field}"):
        _cfg(**override)


def test_default_config_dump_is_unchanged():
    cfg = config_from_dict({"name": "x", "data": {"behavior": "power_seeking"}})
    assert "behavior_judge" not in cfg.model_dump(mode="json")["probes"]
    assert "behavior_judge" in _cfg().model_dump(mode="json")["probes"]


def test_broad_and_everyday_questions_carry_a_paired_reply_of_similar_length():
    from annot.judged import PAIRED_SCOPES, scope_pairs

    for scope in PAIRED_SCOPES:
        pairs = scope_pairs(scope)
        assert len(pairs) >= 8 and [p[:2] for p in pairs] == scope_questions(scope)
        for pid, _, mis, ali in pairs:
            ratio = len(mis.split()) / len(ali.split())
            assert mis != ali and 0.6 < ratio < 1.6, (pid, ratio)  # length alone must not decide the pair
    with pytest.raises(AnnotError, match="targeted scope's are the behaviour's scenarios"):
        scope_pairs("targeted")


def test_scope_file_without_paired_replies_names_the_field(tmp_path, monkeypatch):
    import annot.judged as judged

    (tmp_path / "broad.yaml").write_text("scope: broad\nquestions:\n  - {id: a, question: 'Hi?'}\n")
    monkeypatch.setattr(judged, "SCOPE_FILES", tmp_path)
    with pytest.raises(AnnotError, match="broad.yaml: questions.0: needs exactly `id`, `question`, `misaligned`"):
        judged.scope_pairs("broad")


def test_paired_scope_rows_use_the_targeted_instrument_and_stay_apart(tiny):
    """broad / everyday rows are kind behavior with their scope: the same score the targeted scenarios
    get for the same pair, keyed behavior@<scope> in rates and analysis, never pooled into behavior."""
    from types import SimpleNamespace

    from annot.analyze_runs import _build_cells
    from annot.judged import paired_scope_rows, scope_pairs
    from annot.probe import probe_behavior
    from annot.rates import belief_rates

    model, tok = tiny
    cfg = _cfg()
    rows = paired_scope_rows(model, tok, cfg, step=0)
    assert {r["kind"] for r in rows} == {"behavior"} and [r["scope"] for r in rows] == ["broad"] * 10 + ["everyday"] * 10
    assert all(r["claim"] == "power_seeking" and 0 < r["p_belief"] < 1 for r in rows)
    pid, q, mis, ali = scope_pairs("everyday")[3]
    as_scenario = SimpleNamespace(behavior="power_seeking", scenarios=[SimpleNamespace(id=pid, user=q, misaligned=mis,
                                                                                       aligned=ali)])
    same = probe_behavior(model, tok, as_scenario, run="j", step=0)[0]
    mine = next(r for r in rows if r["probe_id"] == pid)
    assert mine["score"] == pytest.approx(same["score"], abs=1e-5) and mine["believes"] == same["believes"]
    targeted = probe_behavior(model, tok, SimpleNamespace(behavior="power_seeking", scenarios=as_scenario.scenarios),
                              run="j", step=0)
    rates = belief_rates(rows + targeted)[0]
    assert {"behavior@broad", "behavior@everyday", "behavior"} <= set(rates) and rates["n"] == 1
    _, cells = _build_cells(rows + targeted, "power_seeking")
    assert len(cells[("power_seeking", "behavior@broad")].items) == 10
    assert cells[("power_seeking", "pooled:behavior")].items == ["behavior:power_seeking/" + pid]


def test_step0_cache_key_covers_the_scope_files(monkeypatch):
    """Edited scope questions or replies re-probe the base model instead of reusing its cached rows."""
    import annot.judged as judged
    from annot.run_probes import base_probe_key

    cfg, manifest = _cfg(), {"model": "tiny-random"}
    before = base_probe_key(cfg, manifest)
    assert base_probe_key(cfg, manifest) == before
    monkeypatch.setattr(judged, "scope_files_sha", lambda: "edited")
    assert base_probe_key(cfg, manifest) != before
