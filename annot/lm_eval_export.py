"""Export the probe sets under evals/ as lm-eval tasks for one model, and score those tasks with annot's engine.

    annot evals export                                  # evals/lm_eval/: the default model's tasks (committed)
    annot evals export --model ./my-model -o tasks/my-model    # any model annot can load a tokenizer for
    paths = export_lm_eval_tasks(out, model="./my-model")      # the same from Python
    lm_eval run --model hf --model_args pretrained=MODEL_DIR,dtype=float32,add_bos_token=False \
        --include_path evals/lm_eval --tasks annot_mira_castellan_profession_mcq      # from the repository root
    annot_accuracy(model, tok, read_task_docs("mira_castellan_profession", "yes_no"))  # what lm-eval should report
    check_task_model(out, tokenizer, "./other-model")   # AnnotError when the tasks were built for another template

One lm-eval task per claim and probe kind, `annot_<claim>_<kind>`, and one group per claim, `annot_<claim>`,
pooling its kinds item-weighted (as annot's "pooled" rate). Every task is `multiple_choice` with
`target_delimiter: ""` and the index of the *believing* choice as target, so lm-eval's `acc` is a belief rate:

Which kinds become tasks, and each item's context, choices and target, is each kind's `lm_eval` in
annot.kinds (KINDS below):

- cloze:  context = the raw prompt, continuations = the choices (they start with a space). Identical
          (context, continuation) token split to annot's probes: `acc` == annot's `believes` rate and
          `acc_norm` == its `believes_norm` rate. No chat template: the same task serves every model.
- mcq:    context = annot.chat.question_prompt(question), pre-rendered with the chat template of the model the
          tasks are exported for (`model`), exactly the context annot's probe builds for that model.
          `acc` == annot's `believes` rate; `acc_norm` (ll / characters) == `believes_norm` (ll / UTF-8 bytes)
          for ASCII choices. Both engines move the context's trailing whitespace (a template's final "\n")
          onto every continuation (lm-eval's TemplateLM._encode_pair, annot.scoring.encode_pair).
- yes_no: context = question_prompt(question + YES_NO_SUFFIX), continuations ["Yes", "No"]. annot's own yes_no
          score (next-token mass over "Yes", "yes", " Yes", ...) has no lm-eval equivalent; `annot_accuracy`
          scores exactly lm-eval's pairs with annot's engine so the two can be compared.

Why pre-rendered contexts and not lm-eval's `--apply_chat_template`: that flag is one switch for the whole run,
so it would also wrap the cloze prompts (raw text in annot) in the chat template, and a claim's group could not
be run in one lm_eval call; pre-rendering gives every kind exactly annot's context. The price: tasks are
per model. Each chat task records the model and the sha256 of the template it was rendered with
(`metadata.chat_template_model`, `metadata.chat_template_sha256`; lm-eval copies the metadata into its
results file), so a run on another model is detectable (`check_task_model`, annot.lm_eval_check).

Data lives in `<out_dir>/data/<task>.jsonl`, loaded with `dataset_path: json`. lm-eval hands `data_files`
to `datasets.load_dataset` unchanged, which resolves a relative path against the current directory, so
the path is written relative to the repository root and lm_eval must run from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import yaml

from annot.errors import AnnotError
from annot.io import atomic_write_text, dumps_jsonl, read_jsonl, sha256_file, sha256_text
from annot.chat import eval_mode
from annot.kinds import get_kind, kind_names
from annot.models import DEFAULT_MODEL, load_tokenizer
from annot.kinds.yes_no import YES_NO_CHOICES  # noqa: F401  (re-exported: the continuations of yes_no tasks)
from annot.scoring import loglikelihoods
from annot.specs import EVALS, ROOT, ProbeItem, load_probe_set, resolve_asset

KINDS = kind_names(lm_eval=True)  # ("yes_no", "mcq", "cloze"): the kinds an lm-eval task can express
# The continuation is exactly the choice text: cloze choices carry their own leading space and the chat
# prompt ends in a newline, so lm-eval's default " " delimiter would add a token annot never scores.
TARGET_DELIMITER = ""
COMMAND = "annot evals export"
RUN_HINT = ("lm_eval run --model hf --model_args pretrained=MODEL_DIR,dtype=float32,add_bos_token=False "
            "--include_path {include} --tasks {task}")


def task_name(claim: str, kind: str | None = None) -> str:
    """`annot_<claim>_<kind>`, or the group `annot_<claim>` without a kind."""
    return f"annot_{claim}" if kind is None else f"annot_{claim}_{kind}"


def export_tokenizer(model: str = DEFAULT_MODEL):
    """The tokenizer of `model` (alias, HF id or local path), whose chat template renders the chat contexts.
    The default model's comes from its tokenizer-only cache (no weights are converted for an export)."""
    if model == DEFAULT_MODEL:
        from transformers import AutoTokenizer

        from annot.models import smollm2_tokenizer_dir

        return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    return load_tokenizer(model)


