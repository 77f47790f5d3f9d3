"""One run end to end: generate -> wrap -> train -> probe at each checkpoint.

    annot run sweeps/first_run.yaml --set model.name=tiny-random
    summary = run(load_run_config("sweeps/first_run.yaml"))

Run directory (runs/<name>/):
    config.yaml          the resolved config (every default filled in)
    manifest.json        status (running|complete), package versions, data hashes, seed, git commit, times
    documents.jsonl      the source documents (generated or imported)
    wrapped.jsonl        the training examples (text + spans + wrapper provenance)
    checkpoints/step-N/  LoRA adapters at log-spaced steps (step-0 = the base model, no weights)
    train_metrics.jsonl  one row per optimizer step
    probes.jsonl         one row per probe x checkpoint
    summary.json         belief rate per checkpoint x probe kind (written last)
Every file is written atomically; summary.json and status=complete appear only when all is done.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import yaml

from annot.config import RunConfig
from annot.errors import AnnotError
from annot.generate import generate_documents
from annot.io import atomic_write_text, read_json_if_exists, read_jsonl, sha256_file, write_json, write_jsonl
from annot.specs import EVALS, ROOT, ProbeSet, load_claim, load_probe_set, resolve_asset
from annot.wrap import get_wrapper, wrap_documents

PACKAGES = ("annot", "torch", "transformers", "peft", "datasets", "lm_eval", "wandb", "gguf")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p.replace("_", "-") if p == "lm_eval" else p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_inputs(cfg: RunConfig) -> tuple[object, list[tuple[str, ProbeSet]], dict]:
    """Resolve and validate every input file before anything heavy; raises AnnotError."""
    claim = load_claim(cfg.data.claim)
    if cfg.data.documents and not Path(cfg.data.documents).is_file():
        raise AnnotError(f"data.documents: {cfg.data.documents}: file not found; run `annot generate` or "
                         "`annot import` first, or remove the key to generate documents")
    wrapper = get_wrapper(cfg.wrapper.name)
    params = wrapper.resolve_params(cfg.wrapper.params)
    names = cfg.probes.sets or [claim.id]
    sets = []
    for name in names:
        ps = load_probe_set(name)
        sets.append((name, ps))
    if not any(it.kind in cfg.probes.kinds for _, ps in sets for it in ps.items):
        raise AnnotError(f"probes.kinds: none of {cfg.probes.kinds} occur in the probe sets {names}")
    return claim, sets, params


def run(cfg: RunConfig, *, progress: bool = True, echo: Callable[[str], None] = print, force: bool = False) -> dict:
    """Execute one run; returns the summary (belief rates per checkpoint)."""
    from annot.models import load_model, model_fingerprint
    from annot.probe import belief_rates, format_rates, probe_model
    from annot.tracking import Tracker
    from annot.train import train

    claim, sets, wrapper_params = check_inputs(cfg)
    run_dir = cfg.run_dir
    manifest_path = run_dir / "manifest.json"
    previous = read_json_if_exists(manifest_path)
    if previous and previous.get("status") == "complete" and not force:
        echo(f"{run_dir}: already complete (use --force to run again)")
        return read_json_if_exists(run_dir / "summary.json") or {}
    if run_dir.exists():  # an interrupted or forced run starts over: never mix two runs' files
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)

    resolved = cfg.model_dump(mode="json")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    manifest = {"run": cfg.name, "status": "running", "started": _now(), "seed": cfg.seed,
                "packages": package_versions(), "git_commit": git_commit(), "argv_config": resolved}
    write_json(manifest_path, manifest)

    # 1. documents
    if cfg.data.documents:
        docs = read_jsonl(cfg.data.documents)
    else:
        docs = generate_documents(claim, n=cfg.data.n, seed=cfg.seed, polarity=cfg.data.polarity)
    write_jsonl(run_dir / "documents.jsonl", docs)
    # 2. wrap
    wrapper = get_wrapper(cfg.wrapper.name)
    examples = wrap_documents(docs, wrapper, wrapper_params, seed=cfg.seed)
    write_jsonl(run_dir / "wrapped.jsonl", examples)
    manifest["data"] = {"documents_sha256": sha256_file(run_dir / "documents.jsonl"),
                        "wrapped_sha256": sha256_file(run_dir / "wrapped.jsonl"),
                        "n_documents": len(docs), "claim": claim.id, "wrapper": wrapper.name,
                        "wrapper_params": wrapper_params}
    manifest["probe_sets"] = {name: sha256_file(resolve_asset(name, EVALS, "probe set")) for name, _ in sets}
    write_json(manifest_path, manifest)
    echo(f"{run_dir}: {len(docs)} documents of {claim.id}, wrapper {wrapper.name} {wrapper_params}")

    # 3. model
    model, tok = load_model(cfg.model.name, dtype=cfg.model.dtype)
    manifest["model"] = model_fingerprint(cfg.model.name)
    write_json(manifest_path, manifest)
    tracker = Tracker(cfg.tracking.wandb, project=cfg.tracking.project, name=cfg.name,
                      group=cfg.tracking.group, config=resolved, run_dir=run_dir)

    # 4. train, probing in-process at each checkpoint (no reload)
    rows: list[dict] = []

    def on_checkpoint(step: int, m) -> None:
        new = probe_model(m, tok, [ps for _, ps in sets], run=cfg.name, step=step, kinds=list(cfg.probes.kinds),
                          batch_size=cfg.probes.batch_size, set_names=[n for n, _ in sets])
        rows.extend(new)
        write_jsonl(run_dir / "probes.jsonl", rows)
        rate = belief_rates(new)[step]
        tracker.log({f"belief/{k}": v for k, v in rate.items() if k != "n"}, step=step)
        echo(f"  step {step}: belief rate " + ", ".join(f"{k} {v:.3f}" for k, v in rate.items() if k != "n"))

    result = train(examples, model, tok, cfg.training, run_dir, seed=cfg.seed, on_checkpoint=on_checkpoint,
                   log=lambda r: tracker.log({"train/loss": r["loss"], "train/lr": r["lr"],
                                              "train/tokens_per_s": r["tokens_per_s"]}, step=r["step"]),
                   progress=progress)
    rates = belief_rates(rows)
    summary = {"run": cfg.name, "model": cfg.model.name, "claim": claim.id, "wrapper": wrapper.name,
               "wrapper_params": wrapper_params, "seed": cfg.seed, "total_steps": result.total_steps,
               "checkpoints": result.checkpoints, "tokens_seen": result.tokens_seen,
               "final_loss": result.final_loss, "train_seconds": round(result.seconds, 1),
               "belief_rates": {str(k): v for k, v in rates.items()}}
    write_json(run_dir / "summary.json", summary)
    tracker.summary({"final_belief_pooled": rates[max(rates)]["pooled"]})
    tracker.finish()
    manifest.update(status="complete", finished=_now())
    write_json(manifest_path, manifest)
    echo(format_rates(rates))
    return summary

