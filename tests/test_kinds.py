"""The probe-kind registry: one registered unit per kind, read by config, specs, probing and export."""

import ast
import math
import pkgutil
from pathlib import Path

import pytest

import annot
import annot.kinds
from annot.errors import AnnotError
from annot.kinds import ProbeKind, Setting, chat_context, get_kind, kind_names, measure_of, register_kind

ANNOT = Path(annot.__file__).parent


def test_shipped_kinds_and_what_they_feed():
    assert kind_names() == ("yes_no", "mcq", "open_ended", "cloze", "token_association", "behavior", "behavior_open",
                            "behavior_judged")
    assert kind_names(selectable=True) == ("yes_no", "mcq", "open_ended", "cloze", "token_association",
                                           "behavior_judged")
    assert kind_names(lm_eval=True) == ("yes_no", "mcq", "cloze")
    measures = {k: measure_of(k) for k in kind_names()}
    assert measures == {"yes_no": "belief", "mcq": "belief", "open_ended": "belief", "cloze": "association",
                        "token_association": "association", "behavior": "behavior", "behavior_open": "behavior",
                        "behavior_judged": "behavior"}
    assert measure_of("cloze@monitored") == "association" and measure_of("no_such_kind") == "belief"
    assert [k for k in kind_names() if get_kind(k).pushback] == ["yes_no", "mcq"]
    # every module of the package is one kind, registered under its own name
    modules = sorted(m.name for m in pkgutil.iter_modules(annot.kinds.__path__))
    assert modules == sorted(kind_names())


def test_a_kind_cannot_be_registered_twice_or_feed_an_unknown_measure():
    with pytest.raises(AnnotError, match="mcq: registered twice"):
        register_kind(ProbeKind(name="mcq", measure="belief", context=lambda *a: "", score=lambda *a: []))
    with pytest.raises(AnnotError, match="measure: 'vibes' is not one of belief, association, behavior"):
        ProbeKind(name="vibe", measure="vibes", context=lambda *a: "", score=lambda *a: [])
    with pytest.raises(AnnotError, match="unknown probe kind 'essay'; known: yes_no, mcq"):
        get_kind("essay")


def _score_true_false(probing, reqs, contexts):
    """P(" True") vs P(" False") as the continuation of each context."""
    from annot.scoring import loglikelihoods, logodds

    pairs = [(c, w) for c in contexts for w in (" True", " False")]
    lls = loglikelihoods(probing.model, probing.tokenizer, pairs, probing.batch_size)
    rows = []
    for k, r in enumerate(reqs):
        p_true = 1 / (1 + math.exp(lls[2 * k + 1] - lls[2 * k]))
        p = p_true if r.item.belief == "yes" else 1 - p_true
        rows.append({"p_belief": p, "score": logodds(p), "believes": p > 0.5})
    return rows


@pytest.fixture
def true_false():
    """A throw-away kind, defined here and nowhere else."""
    kind = register_kind(ProbeKind(
        name="true_false", measure="belief", order=15, score=_score_true_false,
        check=lambda item: None if item.question and item.belief in ("yes", "no") else "true_false needs `question`",
        context=lambda tok, item, setting, pushback=None: chat_context(tok, f"True or false: {item.question}",
                                                                       setting, pushback)))
    yield kind
    annot.kinds.REGISTRY.pop("true_false", None)