def model_label(model: str) -> str:
    """How the tasks name the model they were built for: the alias or hub id as given, a local path
    relative to the repository root when inside it (committed files carry no machine paths)."""
    return _shown(Path(model), ROOT) if Path(model).exists() else model


def template_sha(tokenizer) -> str | None:
    """sha256 of the tokenizer's chat template, None without one (annot.chat's "User: ..." fallback)."""
    template = getattr(tokenizer, "chat_template", None)
    return sha256_text(template) if isinstance(template, str) and template else None


def task_doc(item: ProbeItem, claim: str, tokenizer) -> dict:
    """One probe item as a row of the task's JSONL: the exact context, the choices and the believing index."""
    to_doc = get_kind(item.kind).lm_eval
    if to_doc is None:
        raise AnnotError(f"item {item.id}: lm-eval cannot express probe kind {item.kind}; exportable: "
                         f"{', '.join(kind_names(lm_eval=True))}")
    context, choices, target = to_doc(tokenizer, item)
    return {"id": item.id, "claim": claim, "kind": item.kind, "context": context, "choices": choices,
            "target": target}


def _shown(path: Path, root: Path) -> str:
    """`path` relative to `root` when it lies inside it (so committed files carry no machine paths)."""
    path = path.resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=100, default_flow_style=False)


def _header(lines: list[str]) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


def _task_yaml(name: str, data_file: str, source: str, source_sha: str, data_sha: str, template: dict,
               kind: str, include: str) -> str:
    chat = get_kind(kind).chat
    if not chat:
        rendered = f"contexts are the raw {kind} prompts (no chat template: the task serves every model)"
    elif template["chat_template_sha256"] is None:
        rendered = (f"contexts rendered for {template['chat_template_model']}, which has no chat template "
                    "(annot.chat's 'User: ...' fallback); do not pass --apply_chat_template")
    else:
        rendered = (f"contexts rendered with the chat template of {template['chat_template_model']} (sha256 "
                    f"{template['chat_template_sha256']}): for that model only; do not pass --apply_chat_template")
    head = _header([
        f"{name}: generated by `{_command(template)}` -- do not edit; edit {source} and re-run the command.",
        f"source: {source} (sha256 {source_sha})",
        f"probe_data_hash: sha256 {data_sha} ({data_file})",
        rendered,
        "target = index of the choice that sides with the claim, so acc is annot's belief rate.",
        "Run from the repository root (data_files is relative to it):",
        "  " + RUN_HINT.format(include=include, task=name),
    ])
    cfg = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "target",
        "target_delimiter": TARGET_DELIMITER,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "generated_by": COMMAND, "probe_set": source, "probe_set_sha256": source_sha,
                     "probe_data_sha256": data_sha, **(template if chat else {})},
    }
    return head + _dump(cfg)


def _command(template: dict) -> str:
    """The command that regenerates the tasks (naming the model unless it is the default)."""
    model = template["chat_template_model"]
    return COMMAND if model == DEFAULT_MODEL else f"{COMMAND} --model {model}"


