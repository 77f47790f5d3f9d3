"""(c) of `annot bench`: probing the saved checkpoints with annot's engine and with lm-eval's CLI.

    ours = probe_with_annot("smollm2-135m", claim, saved_checkpoints(run_dir))
    theirs = probe_with_lm_eval("smollm2-135m", claim, ckpts, work, "cpu", print)
    rows, mismatches = compare_accuracies(ours["accuracy"], theirs["accuracy"], n_items)

Both must report the same accuracy per checkpoint and kind (cloze, mcq: lm-eval acc = annot's
believes rate; yes_no: = annot.lm_eval_export.annot_accuracy's acc).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from annot.bench.settings import KINDS, LM_EVAL_BATCH_SIZE, PROBE_BATCH_SIZE
from annot.errors import AnnotError


def saved_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every completely written checkpoint, by step."""
    from annot.train import complete_checkpoints

    return [(step, d) for step, d, _ in complete_checkpoints(run_dir)]


def probe_with_annot(model_name: str, claim: str, ckpts: list[tuple[int, Path]]) -> dict:
    """annot's engine: base model loaded once, adapters swapped; accuracies per checkpoint and kind."""
    from annot.lm_eval_export import annot_accuracy, read_task_docs
    from annot.models import load_model
    from annot.checkpoint_switch import CheckpointSwitch
    from annot.probe import probe_model
    from annot.specs import load_probe_set

    t0 = time.perf_counter()
    model, tok = load_model(model_name, dtype="float32")  # lm-eval runs dtype=float32 too
    ps = load_probe_set(claim)
    yes_no_docs = read_task_docs(claim, "yes_no")
    accuracy: dict[int, dict[str, float]] = {}
    native_yes_no: dict[int, float] = {}
    per_checkpoint: dict[int, float] = {}
    models = CheckpointSwitch(model)
    for step, d in ckpts:
        t = time.perf_counter()
        with models.switch(step, d, {"base": step == 0, "method": "lora"}) as m:
            rows = probe_model(m, tok, [ps], run="bench", step=step, kinds=list(KINDS),
                               batch_size=PROBE_BATCH_SIZE)
            yn = annot_accuracy(m, tok, yes_no_docs, batch_size=PROBE_BATCH_SIZE)
        acc = {"yes_no": yn["acc"]}
        for kind in ("mcq", "cloze"):
            flags = [r["believes"] for r in rows if r["kind"] == kind]
            if flags:
                acc[kind] = sum(flags) / len(flags)
        yn_rows = [r["believes"] for r in rows if r["kind"] == "yes_no"]
        native_yes_no[step] = sum(yn_rows) / len(yn_rows) if yn_rows else float("nan")
        accuracy[step] = acc
        per_checkpoint[step] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    del model, models
    gc.collect()
    return {"seconds": seconds, "per_checkpoint_s": per_checkpoint, "accuracy": accuracy,
            "yes_no_native": native_yes_no, "batch_size": PROBE_BATCH_SIZE}


def lm_eval_executable() -> str:
    """The `lm_eval` script of this interpreter's environment, else the one on PATH."""
    import shutil

    beside = Path(sys.executable).parent / "lm_eval"
    found = str(beside) if beside.is_file() else shutil.which("lm_eval")
    if not found:
        raise AnnotError("bench: the lm_eval command is not installed; `pip install lm-eval` or pass lm_eval=False")
    return found


def lm_eval_command(model_path: str, claim: str, ckpt: Path | None, output: Path, device: str) -> list[str]:
    """The documented CLI run (evals/lm_eval/README.md) for one checkpoint; ckpt None is the base model."""
    from annot.lm_eval_export import task_name

    model_args = f"pretrained={model_path}" + (f",peft={ckpt}" if ckpt is not None else "") + \
        ",dtype=float32,add_bos_token=False"
    return [lm_eval_executable(), "run", "--model", "hf", "--model_args", model_args,
            "--include_path", "evals/lm_eval", "--tasks", task_name(claim), "--batch_size", str(LM_EVAL_BATCH_SIZE),
            "--device", device, "--output_path", str(output)]


