"""What a sweep runs: the sweep file checked, its parameters expanded into cells (named, validated
run configs), and the same sweep as a W&B sweep config. The runner is annot.sweep.

    sweep = load_sweep("sweeps/wrapper_grid.yaml")       # raises AnnotError naming the file and the key
    cells = plan(sweep)                                   # every run, in order, each one validated
    wandb_config = to_wandb_config(sweep)

A parameter value goes into its cell's config as the typed value the sweep file gives (no text round
trip), through annot.config.set_field: the same path check as `--set`, and the run-config schema
then judges the value.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annot.config import RunConfig, config_from_dict, reject_non_finite, set_field
from annot.declared_control import check_control, describe, matches, names_wrapper
from annot.errors import AnnotError
from annot.io import read_yaml
from annot.run import check_inputs
from annot.specs import ROOT

# Top-level keys: the W&B sweep keys annot understands, then annot's own (dropped for W&B).
WANDB_KEYS = ("method", "metric", "name", "description", "project", "run_cap", "parameters")
ANNOT_KEYS = ("base", "controls", "control", "output_dir")
METHODS = ("grid", "random")
SPEC_KEYS = ("value", "values", "distribution", "min", "max", "q")
DISTRIBUTIONS = ("constant", "categorical", "uniform", "log_uniform_values", "int_uniform", "q_uniform")
NUMERIC = ("uniform", "log_uniform_values", "int_uniform", "q_uniform")
MAX_NAME = 100  # run names become directory names; keep them well under the 255-byte limit
RESULTS = "results.jsonl"


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file. `parameters` maps dotted run-config paths to W&B parameter specs."""

    name: str
    path: Path
    method: str
    parameters: dict[str, dict]
    base: dict
    controls: bool
    output_dir: Path
    raw: dict
    run_cap: int | None = None
    control: dict[str, Any] = field(default_factory=dict)  # the declared control (annot.declared_control); {}: plain

    @property
    def results_path(self) -> Path:
        return self.output_dir / RESULTS


@dataclass(frozen=True)
class Cell:
    """One planned run: its name, the parameter values applied to the base config, the result."""

    name: str
    params: dict[str, Any]
    config: RunConfig
    control: bool = False  # added by `controls`, not drawn from the parameters