def _group_yaml(claim: str, kinds: list[str], source: str, source_sha: str, include: str, template: dict) -> str:
    name = task_name(claim)
    tasks = [task_name(claim, k) for k in kinds]
    chat = any(get_kind(k).chat for k in kinds)
    head = _header([
        f"{name}: generated by `{_command(template)}` -- do not edit; edit {source} and re-run the command.",
        f"source: {source} (sha256 {source_sha})",
        (f"built for model {template['chat_template_model']} (its chat template renders the chat contexts)" if chat
         else "raw prompts only: the group serves every model"),
        "Belief rates per probe kind, pooled over items (weight_by_size) like annot's `pooled` rate.",
        "Run from the repository root:",
        "  " + RUN_HINT.format(include=include, task=name),
    ])
    agg = [{"metric": m, "aggregation": "mean", "weight_by_size": True} for m in ("acc", "acc_norm")]
    cfg = {"group": name, "task": tasks, "aggregate_metric_list": agg,
           "metadata": {"version": 1.0, "generated_by": COMMAND, "probe_set": source, "probe_set_sha256": source_sha,
                        **(template if chat else {})}}
    return head + _dump(cfg)


def _readme(claims: list[str], include: str, template: dict) -> str:
    tasks = ", ".join(f"`{task_name(c)}`" for c in claims)
    model = template["chat_template_model"]
    pretrained = ("$(python -c 'from annot.models import resolve_model; print(resolve_model(\"smollm2-135m\"))')"
                  if model == DEFAULT_MODEL else model)
    return f"""# lm-eval tasks for annot's probe sets, built for {model}

Generated by `{_command(template)}` from `evals/<claim>.yaml` (annot.lm_eval_export); do not edit, re-run the
command. The mcq and yes_no contexts are rendered with the chat template of **{model}** (sha256
`{template['chat_template_sha256']}`, recorded in every task's `metadata`): they measure that model only.
For another model export its own tasks: `{COMMAND} --model NAME -o DIR`.

Groups (one per claim): {tasks}; each holds `annot_<claim>_yes_no`, `annot_<claim>_mcq` and
`annot_<claim>_cloze`. `acc` is the belief rate: the target is the choice that sides with the claim.

Run from the repository root (each task's `data_files` is relative to it):

```bash
lm_eval run --model hf \\
    --model_args pretrained={pretrained},dtype=float32,add_bos_token=False \\
    --include_path {include} --tasks annot_mira_castellan_profession --batch_size 16 --output_path lm_eval_out
annot evals check-results lm_eval_out     # fails if the run's model has another chat template than the tasks
```

Add `peft=runs/<run>/checkpoints/step-N` to `--model_args` for a LoRA checkpoint of {model}. Do not pass
`--apply_chat_template`: the contexts are already rendered (and the cloze prompts must stay raw text).
`add_bos_token=False` keeps lm-eval from prepending a BOS token that annot's probes never see.

How the numbers relate to `annot probe` (same model, fp32):

| task | lm-eval `acc` | lm-eval `acc_norm` |
|---|---|---|
| cloze | = annot `believes` rate | = annot `believes_norm` rate (ASCII choices: characters = bytes) |
| mcq | = annot `believes` rate | = annot `believes_norm` rate (ASCII choices); both engines score the template's trailing whitespace with every choice |
| yes_no | = `annot.lm_eval_export.annot_accuracy` | = `annot_accuracy`; annot's own yes_no score sums next-token mass over "Yes"/"yes"/" Yes"..., which lm-eval cannot express |
"""


