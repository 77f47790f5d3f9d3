"""The wrapper spec: a wrapper YAML's schema, the resolved wrapper, and its typed parameters.

    spec = get_wrapper("repeated_negation").resolve({"density": 0.5})   # (annot.wrap) -> WrapperSpec
    spec.params.density                 # 0.5, a float: checked once against the YAML's declaration
    spec.params.as_dict()               # {"around": "both", "density": 0.5, ...} as recorded in examples

A wrapper YAML declares each parameter with its default (`density: {default: 1.0, type: float, min: 0,
max: 1}`); that declaration is the ONE place a default lives. Resolving a wrapper's parameters builds a
pydantic model from the declarations, so the values a run wraps with are checked once (type, choices,
range, finite) and then travel as one typed, frozen value: `WrapperSpec` = the wrapper + its params.
Loading, `extends` and the strategy registries are in annot.wrap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from annot.errors import AnnotError
from annot.io import read_yaml
from annot.specs import Strict, format_validation_error

ParamType = Literal["float", "int", "str", "bool", "list"]
AppliesTo = Literal["documents", "transcripts", "both"]
World = Literal["claim", "negated"]  # "negated": each generated document is first rewritten from its claim's negated world
Phrase = Annotated[str, Field(min_length=1)]
Pool = Annotated[list[Phrase], Field(min_length=1)]


class ParamSpec(Strict):
    """One parameter as a wrapper YAML declares it: `density: {default: 1.0, type: float, min: 0.0, max: 1.0}`.

    Also readable like the YAML mapping it came from (`p["choices"]`, `"help" in p`, `p.get("default")`),
    for listings that print the declarations."""

    default: Any = Field(description="the value when a run does not set it (may be null)")
    type: ParamType | None = None
    choices: list[Any] | None = None
    min: int | float | None = None
    max: int | float | None = None
    help: str | None = None

    def __contains__(self, key: str) -> bool:
        return key in type(self).model_fields and (key == "default" or getattr(self, key) is not None)

    def __getitem__(self, key: str):
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, fallback=None):
        return self[key] if key in self else fallback

    def annotation(self):
        """The pydantic type of a value of this parameter (None is always accepted: "not set")."""
        base: Any = {"float": float, "int": int, "str": str, "bool": bool, "list": list[Any], None: Any}[self.type]
        if self.choices is not None:
            one = Literal[tuple(self.choices)]
            base = list[one] if self.type == "list" else one if self.type else Union[one, list[one]]
        elif self.type is None and (self.min is not None or self.max is not None):
            base = Union[int, float]  # a range without a type: a number
        return Optional[base]

    def field(self):
        """(annotation, FieldInfo) for create_model."""
        numeric = self.type in ("float", "int") or (self.type is None and self.choices is None)
        checks = {"ge": self.min, "le": self.max} if numeric else {}
        if self.type == "float":
            checks["allow_inf_nan"] = False
        return self.annotation(), Field(self.default, **{k: v for k, v in checks.items() if v is not None})


# Params every document wrapper takes, whatever its YAML says.
COMMON_PARAMS: dict[str, ParamSpec] = {
    "doc_tag": ParamSpec(default=None, type="str", help="marker token prefixed to each document; never trained on"),
}


class WrapperFile(Strict):
    """A wrapper YAML as written (before `extends` is resolved); see wrappers/*.yaml."""

    name: str
    description: str
    strategy: str | None = None
    extends: str | None = None
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    pools: dict[str, Pool] = Field(default_factory=dict)
    applies_to: AppliesTo | None = None
    world: World | None = None


class WrapperParams(BaseModel):
    """Base of every wrapper's resolved parameters: one field per declared parameter, sorted by name.
    Read them as attributes (`params.density`); `as_dict()` is what examples and manifests record."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def __contains__(self, name: str) -> bool:
        return name in type(self).model_fields

    def __getitem__(self, name: str):
        if name not in self:
            raise KeyError(name)
        return getattr(self, name)

    def __str__(self) -> str:  # log lines show the values as the dict they are recorded as
        return str(self.as_dict())


class Wrapper(Strict):
    """A wrapper with `extends` resolved: its strategy, every declared parameter and every pool."""

    name: str
    description: str
    strategy: str
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    pools: dict[str, list[str]] = Field(default_factory=dict)
    path: Path | None = None
    applies_to: AppliesTo = "documents"
    world: World = "claim"

    def param_specs(self) -> dict[str, ParamSpec]:
        """The wrapper's declared parameters plus COMMON_PARAMS, sorted by name."""
        return dict(sorted({**self.params, **COMMON_PARAMS}.items()))

    def resolve_params(self, given: dict[str, Any] | WrapperParams | None = None) -> WrapperParams:
        """Defaults + `given`, type- and range-checked; unknown names list the valid ones."""
        specs = self.param_specs()
        if isinstance(given, WrapperParams):  # resolved already (annot wrap resolves once for all documents)
            if list(type(given).model_fields) != list(specs):
                raise AnnotError(f"wrapper {self.name}: parameters resolved for another wrapper "
                                 f"({', '.join(type(given).model_fields)}); resolve them with this one")
            return given
        given = dict(given or {})
        unknown = sorted(set(given) - set(specs))
        if unknown:
            raise AnnotError(f"wrapper {self.name}: unknown parameter(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(specs) or '(none)'}")
        model = create_model(f"{self.name}_params", __base__=WrapperParams,
                             **{k: p.field() for k, p in specs.items()})
        try:
            return model(**given)
        except ValidationError as e:
            raise AnnotError(_param_error(self.name, specs, given, e)) from None

    def resolve(self, given: dict[str, Any] | None = None) -> WrapperSpec:
        """This wrapper with its parameters resolved: the value a run wraps with."""
        return WrapperSpec(self, self.resolve_params(given))


@dataclass(frozen=True)
class WrapperSpec:
    """A wrapper and its resolved parameters, resolved once per run and passed on as one value.

        spec = get_wrapper(cfg.wrapper.name).resolve(cfg.wrapper.params)
        examples = wrap_documents(docs, spec, seed=cfg.seed)
    """

    wrapper: Wrapper
    params: WrapperParams

    @property
    def name(self) -> str:
        return self.wrapper.name

    @property
    def applies_to(self) -> str:
        return self.wrapper.applies_to

    def record(self) -> dict[str, Any]:
        """The provenance every wrapped example carries: {"name", "params"}."""
        return {"name": self.wrapper.name, "params": self.params.as_dict()}


def _param_error(wrapper: str, specs: dict[str, ParamSpec], given: dict, err: ValidationError) -> str:
    """The first problem as one line naming the wrapper, the parameter and what it accepts."""
    e = err.errors()[0]
    key = str(e["loc"][0])
    p = specs[key]
    value = given.get(key, p.default)
    where = f"wrapper {wrapper}: parameter {key}"
    if e["type"] == "finite_number":
        return f"{where} must be a finite number, got {value}"
    if e["type"].endswith("_type") and p.type:
        return f"{where} must be a {p.type}, got {value!r}"
    if e["type"] in ("greater_than_equal", "less_than_equal"):
        shown = float(value) if p.type == "float" else value
        return (f"{where}={shown} is outside [{p.min if p.min is not None else '-inf'}, "
                f"{p.max if p.max is not None else 'inf'}]")
    if p.choices is not None:
        return f"{where}={value!r} is not one of {', '.join(map(str, p.choices))}"
    return f"{where}: {e['msg']}, got {value!r}"


# -- reading a wrapper YAML -----------------------------------------------------------------------------

_PARAM_HINT = "must be a mapping with at least `default`"


def read_wrapper_file(path: Path) -> WrapperFile:
    """A wrapper YAML validated against WrapperFile; errors name the file, the field and the fix."""
    data = read_yaml(path)
    try:
        return WrapperFile.model_validate(data)
    except ValidationError as e:
        raise AnnotError(_file_error(path, data, e)) from None


def _file_error(path: Path, data: dict, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = tuple(str(x) for x in e["loc"])
    top = loc[0] if loc else ""
    if e["type"] == "extra_forbidden" and len(loc) == 1:
        return f"{path}: {top}: unknown key; valid keys: {', '.join(sorted(WrapperFile.model_fields))}"
    if top in ("name", "description") and len(loc) == 1:
        return f"{path}: {top}: required string field is missing"
    if top in ("applies_to", "world", "params", "pools") and len(loc) == 1:
        valid = {"applies_to": AppliesTo, "world": World}.get(top)
        return f"{path}: {top}: " + ("must be a mapping" if valid is None else
                                      f"must be one of {', '.join(valid.__args__)}")
    if top == "pools":
        return f"{path}: pools.{loc[1]}: must be a non-empty list of phrases"
    if top == "params":
        return _param_decl_error(path, data, loc, err)
    return format_validation_error(path, err)


def _param_decl_error(path: Path, data: dict, loc: tuple[str, ...], err: ValidationError) -> str:
    name = loc[1]
    decl = (data.get("params") or {}).get(name)
    if not isinstance(decl, dict) or "default" not in decl:
        return f"{path}: params.{name}: {_PARAM_HINT}"
    extra = sorted({str(x["loc"][2]) for x in err.errors()
                    if x["type"] == "extra_forbidden" and len(x["loc"]) == 3 and str(x["loc"][1]) == name})
    if extra:  # e.g. an unquoted comma in a flow mapping's help text becomes a key of its own
        return (f"{path}: params.{name}: unknown key(s) {', '.join(extra)}; valid: "
                f"{', '.join(sorted(ParamSpec.model_fields))} (quote text that contains commas)")
    if len(loc) > 2 and loc[2] == "type":
        return f"{path}: params.{name}.type: must be one of {', '.join(ParamType.__args__)}"
    return format_validation_error(path, err)
