"""Checkpoints of a training run: when they are taken, how they are written, found and resumed.

    steps = checkpoint_steps(total_steps=100, count=5)       # [0, 3, 10, 32, 100]
    for step, d, meta in complete_checkpoints(run_dir): ...  # every whole checkpoint, by step
    found = latest_resumable(run_dir)                        # (step, dir) to resume from, or None

Layout: runs/<run>/checkpoints/step-N/ holds the weights (LoRA: the adapter only; step 0, the base
model: none), `training_state.pt` (optimizer, RNG, counters; not at step 0) and `checkpoint.json`,
written last. A checkpoint is written into step-N.tmp and renamed into place, so a half-written one
is never mistaken for a whole one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from annot.errors import AnnotError
from annot.io import atomic_write_text, write_json

STATE_FILE = "training_state.pt"


def checkpoint_steps(total_steps: int, count: int) -> list[int]:
    """`count` checkpoints log-spaced over [0, total]: 0 (the base model), total**(i/(count-1)) for
    i = 1..count-1, so 3 checkpoints are start, geometric middle and end. Duplicates (short runs)
    collapse, so fewer may be returned."""
    if total_steps <= 0:
        return [0]
    steps = {0} | {max(1, round(total_steps ** (i / (count - 1)))) for i in range(1, count)}
    return sorted(steps)


def save_checkpoint(model, opt, out: Path, step: int, method: str, extra: dict, gathered: tuple | None = None) -> Path:
    """Step 0 is the base model (no weights); LoRA saves the adapter only. The optimizer and RNG
    state go beside the weights so an interrupted run resumes exactly; `checkpoint.json` is
    written last inside a temp dir that is renamed into place (a directory: atomic_path writes
    files), so a half-written checkpoint is never mistaken for a whole one. `gathered` = (weights,
    optimizer state) from gather_sharded() under FSDP, where the model and optimizer themselves
    hold only this process's shards."""
    d = out / "checkpoints" / f"step-{step}"
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if step > 0:
        weights, optim = gathered if gathered else (None, None)
        kw = {"state_dict": _untied(model, weights)} if weights is not None else {}
        model.save_pretrained(tmp, safe_serialization=True, **kw)
        state = {"torch_rng": torch.get_rng_state(), "py_rng": random.getstate(), **extra}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if gathered:
            state["optimizer_full"] = optim  # keyed by parameter name; shards again on any number of processes
        else:
            state["optimizer"] = opt.state_dict()
        if method == "full":
            state["model"] = dict(weights if weights is not None else model.state_dict())
        torch.save(state, tmp / STATE_FILE)
    write_json(tmp / "checkpoint.json", {"step": step, "method": method, "base": step == 0})
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    return d


def gather_sharded(model, opt, method: str) -> tuple[dict, dict]:
    """Under FSDP: the whole trainable state, gathered from every process's shards (a collective:
    every process must call it) into CPU memory on the main process (the others get empty dicts).
    LoRA leaves the frozen base out, so a checkpoint moves only the adapter across processes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=method == "lora")
    return get_state_dict(model, opt, options=options)


def _untied(model, weights: dict) -> dict:
    """`weights` without the second name of each tied weight (the LM head tied to the embeddings),
    which save_pretrained drops by itself only when the two share memory, as gathered copies do not.
    The resume state keeps every name: load_state_dict wants them all."""
    first: dict[int, str] = {}
    drop = {name for name, p in model.named_parameters(remove_duplicate=False)
            if first.setdefault(id(p), name) != name}
    return {k: v for k, v in weights.items() if k not in drop}


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path, dict]]:
    """(step, dir, checkpoint.json) of every completely written checkpoint, by step. A save is
    written into step-N.tmp, checkpoint.json last, then renamed: a .tmp dir (killed before the
    rename) or a dir without checkpoint.json (killed while writing) is not a checkpoint."""
    found = []
    for d in (Path(run_dir) / "checkpoints").glob("step-*"):
        if d.suffix == ".tmp" or not (d / "checkpoint.json").is_file():
            continue
        try:
            meta = json.loads((d / "checkpoint.json").read_text())
        except ValueError:
            continue
        found.append((meta["step"], d, meta))
    return sorted(found, key=lambda c: c[0])


def latest_resumable(run_dir: Path) -> tuple[int, Path] | None:
    """(step, dir) of the newest checkpoint that was completely written and holds a training state."""
    resumable = [(step, d) for step, d, _ in complete_checkpoints(run_dir) if (d / STATE_FILE).is_file()]
    return resumable[-1] if resumable else None


def restore_checkpoint(model, opt, d: Path, method: str, sharded: bool) -> dict:
    """Load a checkpoint's weights into the (not yet sharded) model, its RNG state, and unless
    `sharded` its optimizer state (under FSDP: restore_sharded_optimizer, after sharding); returns
    the saved training state (its counters: tokens_seen, tokens_loss, step)."""
    # mmap: under FSDP every process reads the file but only the main one materialises the optimizer
    state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=False, mmap=True)
    if ("optimizer_full" in state) != sharded:
        written, now = ("an FSDP", "without FSDP") if "optimizer_full" in state else ("a non-FSDP", "under FSDP")
        raise AnnotError(f"{d}: written by {written} launch, resumed {now}; resume with the launch that "
                         "started the run, or pass --force to start over")
    _load_weights(model, d, state, method)
    if not sharded:
        opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["py_rng"])
    return state


def _load_weights(model, d: Path, state: dict, method: str) -> None:
    """The trained weights of checkpoint `d`: the adapter file (LoRA) or the full state (method full)."""
    if method == "lora":
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(d / "adapter_model.safetensors")))
        return
    saved = next(iter(state["model"].values()), None)
    if saved is not None and saved.is_floating_point() and next(model.parameters()).dtype != saved.dtype:
        model.to(saved.dtype)  # fp32 masters of a bf16 mixed-precision run: do not round them on resume
    model.load_state_dict(state["model"])


def restore_sharded_optimizer(model, opt, state: dict, main: bool) -> None:
    """The full optimizer state, from the main process's copy, sharded onto every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, optim_state_dict=state["optimizer_full"] if main else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def keep_metrics_upto(metrics_path: Path, step: int) -> None:
    """On resume: drop the rows of train_metrics.jsonl after `step` (steps the resumed run trains
    again), so the file ends up as an uninterrupted run's."""
    rows = metrics_path.read_text().splitlines() if metrics_path.is_file() else []
    kept = [row for row in rows if row and json.loads(row)["step"] <= step]
    atomic_write_text(metrics_path, "".join(row + "\n" for row in kept))
