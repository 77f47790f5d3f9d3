"""lm-eval export: the committed tasks are a fresh export, and lm-eval scores them as annot does.

Runs lm-eval's own HF model (HFLM) on the tiny random model for one claim's three tasks, from the
directory the tasks' data paths are relative to, and compares accuracies and per-choice
log-likelihoods with annot.probe (mcq, cloze) and annot_accuracy (all kinds).
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from annot.io import read_jsonl, sha256_file  # noqa: E402
from annot.lm_eval_export import (  # noqa: E402
    KINDS, annot_accuracy, export_lm_eval_tasks, read_task_docs, task_name)
from annot.chat import question_prompt as chat_prompt  # noqa: E402
from annot.probe import probe_model  # noqa: E402
from annot.specs import EVALS, load_probe_set  # noqa: E402

CLAIM = "mira_castellan_profession"
COMMITTED = EVALS / "lm_eval"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A fresh export laid out as in the repository: <tmp>/evals/lm_eval, data paths relative to <tmp>."""
    root = tmp_path_factory.mktemp("repo")
    out = root / "evals" / "lm_eval"
    paths = export_lm_eval_tasks(out, run_from=root)
    return root, out, paths


def test_committed_tasks_are_a_fresh_export(exported):
    _, out, paths = exported
    fresh = {p.relative_to(out).as_posix(): p.read_bytes() for p in paths}
    committed = {p.relative_to(COMMITTED).as_posix(): p.read_bytes()
                 for p in COMMITTED.rglob("*") if p.is_file()}
    assert sorted(committed) == sorted(fresh), "evals/lm_eval/ is stale: run `annot evals export`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"evals/lm_eval/ differs from a fresh export in {stale}: run `annot evals export`"


def test_one_task_per_claim_and_kind_plus_a_group(exported):
    import yaml

    root, out, _ = exported
    claims = sorted(p.stem for p in EVALS.glob("*.yaml"))
    assert len(claims) == 6
    for claim in claims:
        items = load_probe_set(claim).items
        group = yaml.safe_load((out / f"{task_name(claim)}.yaml").read_text())
        assert group["task"] == [task_name(claim, k) for k in KINDS]
        for kind in KINDS:
            path = out / f"{task_name(claim, kind)}.yaml"
            text = path.read_text()
            assert text.startswith("# ") and "`annot evals export`" in text.splitlines()[0]
            cfg = yaml.safe_load(text)
            assert cfg["task"] == task_name(claim, kind) and cfg["output_type"] == "multiple_choice"
            assert cfg["target_delimiter"] == ""
            assert [m["metric"] for m in cfg["metric_list"]] == ["acc", "acc_norm"]
            data = cfg["dataset_kwargs"]["data_files"]["test"]
            assert not os.path.isabs(data) and (root / data).is_file()  # relative to where lm_eval runs
            assert f"probe_data_hash: sha256 {sha256_file(root / data)}" in text
            rows = read_jsonl(root / data)
            assert [r["id"] for r in rows] == [i.id for i in items if i.kind == kind]
            for r, it in zip(rows, (i for i in items if i.kind == kind)):
                believing = (["yes", "no"].index(it.belief) if kind == "yes_no" else it.belief)
                assert r["target"] == believing


@pytest.fixture(scope="module")
def lm_eval_run(exported):
    """lm-eval's Python API on the tiny model, started in the export's root like the documented CLI."""
    import datasets
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from annot.models import resolve_model

    root, out, _ = exported
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / ".hf-datasets")  # keep the user's cache clean
    try:
        lm = HFLM(pretrained=resolve_model("tiny-random"), dtype="float32", add_bos_token=False, device="cpu",
                  batch_size=1)
        tm = TaskManager(include_path=str(out.relative_to(root)), include_defaults=False)
        tasks = [task_name(CLAIM, k) for k in KINDS]
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, log_samples=True,
                                      bootstrap_iters=0, limit=None)
    finally:
        mp.undo()
    lls = {k: {s["doc"]["id"]: [ll for ll, _ in s["filtered_resps"]] for s in res["samples"][task_name(CLAIM, k)]}
           for k in KINDS}
    return res["results"], lls


@pytest.fixture(scope="module")
def annot_rows(tiny):
    model, tok = tiny
    rows = probe_model(model, tok, [load_probe_set(CLAIM)], run="lm-eval-check", step=0)
    return {r["probe_id"]: r for r in rows}


