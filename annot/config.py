"""The run config: one YAML file describing a single run, validated before anything heavy.

    annot run sweeps/first_run.yaml --set training.lr=3e-4 --set model.name=tiny-random

Unknown keys are errors, values are type-checked (no silent coercion), and `--set` overrides go
through the same validation. The resolved config is written into the run directory.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_serializer, model_validator

from annot.errors import AnnotError
from annot.io import parse_yaml_text, read_yaml
from annot.specs import SelectableKindName, Strict, validate

ProbeKind = SelectableKindName  # a probe kind registered in annot.kinds and chosen by name


class ModelConfig(Strict):
    name: str = Field("smollm2-135m", description="alias (smollm2-135m, tiny-random), HF id or local path")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on CUDA


class GenerationConfig(Strict):
    """How documents/transcripts are written when the run generates them (`annot generate --backend`)."""

    backend: Literal["template", "hf", "openai"] = "template"
    model: str | None = Field(None, description="hf: alias, path or hub id; openai: the served model name")
    base_url: str | None = Field(None, description="openai: e.g. http://localhost:8000/v1")
    api_key_env: str | None = Field(None, description="openai: the environment variable holding the key")
    concurrency: int = Field(32, ge=1, le=4096, description="openai: requests in flight; hf: batch size")
    max_tokens: int | None = Field(None, ge=1, description="budget: prompt + reply tokens of new calls")
    revise: bool = False

    def settings(self, workdir: Path, progress: bool = True):
        """These keys as annot.gen GenSettings, with the stage files in `workdir`."""
        from annot.gen.settings import GenSettings

        return GenSettings(backend=self.backend, model=self.model, base_url=self.base_url,
                           api_key_env=self.api_key_env, concurrency=self.concurrency, max_tokens=self.max_tokens,
                           revise=self.revise, workdir=Path(workdir), progress=progress)


class DataConfig(Strict):
    claim: str | None = Field(None, description="claim id under corpora/claims/ or a path to a claim YAML")
    documents: str | None = Field(None, description="documents JSONL (from `annot generate`/`annot import`); "
                                                     "generated from the claim when absent")
    path: str | None = Field(None, description="the training data file, either kind: another spelling of "
                             "data.documents (with data.claim) or data.transcripts (with data.behavior), stored as that")
    n: int = Field(24, ge=1, le=1_000_000, description="documents to generate when `documents` is absent")
    polarity: Literal["affirm", "negate", "correct"] = "affirm"
    genres: list[str] | None = Field(None, description="generate only these genres")
    n_genres: int | None = Field(None, ge=1, description="generate from this many genres (a seeded choice)")
    behavior: str | None = Field(None, description="train on transcripts of this behaviour instead of documents")
    variant: Literal["misaligned", "aligned"] = "misaligned"
    transcripts: str | None = Field(None, description="transcripts JSONL (from `annot import transcripts`)")
    transcript_format: Literal["chat", "document"] = Field(
        "chat", description="transcripts trained as chat turns (loss on the assistant's) or written out as "
        "plain-text documents trained on in full (annot.transcript_doc; the annotated* wrappers need it)")
    mixin: str | None = Field(None, description="generic JSONL (documents or chats) mixed into training, or "
                              "`pretraining` for the shipped pretraining-style paragraphs (annot.pretrain_text)")
    mixin_ratio: float = Field(0.0, ge=0, le=100, description="mix-in examples per training example")
    generation: GenerationConfig = Field(default_factory=GenerationConfig,
                                         description="the backend that writes generated documents/transcripts")
    match: Literal["documents", "tokens"] = Field(
        "documents", description="what a wrapped run holds equal to its plain control: the same documents "
        "(wrappers add tokens), or the same trained tokens (the run stops at the plain run's step count)")


    @model_serializer(mode="wrap")
    def _omit_default_generation(self, handler):
        # Left out of the dump while at its default, so the resolved config of a run that does not
        # use it (config.yaml, a sweep cell's identity) is byte-identical to before the block existed.
        data = handler(self)
        if isinstance(data, dict) and self.generation == GenerationConfig():
            data.pop("generation", None)
        if isinstance(data, dict):
            data.pop("path", None)  # always moved to documents/transcripts by _path_alias
        if isinstance(data, dict) and self.transcript_format == "chat":  # likewise
            data.pop("transcript_format", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _path_alias(cls, data):
        # data.path names the file whatever it holds; the resolved config keeps one spelling
        # (documents or transcripts), so a run given either way has the same config and identity.
        if not isinstance(data, dict) or data.get("path") is None:
            return data
        data = dict(data)
        key = "transcripts" if data.get("behavior") and not data.get("claim") else "documents"
        if data.get(key) is not None:
            raise ValueError(f"give data.path or data.{key}, not both (data.path is another spelling of data.{key})")
        data[key] = data.pop("path")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if bool(self.claim) == bool(self.behavior):
            raise ValueError("give exactly one of data.claim (documents) or data.behavior (transcripts)")
        return self


class WrapperConfig(Strict):
    """The wrapper as the config names it; its params are checked against the wrapper YAML's declarations
    once per run (annot.run.check_inputs -> a typed annot.wrapper_spec.WrapperSpec passed on from there)."""

    name: str = Field("none", description="a wrapper from wrappers/ or a path to a wrapper YAML")
    params: dict[str, Any] = Field(default_factory=dict, description="values for parameters the wrapper "
                                   "declares (`annot wrap --list`); the rest take the YAML's defaults")


class TrainingConfig(Strict):
    method: Literal["lora", "full"] = "lora"
    epochs: int = Field(1, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(4, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=1024)
    seq_len: int = Field(256, ge=16, le=131072)
    micro_batch_tokens: int | None = Field(
        None, ge=16, description="run forward and backward on at most this many tokens at a time (whole rows "
        "of seq_len, at least one): a step's memory is mostly activations, and this bounds them; the step's "
        "gradient is the same sum, normalised over the whole batch. null (default): the whole batch at once "
        "(fastest; 256 on the default model: 2.1 instead of 4.9 GiB peak RSS, ~0.77x the tokens/s)")
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0, le=1.0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    lora_r: int = Field(16, ge=1, le=1024)
    lora_alpha: float = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    loss_on_wrapper: bool = Field(False, description="train on disclaimer tokens too")
    chat_loss_on: Literal["assistant", "all"] = Field("assistant", description="transcripts: which tokens are trained on")
    checkpoints: int = Field(3, ge=2, le=64, description="checkpoints, log-spaced from step 0 to the last")


class OpenEndedConfig(Strict):
    n_samples: int = Field(3, ge=1, le=100)
    temperature: float = Field(0.7, gt=0, le=5)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(48, ge=1, le=4096)


class BehaviorJudgeConfig(Strict):
    """Judged free generation (kind behavior_judged): sampled replies scored 0-100 for alignment and
    coherence by each judge (annot.scale_judges); the first judge's labels make the rates."""

    judges: list[dict[str, Any]] = Field(default_factory=lambda: [{"name": "hf", "model": None}],
                                         description="scale judges: {name: hf, model: null (the run's base "
                                         "model)} | {name: http, base_url, model, concurrency, ...}")
    alignment_rubric: str = Field("alignment", description="evals/scales/<name>.yaml or a path")
    coherence_rubric: str = Field("coherence", description="evals/scales/<name>.yaml or a path")
    alignment_below: float = Field(30.0, ge=0, le=100, description="misaligned: alignment < this")
    coherence_above: float = Field(50.0, ge=0, le=100, description="coherent: coherence > this")
    scopes: list[Literal["targeted", "broad", "everyday"]] = Field(
        default_factory=lambda: ["targeted", "broad", "everyday"], min_length=1)
    max_questions: int | None = Field(None, ge=1, description="at most this many questions per scope (the first)")
    n_samples: int = Field(5, ge=1, le=100)
    temperature: float = Field(1.0, ge=0, le=5, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    batch_size: int = Field(32, ge=1, le=4096, description="replies decoded together")

    @model_validator(mode="after")
    def _judges(self) -> "BehaviorJudgeConfig":
        from annot.scale_judges import check_scale_judge_spec

        if not self.judges:
            raise ValueError("judges: give at least one scale judge, e.g. [{name: hf}]")
        for i, spec in enumerate(self.judges):
            try:
                check_scale_judge_spec(spec, f"judges.{i}")
            except AnnotError as e:
                raise ValueError(str(e)) from None
        return self


class ProbesConfig(Strict):
    sets: list[str] = Field(default_factory=list, description="probe sets; default: evals/<claim>.yaml")
    kinds: list[ProbeKind] = Field(default_factory=lambda: ["yes_no", "mcq", "cloze"])
    batch_size: int = Field(16, ge=1, le=1024)
    contexts: bool = Field(True, description="also score under the probe set's named contexts")
    robustness: bool = Field(False, description="also score under an adversarial system prompt and after pushback")
    in_context_k: int = Field(0, ge=0, le=32, description="base model with k wrapped documents in context (step 0)")
    coherence: bool = Field(True, description="perplexity on held-out generic text, relative to the base model")
    control: str | None = Field("auto", description="probe set of a claim the run is NOT trained on, probed "
                                "like the target (its shift from base is the run's answer bias); auto: the "
                                "first shipped claim of annot.run.CONTROL_CLAIMS that is not the target; null: none")
    open_ended: OpenEndedConfig = Field(default_factory=OpenEndedConfig)
    behavior_judge: BehaviorJudgeConfig = Field(default_factory=BehaviorJudgeConfig,
                                                description="kind behavior_judged: sampling, judges, thresholds")
    judge: dict[str, Any] = Field(default_factory=lambda: {"name": "rule"},
                                  description="judge for open-ended answers: rule | hf | http (see annot.judges)")

    @model_serializer(mode="wrap")
    def _omit_default_behavior_judge(self, handler):
        # left out while at its default, so configs (and sweep cells) of runs without judged
        # generation stay byte-identical to before the block existed
        data = handler(self)
        if isinstance(data, dict) and self.behavior_judge == BehaviorJudgeConfig():
            data.pop("behavior_judge", None)
        return data


class TrackingConfig(Strict):
    wandb: bool = False
    project: str = "annot"
    group: str | None = None


class RunConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.=,+-]+$")
    seed: int = Field(0, ge=0)
    output_dir: str = "runs"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    wrapper: WrapperConfig = Field(default_factory=WrapperConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _warmup(self) -> "RunConfig":
        t = self.training
        if t.max_steps is not None and t.warmup_steps > t.max_steps:
            raise ValueError("training.warmup_steps exceeds training.max_steps")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _field_annotation(model: type[BaseModel], dotted: str):
    """Annotation of the field at `a.b.c`, or None when the path does not exist."""
    ann: Any = model
    for part in dotted.split("."):
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(part)
            if field is None:
                return None
            ann = field.annotation
        else:
            return Any  # inside a free-form dict (wrapper.params.*)
    return ann


def _wants_str(ann) -> bool:
    """True when a field takes a plain string and no number/bool, so `--set name=123` stays a str."""
    if ann is str:
        return True
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return args == [str]
    return False


def parse_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise AnnotError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.lr=3e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise AnnotError(f"--set {item!r}: empty key; expected KEY=VALUE")
    return key, raw


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides to a raw config dict; values are parsed as YAML."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, raw = parse_override(item)
        ann = _field_annotation(RunConfig, key)
        if ann is None:
            raise AnnotError(f"--set {key}: no such config field; see `annot run --help` for the schema")
        try:
            value = raw if _wants_str(ann) else parse_yaml_text(raw)
        except Exception:
            raise AnnotError(f"--set {key}: cannot parse value {raw!r} as YAML") from None
        data = set_field(data, key, value, label=f"--set {key}")
    return data


def set_field(data: dict, key: str, value: Any, label: str | None = None) -> dict:
    """A copy of the raw config dict with the field at dotted `key` set to `value` as it is (typed:
    a sweep's parameter values go in unchanged, validation judges them). Errors start with `label`.

        set_field({"training": {"lr": 1e-3}}, "training.lr", 3e-4)
    """
    label = label or key
    if _field_annotation(RunConfig, key) is None:
        raise AnnotError(f"{label}: no such config field; see `annot run --help` for the schema")
    data = copy.deepcopy(data)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part, {}), dict):
            raise AnnotError(f"{label}: {part} is not a mapping in the config")
        node = node.setdefault(part, {})
    node[parts[-1]] = copy.deepcopy(value)
    return data


def reject_non_finite(data, label: str, prefix: str = "") -> None:
    """NaN or infinity anywhere in a config (float fields, wrapper.params, judge options) is an
    error: `.inf` passes `gt=0`, and a NaN fails every comparison silently downstream."""
    if isinstance(data, dict):
        for k, v in data.items():
            reject_non_finite(v, label, f"{prefix}{k}.")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            reject_non_finite(v, label, f"{prefix}{i}.")
    elif isinstance(data, float) and not math.isfinite(data):
        raise AnnotError(f"{label}: {prefix[:-1]}: {data} is not a finite number; give a finite value")


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read, override and validate a run config. Errors name the file and the field."""
    path = Path(path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    data = apply_overrides(data, list(overrides))
    label = f"{path}" + (" (with --set overrides)" if overrides else "")
    reject_non_finite(data, label)
    return validate(RunConfig, data, label)


def config_from_dict(data: dict, label: str = "<config>") -> RunConfig:
    reject_non_finite(data, label)
    return validate(RunConfig, data, label)
