"""Check that an lm-eval run scored annot's exported tasks with the model they were built for.

    annot evals check-results lm_eval_out/          # a results_*.json, or a folder holding them
    checked = check_results(results_dict)           # from Python: the dict simple_evaluate returns

annot's mcq and yes_no tasks carry contexts pre-rendered with one model's chat template
(annot.lm_eval_export). lm-eval copies each task's `metadata` (with `chat_template_model` and
`chat_template_sha256`) into its results, next to the run's `model_args`. This module loads the
tokenizer named by `pretrained=` there and compares its chat template with the recorded one: a
mismatch means the rates measure a prompt the model was never formatted for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from annot.errors import AnnotError
from annot.lm_eval_export import COMMAND, template_sha


def pretrained_of(config: Mapping, where: str) -> str:
    """The `pretrained=` model of an lm-eval results `config` (model_args as a string or a dict)."""
    args = config.get("model_args")
    if isinstance(args, str):
        args = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv)
    model = (args or {}).get("pretrained")
    if not isinstance(model, str) or not model:
        raise AnnotError(f"{where}: config.model_args has no pretrained=MODEL; cannot tell which model ran "
                         "(run lm_eval with --model hf --model_args pretrained=...)")
    return model


def check_results(results: Mapping, where: str = "lm-eval results", tokenizer=None) -> list[str]:
    """Raise AnnotError if any annot chat task in `results` was built for a chat template other than the
    run's model's; return the names of the tasks checked (empty when none recorded a template).
    `tokenizer` (default: loaded from the run's `pretrained=`) stands for the run's model."""
    records = {name: (cfg.get("metadata") or {}) for name, cfg in (results.get("configs") or {}).items()}
    records = {n: m for n, m in records.items() if "chat_template_sha256" in m}
    if not records:
        return []
    model = pretrained_of(results.get("config") or {}, where)
    if tokenizer is None:
        from annot.lm_eval_export import export_tokenizer

        tokenizer = export_tokenizer(model)
    mine = template_sha(tokenizer)
    for name in sorted(records):
        meta = records[name]
        if meta["chat_template_sha256"] != mine:
            raise AnnotError(
                f"{where}: task {name}: metadata.chat_template_sha256: built for {meta.get('chat_template_model')} "
                f"(template {str(meta['chat_template_sha256'])[:12]}) but run on {model} (template "
                f"{str(mine)[:12]}); its rates measure a mis-formatted prompt: export tasks for the model "
                f"(`{COMMAND} --model {model} -o DIR`) and rerun lm_eval")
    return sorted(records)


def results_files(path: Path) -> list[Path]:
    """`path` itself if it is a file, else every results_*.json below it (lm-eval's --output_path layout)."""
    path = Path(path)
    if path.is_file():
        return [path]
    found = sorted(path.rglob("results_*.json")) if path.is_dir() else []
    if not found:
        raise AnnotError(f"{path}: no lm-eval results (results_*.json); pass the file or the --output_path folder")
    return found


def check_results_path(path: Path) -> str:
    """check_results for every results file at `path` (raises on the first mismatch); one summary line each."""
    lines = []
    for f in results_files(path):
        try:
            results = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise AnnotError(f"{f}: not a readable lm-eval results JSON ({e}); pass a results_*.json") from None
        if not isinstance(results, dict):
            raise AnnotError(f"{f}: not an lm-eval results JSON (expected an object with configs and config)")
        tasks = check_results(results, str(f))
        lines.append(f"{f}: ok, {len(tasks)} annot chat task(s) built for the run's chat template" if tasks
                     else f"{f}: no annot chat tasks in it (nothing to check)")
    return "\n".join(lines)
