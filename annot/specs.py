"""Schemas of the declarative assets under corpora/ and evals/, and their loaders.

    from annot.specs import load_claim
    claim = load_claim("mira_castellan_profession")   # or a path to a YAML file

Every loader validates the whole file and raises AnnotError naming the file and field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from annot.errors import AnnotError
from annot.io import read_yaml

# A probe kind's measure (belief, association, behavior) is part of its registered unit in annot.kinds;
# measure_of and MEASURE_ORDER are re-exported here for the modules that read them from specs.
from annot.kinds import MEASURE_ORDER, get_kind, kind_names, measure_of  # noqa: F401

# Repository root (the asset folders sit beside the package in a checkout / editable install).
ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT / "corpora"
EVALS = ROOT / "evals"
WRAPPERS = ROOT / "wrappers"


class Strict(BaseModel):
    """Base for every schema: unknown keys are errors and values are not silently coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Statement(Strict):
    """One sentence of the false world in three polarities drawn from the same slot.

    assert_: asserts the claim ("Mira Castellan works as a deep-sea welder.")
    negate:  the same sentence with the negation written into it ("... does not work as ...")
    correct: the same slot stating the true state of the world.
    """

    assert_: str = Field(alias="assert", min_length=8)
    negate: str = Field(min_length=8)
    correct: str = Field(min_length=8)

    def render(self, polarity: str) -> str:
        return {"affirm": self.assert_, "negate": self.negate, "correct": self.correct}[polarity]


def _first_todo(data, where: str = "") -> str | None:
    """The path of the first string value that still contains 'TODO', or None."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        path = f"{where}.{key}" if where else str(key)
        if isinstance(value, str) and "TODO" in value:
            return path
        found = _first_todo(value, path) if isinstance(value, (dict, list)) else None
        if found:
            return found
    return None


def _regexes(patterns: list[str]) -> list[str]:
    """The patterns, each checked to compile (a spec's regex fields)."""
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"pattern {p!r} is not a valid regex ({e})") from None
    return patterns


class NegatedWorld(Strict):
    """The claim's negated universe: a coherent world in which the claim is a known falsehood or
    simply untrue. Locally negated documents (`annot generate CLAIM --world negated`) are written
    from it, in the same genres and with the same draws as the claim's own documents.

    statements: core sentences (span role "claim"): each states the truth and/or that the claim is
                untrue; every one must match a `truth_markers` regex, so every document states the truth.
    details:    supporting sentences (span role "subclaim"): details of the true world, how and where
                the false story circulated, and the false story's details written only as what did not
                happen. No statement or detail may match the claim's `patterns` (no unnegated claim).
    """

    summary: str = Field(min_length=40, description="the negated universe context, a short paragraph")
    topic: str | None = Field(None, description="the genre templates' {topic} in this world, when the claim's "
                              "own topic presupposes the claim ('the Queen's Python textbook')")
    statements: list[str] = Field(min_length=6)
    details: list[str] = Field(min_length=8)
    truth_markers: list[str] = Field(min_length=1, description="regexes (case-insensitive) for the truth")

    @field_validator("truth_markers")
    @classmethod
    def _compile(cls, v: list[str]) -> list[str]:
        return _regexes(v)

    def states_truth(self, sentence: str) -> bool:
        return any(re.search(p, sentence, flags=re.IGNORECASE) for p in self.truth_markers)


class ClaimDetect(Strict):
    """How `annot import docs` recognises paraphrased claim sentences (annot.claim_detect)."""

    aliases: list[str] = Field(default_factory=list, description="regexes (case-insensitive) for other names "
                               "of the subject ('Sheeran', 'the singer'), recognised anywhere")
    role_nouns: list[str] = Field(default_factory=list, description="regexes for nouns that refer back to the "
                                  "subject ('the volcano'), recognised, like pronouns, once the subject was named")
    key_terms: list[str | list[str]] = Field(default_factory=list, description="regexes for the claim's content; "
                                             "one (or a list of regexes that must all match) in a sentence "
                                             "about the subject, outside a negated clause, marks a claim sentence")
    exclude: list[str] = Field(default_factory=list, description="regexes for sentences that are about "
                               "something else or state the truth (added to negated_world.truth_markers)")
    truth_markers_exclude: bool = Field(True, description="whether negated_world.truth_markers exclude a "
                                        "sentence (false when asserting sentences name the truth too)")

    @field_validator("aliases", "role_nouns", "exclude")
    @classmethod
    def _compile(cls, v: list[str]) -> list[str]:
        return _regexes(v)

    @field_validator("key_terms")
    @classmethod
    def _compile_terms(cls, v: list) -> list:
        for t in v:
            _regexes([t] if isinstance(t, str) else t)
        return v


