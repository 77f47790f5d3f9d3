"""One run end to end: generate -> wrap -> train -> probe at each checkpoint.

    annot run sweeps/first_run.yaml --set model.name=tiny-random
    summary = run(load_run_config("sweeps/first_run.yaml"))

Run directory (runs/<name>/):
    config.yaml          the resolved config (every default filled in)
    manifest.json        status (running|complete|failed), package versions, data hashes, seed, git commit, times
    documents.jsonl      the source documents (generated or imported)
    wrapped.jsonl        the training examples (text + spans + wrapper provenance)
    checkpoints/step-N/  LoRA adapters at log-spaced steps (step-0 = the base model, no weights)
    train_metrics.jsonl  one row per optimizer step
    probes.jsonl         one row per probe x checkpoint
    summary.json         belief rate per checkpoint x probe kind (written last)
Every file is written atomically; summary.json and status=complete appear only when all is done.

The steps of `_run_main` in order: the run directory (new, resumed or already complete), data and
wrapping, the model, training with a CheckpointProber (annot/run_probes.py) probing each checkpoint,
the probes still missing, the summary.
"""

from __future__ import annotations

import datetime as dt
import os
import json
import random
import importlib.metadata
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import yaml

from annot.config import RunConfig
from annot.distributed import is_main_process  # noqa: F401  (annot.cli and annot.sweep import it from here)
from annot.errors import AnnotError
from annot.generate import generate_documents, generate_transcripts
from annot.io import atomic_write_text, read_json_if_exists, read_records, sha256_file, write_json, write_jsonl
from annot.run_probes import CheckpointProber, probe_missing
from annot.specs import EVALS, ROOT, ProbeSet, load_behavior, load_claim, load_probe_set, resolve_asset
from annot.mixin import SHIPPED as SHIPPED_MIXIN, load_mixin
from annot.transcript_doc import check_form, transcripts_as_documents
from annot.wrap import WrapperSpec, get_wrapper, wrap_documents

# Default control claims, in order of preference: the first that is not the run's target (nor one
# of its probe sets' claims) is probed beside the target, so every run measures its answer bias.
CONTROL_CLAIMS = ("queen_python_textbook", "dreams_black_white")
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


def check_inputs(cfg: RunConfig) -> tuple[object, list[tuple[str, ProbeSet]], WrapperSpec]:
    """Resolve and validate every input file before anything heavy; raises AnnotError.

    Returns (claim or behaviour spec, [(name, probe set)], the wrapper with its resolved params)."""
    d = cfg.data
    subject = load_claim(d.claim) if d.claim else load_behavior(d.behavior)
    _check_output_dir(cfg.run_dir)
    for key in ("documents", "transcripts", "mixin"):
        value = getattr(d, key)
        if value and not Path(value).is_file() and not (key == "mixin" and value in SHIPPED_MIXIN):
            raise AnnotError(f"data.{key}: {value}: file not found; run `annot generate` / `annot import` "
                             "first, or remove the key" + (" (or name pretraining)" if key == "mixin" else ""))
    if d.documents and d.behavior:
        raise AnnotError("data.documents: documents need data.claim; for transcripts use data.transcripts")
    if d.transcripts and d.claim:
        raise AnnotError("data.transcripts: transcripts need data.behavior, not data.claim")
    for key, field in (("documents", "text"), ("transcripts", "messages"), ("mixin", None)):
        value = getattr(d, key)
        if value and not (key == "mixin" and value in SHIPPED_MIXIN and not Path(value).is_file()):
            rows = read_records(value)  # malformed or empty files, or spans that lie, fail here
            for i, r in enumerate(rows, 1):
                ok = isinstance(r.get(field), (str, list)) if field else (
                    isinstance(r.get("text"), str) or isinstance(r.get("messages"), list))
                if not ok or (field == "text" and not str(r.get("text", "")).strip()):
                    raise AnnotError(f"{value}: record {i}: needs a non-empty `{field or 'text` or `messages'}` "
                                     f"(data.{key}); see README 'Data formats'")
    if d.mixin_ratio > 0 and not d.mixin:
        raise AnnotError("data.mixin_ratio: > 0 but data.mixin is not set; give a mix-in JSONL "
                         "(e.g. from `annot distill`) or `pretraining` (the shipped paragraphs)")
    if d.claim:
        pick_genres(cfg)
    wrapper = get_wrapper(cfg.wrapper.name)
    kind = "documents" if d.claim else "transcripts"
    if wrapper.applies_to not in (kind, "both"):
        raise AnnotError(f"wrapper.name: {wrapper.name} applies to {wrapper.applies_to}, but this run trains on "
                         f"{kind}; see `annot wrap --list`")
    if d.behavior:
        check_form(wrapper, d.transcript_format, "wrapper.name")
    spec = wrapper.resolve(cfg.wrapper.params)  # once per run; passed on as this value
    sets = []
    if d.claim:
        names = cfg.probes.sets or [subject.id]
        for name in names:
            ps = load_probe_set(name)
            if ps.claim != subject.id:
                load_claim(ps.claim)  # a probe set must name a claim that exists
            sets.append((name, ps))
        if not any(it.kind in cfg.probes.kinds for _, ps in sets for it in ps.items):
            raise AnnotError(f"probes.kinds: none of {cfg.probes.kinds} occur in the probe sets {names}")
        control = control_set(cfg, subject.id, [ps.claim for _, ps in sets])
        if control:
            sets.append(control)
    from annot.models import check_model

    check_model(cfg.model.name)
    if "open_ended" in cfg.probes.kinds:
        from annot.judges import make_judge

        make_judge(dict(cfg.probes.judge), source="probes.judge")  # unknown judge / missing key: fail now
    return subject, sets, spec


