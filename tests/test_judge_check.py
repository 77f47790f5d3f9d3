"""Judge validity check: the AUC and its bootstrap, the kappa table, the labelled set, the command."""

import json

import pytest

from annot.judge_check import auc, bootstrap_auc, judge_check, labelled_items
from annot.scales import ScaleScore, cohen_kappa


def test_auc_is_exact_on_known_sets():
    assert auc([80, 90, 70], [10, 20, 30]) == 1.0  # every aligned reply above every misaligned one
    assert auc([10, 20], [80, 90]) == 0.0  # reversed
    assert auc([50, 50], [50, 50, 50]) == 0.5  # all ties: one half each
    assert auc([30, 60], [40]) == 0.5  # one of two pairs above
    assert auc([40, 60], [40]) == 0.75  # (one tie x 0.5 + one above) / 2
    assert auc([], [1.0]) is None and auc([1.0], []) is None


def test_bootstrap_auc_keeps_items_and_skips_unscored():
    perfect = [(90.0, 10.0)] * 5 + [(None, 20.0), (80.0, None)]
    point, lo, hi = bootstrap_auc(perfect, n_boot=200, seed=1)
    assert point == 1.0 and lo == 1.0 and hi == 1.0
    mixed = [(90.0, 10.0), (20.0, 80.0), (60.0, 40.0), (30.0, 70.0)]
    point, lo, hi = bootstrap_auc(mixed, n_boot=500, seed=1)
    assert point == auc([90, 20, 60, 30], [10, 80, 40, 70]) and 0.0 <= lo <= point <= hi <= 1.0 and lo < hi
    assert bootstrap_auc([(None, 5.0)], n_boot=10) == (None, None, None)


def test_kappa_on_a_known_table():
    # written: 10 misaligned, 10 aligned; judged misaligned: 8 of the first, 2 of the second.
    # po = 16/20 = 0.8, pe = 0.5 x 0.5 + 0.5 x 0.5 = 0.5, kappa = (0.8 - 0.5) / 0.5 = 0.6
    written = [True] * 10 + [False] * 10
    judged = [True] * 8 + [False] * 2 + [True] * 2 + [False] * 8
    assert cohen_kappa(written, judged) == pytest.approx(0.6)


class FakeJudge:
    """Scores a reply by a word in it: 'bad' low alignment, anything else high; 'mumble' is unscored."""

    id = "fake"

    def answer_prefix(self, rubric):
        return rubric.answer_prefix

    def score(self, rubric, pairs):
        out = []
        for _, reply in pairs:
            if "mumble" in reply:
                out.append(ScaleScore(None, 0.1))
            elif rubric.name == "coherence":
                out.append(ScaleScore(90.0, 0.9))
            else:
                out.append(ScaleScore(10.0 if "bad" in reply else 85.0, 0.9))
        return out


def test_judge_check_reports_separation_scored_share_and_kappa():
    from annot.judge_check import LabelledItem

    items = [LabelledItem(f"q{i}", "broad", f"question {i}?", "a bad reply", "a kind reply") for i in range(4)]
    items.append(LabelledItem("q4", "everyday", "question 4?", "mumble", "a kind reply"))
    c = judge_check(FakeJudge(), items, n_boot=100)
    assert c["n_replies"] == 10 and c["scored"] == pytest.approx(0.9)
    assert c["scored_by_label"] == {"misaligned": 0.8, "aligned": 1.0}
    assert c["auc"] == 1.0 and c["auc_ci"] == [1.0, 1.0] and c["auc_n"] == {"aligned": 5, "misaligned": 4}
    assert c["kappa"] == 1.0 and c["kappa_n"] == 9  # the unscored reply has no verdict
    assert c["table"] == {"written_misaligned_judged_misaligned": 4, "written_misaligned_judged_not": 0,
                          "written_aligned_judged_misaligned": 0, "written_aligned_judged_not": 5}
    assert c["answer_prefix"] == {"alignment": "Score: ", "coherence": "Score: "}


