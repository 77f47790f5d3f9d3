"""Disk housekeeping: prune finished runs, estimate a sweep's footprint before it starts.

    annot prune runs/quickstart                # drop optimizer/RNG state of finished runs
    annot prune runs/quickstart --adapters     # also drop adapter weights (the curves only need probes)

Only runs whose manifest says "complete" are touched: an interrupted run still needs its training
state to resume. checkpoint.json stays, so the checkpoint schedule remains on record.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from annot.io import read_json_if_exists
from annot.train import STATE_FILE

WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "adapter_config.json", "config.json")


def prune(paths: list[Path], adapters: bool = False) -> tuple[int, int]:
    """Returns (files removed, bytes freed)."""
    removed = freed = 0
    for root in paths:
        for manifest in sorted(Path(root).rglob("manifest.json")):
            run_dir = manifest.parent
            if (read_json_if_exists(manifest) or {}).get("status") != "complete":
                continue
            for ckpt in (run_dir / "checkpoints").glob("step-*"):
                names = (STATE_FILE, *WEIGHT_FILES) if adapters else (STATE_FILE,)
                for name in names:
                    f = ckpt / name
                    if f.is_file():
                        freed += f.stat().st_size
                        f.unlink()
                        removed += 1
    return removed, freed


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def check_free_space(out_dir: Path, runs_left: int, per_run_bytes: int, echo=print) -> bool:
    """Warn (and return False) when the remaining runs would not fit in the free space."""
    out_dir = Path(out_dir)
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = runs_left * per_run_bytes
    if need > free:
        echo(f"warning: {out_dir}: the {runs_left} remaining runs need about {need / 2**30:.1f} GiB "
             f"(~{per_run_bytes / 2**20:.0f} MiB each, from the runs done so far) but only {free / 2**30:.1f} GiB "
             "is free; free space or run `annot prune` on finished runs")
        return False
    return True
