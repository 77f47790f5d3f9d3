"""The per-run lock and the shared results table under two processes."""

import json
import subprocess
import sys

import pytest

from annot.errors import RunTaken
from annot.lock import append_row_once, lock_path, run_lock

HOLD = """
import sys, time
from annot.lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_process_is_refused_until_the_first_lets_go(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunTaken, match=r"runs/a: taken by another annot process \(pid \d+ since"):
        with run_lock(run_dir):
            pass
    holder.kill()  # a killed holder releases it: no stale lock
    holder.wait()
    with run_lock(run_dir):
        with run_lock(run_dir):  # re-entrant in one process (a sweep cell, then its run)
            pass
    assert lock_path(run_dir) == tmp_path / "runs" / ".a.lock"


def test_append_row_once_never_doubles_a_run(tmp_path):
    path = tmp_path / "results.jsonl"
    assert append_row_once(path, {"run": "a", "x": 1}, key="run")
    assert not append_row_once(path, {"run": "a", "x": 2}, key="run")
    assert append_row_once(path, {"run": "b"}, key="run")
    assert [json.loads(l)["run"] for l in path.read_text().splitlines()] == ["a", "b"]