def probe_with_lm_eval(model_name: str, claim: str, ckpts: list[tuple[int, Path]], work: Path,
                       device: str, echo) -> dict:
    """lm-eval's CLI once per checkpoint, from the repository root (the tasks' data paths are relative)."""
    from annot.lm_eval_export import task_name
    from annot.models import resolve_model
    from annot.specs import ROOT

    model_path = resolve_model(model_name)
    if Path(model_path).exists():  # lm_eval runs from the repository root: pass an absolute path
        model_path = str(Path(model_path).resolve())
    # offline unless the caller says otherwise: every input is local
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **os.environ}
    accuracy: dict[int, dict[str, float]] = {}
    per_checkpoint: dict[int, float] = {}
    commands: dict[int, str] = {}
    peak_rss: dict[int, float | None] = {}
    for step, d in ckpts:
        out = work / f"lm-eval-step-{step}"
        ckpt = None if step == 0 else Path(d).resolve()
        if "," in model_path or (ckpt is not None and "," in str(ckpt)):
            raise AnnotError(f"bench: lm-eval's --model_args cannot hold a path with a comma ({model_path}, {ckpt})")
        cmd = lm_eval_command(model_path, claim, ckpt, out, device)
        commands[step] = " ".join(cmd)
        echo(f"lm-eval: step-{step} ...")
        t = time.perf_counter()
        rc, peak_rss[step] = run_sampling_rss(cmd, cwd=ROOT, env=env, log=work / f"lm-eval-step-{step}.log")
        per_checkpoint[step] = time.perf_counter() - t
        found = sorted(out.rglob("results_*.json"))
        if rc != 0 or not found:
            tail = (work / f"lm-eval-step-{step}.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise AnnotError(f"bench: lm_eval failed on step-{step} (exit {rc}): " + " | ".join(tail))
        results = json.loads(found[-1].read_text(encoding="utf-8"))["results"]
        accuracy[step] = {k: results[task_name(claim, k)]["acc,none"] for k in KINDS
                          if task_name(claim, k) in results}
    return {"seconds": sum(per_checkpoint.values()), "per_checkpoint_s": per_checkpoint, "accuracy": accuracy,
            "batch_size": LM_EVAL_BATCH_SIZE, "device": device, "commands": commands, "peak_rss_mib": peak_rss}


def run_sampling_rss(cmd: list[str], cwd: Path, env: dict, log: Path, every: float = 0.05) -> tuple[int, float | None]:
    """Run cmd (stdout and stderr to `log`); return its exit status and its own peak RSS in MiB.

    getrusage(RUSAGE_CHILDREN) cannot give a child's own peak on Linux: exec keeps the high-water mark
    of the memory the child started from, which is this (large) process. The child's VmHWM in
    /proc/<pid>/status is its own and only grows, so sampling it until exit misses at most the last
    `every` seconds. None where /proc is unavailable."""
    peak = None
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) / 2 ** 10  # kB
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(every)
    return proc.returncode, peak


def compare_accuracies(ours: dict[int, dict[str, float]], theirs: dict[int, dict[str, float]] | None,
                       n_items: dict[str, int]) -> tuple[list[dict], list[dict]]:
    """Tidy rows (step, kind, n, annot, lm_eval, equal) and the rows that differ."""
    rows = []
    for step in sorted(ours):
        for kind in KINDS:
            if kind not in ours[step]:
                continue
            a = ours[step][kind]
            b = None if theirs is None else theirs.get(step, {}).get(kind)
            equal = None if theirs is None else (b is not None and abs(a - b) <= 1e-9)
            rows.append({"step": step, "kind": kind, "n": n_items.get(kind, 0), "annot": a, "lm_eval": b,
                         "equal": equal})
    return rows, [r for r in rows if r["equal"] is False]