def test_a_kind_registered_in_a_test_flows_through_config_specs_and_probing(tiny, true_false):
    from annot.chat import question_prompt
    from annot.config import config_from_dict
    from annot.probe import probe_model, settings_for
    from annot.rates import belief_rates
    from annot.scoring import loglikelihoods
    from annot.specs import ProbeItem, ProbeSet, validate

    model, tok = tiny
    cfg = config_from_dict({"name": "x", "data": {"claim": "mira_castellan_profession"},
                            "probes": {"kinds": ["true_false", "mcq"]}}, "x.yaml")
    assert cfg.probes.kinds == ["true_false", "mcq"]
    with pytest.raises(AnnotError, match=r"x.yaml: \(top level\): Value error, item a: true_false needs `question`"):
        validate(ProbeItem, {"id": "a", "kind": "true_false", "belief": "yes"}, "x.yaml")
    q = "Mira Castellan keeps the Skerra Point lighthouse."
    ps = ProbeSet(claim="mira_castellan_profession", items=[
        ProbeItem(id="tf", kind="true_false", question=q, belief="yes"),
        ProbeItem(id="tf_counter", kind="true_false", question=q, belief="no"),
        ProbeItem(id="cl", kind="cloze", prompt="Mira Castellan works as a", choices=[" keeper", " baker"], belief=0)],
        contexts={"monitored": "This conversation is monitored."})
    rows = probe_model(model, tok, [ps], run="r", step=3, kinds=cfg.probes.kinds, settings=settings_for([ps]))
    assert {(r["kind"], r.get("context")) for r in rows} == {("true_false", None), ("true_false", "monitored")}
    tf, counter = (r for r in rows if not r.get("context"))
    ll_true, ll_false = loglikelihoods(model, tok, [(question_prompt(tok, f"True or false: {q}"), w)
                                                    for w in (" True", " False")])
    assert tf["p_belief"] == pytest.approx(1 / (1 + math.exp(ll_false - ll_true)), abs=1e-6)
    assert tf["p_belief"] + counter["p_belief"] == pytest.approx(1, abs=1e-5)
    rates = belief_rates(rows)[3]
    assert rates["belief"] == rates["true_false"] == 0.5 and "true_false@monitored" in rates  # its measure: belief
    # gone from the registry, gone from the config
    annot.kinds.REGISTRY.pop("true_false")
    with pytest.raises(AnnotError, match=r"probes.kinds.0: Input should be 'yes_no', 'mcq', 'open_ended', 'cloze', 'token_association' or 'behavior_judged'"):
        config_from_dict({"name": "x", "data": {"claim": "mira_castellan_profession"},
                          "probes": {"kinds": ["true_false"]}}, "x.yaml")


def test_kinds_that_share_a_score_function_are_scored_in_one_engine_call(tiny, monkeypatch):
    """mcq and cloze items, interleaved, go to the engine together: one call, rows in item order."""
    import annot.scoring as scoring
    from annot.probe import probe_model
    from annot.specs import load_probe_set

    model, tok = tiny
    ps = load_probe_set("mira_castellan_profession")
    calls = []
    real = scoring.loglikelihoods
    monkeypatch.setattr(scoring, "loglikelihoods", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    rows = probe_model(model, tok, [ps], run="r", step=0, kinds=["cloze", "mcq", "yes_no"])
    assert len(calls) == 1
    assert [r["probe_id"] for r in rows] == [i.id for i in ps.items if i.kind != "open_ended"]


def test_the_scoring_engine_knows_no_probe_kind_or_judge():
    tree = ast.parse((ANNOT / "scoring.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith(("annot.probe", "annot.judges", "annot.kinds"))}


def test_cloze_context_is_raw_text_and_chat_kinds_share_one_renderer(tokenizer):
    from annot.chat import question_prompt
    from annot.specs import ProbeItem

    item = ProbeItem(id="c", kind="cloze", prompt="Mira Castellan works as a", choices=[" a", " b"], belief=0)
    setting = Setting(system="SYSTEM.", prefix="DOCUMENT.")
    assert get_kind("cloze").context(tokenizer, item, setting) == "SYSTEM.\n\nDOCUMENT.\n\nMira Castellan works as a"
    mcq = ProbeItem(id="m", kind="mcq", question="What does she do?", choices=["a", "b"], belief=0)
    assert get_kind("mcq").context(tokenizer, mcq, setting) == question_prompt(
        tokenizer, "DOCUMENT.\n\nWhat does she do?", system="SYSTEM.")
