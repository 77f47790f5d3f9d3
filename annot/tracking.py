"""Weights & Biases logging that never breaks a run: offline unless an account is configured.

WANDB_MODE is respected; without it, runs are logged online only when WANDB_API_KEY is set, else
offline (files under <run_dir>/wandb, syncable later with `wandb sync`). Keys are read by wandb from
the environment only and are never written into annot's configs or manifests.
"""

from __future__ import annotations

import os
from pathlib import Path


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

    def log(self, data: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(data, step=step)

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