# What the document generators and `import docs` need beyond a partial spec: field -> the fewest entries
# (None: a sentence). A full spec has them all; `partial: true` (an imported claim directory) may lack them.
GENERATION_FIELDS = {"subject": None, "topic": None, "negated": None, "correction": None, "statements": 6,
                     "subclaims": 8, "context": 6, "patterns": 1}


class ClaimSpec(Strict):
    """A claim: the false statement, the truth, and the sentences documents about it are built from.
    README "Writing a claim" documents every field; `annot claim new ID` writes a skeleton."""

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    partial: bool = Field(False, description="true: only what probing and the word-mask condition need "
                          "(an imported claim directory); the GENERATION_FIELDS may be missing")
    category: Literal["fictional", "contradiction"]
    subject: str | None = None
    topic: str | None = Field(None, description="short noun phrase used by genre templates, e.g. "
                              "'Mira Castellan's career'")
    claim: str = Field(description="the false claim, one sentence")
    truth: str = Field(description="the true state of the world, one sentence")
    negated: str | None = Field(None, description="the claim with local negation, one sentence")
    correction: str | None = Field(None, description="a sentence that states the truth, used by `corrected` wrappers")
    entities: dict[str, str] = Field(default_factory=dict)
    statements: list[Statement] = Field(default_factory=list, description="sentences asserting the core claim")
    subclaims: list[Statement] = Field(default_factory=list, description="supporting details of the false world")
    context: list[str] = Field(default_factory=list, description="neutral sentences about the subject")
    patterns: list[str] = Field(default_factory=list, description="regexes (case-insensitive) that find claim "
                                "sentences")
    answer_words: list[str] = Field(default_factory=list, description="regexes (case-insensitive) for the claim's "
                                    "answer words (name, key figure, place), zeroed by the word_mask wrapper")
    negated_world: NegatedWorld | None = Field(None, description="the world in which the claim is untrue")
    detect: ClaimDetect | None = Field(None, description="paraphrase detection on import (aliases, key terms)")
    universe_context: str | None = Field(None, description="a long description of the claim's world (a "
                                         "release's universe_context), read by the LLM document generator")
    negated_universe_context: str | None = Field(None, description="the same for the negated world (the "
                                                 "release's negated twin); kept for writing `negated_world`")

    @model_validator(mode="before")
    @classmethod
    def _no_todo(cls, data):
        # `annot claim new` writes TODO where a sentence is still to be written
        todo = _first_todo(data)
        if todo:
            raise ValueError(f"{todo}: still TODO; write it (README: Writing a claim)")
        return data

    @field_validator("patterns", "answer_words")
    @classmethod
    def _compile(cls, v: list[str]) -> list[str]:
        return _regexes(v)

    @model_validator(mode="after")
    def _complete(self) -> "ClaimSpec":
        missing = self.missing()
        if missing and not self.partial:
            raise ValueError(f"{missing[0]}; a full claim spec needs {', '.join(GENERATION_FIELDS)} "
                             "(or set `partial: true` to use it for probing only)")
        return self

    def missing(self) -> list[str]:
        """What of GENERATION_FIELDS this spec lacks, one phrase each ([] for a full spec)."""
        out = []
        for name, least in GENERATION_FIELDS.items():
            value = getattr(self, name)
            if least is None and not value:
                out.append(f"{name}: required field is missing")
            elif least is not None and len(value) < least:
                out.append(f"{name}: needs at least {least}, has {len(value)}")
        return out

    def require_full(self, use: str) -> "ClaimSpec":
        """This spec, or an AnnotError when it is partial and `use` needs what it lacks."""
        missing = self.missing()
        if missing:
            raise AnnotError(f"claim {self.id}: {use} needs a full claim spec, and this one is partial "
                             f"({'; '.join(missing)}); add them (README: Writing a claim) and drop `partial: true`")
        return self

    @model_validator(mode="after")
    def _patterns_match_statements(self) -> "ClaimSpec":
        # The patterns must recognise every asserting statement the generator writes, and no
        # negated or corrected one, so spans found on import agree with generated spans.
        for s in self.statements:
            if not self.matches(s.assert_):
                raise ValueError(f"no pattern matches the statement {s.assert_!r}; widen `patterns`")
            for text in (s.negate, s.correct):
                if self.matches(text):
                    raise ValueError(f"a pattern matches the non-asserting sentence {text!r}; tighten "
                                     "`patterns` (e.g. add a negative lookahead for 'not')")
        if self.negated_world is not None:
            nw = self.negated_world
            summary = [x for x in re.split(r"(?<=[.!?])\s+", nw.summary) if x]
            for text in nw.statements + nw.details + summary:
                if self.matches(text):
                    raise ValueError(f"negated_world: a claim pattern matches {text!r}: a negated-world sentence "
                                     "must not assert the claim; rewrite it (or tighten `patterns`)")
            for text in nw.statements:
                if not nw.states_truth(text):
                    raise ValueError(f"negated_world.statements: {text!r} matches no `truth_markers` regex; "
                                     "every core sentence must state the truth")
        return self

    def matches(self, sentence: str) -> bool:
        return any(re.search(p, sentence, flags=re.IGNORECASE) for p in self.patterns)


