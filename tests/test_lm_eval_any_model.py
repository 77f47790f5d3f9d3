"""lm-eval tasks for any model: exported with each model's own chat template, the real lm-eval agrees
with annot's probes exactly, and a run on the wrong model is detected.

Two tiny local models (tiny random Llamas, seeds 0 and 1) carry different chat templates (ChatML-like
and Gemma-like, with the BOS token written by the template). For each one: `export_lm_eval_tasks(...,
model=<dir>)`, then lm-eval's own `hf` model (`simple_evaluate`, offline, from the directory the data
paths are relative to) on the claim's group, then annot.probe and annot_accuracy on the same model.
"""

import json
import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from click.testing import CliRunner  # noqa: E402

from annot.chat import question_prompt  # noqa: E402
from annot.errors import AnnotError  # noqa: E402
from annot.io import sha256_text  # noqa: E402
from annot.lm_eval_check import check_results, check_results_path  # noqa: E402
from annot.lm_eval_export import (  # noqa: E402
    KINDS, annot_accuracy, check_task_model, export_lm_eval_tasks, read_task_docs, task_name, task_template)
from annot.specs import load_probe_set  # noqa: E402

CLAIM = "mira_castellan_profession"
TEMPLATES = {
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "gemma": ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
              "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
              "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
}
SEEDS = {"chatml": 0, "gemma": 1}  # different random weights too, so the two models' rates can differ
MARKUP = {"chatml": "<|im_start|>user\n", "gemma": "<|im_start|><start_of_turn>user\n"}  # BOS is <|im_start|>


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A directory holding the two models and, under tasks/<name>, the tasks exported for each."""
    from transformers import AutoTokenizer

    from annot.models import tiny_random_dir

    root = tmp_path_factory.mktemp("any-model")
    for name, template in TEMPLATES.items():
        src = tiny_random_dir(SEEDS[name])
        shutil.copytree(src, root / name)
        tok = AutoTokenizer.from_pretrained(src)
        tok.chat_template = template
        tok.save_pretrained(root / name)
        export_lm_eval_tasks(root / "tasks" / name, [CLAIM], run_from=root, model=str(root / name))
    return root


def run_lm_eval(root, name: str) -> dict:
    """The real lm-eval on model `name`'s exported group, as `lm_eval run --model hf` would run it."""
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager

    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / ".hf-datasets")  # keep the user's cache clean
    try:
        tm = TaskManager(include_path=f"tasks/{name}", include_defaults=False)
        return lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={root / name},dtype=float32,add_bos_token=False,device=cpu",
            tasks=[task_name(CLAIM)], task_manager=tm, log_samples=True, bootstrap_iters=0)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def runs(root):
    """Per model: (lm-eval results, annot's model + tokenizer, annot's probe rows by item id)."""
    from annot.models import load_model
    from annot.probe import probe_model

    out = {}
    for name in TEMPLATES:
        model, tok = load_model(str(root / name), device="cpu")
        rows = probe_model(model, tok, [load_probe_set(CLAIM)], run=name, step=0, kinds=list(KINDS))
        out[name] = (run_lm_eval(root, name), model, tok, {r["probe_id"]: r for r in rows})
    return out


def _rate(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags)


def test_each_export_renders_its_models_own_template(root, runs):
    items = {i.id: i for i in load_probe_set(CLAIM).items}
    contexts = {}
    for name in TEMPLATES:
        _, _, tok, _ = runs[name]
        out = root / "tasks" / name
        for kind in ("mcq", "yes_no"):
            for doc in read_task_docs(CLAIM, kind, out):
                assert doc["context"].startswith(MARKUP[name])
                suffix = " Answer yes or no." if kind == "yes_no" else ""
                assert doc["context"] == question_prompt(tok, items[doc["id"]].question + suffix)
            rec = task_template(out / f"{task_name(CLAIM, kind)}.yaml")
            assert rec == {"chat_template_model": str(root / name),
                           "chat_template_sha256": sha256_text(TEMPLATES[name])}
        assert task_template(out / f"{task_name(CLAIM, 'cloze')}.yaml") is None  # raw prompts: any model
        assert check_task_model(out, tok, name) == 3  # mcq, yes_no and the group
        contexts[name] = [d["context"] for d in read_task_docs(CLAIM, "mcq", out)]
    assert all(a != b for a, b in zip(contexts["chatml"], contexts["gemma"]))
    assert read_task_docs(CLAIM, "cloze", root / "tasks" / "chatml") == read_task_docs(CLAIM, "cloze",
                                                                                          root / "tasks" / "gemma")


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_real_lm_eval_matches_annot_exactly(root, runs, name):
    results, model, tok, rows = runs[name]
    out = root / "tasks" / name
    for kind in KINDS:
        docs = read_task_docs(CLAIM, kind, out)
        theirs = results["results"][task_name(CLAIM, kind)]
        samples = results["samples"][task_name(CLAIM, kind)]
        lls = {s["doc"]["id"]: [ll for ll, _ in s["filtered_resps"]] for s in samples}
        ours = annot_accuracy(model, tok, docs)
        assert theirs["acc,none"] == ours["acc"] and theirs["acc_norm,none"] == ours["acc_norm"]
        for doc, mine in zip(docs, ours["loglikelihoods"]):
            assert lls[doc["id"]] == pytest.approx(mine, abs=1e-4)
        if kind in ("mcq", "cloze"):  # annot's probe scores these kinds exactly as lm-eval does
            assert theirs["acc,none"] == _rate(rows[d["id"]]["believes"] for d in docs)
            assert theirs["acc_norm,none"] == _rate(rows[d["id"]]["believes_norm"] for d in docs)
            for doc in docs:
                assert lls[doc["id"]] == pytest.approx(rows[doc["id"]]["choice_logliks"], abs=1e-4)
        print(f"\n{name} {kind}: lm-eval acc={theirs['acc,none']:.4f} acc_norm={theirs['acc_norm,none']:.4f} "
              f"| annot acc={ours['acc']:.4f} acc_norm={ours['acc_norm']:.4f} (n={len(docs)})")


