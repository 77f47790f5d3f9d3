"""File helpers: safe YAML, line-numbered JSONL, atomic writes, content hashes.

Every result file is written to a temporary sibling and renamed into place, so a run killed
mid-write leaves either the old file or the new one, never a half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

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


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (YAML would silently keep the last)."""

    def __init__(self, key, first: int, second: int):
        super().__init__(f"duplicate key {key!r} (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


def _construct_mapping(loader, node, deep=False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: let PyYAML report it
            break
        line = key_node.start_mark.line + 1
        if first is not None:
            raise DuplicateKeyError(key, first, line)
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml_text(text: str):
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | os.PathLike, *, expect: type = dict) -> Any:
    """Load a YAML file with `yaml.safe_load`; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise AnnotError(f"{path}: file not found (check the path; it is resolved from {Path.cwd()})")
    try:
        data = parse_yaml_text(read_text(path))
    except DuplicateKeyError as e:
        raise AnnotError(f"{path}:{e.second}: duplicate key {e.key!r} (first at line {e.first}); YAML would "
                         "silently keep the last one, so remove one of them") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise AnnotError(f"{path}{line}: malformed YAML ({problem}); fix the syntax on that line") from None
    if data is None:
        raise AnnotError(f"{path}: file is empty; it must hold a YAML {expect.__name__}")
    if not isinstance(data, expect):
        raise AnnotError(f"{path}: top level must be a YAML {'mapping' if expect is dict else 'list'}, "
                         f"got {type(data).__name__}")
    return data


GZIP_MAGIC = b"\x1f\x8b"


def read_text(path: str | os.PathLike) -> str:
    """The one reader of user text files (YAML, JSONL): UTF-8, with or without a BOM, LF or CRLF.

    A `.gz` file is decompressed (corpora are often shipped as .jsonl.gz). Anything else that is not
    UTF-8 text - Latin-1, binary data, a gzip file under a plain name - is one AnnotError naming
    the file, the line and byte offset, and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw.startswith(GZIP_MAGIC):
        if not path.name.endswith(".gz"):
            raise AnnotError(f"{path}: byte 0: gzip-compressed data under a plain name; rename it to "
                             f"{path.name}.gz (read as gzip) or decompress it with `gunzip -c`")
        import gzip
        import zlib

        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise AnnotError(f"{path}: corrupt gzip data ({e}); re-create the file") from None
    elif path.name.endswith(".gz"):
        raise AnnotError(f"{path}: byte 0: named .gz but not gzip-compressed; drop the .gz from the name")
    if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM (Windows editors, spreadsheet exports)
        raw = raw[3:]
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise AnnotError(f"{path}:{line}: byte {nul}: binary data (a NUL byte), not text; give a UTF-8 "
                         "text file (UTF-16 files: re-save them as UTF-8)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise AnnotError(f"{path}:{line}: byte {e.start}: not UTF-8 (0x{raw[e.start]:02x}); re-save the file as "
                         f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.jsonl`") from None


def iter_jsonl(path: str | os.PathLike):
    """(line number, object) for each non-blank line; a bad line raises an error naming it."""
    # split on \n only: JSON strings may hold U+2028 and friends, which str.splitlines() would cut at
    for i, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AnnotError(f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno}); "
                             "each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise AnnotError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        yield i, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file of objects; a bad line raises an error with its line number."""
    rows = [row for _, row in iter_jsonl(path)]
    if not rows:
        raise AnnotError(f"{path}: no records (the file is empty)")
    return rows


def check_spans(text, spans, where: str) -> None:
    """Every span is {start: int, end: int, role: str, ...} with 0 <= start <= end <= len(text).

    `where` names the file, line and record for the one-line error."""
    if spans is None:
        return
    if not isinstance(spans, list):
        raise AnnotError(f"{where}: `spans` must be a list of {{start, end, role}}, got {type(spans).__name__}")
    n = len(text) if isinstance(text, str) else 0
    for j, s in enumerate(spans):
        at = f"{where}: spans[{j}]"
        if not isinstance(s, dict):
            raise AnnotError(f"{at}: must be a mapping {{start, end, role}}, got {type(s).__name__}")
        for key in ("start", "end"):
            v = s.get(key)
            if not isinstance(v, int) or isinstance(v, bool):
                raise AnnotError(f"{at}: `{key}` must be an integer character offset, got {v!r}")
        if not isinstance(s.get("role"), str) or not s["role"]:
            raise AnnotError(f"{at}: `role` must be a non-empty string (claim, wrapper, ...), got {s.get('role')!r}")
        a, b = s["start"], s["end"]
        if not 0 <= a <= b <= n:
            raise AnnotError(f"{at}: start {a}, end {b} do not fit the text ({n} characters); spans need "
                             "0 <= start <= end <= len(text)")


def check_record(row: dict, where: str) -> None:
    """The spans of a document (`text` + `spans`) or of each message of a transcript."""
    if "spans" in row:
        check_spans(row.get("text"), row["spans"], where)
    msgs = row.get("messages")
    if isinstance(msgs, list):
        for k, m in enumerate(msgs):
            if isinstance(m, dict) and "spans" in m:
                check_spans(m.get("content"), m["spans"], f"{where}: messages[{k}]")


def read_records(path: str | os.PathLike) -> list[dict]:
    """read_jsonl for documents, transcripts and wrapped examples: every span checked against its text."""
    rows = []
    for line, row in iter_jsonl(path):
        check_record(row, f"{path}:{line}: record {len(rows) + 1}")
        rows.append(row)
    if not rows:
        raise AnnotError(f"{path}: no records (the file is empty)")
    return rows


def dumps_jsonl(rows: Iterable[dict]) -> str:
    """Canonical JSONL: sorted keys, no ASCII escaping, one object per line (byte-stable)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """The one atomic-write helper: yields a temp file next to `path`; when the block ends normally
    the file is fsynced, given ordinary permissions and renamed onto `path` (atomic on POSIX); when
    it raises, the temp file is removed and `path` is untouched. Readers never see a half-written file.

        with atomic_path(out / "table.parquet") as tmp:
            df.to_parquet(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


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


def read_prompt_yaml(path: Path, *extra: str) -> dict:
    """A judge prompt YAML (`system`, `template`, and the `extra` keys): unknown keys and an empty
    system or template are one-line errors naming the file and the key."""
    data = read_yaml(path)
    unknown = sorted(set(data) - {"system", "template", *extra})
    if unknown:
        valid = ", ".join(("system", "template", *extra))
        raise AnnotError(f"{path}: {unknown[0]}: unknown key; valid keys are {valid}")
    for key in ("system", "template"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise AnnotError(f"{path}: {key}: required, a non-empty string")
    return data