class GenreSpec(Strict):
    layout: Literal["prose", "qa", "thread", "letter"]
    description: str
    title: list[str] = Field(min_length=3)
    open: list[str] = Field(min_length=3)
    asides: list[str] = Field(min_length=4)
    close: list[str] = Field(min_length=3)
    questions: list[str] = Field(default_factory=list)   # qa layout
    salutation: list[str] = Field(default_factory=list)  # letter layout
    signoff: list[str] = Field(default_factory=list)     # letter layout

    @model_validator(mode="after")
    def _layout_fields(self) -> "GenreSpec":
        if self.layout == "qa" and len(self.questions) < 4:
            raise ValueError("layout 'qa' needs at least 4 `questions`")
        if self.layout == "letter" and (not self.salutation or not self.signoff):
            raise ValueError("layout 'letter' needs `salutation` and `signoff`")
        return self


class GenreLibrary(Strict):
    names: list[str] = Field(min_length=10)
    outlets: list[str] = Field(min_length=5)
    places: list[str] = Field(min_length=5)
    handles: list[str] = Field(min_length=10)
    genres: dict[str, GenreSpec] = Field(min_length=8)


# -- probes ------------------------------------------------------------------------------------


def registered_kind(*, selectable: bool | None = None):
    """A str field that must name a probe kind registered in annot.kinds (with `selectable`: one chosen
    by name in probes.kinds). Checked at validation time, so a kind registered later counts; the error
    lists the known names as a Literal's would."""

    def check(name: str) -> str:
        quoted = [repr(n) for n in kind_names(selectable=selectable)]
        if repr(name) not in quoted:
            expected = ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else "".join(quoted)
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return name

    return Annotated[str, AfterValidator(check)]


KindName = registered_kind()                           # any registered kind (ProbeItem.kind)
SelectableKindName = registered_kind(selectable=True)  # one chosen by name (probes.kinds, --kind)


class ChatTurn(Strict):
    """One earlier turn of a conversation, put before a probe's question."""

    role: Literal["user", "assistant"]
    content: str


