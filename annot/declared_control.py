"""A sweep's declared control: the condition every other condition's absorption is measured against.

    # sweeps/data_files.yaml
    parameters:
      data.path: {values: [plain.jsonl, negated.jsonl, local.jsonl]}
    control: {data.path: plain.jsonl}

    control = check_control(Path("sweeps/data_files.yaml"), raw["control"])  # AnnotError on a bad mapping
    matches(run_config, control)        # does this resolved run config have the declared values?

The control of a run is the run whose config equals the run's except that the declared fields take
the declared values and the wrapper is none (a control that names wrapper.* fields itself gets the
wrapper it names instead): with `control: {data.path: plain.jsonl}`, the control of
(negated.jsonl, repeated_negation, seed 1) is (plain.jsonl, wrapper none, seed 1). Without a
declared control the rule is the old one: the same config with wrapper none.

`annot sweep` writes the declaration to control.yaml in the sweep's output folder and in each run
directory, so `annot analyze` and `annot report` find it later without the sweep file.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from annot.errors import AnnotError
from annot.io import atomic_write_text, read_yaml

CONTROL_FILE = "control.yaml"
# Fields a control cannot be defined by: they say where a run lives, or pair a run with its control.
NOT_CONTROL = ("name", "output_dir", "seed", "tracking")
# data.path is another spelling of data.documents / data.transcripts (annot.config.DataConfig).
DATA_FILE_FIELDS = ("data.documents", "data.transcripts")
_MISSING = object()


def check_control(path: Path, raw) -> dict[str, Any]:
    """The declared control as {dotted field: value}; {} when the sweep declares none."""
    if raw is None:
        return {}
    where = f"{path}: control"
    if not isinstance(raw, dict) or not raw:
        raise AnnotError(f"{where}: must be a mapping of run-config fields to the control's values, "
                         "e.g. control: {data.path: data/plain.jsonl}")
    from annot.config import set_field

    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise AnnotError(f"{where}: keys must be dotted run-config paths like data.path, got {key!r}")
        if key.split(".")[0] in NOT_CONTROL:
            raise AnnotError(f"{where}: {key}: a control is a condition, not a {key.split('.')[0]}; every seed "
                             "is compared with the control of the same seed. Name data or wrapper fields")
        if isinstance(value, (dict, list)):
            raise AnnotError(f"{where}: {key}: give one value (a string, number or boolean), got {value!r}")
        try:
            set_field({}, key, value, label=f"{where}: {key}")
        except AnnotError as e:
            raise AnnotError(f"{e} (control)") from None
    return dict(raw)


def resolved_field(key: str, config: dict) -> str:
    """Where `key` lives in a resolved run config: data.path is stored as documents or transcripts."""
    if key == "data.path":
        data = config.get("data") or {}
        return "data.transcripts" if data.get("behavior") and not data.get("claim") else "data.documents"
    return key


def get_field(config: dict, key: str):
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def drop_field(config: dict, key: str) -> None:
    """Remove dotted `key` from a (copied) config dict, in place."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return
    node.pop(last, None)


def _same(a, b) -> bool:
    # paths compare by their normalised spelling: ./x/a.jsonl and x/a.jsonl are one file
    if isinstance(a, str) and isinstance(b, str):
        return a == b or os.path.normpath(a) == os.path.normpath(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b  # true is not 1 here
    return a == b


def matches(config: dict, control: dict) -> bool:
    """True when the resolved run config has every declared value."""
    return all(_same(get_field(config, resolved_field(k, config)), v) for k, v in control.items())


def names_wrapper(control: dict) -> bool:
    """A control naming wrapper.* fields is that wrapper; otherwise the control is unwrapped."""
    return any(k == "wrapper" or k.startswith("wrapper.") for k in control)


def without_control_fields(config: dict, control: dict) -> dict:
    """A copy of the config without the declared fields (and without the wrapper, which a run and its
    control may differ in): equal for a run and its control."""
    out = copy.deepcopy(config)
    for k in control:
        drop_field(out, resolved_field(k, config))
    out.pop("wrapper", None)
    return out


def describe(control: dict) -> str:
    """'data.path=plain.jsonl' (several fields joined by ', ')."""
    return ", ".join(f"{k}={v}" for k, v in control.items())


def file_label(value: str, others: list[str]) -> str:
    """A short name for a data file among `others`: its stem, with as many parent folders as it
    takes to tell it from every other file ("plain", "claim_a/plain")."""
    parts = Path(os.path.normpath(value)).with_suffix("").parts
    rest = [Path(os.path.normpath(o)).with_suffix("").parts for o in others
            if os.path.normpath(o) != os.path.normpath(value)]
    for n in range(1, len(parts) + 1):
        tail = parts[-n:]
        if all(tuple(r[-n:]) != tail for r in rest):
            return "/".join(tail)
    return value


# -- the record in a sweep's folder and its run directories ------------------------------------------


def write_control(folder: Path, control: dict, sweep_name: str, sweep_path: Path) -> Path | None:
    """Record the declaration in `folder` (a sweep's output folder or one of its run directories);
    with no declaration, remove a stale record left by an earlier version of the sweep."""
    path = Path(folder) / CONTROL_FILE
    if not control:
        if path.is_file():
            path.unlink()
        return None
    text = (f"# written by `annot sweep {sweep_path}`: the condition the other conditions are compared with\n"
            + yaml.safe_dump({"sweep": sweep_name, "sweep_file": str(sweep_path), "control": control}, sort_keys=False))
    if path.is_file() and path.read_text() == text:
        return path
    return atomic_write_text(path, text)


def read_control(run_dir: Path) -> dict[str, Any]:
    """The declared control recorded for a run: its own control.yaml, else its sweep folder's; {} if none."""
    for folder in (Path(run_dir), Path(run_dir).parent):
        path = folder / CONTROL_FILE
        if path.is_file():
            data = read_yaml(path)
            control = data.get("control")
            if not isinstance(control, dict) or not control:
                raise AnnotError(f"{path}: control: expected a mapping of run-config fields to values; the file is "
                                 "written by `annot sweep` (delete it, or re-run the sweep to rewrite it)")
            return dict(control)
    return {}