# -- loading -------------------------------------------------------------------------------------


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; raises AnnotError naming the file and the key.

    sweep = load_sweep("sweeps/wrapper_grid.yaml")
    """
    path = Path(path)
    raw = read_yaml(path)
    valid = WANDB_KEYS + ANNOT_KEYS
    unknown = [k for k in raw if k not in valid]
    if unknown:
        raise AnnotError(f"{path}: {', '.join(map(str, unknown))}: unknown top-level key(s); "
                         f"valid: {', '.join(valid)}")
    method = raw.get("method")
    if method not in METHODS:
        raise AnnotError(f"{path}: method: must be one of {', '.join(METHODS)}, got {method!r}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise AnnotError(f"{path}: name: must be a non-empty string, got {name!r}")
    for key in ("description", "project"):
        if key in raw and not isinstance(raw[key], str):
            raise AnnotError(f"{path}: {key}: must be a string, got {type(raw[key]).__name__}")
    metric = raw.get("metric")
    if metric is not None and not (isinstance(metric, dict) and isinstance(metric.get("name"), str)):
        raise AnnotError(f"{path}: metric: must be a mapping like {{name: final_belief_belief, goal: maximize}}")
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise AnnotError(f"{path}: run_cap: must be a positive integer, got {run_cap!r}")
    controls = raw.get("controls", True)
    if not isinstance(controls, bool):
        raise AnnotError(f"{path}: controls: must be true or false, got {controls!r}")
    output_dir = raw.get("output_dir", f"runs/{_slug(name)}")
    if not isinstance(output_dir, str) or not output_dir:
        raise AnnotError(f"{path}: output_dir: must be a path string, got {output_dir!r}")

    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise AnnotError(f"{path}: parameters: required, a mapping of dotted run-config paths to specs, "
                         "e.g. {seed: {values: [0, 1]}}")
    base = _load_base(path, raw.get("base"))
    control = check_control(path, raw.get("control"))
    for key, value in control.items():
        try:
            set_field(base, key, value, label=f"control: {key}")
        except AnnotError as e:
            raise AnnotError(f"{path}: {e}") from None
    for key, spec in params.items():
        _check_spec(path, method, key, spec)
        # Apply one value of each parameter to the base now so a misspelt path fails at load,
        # naming the parameter, rather than somewhere inside the cartesian product.
        _apply(path, base, {key: _example(spec)})
    return Sweep(name=name, path=path, method=method, parameters=params, base=base, controls=controls,
                 output_dir=Path(output_dir), raw=raw, run_cap=run_cap, control=control)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "sweep"


def _load_base(path: Path, base) -> dict:
    """The base run config: inline, or a file beside the sweep, or a file from the repo root."""
    if base is None:
        return {}
    if isinstance(base, dict):
        return copy.deepcopy(base)
    if not isinstance(base, str) or not base:
        raise AnnotError(f"{path}: base: must be a path to a run-config YAML or a mapping, got {base!r}")
    tried = [path.parent / base, ROOT / base]
    for cand in tried:
        if cand.is_file():
            data = read_yaml(cand)
            if "method" in data and "parameters" in data:
                raise AnnotError(f"{path}: base: {cand} is a sweep file; point base at a single-run config")
            return data
    raise AnnotError(f"{path}: base: {base}: file not found (looked for {tried[0]} and {tried[1]})")


def _distribution(spec: dict) -> str | None:
    """The spec's distribution, inferred from its keys the way W&B does when not given."""
    if "distribution" in spec:
        return spec["distribution"]
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    return None


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_spec(path: Path, method: str, key, spec) -> None:
    where = f"{path}: parameters: {key}"
    if not isinstance(key, str) or not key:
        raise AnnotError(f"{where}: parameter names must be dotted run-config paths like training.lr")
    if key in ("name", "output_dir"):
        raise AnnotError(f"{where}: set by the sweep (run names come from the parameters; "
                         "use the top-level output_dir key); remove it from parameters")
    if not isinstance(spec, dict):
        raise AnnotError(f"{where}: must be a mapping like {{values: [a, b]}} or {{value: a}}, "
                         f"got {type(spec).__name__}")
    if "parameters" in spec:
        raise AnnotError(f"{where}: nested parameters are not supported; write dotted keys like training.lr")
    reject_non_finite(spec, where)
    bad = [k for k in spec if k not in SPEC_KEYS]
    if bad:
        raise AnnotError(f"{where}: unknown key(s) {', '.join(map(str, bad))}; valid: {', '.join(SPEC_KEYS)}")
    if "value" in spec and "values" in spec:
        raise AnnotError(f"{where}: give either value or values, not both")
    dist = _distribution(spec)
    if dist is None:
        raise AnnotError(f"{where}: needs value, values, or a distribution with min and max")
    if dist not in DISTRIBUTIONS:
        raise AnnotError(f"{where}: distribution: {dist!r} is not supported; valid: {', '.join(DISTRIBUTIONS)}")
    if method == "grid" and dist in NUMERIC:
        raise AnnotError(f"{where}: a grid takes only value or values; use method: random for {dist}")
    if dist == "constant" and "value" not in spec:
        raise AnnotError(f"{where}: distribution constant needs value")
    if dist == "categorical" and not (isinstance(spec.get("values"), list) and spec["values"]):
        raise AnnotError(f"{where}: values: must be a non-empty list")
    if dist in NUMERIC:
        lo, hi = spec.get("min"), spec.get("max")
        if not (is_number(lo) and is_number(hi)) or lo > hi:
            raise AnnotError(f"{where}: {dist} needs numbers min <= max, got min={lo!r} max={hi!r}")
        if dist == "log_uniform_values" and lo <= 0:
            raise AnnotError(f"{where}: log_uniform_values needs min > 0, got {lo!r}")
        if dist == "int_uniform" and not all(isinstance(x, int) for x in (lo, hi)):
            raise AnnotError(f"{where}: int_uniform needs integer min and max, got {lo!r} and {hi!r}")
        if dist == "q_uniform":
            q = spec.get("q", 1)
            if not is_number(q) or q <= 0:
                raise AnnotError(f"{where}: q: must be a number > 0, got {q!r}")
            if _q_range(lo, hi, q)[0] > _q_range(lo, hi, q)[1]:
                raise AnnotError(f"{where}: no multiple of q={q} lies between min={lo} and max={hi}")