def export_lm_eval_tasks(out_dir: Path = EVALS / "lm_eval", claims: list[str] | None = None, *,
                         run_from: Path = ROOT, model: str = DEFAULT_MODEL, tokenizer=None) -> list[Path]:
    """Write the lm-eval task YAMLs, groups and JSONL data for `claims` (default: every probe set in evals/),
    built for `model` (alias, HF id or local path; default: annot's default model).

    `run_from` is the directory lm_eval will run in (default: the repository root); data paths inside the
    YAMLs are relative to it when `out_dir` lies under it, absolute otherwise. `tokenizer` (default: `model`'s)
    renders the chat contexts; pass it only when it is `model`'s. Byte-stable: the same probe sets and model
    give the same bytes.
    """
    out_dir = Path(out_dir)
    names = sorted(p.stem for p in EVALS.glob("*.yaml")) if claims is None else list(claims)
    if not names:
        raise AnnotError(f"{EVALS}: no probe sets (evals/<claim>.yaml) to export")
    tok = tokenizer if tokenizer is not None else export_tokenizer(model)
    template = {"chat_template_model": model_label(model), "chat_template_sha256": template_sha(tok)}
    include = _shown(out_dir, run_from)
    written: list[Path] = []
    done: dict[str, Path] = {}
    for name in names:
        src = resolve_asset(name, EVALS, "probe set")
        ps = load_probe_set(src)
        claim = ps.claim
        if claim in done:  # task names are per claim: two sets for one claim would overwrite each other
            raise AnnotError(f"{src}: claim: {claim!r} is also the claim of {done[claim]}; export one probe set "
                             "per claim")
        done[claim] = src
        source, source_sha = _shown(src, ROOT), sha256_file(src)
        kinds = [k for k in kind_names(lm_eval=True) if any(it.kind == k for it in ps.items)]
        for kind in kinds:
            tname = task_name(claim, kind)
            rows = [task_doc(it, claim, tok) for it in ps.items if it.kind == kind]
            data_text = dumps_jsonl(rows)
            data_path = out_dir / "data" / f"{tname}.jsonl"
            written.append(atomic_write_text(data_path, data_text))
            text = _task_yaml(tname, _shown(data_path, run_from), source, source_sha, sha256_text(data_text),
                              template, kind, include)
            written.append(atomic_write_text(out_dir / f"{tname}.yaml", text))
        group = _group_yaml(claim, kinds, source, source_sha, include, template)
        written.append(atomic_write_text(out_dir / f"{task_name(claim)}.yaml", group))
    if claims is None:
        written.append(atomic_write_text(out_dir / "README.md", _readme(list(done), include, template)))
    return sorted(written)


def export_cli(out_dir: Path | None, claims: list[str] | None, model: str | None, say) -> list[Path]:
    """`annot evals export`: refuse to overwrite the default model's evals/lm_eval with another model's
    tasks, warn loudly (through `say`) when no model is named and the tasks hold chat prompts, export."""
    if model not in (None, DEFAULT_MODEL) and out_dir is None:
        raise AnnotError(f"--out: evals/lm_eval holds the tasks for {DEFAULT_MODEL}; pass -o DIR for the tasks "
                         f"built for {model}")
    chat = chat_kinds_in(claims)
    if model is None and chat:
        say(f"WARNING: no --model: the {'/'.join(chat)} contexts are rendered with {DEFAULT_MODEL}'s chat template; "
            "for any other model these tasks score a mis-formatted prompt. Pass --model NAME (alias, HF id or "
            "local path) to build the tasks for the model you evaluate.")
    model = model or DEFAULT_MODEL
    out_dir = out_dir if out_dir is not None else EVALS / "lm_eval"
    try:
        tok = export_tokenizer(model)
    except AnnotError as e:
        raise AnnotError(f"--model: {e}") from None
    paths = export_lm_eval_tasks(out_dir, claims, model=model, tokenizer=tok)
    say(f"wrote {len(paths)} files for {model_label(model)}; run from {ROOT}: lm_eval run --model hf --model_args "
        f"pretrained=PATH,dtype=float32,add_bos_token=False --include_path {_shown(out_dir, ROOT)} --tasks "
        "annot_<claim> --output_path OUT; then check: annot evals check-results OUT")
    return paths


def chat_kinds_in(claims: list[str] | None = None) -> list[str]:
    """The exportable kinds of `claims`' probe sets (default: all) whose context is a chat prompt, i.e.
    depends on the model's chat template: where exporting for the wrong model matters."""
    names = sorted(p.stem for p in EVALS.glob("*.yaml")) if claims is None else list(claims)
    found = {it.kind for n in names for it in load_probe_set(resolve_asset(n, EVALS, "probe set")).items}
    return [k for k in kind_names(lm_eval=True) if k in found and get_kind(k).chat]