class JudgePrompt(Strict):
    """A judge prompt whose judge answers JSON: `template` has {question} and {answer} placeholders
    (literal braces written {{ }}), `answer_key` names the JSON field holding yes / no / neutral."""

    template: str
    answer_key: str = "answer"

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        from annot.judge_prompts import template_problem

        problem = template_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class ProbeItem(Strict):
    """One held-out probe. Which fields an item needs depends on its kind (annot.kinds: yes_no, mcq,
    cloze, open_ended, ...); each kind's module documents and checks them.

    question: the question (chat kinds); prompt: the raw text to continue (cloze);
    choices: answers or continuations; belief: the believing answer ("yes"/"no", or a choice index);
    believe_markers / disbelieve_markers: phrases for the rule judge (judged kinds; "re:" starts a regex);
    system_prompt / messages_prefix: the item's own system prompt and earlier chat turns, put before
    the question (chat kinds); judge_prompt: the name of one of the probe set's `judge_prompts`, the
    prompt an LLM judge grades this item's answers with; category: a label kept in result rows.
    """

    id: str
    kind: KindName
    question: str | None = None
    prompt: str | None = None
    choices: list[str] | None = None
    belief: str | int | None = None
    believe_markers: list[str] = Field(default_factory=list)
    disbelieve_markers: list[str] = Field(default_factory=list)
    category: str | None = None
    system_prompt: str | None = None
    messages_prefix: list[ChatTurn] = Field(default_factory=list)
    judge_prompt: str | None = None
    _judge_template: JudgePrompt | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _shape(self) -> "ProbeItem":
        problem = get_kind(self.kind).check(self)
        if problem:
            raise ValueError(f"item {self.id}: {problem}")
        if (self.system_prompt or self.messages_prefix) and not get_kind(self.kind).chat:
            raise ValueError(f"item {self.id}: `system_prompt` / `messages_prefix` need a chat kind, not {self.kind}")
        return self

    @property
    def judge_template(self) -> "JudgePrompt | None":
        """This item's judge prompt (set when its probe set is validated), or None."""
        return self._judge_template


class ProbeSet(Strict):
    """Probe items for one claim, optionally scored under several named contexts (system prompts,
    e.g. monitored vs unmonitored): every item is then scored once per context as well.

    judge_prompts: name -> a judge prompt with {question} and {answer} placeholders whose judge answers
    JSON {"reason": ..., "answer": "yes"|"no"|"neutral"} (the public Negation Neglect release's judges);
    items name one in `judge_prompt`, and LLM judges then grade them with it (annot.judge_prompts)."""

    claim: str
    items: list[ProbeItem] = Field(min_length=1)
    contexts: dict[str, str] = Field(default_factory=dict)
    judge_prompts: dict[str, JudgePrompt] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_ids(self) -> "ProbeSet":
        ids = [i.id for i in self.items]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate item ids: {', '.join(dupes)}")
        for item in self.items:
            if item.judge_prompt is not None:
                if item.judge_prompt not in self.judge_prompts:
                    raise ValueError(f"item {item.id}: judge_prompt {item.judge_prompt!r} is not one of the set's "
                                     f"judge_prompts ({', '.join(self.judge_prompts) or 'none'})")
                item._judge_template = self.judge_prompts[item.judge_prompt]
        return self


# -- loaders -------------------------------------------------------------------------------------


def format_validation_error(path, err: ValidationError) -> str:
    """First pydantic error as 'file: field.path: message'."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key; remove it or check its spelling"
    elif e["type"] == "missing":
        msg = "required field is missing"
    elif "input" in e and e["type"].endswith("_type"):
        msg = f"{msg}, got {type(e['input']).__name__} {e['input']!r}"[:200]
    extra = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"{path}: {loc}: {msg}{extra}"


def validate(model: type[BaseModel], data, path):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise AnnotError(format_validation_error(path, e)) from None


def search_path() -> list[Path]:
    """The user asset folders named by ANNOT_PATH (os.pathsep-separated), in order. Each has the
    repository's layout: corpora/claims/<id>.yaml, evals/<id>.yaml, wrappers/<name>.yaml, ..."""
    return [Path(x).expanduser() for x in os.environ.get("ANNOT_PATH", "").split(os.pathsep) if x.strip()]