def _example(spec: dict):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][0]
    return spec["min"]


# -- building cells ------------------------------------------------------------------------------


def _apply(path: Path, base: dict, params: dict[str, Any]) -> dict:
    """Base config dict + parameter values, each set as the typed value it is (annot.config.set_field:
    the path is checked as for --set; the run-config schema judges the value)."""
    data = base
    for key, value in params.items():
        try:
            data = set_field(data, key, value)
        except AnnotError as e:
            raise AnnotError(f"{path}: parameters: {e}") from None
    return copy.deepcopy(data)


def _wrapper_name(params: dict, base: dict) -> str:
    if "wrapper.name" in params:
        return params["wrapper.name"]
    return (base.get("wrapper") or {}).get("name", "none")


def _without_wrapper_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "wrapper.params" and not k.startswith("wrapper.params.")}


def _normalise(params: dict, base: dict) -> dict:
    """A cell without a wrapper takes no wrapper parameters.

    `wrapper.name: none` next to a swept `wrapper.params.density` (or a base config with wrapper
    params) would otherwise be an invalid run; dropping them makes every such cell the same plain
    control, which dedup then runs once.
    """
    if _wrapper_name(params, base) != "none":
        return params
    out = _without_wrapper_params(params)
    if (base.get("wrapper") or {}).get("params") or len(out) != len(params):
        out["wrapper.params"] = {}
    return out


def _control_of(params: dict) -> dict:
    """The same cell without its wrapper: wrapper.name none, wrapper.params {}."""
    out = _without_wrapper_params(params)
    out["wrapper.name"] = "none"
    out["wrapper.params"] = {}
    return out


def _spelling(key: str, params: dict) -> str:
    """The key a declared control field takes in a cell's parameters: data.path and data.documents /
    data.transcripts are one field, and a cell may give only one spelling."""
    alts = {"data.path": ("data.documents", "data.transcripts"), "data.documents": ("data.path",),
            "data.transcripts": ("data.path",)}
    if key not in params:
        for alt in alts.get(key, ()):
            if alt in params:
                return alt
    return key


def _declared_control_of(params: dict, base: dict, control: dict) -> dict:
    """The cell's declared control: the declared values set, and wrapper none unless the control names
    a wrapper itself (annot.declared_control)."""
    out = dict(params)
    if not names_wrapper(control) and _wrapper_name(params, base) != "none":
        out = _control_of(out)
    for key, value in control.items():
        out[_spelling(key, out)] = copy.deepcopy(value)
    return _normalise(out, base)


def _is_own_control(cell: Cell, control: dict) -> bool:
    cfg = cell.config.model_dump(mode="json")
    return matches(cfg, control) and (names_wrapper(control) or cell.config.wrapper.name == "none")


