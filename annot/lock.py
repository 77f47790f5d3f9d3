"""One writer per run directory, and appends to shared tables that two processes can make at once.

    with run_lock(cfg.run_dir):          # raises RunTaken at once if another process holds it
        ...                              # create, resume or replace the run directory
    append_row_once(results_path, row, key="run")

The lock is an advisory `fcntl.flock` on `<output_dir>/.<run name>.lock`, beside the run directory
rather than inside it, so a forced re-run may delete and re-create the directory while holding it.
The kernel releases it when the holder exits, however it exits (SIGKILL included), so a lock file
left behind never blocks anyone. Within one process the lock is re-entrant: a sweep holds a cell's
lock across the run and its results row, and annot.run.run takes the same lock again inside.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from annot.errors import RunTaken

_held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth) for the locks this process holds


def lock_path(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, wait: bool = False):
    """Hold the run's lock for the block; RunTaken (one line) if another process has it and not `wait`."""
    path = lock_path(run_dir)
    key = str(path.resolve())
    if key in _held:  # re-entrant within this process
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RunTaken(f"{run_dir}: taken by another annot process{_holder(path)}; wait for it to finish "
                           "(a sweep moves on to other cells) or give this run another name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode())
        _held[key] = (fd, 1)
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """An exclusive lock on `<path>.lock` for a read-modify-write of `path` (waits for it)."""
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def append_row_once(path: str | os.PathLike, row: dict, key: str) -> bool:
    """Append `row` to the JSONL table at `path` unless a row with the same `key` value is there;
    returns whether it was appended. Safe under several processes (file_lock), and atomic: the
    table is rewritten through a temp file and renamed, so a kill leaves the old table or the new."""
    import json

    from annot.io import atomic_write_text, dumps_jsonl

    path = Path(path)
    with file_lock(path):
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        for line in old.splitlines():
            try:
                if json.loads(line).get(key) == row.get(key):
                    return False
            except (ValueError, AttributeError):
                continue
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(path, old + dumps_jsonl([row]))
    return True
