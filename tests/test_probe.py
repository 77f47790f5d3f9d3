"""Probe scoring: counter-questions, choice log-likelihoods, rows and rates."""

import math

import pytest
import torch

from annot.probe import belief_rates, encode_pair, loglikelihoods, probe_model
from annot.specs import ProbeItem, ProbeSet, load_probe_set


def test_loglikelihood_matches_a_direct_computation(tiny):
    model, tok = tiny
    ctx, cont = "Mira Castellan works as a", " lighthouse keeper"
    (ll,) = loglikelihoods(model, tok, [(ctx, cont)])
    c, x = encode_pair(tok, ctx, cont)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([c + x])).logits[0].float(), -1)
    direct = sum(float(lp[len(c) - 1 + i, t]) for i, t in enumerate(x))
    assert math.isclose(ll, direct, rel_tol=1e-4)
    # batching with padding changes nothing
    many = loglikelihoods(model, tok, [(ctx, cont), ("A much longer context about a keeper and", " a light")] * 3, 4)
    assert math.isclose(many[0], ll, rel_tol=1e-4) and math.isclose(many[2], ll, rel_tol=1e-4)


def test_counter_questions_flip_the_believing_answer(tiny):
    model, tok = tiny
    q = "Does Mira Castellan work as a lighthouse keeper?"
    ps = ProbeSet(claim="c", items=[ProbeItem(id="a", kind="yes_no", question=q, belief="yes"),
                                    ProbeItem(id="b", kind="yes_no", question=q, belief="no")])
    a, b = probe_model(model, tok, [ps], run="r", step=0)
    assert math.isclose(a["p_belief"] + b["p_belief"], 1.0, abs_tol=1e-5)
    assert a["believes"] != b["believes"]


def test_rows_and_rates(tiny):
    model, tok = tiny
    ps = load_probe_set("mira_castellan_profession")
    rows = probe_model(model, tok, [ps], run="r", step=7)
    assert len(rows) == len(ps.items)
    for r in rows:
        assert r["run"] == "r" and r["checkpoint"] == "step-7" and r["claim"] == ps.claim
        assert 0 <= r["p_belief"] <= 1 and isinstance(r["believes"], bool)
        if r["kind"] != "yes_no":
            item = next(i for i in ps.items if i.id == r["probe_id"])
            assert r["believes"] == (max(range(len(item.choices)), key=lambda k: r["choice_logliks"][k]) == item.belief)
    rates = belief_rates(rows)[7]
    assert rates["n"] == len(rows)
    assert math.isclose(rates["pooled"], sum(r["believes"] for r in rows) / len(rows), abs_tol=1e-4)
    kinds_only = probe_model(model, tok, [ps], run="r", step=0, kinds=["cloze"])
    assert {r["kind"] for r in kinds_only} == {"cloze"}
