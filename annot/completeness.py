"""Is a run's work all there? Read from the files, never assumed from the control flow.

    unprobed(run_dir, [0, 3, 6, 16, 40], probes=True, coherence=True)   # -> [6] if step 6 lacks rows

A run is marked complete only when every checkpoint has its rows in probes.jsonl (and in
coherence.jsonl when coherence is measured): a kill between a checkpoint and its probes, resumed,
must not end "complete" with a checkpoint missing from the results.
"""

from __future__ import annotations

import json
from pathlib import Path


def _steps(path: Path) -> set[int]:
    if not path.is_file():
        return set()
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.add(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def unprobed(run_dir: str | Path, steps, probes: bool = True, coherence: bool = False) -> list[int]:
    """The checkpoints of `steps` without rows on disk, sorted."""
    run_dir = Path(run_dir)
    have = set(steps)
    if probes:
        have &= _steps(run_dir / "probes.jsonl")
    if coherence:
        have &= _steps(run_dir / "coherence.jsonl")
    return sorted(set(steps) - have)
