"""Probing a run's checkpoints: in process while it trains, from the saved checkpoints after it.

    prober = CheckpointProber.for_run(cfg, subject.id, sets, examples, tok, tracker, print, manifest, False)
    train(examples, model, tok, cfg.training, cfg.run_dir, on_checkpoint=prober.on_checkpoint)
    probe_missing(cfg, result.checkpoints, prober)   # FSDP runs, or checkpoints an interruption cut

The prober owns what the probes give a run: probes.jsonl and coherence.jsonl (rewritten whole after
every checkpoint, so a kill leaves the rows of whole checkpoints), the belief rates logged to the
tracker and echoed, and the on-disk cache of step-0 rows shared by the runs of a sweep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from annot.config import RunConfig
from annot.errors import AnnotError
from annot.io import read_jsonl, sha256_file, write_jsonl
from annot.specs import EVALS, ProbeSet, resolve_asset


@dataclass
class CheckpointProber:
    """Probes one run's checkpoints - in process while it trains, or from the saved ones after it -
    and keeps what they gave: probes.jsonl, coherence.jsonl (each rewritten whole after every
    checkpoint) and the target claim's belief rates, logged and echoed.

        prober = CheckpointProber.for_run(cfg, subject.id, sets, examples, tok, tracker, print, manifest, False)
        train(examples, model, tok, cfg.training, cfg.run_dir, on_checkpoint=prober.on_checkpoint)

    Step 0, the untouched base model, gives the same rows to every run of a sweep on the same model
    and probes: they are cached on disk under `base_key` (see base_probe_key)."""
    cfg: RunConfig
    target: str  # the claim or behaviour trained on; the control claim's rows are reported apart
    sets: list[tuple[str, ProbeSet]]
    tok: object
    tracker: object  # annot.tracking.Tracker
    echo: Callable[[str], None]
    base_key: str
    judge: object | None = None  # for open_ended probes
    in_context: str | None = None  # k wrapped documents read before the step-0 probes (probes.in_context_k)
    coherence_texts: list[str] | None = None
    rows: list[dict] = field(default_factory=list)
    coherence: dict[int, float] = field(default_factory=dict)  # step -> perplexity

    @classmethod
    def for_run(cls, cfg: RunConfig, target: str, sets, examples: list[dict], tok, tracker, echo, manifest: dict,
                resume: bool) -> CheckpointProber:
        """A prober for the run; resumed, it starts from the rows of the checkpoints trained before."""
        from annot.probe import load_coherence_texts

        rows = [r for r in read_jsonl(cfg.run_dir / "probes.jsonl") if r["step"] <= resumed_upto(cfg.run_dir)] \
            if resume and (cfg.run_dir / "probes.jsonl").is_file() else []
        judge = None
        if "open_ended" in cfg.probes.kinds:
            from annot.judges import make_judge

            judge = make_judge(dict(cfg.probes.judge), source="probes.judge")
        in_ctx = None
        if cfg.probes.in_context_k and cfg.data.claim:
            # the control: does the base model, reading k wrapped documents, understand the disclaimer?
            in_ctx = "\n\n".join(e["text"] for e in examples[: cfg.probes.in_context_k] if "text" in e)
        return cls(cfg, target, sets, tok, tracker, echo, base_probe_key(cfg, manifest), judge, in_ctx,
                   load_coherence_texts() if cfg.probes.coherence else None, rows,
                   dict(previous_coherence(cfg.run_dir) if resume else {}))

    def on_checkpoint(self, step: int, model) -> None:
        """train()'s callback: probe the checkpoint the model holds now."""
        from annot.scoring import fixed_weights

        with fixed_weights():  # the weights stay put while this checkpoint is probed
            self.probe(step, model)

    def probe(self, step: int, model) -> None:
        """Probe `model` as checkpoint `step` (replacing any rows it had) and record the results."""
        self.rows = [r for r in self.rows if r["step"] != step]
        new = self._probe_rows(step, model)
        self.rows.extend(new)
        write_jsonl(self.cfg.run_dir / "probes.jsonl", self.rows)
        if self.coherence_texts:
            self._record_coherence(step, model)
        self._report(step, new)

    def _probe_rows(self, step: int, model) -> list[dict]:
        from annot.probe import probe_model, settings_for

        cfg = self.cfg
        new = cached_base_rows(self.base_key, cfg.name) if step == 0 else None
        if new is not None:
            return new
        settings = settings_for([ps for _, ps in self.sets], contexts=cfg.probes.contexts,
                                robustness=cfg.probes.robustness, in_context=self.in_context if step == 0 else None)
        new = probe_model(model, self.tok, [ps for _, ps in self.sets], run=cfg.name, step=step,
                          kinds=list(cfg.probes.kinds), batch_size=cfg.probes.batch_size,
                          set_names=[n for n, _ in self.sets], settings=settings, opts=cfg.probes.open_ended,
                          judge=self.judge, seed=cfg.seed) if self.sets else []
        new += behavior_rows(model, self.tok, cfg, step) if cfg.data.behavior else []
        if step == 0:
            store_base_rows(self.base_key, new)
        return new

    def _record_coherence(self, step: int, model) -> None:
        from annot.scoring import perplexity

        cfg = self.cfg
        self.coherence[step] = round(perplexity(model, self.tok, self.coherence_texts, cfg.probes.batch_size), 4)
        base = self.coherence.get(0)
        write_jsonl(cfg.run_dir / "coherence.jsonl", [
            {"run": cfg.name, "step": s, "perplexity": v, "ratio_to_base": round(v / base, 4) if base else None}
            for s, v in sorted(self.coherence.items())])

    def _report(self, step: int, new: list[dict]) -> None:
        from annot.rates import belief_rates

        target = [r for r in new if r.get("claim") == self.target]  # the control claim is reported apart
        if not target:
            return
        rate = belief_rates(target)[step]
        self.tracker.log({f"belief/{k}": v for k, v in rate.items() if k != "n"}, step=step)
        from annot.rates import step_line

        self.echo("  " + step_line(step, rate))

    def log_training(self, row: dict) -> None:
        """train()'s `log`: one metrics row per optimizer step to the tracker."""
        self.tracker.log({"train/loss": row["loss"], "train/lr": row["lr"], "train/tokens_per_s": row["tokens_per_s"]},
                         step=row["step"])

    def rates(self) -> tuple[dict, dict, list[dict]]:
        """(the target's belief rates, the control claims' rates, the control rows) per checkpoint."""
        from annot.rates import belief_rates

        rates = belief_rates([r for r in self.rows if r.get("claim") == self.target]) if self.rows else {}
        control_rows = [r for r in self.rows if r.get("claim") != self.target]
        return rates, belief_rates(control_rows) if control_rows else {}, control_rows

    def finish(self, final_loss) -> None:
        """The probe table and final rates to the tracker, which closes; the rates table echoed."""
        from annot.rates import format_rates

        rates, _, _ = self.rates()
        self.tracker.table("probes", self.rows)
        if rates:
            self.tracker.summary({**{f"final_rate_{m}": v for m, v in rates[max(rates)].items() if m != "n"},
                                  "final_loss": final_loss})
        self.tracker.finish()
        if rates:
            self.echo(format_rates(rates))