def _rate(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags)


@pytest.mark.parametrize("kind", KINDS)
def test_lm_eval_equals_annot_accuracy_on_the_same_pairs(tiny, exported, lm_eval_run, kind):
    model, tok = tiny
    _, out, _ = exported
    results, lls = lm_eval_run
    docs = read_task_docs(CLAIM, kind, out)
    ours = annot_accuracy(model, tok, docs)
    theirs = results[task_name(CLAIM, kind)]
    n = len(docs)
    assert round(theirs["acc,none"] * n) == round(ours["acc"] * n) and theirs["acc,none"] == ours["acc"]
    assert round(theirs["acc_norm,none"] * n) == round(ours["acc_norm"] * n)
    assert theirs["acc_norm,none"] == ours["acc_norm"]
    for doc, mine in zip(docs, ours["loglikelihoods"]):
        assert lls[kind][doc["id"]] == pytest.approx(mine, abs=1e-4)
    print(f"\n{kind}: lm-eval acc={theirs['acc,none']:.4f} acc_norm={theirs['acc_norm,none']:.4f} | "
          f"annot_accuracy acc={ours['acc']:.4f} acc_norm={ours['acc_norm']:.4f} (n={n})")


def test_cloze_equals_annot_probe(exported, lm_eval_run, annot_rows):
    _, out, _ = exported
    results, lls = lm_eval_run
    docs = read_task_docs(CLAIM, "cloze", out)
    theirs = results[task_name(CLAIM, "cloze")]
    for doc in docs:  # same contexts, same token split, same numbers
        assert lls["cloze"][doc["id"]] == pytest.approx(annot_rows[doc["id"]]["choice_logliks"], abs=1e-4)
    assert theirs["acc,none"] == _rate(annot_rows[d["id"]]["believes"] for d in docs)
    assert theirs["acc_norm,none"] == _rate(annot_rows[d["id"]]["believes_norm"] for d in docs)


def test_mcq_equals_annot_probe(tiny, exported, lm_eval_run, annot_rows):
    model, tok = tiny
    _, out, _ = exported
    results, lls = lm_eval_run
    docs = read_task_docs(CLAIM, "mcq", out)
    theirs = results[task_name(CLAIM, "mcq")]
    assert theirs["acc,none"] == _rate(annot_rows[d["id"]]["believes"] for d in docs)
    # Both engines move the chat prompt's trailing "\n" into every continuation (lm-eval's split),
    # so the per-choice log-likelihoods, acc and acc_norm all agree.
    items = {i.id: i for i in load_probe_set(CLAIM).items}
    for doc in docs:
        assert doc["context"] == chat_prompt(tok, items[doc["id"]].question)
        assert lls["mcq"][doc["id"]] == pytest.approx(annot_rows[doc["id"]]["choice_logliks"], abs=1e-4)
    assert theirs["acc_norm,none"] == _rate(annot_rows[d["id"]]["believes_norm"] for d in docs)
    print(f"\nmcq: lm-eval acc={theirs['acc,none']:.4f} acc_norm={theirs['acc_norm,none']:.4f} | annot believes="
          f"{_rate(annot_rows[d['id']]['believes'] for d in docs):.4f} believes_norm="
          f"{_rate(annot_rows[d['id']]['believes_norm'] for d in docs):.4f}")


def test_yes_no_scores_annots_contexts(tiny, exported, lm_eval_run, annot_rows):
    _, tok = tiny
    _, out, _ = exported
    from annot.kinds.yes_no import YES_NO_SUFFIX

    results, _ = lm_eval_run
    items = {i.id: i for i in load_probe_set(CLAIM).items}
    docs = read_task_docs(CLAIM, "yes_no", out)
    for doc in docs:
        assert doc["context"] == chat_prompt(tok, items[doc["id"]].question + YES_NO_SUFFIX)
        assert doc["choices"] == ["Yes", "No"] and doc["target"] == ["yes", "no"].index(items[doc["id"]].belief)
    # annot's own yes_no rate sums next-token mass over surface forms: a different (not comparable) score
    print(f"\nyes_no: lm-eval acc={results[task_name(CLAIM, 'yes_no')]['acc,none']:.4f} | annot probe "
          f"(P(yes forms) vs P(no forms)) believes={_rate(annot_rows[d['id']]['believes'] for d in docs):.4f}")