def _check_control_drawn(sweep: Sweep, drawn: list[Cell]) -> None:
    """A declared control must be one of the conditions the parameters draw (a typo in a path fails here)."""
    if not sweep.control or any(matches(c.config.model_dump(mode="json"), sweep.control) for c in drawn):
        return
    swept = []
    for key in sweep.control:
        spec = sweep.parameters.get(_spelling(key, sweep.parameters))
        if spec is not None and ("values" in spec or "value" in spec):
            values = spec.get("values", [spec.get("value")])
            swept.append(f"{_spelling(key, sweep.parameters)} takes {', '.join(map(str, values))}")
    raise AnnotError(f"{sweep.path}: control: {describe(sweep.control)} matches no condition of the sweep"
                     + (f" ({'; '.join(swept)})" if swept else "") + "; set control to one of the swept values")


def _abbreviations(keys) -> dict[str, str]:
    """Short names for the parameters in run names: data.claim -> claim, wrapper.name -> wrapper.

    Two paths that would shorten to the same word (training.batch_size, probes.batch_size) keep
    their full dotted path, so a name never hides which field a value belongs to.
    """

    def short(k: str) -> str:
        parts = k.split(".")
        return parts[-2] if len(parts) > 1 and parts[-1] == "name" else parts[-1]

    shorts = {k: _clean(short(k))[0] for k in keys}
    counts: dict[str, int] = {}
    for s in shorts.values():
        counts[s] = counts.get(s, 0) + 1
    return {k: s if counts[s] == 1 else _clean(k)[0] for k, s in shorts.items()}


def _clean(text: str) -> tuple[str, bool]:
    """Filesystem-safe text and whether anything was replaced (then the name needs a hash)."""
    out = re.sub(r"[^A-Za-z0-9_.+-]", "_", text) or "_"
    return out, out != text


def _render(value) -> tuple[str, bool]:
    """A parameter value as it appears in a run name, and whether that rendering lost information."""
    if isinstance(value, bool):
        return ("true" if value else "false"), False
    if value is None:
        return "null", False
    if isinstance(value, int):
        return str(value), False
    if isinstance(value, float):
        text = repr(value)
        return (text, False) if len(text) <= 8 else (f"{value:.4g}", True)
    if isinstance(value, str):
        if "/" in value or value.endswith((".yaml", ".yml", ".jsonl")):
            return _clean(Path(value).stem)[0], True  # a path: its stem reads better, the hash keeps it unique
        return _clean(value)
    return _clean(json.dumps(value, sort_keys=True, separators=(",", ":")))[0], True


def run_name(params: dict[str, Any], abbrev: dict[str, str]) -> str:
    """Deterministic, filesystem-safe name of a run from its parameter values.

    run_name({"data.claim": "mira_castellan_profession", "wrapper.name": "notice", "seed": 0}, abbrev)
      -> "claim=mira_castellan_profession,wrapper=notice,seed=0"
    When a value had to be shortened or sanitised, or the name is over MAX_NAME characters, it ends
    in ",id=<8 hex>": a sha256 of the exact parameters (never Python's per-process hash()).
    """
    parts, lossy = [], False
    for key, value in params.items():
        if isinstance(value, dict) and not value:
            continue  # wrapper.params: {} of a control says nothing `wrapper=none` does not
        text, lost = _render(value)
        lossy = lossy or lost
        parts.append(f"{abbrev.get(key) or _clean(key)[0]}={text}")
    name = ",".join(parts) or "run"
    if lossy or len(name) > MAX_NAME:
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 12].rstrip(',=')},id={digest}"
    return name


def _base_for(base: dict, params: dict) -> dict:
    """The base config for one cell: the base's wrapper.params belong to the base's wrapper.

    A cell that swaps the wrapper (wrapper.name: notice over a repeated_negation base) starts from
    the new wrapper's defaults instead of inheriting parameters it may not even take.
    """
    wrapper = base.get("wrapper") or {}
    swapped = "wrapper.name" in params and params["wrapper.name"] != wrapper.get("name", "none")
    if not (swapped and wrapper.get("params")):
        return base
    out = copy.deepcopy(base)
    out["wrapper"]["params"] = {}
    return out