def probe_missing(cfg: RunConfig, checkpoints: list[int], prober: CheckpointProber) -> None:
    """Probe the saved checkpoints without rows on disk - all of them after an FSDP run (a sharded
    model is probed after training), or those an interruption cut - and fail the run (RunFailed)
    if any is still missing."""
    from annot.completeness import unprobed
    from annot.errors import RunFailed

    wanted = {"probes": bool(prober.sets) or bool(cfg.data.behavior), "coherence": bool(prober.coherence_texts)}
    missing = unprobed(cfg.run_dir, checkpoints, **wanted)
    if missing:
        probe_saved_checkpoints(cfg, cfg.run_dir, missing, set(), prober.probe)
        missing = unprobed(cfg.run_dir, checkpoints, **wanted)
    if missing:
        raise RunFailed(f"{cfg.run_dir}: checkpoint(s) {missing} have no probe rows after probing; the run is "
                        "marked failed, not complete (the same command starts it again)")


def probe_saved_checkpoints(cfg: RunConfig, run_dir: Path, steps: list[int], done: set[int],
                            probe_checkpoint: Callable[[int, object], None]) -> None:
    """Probe the saved checkpoints of `steps` not in `done` (probed before an interruption) with an
    unsharded model: the base loaded once, LoRA adapters swapped in (a full fine-tune's checkpoint is
    loaded beside the base, one at a time)."""
    import gc

    import torch

    from annot.checkpoints import complete_checkpoints
    from annot.models import load_model
    from annot.checkpoint_switch import CheckpointSwitch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    switch = CheckpointSwitch(load_model(cfg.model.name, dtype=cfg.model.dtype)[0], cfg.model.dtype)
    for step, d, meta in complete_checkpoints(run_dir):
        if step in steps and step not in done:
            with switch.switch(step, d, meta) as m:
                probe_checkpoint(step, m)


