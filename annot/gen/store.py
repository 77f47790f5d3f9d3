"""Stage files: append-only JSONL, one fsynced line per record, read back on resume.

    stage = StageFile(workdir / "documents.jsonl")
    done = {r["index"] for r in stage.load()}   # what an earlier (killed) run already wrote
    stage.append({"index": 7, "text": ...})     # durable when it returns

A kill can cut only the last line short; `load` drops such a torn tail (truncating the file to
its last complete line) so the next append starts on a clean line and no record is half there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from annot.errors import AnnotError


class StageFile:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = None

    def load(self) -> list[dict]:
        """Every complete record, in file order; a torn last line is removed from the file."""
        if not self.path.is_file():
            return []
        raw = self.path.read_bytes()
        keep = raw.rfind(b"\n") + 1  # bytes up to and including the last newline
        if keep < len(raw):
            with open(self.path, "rb+") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
        rows = []
        for i, line in enumerate(raw[:keep].decode("utf-8", "replace").split("\n"), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise AnnotError(f"{self.path}:{i}: not a JSON record; delete that line (or the file) and rerun "
                                     "to write it again") from None
        return rows

    def append(self, record: dict) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")
        self._fh.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