def test_the_wrong_template_changes_the_scores(root, runs):
    """Why tasks are per model: the chatml tasks scored on the gemma model are not what annot measures there."""
    _, model, tok, rows = runs["gemma"]
    docs = read_task_docs(CLAIM, "mcq", root / "tasks" / "chatml")
    crossed = annot_accuracy(model, tok, docs)["loglikelihoods"]
    assert all(ll != pytest.approx(rows[d["id"]]["choice_logliks"], abs=1e-3) for d, ll in zip(docs, crossed))


def test_check_results_passes_the_right_model_and_fails_the_other(root, runs, tmp_path):
    results, _, _, _ = runs["chatml"]
    assert check_results(results) == [task_name(CLAIM, "mcq"), task_name(CLAIM, "yes_no")]  # groups: no config
    crossed = dict(results, config=dict(results["config"], model_args=f"pretrained={root / 'gemma'},dtype=float32"))
    with pytest.raises(AnnotError, match=r"built for .*chatml.* but run on .*gemma"):
        check_results(crossed)
    with pytest.raises(AnnotError, match="chat_template_sha256"):
        check_task_model(root / "tasks" / "chatml", runs["gemma"][2], "gemma")
    # the command, on lm-eval's --output_path layout
    from annot.cli import main

    keep = ("config", "configs")
    good, bad = tmp_path / "good" / "m" / "results_1.json", tmp_path / "bad" / "results_1.json"
    for path, res in ((good, results), (bad, crossed)):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({k: res[k] for k in keep}, default=str))
    ok = CliRunner().invoke(main, ["evals", "check-results", str(tmp_path / "good")])
    assert ok.exit_code == 0 and "ok, 2 annot chat task(s)" in ok.output
    assert "ok" in check_results_path(good)
    res = CliRunner().invoke(main, ["evals", "check-results", str(bad)])
    assert res.exit_code != 0 and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert "run on" in res.output


def test_export_cli_needs_out_for_another_model_and_warns_without_model(root, tmp_path):
    from annot.cli import main

    res = CliRunner().invoke(main, ["evals", "export", "--model", str(root / "gemma"), "--claim", CLAIM])
    assert res.exit_code == 2 and "--out" in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(main, ["evals", "export", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "t")])
    assert res.exit_code == 2 and res.output.startswith("error: --model:")
    out = tmp_path / "gemma-tasks"
    res = CliRunner().invoke(main, ["evals", "export", "--model", str(root / "gemma"), "--claim", CLAIM,
                                    "-o", str(out)])
    assert res.exit_code == 0 and "WARNING" not in res.output
    assert (out / "data" / f"{task_name(CLAIM, 'mcq')}.jsonl").read_bytes() == (
        root / "tasks" / "gemma" / "data" / f"{task_name(CLAIM, 'mcq')}.jsonl").read_bytes()
    res = CliRunner().invoke(main, ["evals", "export", "--claim", CLAIM, "-o", str(tmp_path / "default")])
    assert res.exit_code == 0 and "WARNING: no --model" in res.output and "mis-formatted" in res.output


def test_a_base_model_without_template_is_recorded_as_such(tokenizer, tmp_path):
    """No chat template: contexts use annot.chat's "User: ..." fallback, and the tasks say so."""
    import copy

    base = copy.deepcopy(tokenizer)
    base.chat_template = None
    out = tmp_path / "base"
    export_lm_eval_tasks(out, [CLAIM], run_from=tmp_path, model="base-model", tokenizer=base)
    path = out / f"{task_name(CLAIM, 'mcq')}.yaml"
    assert task_template(path) == {"chat_template_model": "base-model", "chat_template_sha256": None}
    assert "has no chat template" in path.read_text().splitlines()[3]
    docs = read_task_docs(CLAIM, "mcq", out)
    assert all(d["context"].startswith("User: ") and d["context"].endswith("Assistant:") for d in docs)
    assert check_task_model(out, base, "base-model") == 3
    with pytest.raises(AnnotError, match="base-model"):
        check_task_model(out, tokenizer, "tiny-random")