def resumed_upto(run_dir: Path) -> int:
    """The step a resumed run continues from: rows of later steps are from the cut-off part."""
    from annot.checkpoints import latest_resumable

    last = latest_resumable(run_dir)
    return last[0] if last else 0


def previous_coherence(run_dir: Path) -> dict[int, float]:
    path = run_dir / "coherence.jsonl"
    if not path.is_file():
        return {}
    upto = resumed_upto(run_dir)
    return {r["step"]: r["perplexity"] for r in read_jsonl(path) if r["step"] <= upto}


def base_probe_key(cfg: RunConfig, manifest: dict) -> str:
    """Step 0 is the untouched base model: its probe rows depend only on the model and the probes,
    so every run of a sweep on the same model and probe sets shares them (cached on disk)."""
    import hashlib

    from annot import __version__

    key = {"model": manifest.get("model"), "dtype": cfg.model.dtype, "probe_sets": manifest.get("probe_sets"),
           "kinds": list(cfg.probes.kinds), "probes": cfg.probes.model_dump(mode="json"), "seed": cfg.seed,
           "in_context_data": (manifest.get("data") or {}).get("wrapped_sha256") if cfg.probes.in_context_k else None, "behavior": cfg.data.behavior, "annot": __version__,
           "behavior_probes": sha256_file(resolve_asset(cfg.data.behavior, EVALS / "behaviors", "behavior probe set"))
           if cfg.data.behavior else None, "scopes": _scopes_sha() if cfg.data.behavior else None}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _scopes_sha() -> str:
    from annot.judged import scope_files_sha

    return scope_files_sha()


def _base_cache(key: str) -> Path:
    from annot.models import cache_dir

    return cache_dir() / "base_probes" / f"{key}.jsonl"


def cached_base_rows(key: str, run_name: str) -> list[dict] | None:
    path = _base_cache(key)
    if not path.is_file():
        return None
    try:
        return [{**r, "run": run_name} for r in read_jsonl(path)]
    except AnnotError:
        return None


def store_base_rows(key: str, rows: list[dict]) -> None:
    if rows:
        write_jsonl(_base_cache(key), rows)


def behavior_rows(model, tok, cfg: RunConfig, step: int) -> list[dict]:
    """Behaviour probes for transcript runs: misaligned-vs-aligned preference on held-out scenarios
    (kind "behavior", per named context too) and on the broad and everyday scope questions (kind
    "behavior" with `scope`) and judged answers to open questions ("behavior_open")."""
    from annot.judged import paired_scope_rows
    from annot.probe import ProbeItem, Setting, probe_behavior, score_items
    from annot.scoring import Request
    from annot.specs import load_behavior_probes

    probes = load_behavior_probes(cfg.data.behavior)
    rows = probe_behavior(model, tok, probes, run=cfg.name, step=step, batch_size=cfg.probes.batch_size)
    rows += paired_scope_rows(model, tok, cfg, step)  # the same instrument on the broad and everyday scopes
    if cfg.probes.contexts:
        for name, system in probes.contexts.items():
            rows += probe_behavior(model, tok, probes, run=cfg.name, step=step, batch_size=cfg.probes.batch_size,
                                   system=system, context=name)
    if probes.questions and "open_ended" in cfg.probes.kinds:
        reqs = [Request(probes.behavior, probes.behavior,
                     ProbeItem(id=q.id, kind="open_ended", question=q.question, believe_markers=q.misaligned_markers,
                               disbelieve_markers=q.aligned_markers)) for q in probes.questions]
        from annot.judges import make_judge

        judge = make_judge({"name": "rule"})  # marker judge; LLM judges would need the behaviour rubric
        for r in score_items(model, tok, reqs, cfg.probes.batch_size, Setting(), cfg.probes.open_ended, judge,
                             seed=cfg.seed):
            rows.append({"run": cfg.name, "checkpoint": f"step-{step}", "step": step, **r, "kind": "behavior_open"})
    if "behavior_judged" in cfg.probes.kinds:
        from annot.judged import judged_rows

        rows += judged_rows(model, tok, cfg, step)
    return rows
