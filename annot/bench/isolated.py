"""One annot engine of `annot bench`, trained in a process of its own.

    res, flops = run_engine_process(spec, env_overrides, malloc="annot", folder=work / "pretrained-annot")

Each engine gets a fresh process (annot.bench.engine_child), so its peak RSS is the whole process's
high-water mark (imports, model, training: what a user's `annot train` would hold) and nothing an
earlier engine left in the heap counts against it; and each can run under its own allocator: annot's
engines under the one the `annot` command uses (annot/allocator.py; ANNOT_MALLOC), the driver as it
was before the memory work under glibc's, as it was then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from annot.errors import AnnotError


def run_engine_process(spec: dict, env_overrides: dict, malloc: str, folder: Path) -> tuple[dict, dict]:
    """Train one engine in a child process: spec = {model, dtype, init, examples, training, peak};
    checkpoints go to `folder`. malloc "annot" preloads annot's large-block layer, "tbb" oneTBB's
    allocator (each falling back as annot.allocator.preferred_environment does), "glibc" keeps the C
    library's. Returns (figures, FLOPs terms) as time_annot_train does, plus the child's
    peak_rss_mib, malloc and (CUDA) cuda_max_allocated_mib."""
    from annot.allocator import preferred_environment

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    spec_file = folder.parent / f"{folder.name}.spec.json"
    out_file = folder.parent / f"{folder.name}.result.json"
    spec_file.write_text(json.dumps({**spec, "folder": str(folder), "out": str(out_file)}))
    env = {k: v for k, v in os.environ.items() if k != "ANNOT_MALLOC"}
    env.update(env_overrides)
    env["ANNOT_MALLOC"] = malloc
    if malloc != "glibc":
        env = preferred_environment(env)[1]
    proc = subprocess.run([sys.executable, "-m", "annot.bench.engine_child", str(spec_file)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not out_file.is_file():
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise AnnotError(f"bench: the engine's training process failed (exit {proc.returncode}):\n{tail}")
    got = json.loads(out_file.read_text())
    return got["result"], got["flops"]