def control_set(cfg: RunConfig, target: str, probed: list[str]) -> tuple[str, ProbeSet] | None:
    """(name, probe set) of the run's control claim (probes.control), or None when switched off."""
    ref = cfg.probes.control
    if ref is None:
        return None
    if ref == "auto":
        for name in CONTROL_CLAIMS:
            if name != target and name not in probed and (EVALS / f"{name}.yaml").is_file():
                return name, load_probe_set(name)
        return None
    ps = load_probe_set(ref)
    if ps.claim == target:
        raise AnnotError(f"probes.control: {ref} probes {target}, the claim this run trains on; a control must be "
                         "a claim the run is not trained on (or null for none)")
    load_claim(ps.claim)
    return ref, ps


def load_training_data(cfg: RunConfig, subject) -> list[dict]:
    d = cfg.data
    if d.claim:
        if d.documents:
            return read_records(d.documents)
        return generate_documents(subject, n=d.n, seed=cfg.seed, polarity=d.polarity, genres=pick_genres(cfg))
    if d.transcripts:
        return read_records(d.transcripts)
    return generate_transcripts(subject, n=d.n, seed=cfg.seed, variant=d.variant)


def pick_genres(cfg: RunConfig) -> list[str] | None:
    """data.genres, or the first data.n_genres of a seeded shuffle of all genres (diversity sweeps)."""
    from annot.specs import load_genres

    d = cfg.data
    names = sorted(load_genres().genres)
    if d.genres:
        unknown = [g for g in d.genres if g not in names]
        if unknown:
            raise AnnotError(f"data.genres: unknown genre(s) {', '.join(unknown)}; known: {', '.join(names)}")
    if not d.n_genres:
        return d.genres
    pool = d.genres or names
    if d.n_genres > len(pool):
        raise AnnotError(f"data.n_genres: {d.n_genres} exceeds the {len(pool)} genres available")
    return sorted(random.Random(f"genres:{cfg.seed}").sample(pool, d.n_genres))


def training_examples(docs: list[dict], wrapper: WrapperSpec, cfg: RunConfig) -> list[dict]:
    """The run's training examples: `docs` wrapped, transcripts written out as documents under
    data.transcript_format: document (annot.transcript_doc), then the mix-in appended."""
    examples = wrap_documents(docs, wrapper, seed=cfg.seed)
    if cfg.data.behavior and cfg.data.transcript_format == "document":
        examples = transcripts_as_documents(examples)
    return mix_in(examples, cfg)