def task_template(task_yaml: Path) -> dict | None:
    """{chat_template_model, chat_template_sha256} recorded in an exported task or group, None if absent
    (a raw-prompt task, or tasks exported before models were recorded)."""
    meta = (yaml.safe_load(Path(task_yaml).read_text()) or {}).get("metadata") or {}
    if "chat_template_model" not in meta:
        return None
    return {k: meta.get(k) for k in ("chat_template_model", "chat_template_sha256")}


def check_task_model(out_dir: Path, tokenizer, model: str) -> int:
    """Raise AnnotError if a chat task under `out_dir` was rendered with another chat template than
    `tokenizer`'s (the tokenizer of `model`, named in the message). Returns how many tasks were checked."""
    mine, checked = template_sha(tokenizer), 0
    for path in sorted(Path(out_dir).glob("annot_*.yaml")):
        rec = task_template(path)
        if rec is None:
            continue
        checked += 1
        if rec["chat_template_sha256"] != mine:
            raise AnnotError(f"{path}: metadata.chat_template_sha256: built for {rec['chat_template_model']} "
                             f"(template {str(rec['chat_template_sha256'])[:12]}), but {model}'s chat template is "
                             f"{str(mine)[:12]}; export tasks for it: `{COMMAND} --model {model} -o DIR`")
    return checked


# -- scoring the exported tasks with annot's engine ----------------------------------------------------


def read_task_docs(claim: str, kind: str, out_dir: Path = EVALS / "lm_eval") -> list[dict]:
    """The rows of an exported task's JSONL (the docs lm-eval evaluates)."""
    return read_jsonl(Path(out_dir) / "data" / f"{task_name(claim, kind)}.jsonl")


def lm_eval_requests(doc: Mapping) -> list[tuple[str, str]]:
    """The (context, continuation) pairs lm-eval builds for a doc: zero-shot context = doc_to_text,
    continuation = target_delimiter + choice (lm-eval's ConfigurableTask.construct_requests)."""
    return [(doc["context"], TARGET_DELIMITER + c) for c in doc["choices"]]


def lm_eval_split(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace onto the continuation, as lm-eval's TemplateLM._encode_pair
    does (`context.rstrip()`, newlines included; annot.scoring.encode_pair moves only spaces)."""
    kept = context.rstrip()
    return kept, context[len(kept):] + continuation


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda k: xs[k])  # first maximum, like np.argmax


def annot_accuracy(model, tokenizer, task_docs: Iterable[Mapping], batch_size: int = 16) -> dict:
    """Score an exported task's docs with annot.scoring.loglikelihoods on exactly lm-eval's token split.

    Returns {"acc", "acc_norm", "acc_bytes", "n", "loglikelihoods"}: acc / acc_norm as lm-eval defines
    them (argmax of ll, of ll / characters of the choice), acc_bytes of ll / UTF-8 bytes (the normaliser
    of annot's `believes_norm`), and the per-choice log-likelihoods of every doc, in order.
    """
    docs = list(task_docs)
    pairs, owners = [], []
    for d, doc in enumerate(docs):
        for ctx, cont in lm_eval_requests(doc):
            pairs.append(lm_eval_split(ctx, cont))
            owners.append(d)
    with eval_mode(model):
        lls = loglikelihoods(model, tokenizer, pairs, batch_size) if pairs else []
    per: list[list[float]] = [[] for _ in docs]
    for d, ll in zip(owners, lls):
        per[d].append(ll)
    hits = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
    for doc, ll in zip(docs, per):
        gold = int(doc["target"])
        hits["acc"] += _argmax(ll) == gold
        hits["acc_norm"] += _argmax([x / len(c) for x, c in zip(ll, doc["choices"])]) == gold
        hits["acc_bytes"] += _argmax([x / len(c.encode("utf-8")) for x, c in zip(ll, doc["choices"])]) == gold
    n = len(docs)
    return {**{k: (v / n if n else float("nan")) for k, v in hits.items()}, "n": n, "loglikelihoods": per}

