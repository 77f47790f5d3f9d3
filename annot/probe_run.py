"""`annot probe RUN_DIR`: probe every saved checkpoint of a finished run again.

    annot probe runs/my-run --robustness -o rows.jsonl
    rows = probe_run("runs/my-run", kinds=["yes_no"])

Its own module because it reads the run's control claim from annot.run, which probes through
annot.probe itself: kept apart, the two import each other in one direction only.
"""

from __future__ import annotations

from pathlib import Path

from annot.checkpoint_switch import CheckpointSwitch
from annot.probe import probe_model, settings_for



def probe_run(run_dir, sets: list[str] | None = None, kinds: list[str] | None = None, batch_size: int = 16,
              robustness: bool = False, progress: bool = False) -> list[dict]:
    """Probe every saved checkpoint of a run: the base model is loaded once and adapters swapped."""
    from annot.config import config_from_dict
    from annot.errors import AnnotError
    from annot.io import read_yaml
    from annot.models import load_model
    from annot.specs import load_probe_set

    run_dir = Path(run_dir)
    cfg = config_from_dict(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    names = list(sets or cfg.probes.sets or [cfg.data.claim])
    loaded = [load_probe_set(n) for n in names]
    if not sets and cfg.data.claim:  # the run's control claim too, as the run itself probed it
        from annot.run import control_set
        from annot.specs import load_claim

        control = control_set(cfg, load_claim(cfg.data.claim).id, [ps.claim for ps in loaded])
        if control:
            names.append(control[0])
            loaded.append(control[1])
    from annot.train import complete_checkpoints

    ckpts = complete_checkpoints(run_dir)  # a checkpoint cut off while saving is skipped
    if not ckpts:
        raise AnnotError(f"{run_dir}: no checkpoints found under checkpoints/; run `annot run` first")
    model, tok = load_model(cfg.model.name, dtype=cfg.model.dtype)
    models, rows = CheckpointSwitch(model, cfg.model.dtype), []
    for step, d, meta in sorted(ckpts, key=lambda c: c[0]):
        with models.switch(step, d, meta) as m:
            rows += probe_model(m, tok, loaded, run=cfg.name, step=step, kinds=kinds or list(cfg.probes.kinds),
                                batch_size=batch_size, set_names=names, opts=cfg.probes.open_ended,
                                seed=cfg.seed, settings=settings_for(loaded, contexts=cfg.probes.contexts,
                                                                     robustness=robustness or cfg.probes.robustness),
                                progress=progress)
    return rows