def test_labelled_items_cover_the_behaviour_and_both_scopes():
    items = labelled_items(["power_seeking"])
    assert {it.source for it in items} == {"power_seeking", "broad", "everyday"}
    assert len(items) == 21 + 10 + 10 and all(it.misaligned != it.aligned for it in items)
    assert len(labelled_items()) > len(items)  # every shipped behaviour


def test_judge_check_command_on_the_tiny_judge(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from annot.cli import main

    monkeypatch.setenv("ANNOT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "check.json"
    res = CliRunner().invoke(main, ["judge-check", "--judge", "hf", "--model", "tiny-random", "--behavior",
                                    "power_seeking", "--scope", "broad", "--n-boot", "50", "-o", str(out)])
    assert res.exit_code == 0, res.output
    c = json.loads(out.read_text())
    assert c["judge"] == "hf:tiny-random" and c["n_replies"] == 2 * (21 + 10) and "AUC" in res.output
    bad = CliRunner().invoke(main, ["judge-check", "--judge", "hf", "--behavior", "no_such_behaviour"])
    assert bad.exit_code == 2 and "no_such_behaviour" in bad.output


def test_report_checks_each_judge_of_the_judged_runs_once(tmp_path, monkeypatch):
    """A sweep's report: one validity check per distinct judge over the runs' behaviours' written pairs
    (here 6 runs, one judge, power_seeking), shown as the "Judge validity" section."""
    import annot.judged
    from annot.analyze import load_runs
    from annot.judged_report import judge_validity, validity_section
    from tests.test_scope_report import FINAL, _run

    for wrapper in FINAL:
        for seed in (0, 1):
            _run(tmp_path, wrapper, seed)
    built = []
    monkeypatch.setattr(annot.judged, "judges_from", lambda specs, model: built.append((specs, model)) or (FakeJudge(),))
    checks = judge_validity(load_runs([tmp_path]), n_boot=20)
    assert built == [([{"name": "hf", "model": None}], "smollm2-135m")]  # the default judge: the base model
    assert len(checks) == 1 and checks[0]["sources"] == ["broad", "everyday", "power_seeking"]
    assert checks[0]["n_items"] == 41 and checks[0]["n_replies"] == 82 and checks[0]["scored"] == 1.0
    text = "\n".join(validity_section(checks))
    assert text.startswith("## Judge validity") and "| AUC of the alignment score" in text and "Cohen's kappa" in text
    assert validity_section([]) == []


def test_judge_check_command_on_an_http_judge(tmp_path, monkeypatch):
    """The http judge through the command: every written reply sent (no answer prefix), scored from the
    fake server's log-probabilities (one score for everything: AUC exactly 0.5, kappa 0)."""
    from click.testing import CliRunner

    from annot.cli import main
    from tests.fake_openai import FakeServer
    from tests.test_scale_judges import _reply

    monkeypatch.setenv("ANNOT_CACHE", str(tmp_path / "cache"))
    with FakeServer(reply=_reply) as server:
        res = CliRunner().invoke(main, ["judge-check", "--judge", "http", "--base-url", server.url, "--model", "fake",
                                        "--behavior", "power_seeking", "--scope", "everyday", "--n-boot", "20",
                                        "-o", str(tmp_path / "c.json")])
        assert res.exit_code == 0, res.output
        assert len(server.calls) == 2 * 2 * (21 + 10)  # 62 replies x 2 rubrics
        assert all(m["role"] != "assistant" for call in server.calls for m in call["messages"])
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["answer_prefix"] == {"alignment": "", "coherence": ""} and c["scored"] == 1.0
    assert c["auc"] == 0.5 and c["kappa"] == 0.0
    bad = CliRunner().invoke(main, ["judge-check", "--judge", "hf", "--base-url", "http://x"])
    assert bad.exit_code == 2 and "--base-url" in bad.output
