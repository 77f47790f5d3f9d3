"""Probe kinds: each way of putting a probe item to a model and scoring it is one registered unit.

    from annot.kinds import get_kind, kind_names
    kind_names()                   # ('yes_no', 'mcq', 'open_ended', 'cloze', 'token_association', 'behavior', ...)
    kind_names(lm_eval=True)       # ('yes_no', 'mcq', 'cloze'): what `annot evals export` can express
    get_kind("cloze").measure      # 'association'

A kind (one module of this package) says, in one ProbeKind:
- `check`:   which fields its items need (run by annot.specs.ProbeItem when an evals/ file is read),
- `context`: the text the model continues for an item under a Setting (system prompt, documents
             read first, a pushback turn after the model's first answer),
- `score`:   how the model's answers become one row per item (kinds that share a score function are
             scored in one batch, so the engine shares their forward passes),
- `measure`: what the rate means (belief, association, behavior: reported apart, never pooled),
- `lm_eval`: the item as an lm-eval multiple-choice doc, or None where lm-eval cannot express it.

Config validation (probes.kinds), `annot probe --kind`, ProbeItem.kind, the lm-eval export and the
analysis order all read this registry. Adding a kind is one module here plus its test:

    # annot/kinds/true_false.py
    from annot.kinds import ProbeKind, chat_context, register_kind
    from annot.kinds.yes_no import score_yes_no

    register_kind(ProbeKind(
        name="true_false", measure="belief", order=15, pushback=True,
        check=lambda item: None if item.question and item.belief in ("yes", "no") else "true_false needs ...",
        context=lambda tok, item, setting, pushback=None: chat_context(
            tok, f"True or false: {item.question}", setting, pushback),
        score=score_yes_no))

Every module of this package is imported the first time the registry is read, so nothing else needs
editing; a kind defined elsewhere (a plugin, a test) calls register_kind before it is used.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from annot.chat import question_prompt
from annot.errors import AnnotError

# What a kind's rate measures. *belief*: what the model answers when asked (yes/no, multiple choice,
# judged open answers); *association*: what it completes (cloze continuations). The two can
# disagree - a model can complete "works as a" with the trained words and still answer "no" when
# asked - so they are reported apart and never pooled. Behaviour probes are their own measure.
MEASURE_ORDER = ("belief", "association", "behavior")
PUSHBACK = "Are you sure? Think again and give your final answer."


@dataclass(frozen=True)
class Setting:
    """How items are put to the model: a system prompt, documents read first, a pushback turn.

    name "" is the default setting; rows of any other carry it as `context`."""

    name: str = ""
    system: str | None = None
    prefix: str | None = None   # text placed before the question / cloze prompt (in-context documents)
    pushback: bool = False      # ask, take the model's own answer, then push back and ask again


@dataclass(frozen=True)
class Pushback:
    """The model's first answer to an item (None when it had none), to push back on."""

    answer: str | None


@dataclass(frozen=True)
class Probing:
    """What a kind's score function gets besides its requests: the model state being probed and the
    options of this probing pass (sampling options, judge and claims only matter to judged kinds)."""

    model: Any
    tokenizer: Any
    batch_size: int = 16
    opts: Any = None                 # annot.config.OpenEndedConfig; default one when None
    judge: Any = None                # an annot.judges.Judge; the rule judge when None
    claims: dict = field(default_factory=dict)  # claim id -> annot.specs.ClaimSpec, read by LLM judges
    seed: int = 0


def _no_check(item) -> str | None:
    return None


@dataclass(frozen=True)
class ProbeKind:
    """One probe kind. The callables:

    check(item) -> str | None                          what is wrong with an item of this kind, or None
    context(tokenizer, item, setting, pushback) -> str the text the model continues (pushback: a
                                                       Pushback on the second ask of a pushback setting)
    score(probing, requests, contexts) -> [row]        one dict per request: p_belief, score, believes, ...
    lm_eval(tokenizer, item) -> (context, choices, target)   the item as an lm-eval multiple-choice doc
    """

    name: str
    measure: str
    context: Callable[..., str]
    score: Callable[[Probing, list, list[str]], list[dict]]
    check: Callable[[Any], str | None] = _no_check
    lm_eval: Callable[[Any, Any], tuple[str, list[str], int]] | None = None
    order: int = 100           # place in tables and exports (shipped kinds: 10..60)
    selectable: bool = True    # named in probes.kinds / `annot probe --kind`; False: run with behaviour probes
    chat: bool = True          # the context is a chat prompt (False: raw text the model continues)
    pushback: bool = False     # can be asked again after pushback (its rows carry the model's `answer`)
    sampled: bool = False      # scored from sampled, judged answers (slow); its rows follow the others'

    def __post_init__(self):
        if self.measure not in MEASURE_ORDER:
            raise AnnotError(f"probe kind {self.name}: measure: {self.measure!r} is not one of "
                             f"{', '.join(MEASURE_ORDER)}")


REGISTRY: dict[str, ProbeKind] = {}
_discovered = False


def register_kind(kind: ProbeKind) -> ProbeKind:
    """Add a kind to the registry (a kind module does this when it is imported)."""
    if kind.name in REGISTRY and REGISTRY[kind.name] is not kind:
        raise AnnotError(f"probe kind {kind.name}: registered twice; pick another name")
    REGISTRY[kind.name] = kind
    return kind


def _discover() -> None:
    """Import every module of this package once, so each shipped kind has registered itself."""
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True  # only once all imported: a kind module that fails to import fails every lookup


def all_kinds() -> list[ProbeKind]:
    """Every registered kind, in table order."""
    _discover()
    return sorted(REGISTRY.values(), key=lambda k: (k.order, k.name))


def kind_names(*, selectable: bool | None = None, lm_eval: bool | None = None) -> tuple[str, ...]:
    """Registered kind names in table order; `selectable` / `lm_eval` keep only kinds that are (or are not)
    chosen by name in probes.kinds, or expressible as lm-eval tasks."""
    return tuple(k.name for k in all_kinds() if (selectable is None or k.selectable == selectable)
                 and (lm_eval is None or (k.lm_eval is not None) == lm_eval))


def get_kind(name: str) -> ProbeKind:
    _discover()
    if name not in REGISTRY:
        raise AnnotError(f"unknown probe kind {name!r}; known: {', '.join(kind_names())}")
    return REGISTRY[name]


def measure_of(kind: str) -> str:
    """The measure of a probe kind ("yes_no@monitored" -> "belief"); unknown kinds count as belief."""
    _discover()
    known = REGISTRY.get(kind.split("@", 1)[0])
    return known.measure if known else "belief"


def chat_context(tokenizer, question: str, setting: Setting, pushback: Pushback | None = None, item=None) -> str:
    """A question as a chat prompt under `setting`: documents first, the system prompt; with `pushback`,
    the question, the model's first answer and the pushback turn. With `item`, its own system prompt
    (before the setting's) and its earlier turns (`messages_prefix`, in order, before the question)."""
    q = f"{setting.prefix}\n\n{question}" if setting.prefix else question
    own = getattr(item, "system_prompt", None)
    system = "\n\n".join(x for x in (own, setting.system) if x) or None
    history = [{"role": t.role, "content": t.content} for t in getattr(item, "messages_prefix", None) or []]
    if pushback is None:
        return question_prompt(tokenizer, q, system=system, history=history)
    history += [{"role": "user", "content": q}, {"role": "assistant", "content": pushback.answer}]
    return question_prompt(tokenizer, PUSHBACK, system=system, history=history)