def _make_cell(sweep: Sweep, params: dict, base: dict, abbrev: dict, control: bool = False) -> Cell:
    data = _apply(sweep.path, _base_for(base, params), params)
    name = run_name(params, abbrev)
    data["name"] = name
    data["output_dir"] = str(sweep.output_dir)
    tracking = data.setdefault("tracking", {})
    if isinstance(tracking, dict) and not tracking.get("group"):
        tracking["group"] = sweep.name  # runs of one sweep share a W&B group
    cfg = config_from_dict(data, f"{sweep.path} (run {name})")
    return Cell(name=name, params=params, config=cfg, control=control)


# -- expansion -----------------------------------------------------------------------------------


def _grid(parameters: dict[str, dict]):
    """Cartesian product in file order: the first parameter varies slowest."""
    keys = list(parameters)
    choices = [[s["value"]] if "value" in s else list(s["values"]) for s in parameters.values()]
    for combo in itertools.product(*choices):
        yield dict(zip(keys, copy.deepcopy(combo)))


def _q_range(lo, hi, q) -> tuple[int, int]:
    # round() first: 0.7 / 0.1 is 6.999..., which floor() would turn into 6
    return math.ceil(round(lo / q, 9)), math.floor(round(hi / q, 9))


def _draw(rng: random.Random, spec: dict):
    dist = _distribution(spec)
    if dist == "constant":
        return copy.deepcopy(spec["value"])
    if dist == "categorical":
        return copy.deepcopy(rng.choice(spec["values"]))
    lo, hi = spec["min"], spec["max"]
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "log_uniform_values":
        # exp(log(x)) can land one ulp outside [min, max]; clamp so the bounds hold exactly
        return min(max(math.exp(rng.uniform(math.log(lo), math.log(hi))), lo), hi)
    q = spec.get("q", 1)
    k = rng.randint(*_q_range(lo, hi, q))
    if all(isinstance(x, int) for x in (lo, hi, q)):
        return k * q
    # drawing the multiple k (not rounding a uniform draw) keeps the value inside [min, max]
    return min(max(round(k * q, 12), lo), hi)