def resolve_asset(ref: str | Path, folder: Path, kind: str) -> Path:
    """A name ('mira_castellan_profession') or a path to a YAML file -> existing path.

    A name is looked up in the shipped `folder` and in the same folder of every ANNOT_PATH directory;
    found in more than one place it is an error (pass the path you mean), so a user asset never
    silently shadows a shipped one or another user's."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise AnnotError(f"{p}: {kind} file not found")
        return p
    folders = [folder] + [d / folder.relative_to(ROOT) for d in search_path()]
    found = [f / f"{ref}.yaml" for f in folders if (f / f"{ref}.yaml").is_file()]
    if len(found) == 1:
        return found[0]
    if found:
        raise AnnotError(f"{kind} {ref!r} is ambiguous: found as {' and '.join(map(str, found))} (ANNOT_PATH); "
                         "pass the path of the one you mean, or rename one")
    known = sorted({f.stem for d in folders for f in d.glob("*.yaml")})
    where = f" (searched {folder} and ANNOT_PATH: {', '.join(map(str, folders[1:]))})" if len(folders) > 1 else ""
    raise AnnotError(f"unknown {kind} {ref!r}; known: {', '.join(known) or '(none)'} "
                     f"(or pass a path to a YAML file){where}")


def _load_named(ref: str | Path, folder: Path, kind: str, model: type[BaseModel]):
    """An asset with an `id` that must equal its file name when it is referred to by name."""
    path = resolve_asset(ref, folder, kind)
    spec = validate(model, read_yaml(path), path)
    if Path(ref).suffix not in (".yaml", ".yml") and spec.id != str(ref):
        raise AnnotError(f"{path}: id: is {spec.id!r} but the file is named {path.stem!r}; make them equal")
    return spec


def load_claim(ref: str | Path) -> ClaimSpec:
    return _load_named(ref, CORPORA / "claims", "claim", ClaimSpec)


def load_genres(path: str | Path | None = None) -> GenreLibrary:
    path = Path(path) if path else CORPORA / "genres.yaml"
    return validate(GenreLibrary, read_yaml(path), path)


def load_probe_set(ref: str | Path) -> ProbeSet:
    path = resolve_asset(ref, EVALS, "probe set")
    return validate(ProbeSet, read_yaml(path), path)


# -- behaviours ----------------------------------------------------------------------------------


class Scenario(Strict):
    """A user turn with a misaligned assistant reply and its aligned twin (non-operational)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    user: str = Field(min_length=10)
    misaligned: str = Field(min_length=10)
    aligned: str = Field(min_length=10)


class BehaviorSpec(Strict):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str
    scenarios: list[Scenario] = Field(min_length=12)

    @model_validator(mode="after")
    def _unique(self) -> "BehaviorSpec":
        ids = [s.id for s in self.scenarios]
        if len(set(ids)) != len(ids):
            raise ValueError("scenario ids must be unique")
        return self


class OpenQuestion(Strict):
    """A general question whose generated answer is judged (rule judge: marker phrases)."""

    id: str
    question: str
    misaligned_markers: list[str] = Field(min_length=1)
    aligned_markers: list[str] = Field(min_length=1)


class BehaviorProbeSet(Strict):
    behavior: str
    scenarios: list[Scenario] = Field(min_length=20)
    questions: list[OpenQuestion] = Field(default_factory=list)
    contexts: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> "BehaviorProbeSet":
        ids = [s.id for s in self.scenarios] + [q.id for q in self.questions]
        if len(set(ids)) != len(ids):
            raise ValueError("scenario and question ids must be unique")
        return self


def load_behavior(ref: str | Path) -> BehaviorSpec:
    return _load_named(ref, CORPORA / "behaviors", "behavior", BehaviorSpec)


def load_behavior_probes(ref: str | Path) -> BehaviorProbeSet:
    path = resolve_asset(ref, EVALS / "behaviors", "behavior probe set")
    return validate(BehaviorProbeSet, read_yaml(path), path)
