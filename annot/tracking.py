"""Weights & Biases logging that never breaks a run: offline unless an account is configured.

WANDB_MODE is respected; without it, runs are logged online only when WANDB_API_KEY is set, else
offline (files under <run_dir>/wandb, syncable later with `wandb sync`). Keys are read by wandb from
the environment only and are never written into annot's configs or manifests.
"""

from __future__ import annotations

import os
from pathlib import Path


STEP_PREFIXES = ("train", "belief")


class Tracker:
    def __init__(self, enabled: bool, *, project: str, name: str, group: str | None, config: dict, run_dir: Path):
        self.run = None
        if not enabled:
            return
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, name=name, group=group, config=config, dir=str(run_dir),
                              mode=mode, reinit="finish_previous")
        for prefix in STEP_PREFIXES:  # each family of metrics on its own x-axis (see log)
            self.run.define_metric(f"{prefix}/step")
            self.run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step")

    def log(self, data: dict, step: int | None = None) -> None:
        """Log `data` at training step `step`, as `<prefix>/step` beside each metric family rather than
        W&B's global step: that one must only grow, and probes can come after training is done (FSDP
        probes the saved checkpoints at the end), so their early steps would be dropped."""
        if self.run is None:
            return
        if step is not None:
            data = {**data, **{f"{k.split('/')[0]}/step": step for k in data if "/" in k}}
        self.run.log(data)

    def table(self, name: str, rows: list[dict]) -> None:
        """Log rows (e.g. every probe x checkpoint) as a W&B table."""
        if self.run is None or not rows:
            return
        import wandb

        cols = sorted({k for r in rows for k in r})
        self.run.log({name: wandb.Table(columns=cols, data=[[r.get(c) if not isinstance(r.get(c), (list, dict))
                                                              else str(r.get(c)) for c in cols] for r in rows])})

    def summary(self, data: dict) -> None:
        if self.run is not None:
            self.run.summary.update(data)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