def _sample(parameters: dict[str, dict], n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        yield {key: _draw(rng, spec) for key, spec in parameters.items()}


def plan(sweep: Sweep, count: int | None = None, seed: int = 0) -> list[Cell]:
    """Every run of the sweep, in order, validated; raises AnnotError before anything runs.

    cells = plan(load_sweep("sweeps/wrapper_grid.yaml"))
    for c in cells: print(c.name, c.params)

    grid: the cartesian product of the parameters (first varies slowest), cut at run_cap if set.
    random: `count` (else run_cap) draws from random.Random(seed).
    With controls, each wrapped cell's plain control comes right before the first cell needing it;
    with a declared `control`, each cell's declared control does (annot.declared_control), and a
    declaration that matches no drawn cell is an error.
    Cells whose resolved configs are equal run once (the first keeps its place and name).
    """
    if sweep.method == "grid":
        if count is not None:
            raise AnnotError(f"{sweep.path}: --count applies to random sweeps; a grid runs every cell "
                             "(set run_cap to stop it early)")
        draws = _grid(sweep.parameters)
    else:
        n = count if count is not None else sweep.run_cap
        if n is None:
            raise AnnotError(f"{sweep.path}: method: random needs run_cap in the file or --count N")
        if not isinstance(n, int) or n < 1:
            raise AnnotError(f"{sweep.path}: --count must be a positive integer, got {n!r}")
        draws = _sample(sweep.parameters, n, seed)

    abbrev = _abbreviations([*sweep.parameters, "wrapper.name", "wrapper.params"])
    cells: list[Cell] = []
    drawn: list[Cell] = []
    seen: set[str] = set()
    for params in draws:
        params = _normalise(params, sweep.base)
        drawn.append(_make_cell(sweep, params, sweep.base, abbrev))
        wanted = []
        if sweep.controls and sweep.control:
            if not _is_own_control(drawn[-1], sweep.control):
                wanted.append((_declared_control_of(params, sweep.base, sweep.control), True))
        elif sweep.controls and _wrapper_name(params, sweep.base) != "none":
            wanted.append((_control_of(params), True))
        wanted.append((params, False))
        for p, is_control in wanted:
            cell = _make_cell(sweep, p, sweep.base, abbrev, control=is_control) if is_control else drawn[-1]
            identity = json.dumps(cell.config.model_dump(mode="json", exclude={"name"}), sort_keys=True)
            if identity not in seen:
                seen.add(identity)
                cells.append(cell)
    _check_control_drawn(sweep, drawn)
    if sweep.method == "grid" and sweep.run_cap:
        cells = cells[:sweep.run_cap]

    names: dict[str, Cell] = {}
    checked: set[str] = set()
    for cell in cells:
        if cell.name in names:
            raise AnnotError(f"{sweep.path}: runs {names[cell.name].params} and {cell.params} would share the "
                             f"name {cell.name}; make the parameter values distinct")
        names[cell.name] = cell
        # check_inputs reads the claim, wrapper and probe files; cells sharing them need one check
        key = json.dumps(cell.config.model_dump(mode="json", include={"data", "wrapper", "probes"}), sort_keys=True)
        if key in checked:
            continue
        try:
            check_inputs(cell.config)
        except AnnotError as e:
            raise AnnotError(f"{sweep.path}: run {cell.name}: {e}") from None
        checked.add(key)
    return cells


def expand(sweep: Sweep, count: int | None = None, seed: int = 0) -> list[RunConfig]:
    """The validated run configs of a sweep, in run order (see `plan` for names and parameters).

    configs = expand(load_sweep("sweeps/lr_random.yaml"), count=8, seed=0)
    """
    return [cell.config for cell in plan(sweep, count=count, seed=seed)]


# -- Weights & Biases ----------------------------------------------------------------------------


def to_wandb_config(sweep: Sweep) -> dict:
    """The sweep as a W&B sweep config: annot-only keys dropped, dotted parameter names kept.

    wandb.sweep(to_wandb_config(load_sweep("sweeps/wrapper_grid.yaml")), project="annot")

    W&B knows nothing of `controls`, so they become a `none` value of wrapper.name: the grid then
    covers every plain control. Under a swept wrapper.params.* that gives several `none` cells;
    the agent drops wrapper params for `none` (as the local runner does), so they are the same run
    and annot.run.run finds it already complete after the first.
    """
    out: dict[str, Any] = {"method": sweep.method, "name": sweep.name}
    for key in ("description", "project", "metric", "run_cap"):
        if key in sweep.raw:
            out[key] = copy.deepcopy(sweep.raw[key])
    params = copy.deepcopy(sweep.parameters)
    if sweep.controls:
        spec = params.get("wrapper.name")
        if spec is None:
            values = [(sweep.base.get("wrapper") or {}).get("name", "none")]
        else:
            values = [spec["value"]] if "value" in spec else list(spec["values"])
        if any(v != "none" for v in values) and "none" not in values:
            params["wrapper.name"] = {"values": [*values, "none"]}
    out["parameters"] = params
    return out


def agent_cell(sweep: Sweep, config: dict) -> Cell:
    """The cell for one W&B agent run, from its wandb.config (flat, dotted keys)."""
    keys = [*sweep.parameters, "wrapper.name"]
    params = {k: config[k] for k in dict.fromkeys(keys) if k in config}
    base = copy.deepcopy(sweep.base)
    # The agent's own wandb run is the record; annot's Tracker would wandb.init a second run
    # (finishing the agent's), so it is switched off and the curve is logged from the summary.
    base.setdefault("tracking", {})["wandb"] = False
    params = _normalise(params, base)
    abbrev = _abbreviations([*sweep.parameters, "wrapper.name", "wrapper.params"])
    return _make_cell(sweep, params, base, abbrev)
