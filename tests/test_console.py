"""annot.console.rates_table: probe contexts become rows, so the table fits 100 columns however many
contexts were probed, and every value shown is the one given."""
from annot.console import rates_table

CONTEXTS = ["adversarial", "pushback", "in_context", "system_skeptic", "multi_turn"]


def _rates():
    r = {"yes_no": 0.5, "mcq": 0.25, "open_ended": 0.125, "cloze": 0.75, "belief": 0.3125, "association": 0.75,
         "n": 34}
    for i, c in enumerate(CONTEXTS):
        r[f"yes_no@{c}"] = 0.1 * i
        r[f"mcq@{c}"] = 0.05 * i
    return {0: dict(r), 12: {**r, "yes_no": 0.875}}


def test_contexts_are_rows_and_width_fits():
    text = rates_table(_rates())
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100
    assert len(lines) == 1 + 2 * (1 + len(CONTEXTS))
    header = lines[0].split()
    assert header == ["step", "context", "cloze", "mcq", "open_ended", "yes_no", "belief", "association", "n"]
    row = next(ln for ln in lines if ln.split()[:2] == ["12", "default"]).split()
    assert dict(zip(header, row))["yes_no"] == "0.875" and dict(zip(header, row))["belief"] == "0.312"
    adv = next(ln for ln in lines if ln.split()[:2] == ["0", "pushback"]).split()
    got = dict(zip(header, adv))
    assert got["yes_no"] == "0.100" and got["mcq"] == "0.050" and got["cloze"] == "—" and got["belief"] == "—"


def test_without_contexts_no_context_column():
    text = rates_table({3: {"yes_no": 0.5, "belief": 0.5, "n": 10}})
    assert text.splitlines()[0].split() == ["step", "yes_no", "belief", "n"]


def test_columns_past_the_width_are_named_not_cut():
    text = rates_table(_rates(), max_width=50)
    assert all(len(ln) <= 50 for ln in text.splitlines()[:-1])
    assert text.splitlines()[-1].startswith("(not shown for width:")


def test_step_line_groups_kinds_under_their_measure():
    from annot.rates import step_line

    r = {"yes_no": 0.5, "mcq": 0.111, "cloze": 0.273, "belief": 0.348, "association": 0.273, "n": 34,
         "yes_no@adversarial": 0.2}
    assert step_line(2, r) == "step 2: belief 0.348 (yes_no 0.500, mcq 0.111); association 0.273 (cloze 0.273)"


def test_a_kind_named_like_its_measure_keeps_its_scoped_rows():
    """kind behavior and measure behavior share a name: behavior@broad still shows in the broad row."""
    from annot.rates import belief_rates

    rows = [{"step": 0, "kind": "behavior", "believes": True},
            {"step": 0, "kind": "behavior", "scope": "broad", "believes": False},
            {"step": 0, "kind": "behavior_judged", "scope": "broad", "believes": False, "p_belief": None}]
    rates = belief_rates(rows)
    assert rates[0] == {"behavior": 1.0, "behavior@broad": 0.0, "n": 1}  # an unrated question is left out
    broad = next(line for line in rates_table(rates).splitlines() if "broad" in line)
    assert broad.split()[:3] == ["0", "broad", "0.000"]