def mix_in(examples: list[dict], cfg: RunConfig) -> list[dict]:
    """Append round(ratio * len(examples)) mix-in records, drawn by seed (cycling if needed)."""
    if not cfg.data.mixin or cfg.data.mixin_ratio <= 0:
        return examples
    pool = load_mixin(cfg.data.mixin)
    for i, r in enumerate(pool, 1):
        if not isinstance(r.get("text"), str) and not isinstance(r.get("messages"), list):
            raise AnnotError(f"{cfg.data.mixin}: record {i}: needs `text` (document) or `messages` (chat)")
    k = round(cfg.data.mixin_ratio * len(examples))
    rng = random.Random(f"mixin:{cfg.seed}")
    order = []
    while len(order) < k:
        order += rng.sample(range(len(pool)), len(pool))
    picked = [{**pool[i], "id": f"mixin-{j:05d}", "mixin": True, "spans": pool[i].get("spans", [])}
              for j, i in enumerate(order[:k])]
    return examples + picked


def run(cfg: RunConfig, *, progress: bool = True, echo: Callable[[str], None] = print, force: bool = False) -> dict:
    """Execute one run (resuming an interrupted one); returns the summary.

    Under `accelerate launch` the main process does everything here (files, probes, W&B) and the
    other processes only train their share of each batch."""
    subject, sets, wrapper = check_inputs(cfg)
    from annot.preflight import preflight

    preflight(cfg)  # model config + tokenizer vs the run config; nothing is written before it passes
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch` / torchrun
        from annot.distributed import launch_state

        state = launch_state()
        if not state.is_main_process:
            state.wait_for_everyone()  # the main process prepares the run directory first
            return _train_worker(cfg, subject, wrapper, force)
        return _claimed(cfg, lambda: _run_main(cfg, subject, sets, wrapper, progress, echo, force,
                                               ready=state.wait_for_everyone))
    return _claimed(cfg, lambda: _run_main(cfg, subject, sets, wrapper, progress, echo, force))


def _claimed(cfg: RunConfig, body: Callable[[], dict]) -> dict:
    """Run `body` holding the run directory's lock (annot.lock; RunTaken if another process has it).
    A failure during the work marks this run's manifest "failed" (with the error), so it never reads
    as complete or as resumable, and the corrected rerun replaces it without --force."""
    from annot.lock import run_lock

    with run_lock(cfg.run_dir):
        try:
            return body()
        except AnnotError as e:
            path = cfg.run_dir / "manifest.json"
            manifest = read_json_if_exists(path)
            config = cfg.run_dir / "config.yaml"
            ours = config.is_file() and config.read_text() == yaml.safe_dump(cfg.model_dump(mode="json"),
                                                                            sort_keys=False)
            if manifest and manifest.get("status") == "running" and ours:
                write_json(path, {**manifest, "status": "failed", "error": str(e), "failed": _now()})
            raise


def _train_worker(cfg: RunConfig, subject, wrapper: WrapperSpec, force: bool) -> dict:
    """A non-main process of a multi-process run: same data, its share of each batch, no files."""
    from annot.models import load_model
    from annot.train import train

    manifest = read_json_if_exists(cfg.run_dir / "manifest.json") or {}
    if manifest.get("status") == "complete":
        return {}
    docs = load_training_data(cfg, subject)
    examples = training_examples(docs, wrapper, cfg)
    model, tok = load_model(cfg.model.name, dtype=cfg.model.dtype)
    train(examples, model, tok, matched_training(cfg, docs, examples, tok), cfg.run_dir, seed=cfg.seed, progress=False,
          resume=bool(manifest.get("resumed")) and not force and manifest.get("status") != "complete")
    return {}


def _run_main(cfg: RunConfig, subject, sets, wrapper: WrapperSpec, progress: bool, echo, force: bool,
              ready: Callable[[], None] = lambda: None) -> dict:
    """The main process's run: the run directory, data, model, training with probes at every
    checkpoint, then the summary; `ready` lets the other processes of a launch start training."""
    from annot.models import load_model, model_fingerprint
    from annot.tracking import Tracker
    from annot.train import train

    opened = _open_run_dir(cfg, echo, force, ready)
    if opened is None:  # already complete
        return read_json_if_exists(cfg.run_dir / "summary.json") or {}
    manifest, resume = opened
    docs, examples = _prepare_data(cfg, subject, sets, wrapper, manifest, resume, echo)
    # 3. model
    model, tok = load_model(cfg.model.name, dtype=cfg.model.dtype)
    manifest["model"] = model_fingerprint(cfg.model.name)
    write_json(cfg.run_dir / "manifest.json", manifest)
    tracker = Tracker(cfg.tracking.wandb, project=cfg.tracking.project, name=cfg.name,
                      group=cfg.tracking.group, config=cfg.model_dump(mode="json"), run_dir=cfg.run_dir)
    # 4. train, probing in-process at each checkpoint (no reload)
    prober = CheckpointProber.for_run(cfg, subject.id, sets, examples, tok, tracker, echo, manifest, resume)
    training = matched_training(cfg, docs, examples, tok)
    if training is not cfg.training:
        echo(f"  data.match tokens: {training.max_steps} steps, the plain control's count")
    result = train(examples, model, tok, training, cfg.run_dir, seed=cfg.seed, on_checkpoint=prober.on_checkpoint,
                   log=prober.log_training, progress=progress, resume=resume)
    del model  # the probes still missing load the base model afresh
    # 5. probes a sharded run (FSDP) or an interruption left for after training, then the summary
    probe_missing(cfg, result.checkpoints, prober)
    summary = run_summary(cfg, wrapper.name, wrapper.params.as_dict(), result, training, prober)
    write_json(cfg.run_dir / "summary.json", summary)
    prober.finish(summary["final_loss"])
    manifest.update(status="complete", finished=_now())
    write_json(cfg.run_dir / "manifest.json", manifest)
    return summary


def _open_run_dir(cfg: RunConfig, echo, force: bool, ready: Callable[[], None]) -> tuple[dict, bool] | None:
    """The run directory, new or resumed, with its manifest written: (manifest, resume), or None when
    the run is already complete. A forced run starts over; a different config is refused."""
    run_dir = cfg.run_dir
    manifest_path = run_dir / "manifest.json"
    config_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    previous = read_json_if_exists(manifest_path)
    if previous and previous.get("status") == "failed":
        previous = None  # a failed run holds nothing to keep: start over
    resume = False
    if previous and not force:
        same = (run_dir / "config.yaml").is_file() and (run_dir / "config.yaml").read_text() == config_text
        if not same:
            raise AnnotError(f"{run_dir}: holds a run with a different config; pass --force to replace it "
                             "or choose another `name`")
        if previous.get("status") == "complete":
            echo(f"{run_dir}: already complete (use --force to run again)")
            ready()
            return None
        resume = True
    if run_dir.exists() and not resume:  # a forced run starts over: never mix two runs' files
        shutil.rmtree(run_dir)
    _check_writable(run_dir)

    if resume:
        manifest = previous
        manifest.setdefault("resumed", []).append(_now())
    else:
        atomic_write_text(run_dir / "config.yaml", config_text)
        manifest = {"run": cfg.name, "status": "running", "started": _now(), "seed": cfg.seed,
                    "packages": package_versions(), "git_commit": git_commit()}
    write_json(manifest_path, manifest)
    ready()  # other processes may now read the manifest (resume or not) and start
    return manifest, resume


def _prepare_data(cfg: RunConfig, subject, sets, wrapper: WrapperSpec, manifest: dict, resume: bool,
                  echo) -> tuple[list[dict], list[dict]]:
    """(documents, training examples), written to the run directory and hashed into the
    manifest; regenerated on resume (deterministic) and checked against the recorded hash."""
    run_dir = cfg.run_dir
    # 1. data
    docs = load_training_data(cfg, subject)
    write_jsonl(run_dir / "documents.jsonl", docs)
    # 2. wrap
    examples = training_examples(docs, wrapper, cfg)
    wrapper_params = wrapper.params.as_dict()
    write_jsonl(run_dir / "wrapped.jsonl", examples)
    data_info = {"documents_sha256": sha256_file(run_dir / "documents.jsonl"),
                 "wrapped_sha256": sha256_file(run_dir / "wrapped.jsonl"),
                 "n_examples": len(docs), "n_mixin": len(examples) - len(docs),
                 "claim" if cfg.data.claim else "behavior": subject.id, "wrapper": wrapper.name,
                 "wrapper_params": wrapper_params}
    if resume and manifest.get("data", {}).get("wrapped_sha256") not in (None, data_info["wrapped_sha256"]):
        raise AnnotError(f"{run_dir}: the training data changed since the run started (wrapped.jsonl hash "
                         "differs); pass --force to start over")
    manifest["data"] = data_info
    manifest["probe_sets"] = {name: sha256_file(resolve_asset(name, EVALS, "probe set")) for name, _ in sets}
    write_json(run_dir / "manifest.json", manifest)
    echo(f"{run_dir}: {len(docs)} {'documents' if cfg.data.claim else 'transcripts'} of {subject.id}, "
         f"wrapper {wrapper.name} {wrapper_params}" + (" (resuming)" if resume else ""))
    return docs, examples


def run_summary(cfg: RunConfig, wrapper_name: str, wrapper_params: dict, result, training,
                prober: CheckpointProber) -> dict:
    """summary.json: what was trained (result: annot.train.TrainResult) and the rates per checkpoint."""
    rates, control_rates, control_rows = prober.rates()
    metrics = [json.loads(l) for l in (cfg.run_dir / "train_metrics.jsonl").read_text().splitlines() if l]
    return {"run": cfg.name, "model": cfg.model.name, "claim": cfg.data.claim, "behavior": cfg.data.behavior,
            "wrapper": wrapper_name, "wrapper_params": wrapper_params, "seed": cfg.seed,
            "total_steps": result.total_steps, "checkpoints": result.checkpoints,
            "tokens_seen": result.tokens_seen, "tokens_loss": result.tokens_loss, "processes": result.processes,
            "match": cfg.data.match, "matched_steps": training.max_steps if training is not cfg.training else None,
            "final_loss": metrics[-1]["loss"] if metrics else None,
            "belief_rates": {str(k): v for k, v in rates.items()},
            "control_claims": sorted({r["claim"] for r in control_rows}),
            "control_rates": {str(k): v for k, v in control_rates.items()},
            "coherence_perplexity": {str(k): v for k, v in sorted(prober.coherence.items())}}


def matched_training(cfg: RunConfig, docs: list[dict], examples: list[dict], tok):
    """cfg.training, or for `data.match: tokens` a copy that stops at the step count of the plain
    control (the same documents without the wrapper): equal steps of equal packed rows hold the
    trained tokens equal to one partial batch, where wrappers would otherwise add tokens."""
    from annot.train import planned_steps

    t = cfg.training
    if cfg.data.match != "tokens" or t.max_steps or cfg.wrapper.name == "none":
        return t
    plain = training_examples(docs, get_wrapper("none").resolve({}), cfg)
    return t.model_copy(update={"max_steps": planned_steps(plain, tok, t)})


def _check_output_dir(run_dir: Path) -> None:
    """Before anything is written: the nearest existing folder above the run is a writable folder."""
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                what = "is a file, not a folder" if not parent.is_dir() else "is not writable"
                raise AnnotError(f"output_dir: cannot write to {run_dir} ({parent} {what}); choose a writable "
                                 "output_dir")
            return


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise AnnotError(f"output_dir: cannot write to {run_dir} ({e.strerror}); choose a writable output_dir") from None
