"""File helpers: safe YAML, line-numbered JSONL, atomic writes, content hashes.

Every result file is written to a temporary sibling and renamed into place, so a run killed
mid-write leaves either the old file or the new one, never a half-written file that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml

from annot.errors import AnnotError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (PyYAML's YAML 1.1 rules read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml_text(text: str):
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | os.PathLike, *, expect: type = dict) -> Any:
    """Load a YAML file with `yaml.safe_load`; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise AnnotError(f"{path}: file not found (check the path; it is resolved from {Path.cwd()})")
    try:
        data = parse_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise AnnotError(f"{path}{line}: malformed YAML ({problem}); fix the syntax on that line") from None
    except UnicodeDecodeError:
        raise AnnotError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    if data is None:
        raise AnnotError(f"{path}: file is empty; it must hold a YAML {expect.__name__}")
    if not isinstance(data, expect):
        raise AnnotError(f"{path}: top level must be a YAML {'mapping' if expect is dict else 'list'}, "
                         f"got {type(data).__name__}")
    return data


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file of objects; a bad line raises an error with its line number."""
    path = Path(path)
    if not path.is_file():
        raise AnnotError(f"{path}: file not found")
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotError(f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno}); "
                                 "each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise AnnotError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise AnnotError(f"{path}: no records (the file is empty)")
    return rows


def dumps_jsonl(rows: Iterable[dict]) -> str:
    """Canonical JSONL: sorted keys, no ASCII escaping, one object per line (byte-stable)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to `path` via a temp file + rename (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, dumps_jsonl(rows))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_json_if_exists(path: str | os.PathLike):
    """Parsed JSON, or None when the file is missing or unreadable (e.g. from an older crash)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
