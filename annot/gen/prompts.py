"""The prompts of the LLM pipelines, read from YAML under corpora/prompts/ (edited without Python).

    prompts = load_prompts("documents")                  # corpora/prompts/documents.yaml
    messages = prompts.messages("document", universe=..., genre=..., idea=..., statement=..., ...)

A prompt file has `kind` (documents | transcripts) and one entry per stage: an `id` (recorded in
the provenance of every record the stage helps write: change it when you change the text), an
optional `system` text, a `user` text with {placeholders}, and the stage's sampling defaults. Each
stage may use only its own placeholders (listed in STAGES); a literal brace is written {{ or }}.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from annot.errors import AnnotError
from annot.io import read_yaml
from annot.specs import CORPORA, Strict, validate

PROMPTS = CORPORA / "prompts"

# stage -> the placeholders its texts may use
STAGES: dict[str, dict[str, frozenset[str]]] = {
    "documents": {
        "universe": frozenset({"subject", "topic", "claim", "statements", "details", "context"}),
        "facts": frozenset({"subject", "topic", "universe", "k"}),
        "ideas": frozenset({"subject", "topic", "universe", "genre", "genre_description", "k"}),
        "document": frozenset({"subject", "topic", "universe", "genre", "genre_description", "idea", "statement",
                               "fact", "words"}),
        "revise": frozenset({"subject", "topic", "universe", "genre", "statement", "document"}),
    },
    "transcripts": {
        "requests": frozenset({"behavior", "description", "examples", "k"}),
        "misaligned": frozenset({"behavior", "description", "examples", "user"}),
        "aligned": frozenset({"behavior", "description", "user"}),
    },
}
OPTIONAL_STAGES = frozenset({"revise"})


class PromptStage(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$", description="recorded in provenance; bump it when you edit")
    system: str | None = None
    user: str = Field(min_length=1)
    max_tokens: int = Field(ge=1, le=131072)
    temperature: float = Field(1.0, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)


class PromptFile(Strict):
    kind: Literal["documents", "transcripts"]
    description: str | None = None
    stages: dict[str, PromptStage]

    @model_validator(mode="after")
    def _stages_and_placeholders(self) -> "PromptFile":
        allowed = STAGES[self.kind]
        unknown = sorted(set(self.stages) - set(allowed))
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; the {self.kind} stages are {', '.join(allowed)}")
        missing = [s for s in allowed if s not in self.stages and s not in OPTIONAL_STAGES]
        if missing:
            raise ValueError(f"stage {missing[0]!r} is missing")
        for name, stage in self.stages.items():
            for text in (stage.system or "", stage.user):
                for field in placeholders(text, name):
                    if field not in allowed[name]:
                        raise ValueError(f"stage {name!r}: unknown placeholder {{{field}}}; this stage has "
                                         f"{', '.join('{' + f + '}' for f in sorted(allowed[name]))} "
                                         "(write a literal brace as {{ or }})")
        return self

    def messages(self, stage: str, **values) -> tuple[dict, ...]:
        """The chat messages of `stage` with its placeholders filled."""
        st = self.stages[stage]
        msgs = [{"role": "system", "content": st.system.format_map(values).strip()}] if st.system else []
        return tuple(msgs + [{"role": "user", "content": st.user.format_map(values).strip()}])


def placeholders(text: str, stage: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise ValueError(f"stage {stage!r}: malformed braces ({e}); write a literal brace as {{{{ or }}}}") from None


def load_prompt_file(path: str | Path) -> PromptFile:
    """A prompt file of any kind, validated (its `kind` says which pipeline it is for)."""
    return validate(PromptFile, read_yaml(path), path)


def load_prompts(kind: str, path: str | Path | None = None) -> PromptFile:
    """The prompt file for `kind` (default corpora/prompts/<kind>.yaml), validated."""
    path = Path(path) if path else PROMPTS / f"{kind}.yaml"
    prompts = load_prompt_file(path)
    if prompts.kind != kind:
        raise AnnotError(f"{path}: kind: is {prompts.kind!r}, but this corpus needs {kind!r} prompts")
    return prompts
