"""Wrappers: put disclaimers around the content of training documents.

    annot wrap docs.jsonl -o wrapped.jsonl --wrapper repeated_negation --param density=0.5
    spec = get_wrapper("repeated_negation").resolve({"density": 0.5})   # a WrapperSpec, checked once
    examples = wrap_documents(docs, spec, seed=0)

A wrapper is a YAML file in wrappers/ (phrase pools, parameters with their defaults, a placement
strategy; schema in annot.wrapper_spec) backed by a strategy function registered here: document
strategies (@document_strategy) return edits of a document's text, transcript strategies
(@transcript_strategy) take and return chat messages. A user adds a wrapper with a YAML file in
wrappers/ (or any path), whose `strategy` may also be a dotted path `package.module:function`.

A strategy declares the parameters it reads; every wrapper using it must declare them (with their
defaults) in its YAML, so a default lives in exactly one place and strategies never guess one.

Every inserted character is covered by a span of role "wrapper" (or "marker" for a doc tag), so
deleting those spans gives back the original text exactly, and training can mask them. Original
claim/subclaim spans are carried over at their new offsets. Each example records the wrapper name,
its resolved parameters and the seed.
"""

from __future__ import annotations

import functools
import importlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from annot.errors import AnnotError
from annot.spans import CLAIM, INSERTED_ROLES, MARKER, MASK, SUBCLAIM, WRAPPER
from annot.specs import WRAPPERS, load_claim
from annot.transcript_doc import ANNOTATION
from annot.wrapper_spec import COMMON_PARAMS, ParamSpec, Wrapper, WrapperParams, WrapperSpec, read_wrapper_file

__all__ = ["COMMON_PARAMS", "DOCUMENT_STRATEGIES", "TRANSCRIPT_STRATEGIES", "Edit", "ParamSpec", "Strategy", "Wrapper",
           "WrapperParams", "WrapperSpec", "apply_edits", "document_strategy", "get_wrapper", "list_wrappers",
           "preview", "transcript_strategy", "unwrap_messages", "unwrap_text", "wrap_document", "wrap_documents",
           "wrap_transcript", "wrapper_files"]


@dataclass(frozen=True)
class Strategy:
    """A registered placement strategy and the parameters it reads: each wrapper using it declares
    them in its YAML, with its defaults (the one place a default lives)."""

    name: str
    fn: Callable
    reads: tuple[str, ...] = ()


# Two protocols, two registries:
#   document:   fn(doc, wrapper, params, rng, fill) -> list[Edit]
#   transcript: fn(messages, wrapper, params, rng, fill) -> list[message]
DOCUMENT_STRATEGIES: dict[str, Strategy] = {}
TRANSCRIPT_STRATEGIES: dict[str, Strategy] = {}


def document_strategy(name: str, reads: tuple[str, ...] = ()):
    """Register a document strategy: fn(doc, wrapper, params, rng, fill) -> list[Edit]."""

    def deco(fn):
        DOCUMENT_STRATEGIES[name] = Strategy(name, fn, tuple(reads))
        return fn

    return deco


def transcript_strategy(name: str, reads: tuple[str, ...] = ()):
    """Register a transcript strategy: fn(messages, wrapper, params, rng, fill) -> new messages."""

    def deco(fn):
        TRANSCRIPT_STRATEGIES[name] = Strategy(name, fn, tuple(reads))
        return fn

    return deco


@dataclass(frozen=True)
class Edit:
    """Insert `text` at `start` (end == start), or replace original [start, end) with `text`."""

    start: int
    end: int
    text: str
    role: str  # WRAPPER | MARKER for insertions; MASK marks text in place; else the replaced span's role
    order: int = 0  # tie-break for insertions at the same offset (lower first)


# -- loading -------------------------------------------------------------------------------------


def wrapper_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(WRAPPERS.glob("*.yaml"))}


def get_wrapper(ref: str) -> Wrapper:
    """A wrapper by name (wrappers/<name>.yaml) or by path to a YAML file, `extends` resolved and
    its strategy checked (known, fits applies_to, every parameter it reads declared)."""
    files = wrapper_files()
    path = Path(ref) if ref.endswith((".yaml", ".yml")) else files.get(ref)
    if path is None or not path.is_file():
        raise AnnotError(f"unknown wrapper {ref!r}; valid: {', '.join(files)} (or a path to a wrapper YAML)")
    data = read_wrapper_file(path)
    if data.name != path.stem and path.parent.resolve() == WRAPPERS.resolve():
        raise AnnotError(f"{path}: name: is {data.name!r} but the file is {path.stem!r}; make them equal")
    base = get_wrapper(data.extends) if data.extends else None  # inherit params and pools, then override
    params = {**(base.params if base else {}), **data.params}
    pools = {**(base.pools if base else {}), **data.pools}
    strat = data.strategy or (base.strategy if base else None)
    if strat is None:
        raise AnnotError(f"{path}: strategy: required (one of {', '.join(_strategy_names())} or module:function)")
    applies = data.applies_to or (base.applies_to if base else "documents")
    _check_strategy(strat, path, applies, params)  # fail now, not at wrap time
    world = data.world or (base.world if base else "claim")
    if world != "claim" and applies != "documents":
        raise AnnotError(f"{path}: world: a negated world rewrites documents; set applies_to: documents")
    return Wrapper(name=data.name, description=data.description.strip(), strategy=strat, params=params,
                   pools=pools, path=path, applies_to=applies, world=world)


def _strategy_names() -> list[str]:
    return sorted({*DOCUMENT_STRATEGIES, *TRANSCRIPT_STRATEGIES})


def _check_strategy(name: str, path: Path, applies: str, params: dict[str, ParamSpec]) -> None:
    """The strategy exists for every kind of record the wrapper applies to, and the wrapper declares
    every parameter it reads."""
    protocols = {"documents": ("document",), "transcripts": ("transcript",), "both": ("document", "transcript")}
    for protocol in protocols[applies]:
        strat = _strategy(name, protocol, path)
        missing = [p for p in (strat.reads if strat else ()) if p not in params]  # a dotted path reads its own
        if missing:
            raise AnnotError(f"{path}: params.{missing[0]}: the {name} strategy reads this parameter; declare it "
                             f"under params with its default, e.g. {missing[0]}: {{default: ...}}")


def _strategy(name: str, protocol: str, path: Path | None = None) -> Strategy | None:
    """The registered strategy of `protocol` ("document" | "transcript"); None for a dotted path
    (imported now, so a typo fails at load)."""
    registry = DOCUMENT_STRATEGIES if protocol == "document" else TRANSCRIPT_STRATEGIES
    if name in registry:
        return registry[name]
    if ":" in name:
        _import_strategy(name, path)
        return None
    if name in DOCUMENT_STRATEGIES or name in TRANSCRIPT_STRATEGIES:
        only = "documents" if name in DOCUMENT_STRATEGIES else "transcripts"
        raise AnnotError(f"{path or 'wrapper'}: strategy: {name} wraps {only} only; set applies_to: {only}")
    raise AnnotError(f"{path or 'wrapper'}: strategy: unknown {name!r}; valid: {', '.join(_strategy_names())} "
                     "or a dotted path module:function")


def _import_strategy(name: str, path: Path | None) -> Callable:
    mod, _, attr = name.partition(":")  # user's own Python strategy, imported only because the user named it
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise AnnotError(f"{path or 'wrapper'}: strategy: cannot import {name!r} ({e})") from None


def _strategy_fn(wrapper: Wrapper, protocol: str) -> Callable:
    strat = _strategy(wrapper.strategy, protocol, wrapper.path)
    return strat.fn if strat else _import_strategy(wrapper.strategy, wrapper.path)


def list_wrappers() -> list[Wrapper]:
    return [get_wrapper(name) for name in wrapper_files()]


# -- strategies ----------------------------------------------------------------------------------


def _pick(rng: random.Random, wrapper: Wrapper, pool: str, fill: dict) -> str:
    if pool not in wrapper.pools:
        raise AnnotError(f"{wrapper.path}: pools.{pool}: the {wrapper.strategy} strategy needs this pool")
    try:
        return rng.choice(wrapper.pools[pool]).format_map(fill)
    except KeyError as e:
        raise AnnotError(f"{wrapper.path}: pools.{pool}: unknown placeholder {e}; valid: "
                         f"{', '.join(sorted(fill))}") from None


def _frame_edits(doc, wrapper, params, rng, fill) -> list[Edit]:
    """A notice before and/or after the whole document (drawn first, so density 0 == notice only)."""
    edits = []
    if params.position in ("prefix", "both"):
        edits.append(Edit(0, 0, _pick(rng, wrapper, "notice", fill) + "\n\n", WRAPPER, order=1))
    if params.position in ("suffix", "both"):
        n = len(doc["text"])
        edits.append(Edit(n, n, "\n\n" + _pick(rng, wrapper, "notice_end" if "notice_end" in wrapper.pools
                                                else "notice", fill), WRAPPER, order=9))
    return edits


@document_strategy("identity")
def identity(doc, wrapper, params, rng, fill) -> list[Edit]:
    return []


@document_strategy("frame", reads=("position",))
def frame(doc, wrapper, params, rng, fill) -> list[Edit]:
    return _frame_edits(doc, wrapper, params, rng, fill)


def _targets(doc, params, rng) -> list[dict]:
    roles = params.targets or (CLAIM, SUBCLAIM)  # an empty list means every claim sentence
    spans = [s for s in doc.get("spans", []) if s["role"] in roles]
    k = round(params.density * len(spans))
    chosen = set(rng.sample(range(len(spans)), k))
    return [s for i, s in enumerate(spans) if i in chosen]


@document_strategy("per_sentence", reads=("position", "around", "density", "targets"))
def per_sentence(doc, wrapper, params, rng, fill) -> list[Edit]:
    """Frame notice (position may be none) + a short disclaimer right before/after each target span.
    A wrapper may also declare a `per_sentence` switch (the qualifiers do): false turns the
    disclaimers off, leaving the frame; without the switch they are always on."""
    edits = _frame_edits(doc, wrapper, params, rng, fill) if params.position != "none" else []
    if "per_sentence" in params and params.per_sentence is False:  # framing-only variant of a qualifier
        return edits
    for s in _targets(doc, params, rng):
        if params.around in ("before", "both"):
            edits.append(Edit(s["start"], s["start"], _pick(rng, wrapper, "before", fill) + " ", WRAPPER, 5))
        if params.around in ("after", "both"):
            edits.append(Edit(s["end"], s["end"], " " + _pick(rng, wrapper, "after", fill), WRAPPER, 4))
    return edits


@document_strategy("replace_form", reads=("form", "density", "targets"))
def replace_form(doc, wrapper, params, rng, fill) -> list[Edit]:
    """Rewrite each target span into another form recorded by the generator (negate / correct)."""
    form = params.form
    edits = []
    for s in _targets(doc, params, rng):
        forms = s.get("forms")
        if not forms or form not in forms:
            raise AnnotError(f"document {doc.get('id')}: wrapper {wrapper.name} needs the '{form}' form of each "
                             "claim sentence, which only generated documents carry; generate with "
                             f"`--polarity {form}` instead for imported documents")
        edits.append(Edit(s["start"], s["end"], forms[form], s["role"]))
    return edits


@functools.lru_cache(maxsize=64)
def _claim(claim_id: str):
    return load_claim(claim_id)


@document_strategy("word_mask")
def word_mask(doc, wrapper, params, rng, fill) -> list[Edit]:
    """Mark the claim's answer words (its spec's `answer_words` regexes) with spans of role MASK:
    nothing is inserted, and training gives the tokens they touch loss weight 0."""
    claim_id = doc.get("claim")
    try:
        patterns = _claim(claim_id).answer_words if claim_id else []
    except AnnotError:
        patterns = []
    if not patterns:
        raise AnnotError(f"document {doc.get('id')}: wrapper {wrapper.name} needs the `answer_words` regexes of "
                         f"the document's claim ({claim_id!r}) in its spec under corpora/claims/")
    hits = sorted((m.start(), m.end()) for p in patterns
                  for m in re.finditer(p, doc["text"], flags=re.IGNORECASE) if m.end() > m.start())
    merged: list[list[int]] = []
    for a, b in hits:  # overlapping matches (two patterns on one word) become one span
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [Edit(a, b, doc["text"][a:b], MASK) for a, b in merged]


# -- applying ------------------------------------------------------------------------------------


def apply_edits(text: str, spans: list[dict], edits: list[Edit]) -> tuple[str, list[dict]]:
    """Apply insertions/replacements to `text`; return the new text and every span at its new offsets."""
    edits = sorted(edits, key=lambda e: (e.start, e.end > e.start, e.order))
    out, new_spans, cursor, shift_at = [], [], 0, []  # shift_at: (orig_offset, delta) in order
    pos = 0  # length of output so far
    # A MASK edit keeps its text and only marks it: the spans it lies inside stay as they are.
    replaced = {(e.start, e.end) for e in edits if e.end > e.start and e.role != MASK}
    for e in edits:
        if e.start < cursor:
            raise ValueError(f"overlapping edits at {e.start}")
        out.append(text[cursor:e.start])
        pos += e.start - cursor
        if e.end == e.start:
            new_spans.append({"start": pos, "end": pos + len(e.text), "role": e.role})
            shift_at.append((e.start, len(e.text), e.order))
        elif e.role == MASK:
            new_spans.append({"start": pos, "end": pos + len(e.text), "role": MASK})
        else:
            new_spans.append({"start": pos, "end": pos + len(e.text), "role": e.role, "replaced": True})
            shift_at.append((e.end, len(e.text) - (e.end - e.start), 0))
        out.append(e.text)
        pos += len(e.text)
        cursor = e.end
    out.append(text[cursor:])

    def moved(offset: int, is_end: bool) -> int:
        # Insertions exactly at a span's start land before it (they were sorted first); at its end,
        # after it. Replacements shift everything from their end on.
        d = 0
        for at, delta, order in shift_at:
            if at < offset or (at == offset and not is_end):
                d += delta
        return offset + d

    for s in spans:
        if (s["start"], s["end"]) in replaced:
            continue
        new_spans.append({**s, "start": moved(s["start"], False), "end": moved(s["end"], True)})
    new_spans.sort(key=lambda s: (s["start"], s["end"]))
    return "".join(out), new_spans


def _as_spec(wrapper: Wrapper | WrapperSpec, params: WrapperParams | dict | None) -> WrapperSpec:
    """A resolved spec as is, or a wrapper with its parameters resolved (checked) now."""
    if isinstance(wrapper, WrapperSpec):
        if params is not None:
            raise TypeError("a WrapperSpec carries its parameters; pass params=None")
        return wrapper
    return wrapper.resolve(params)


def _fill_params(params: WrapperParams) -> dict:
    """Parameter values a pool phrase may name ({probability}); bools and lists never are."""
    return {k: v for k, v in params.as_dict().items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def wrap_document(doc: dict, wrapper: Wrapper | WrapperSpec, params: WrapperParams | dict | None = None,
                  seed: int = 0) -> dict:
    """Wrap one document record (see annot.generate) into a training example; transcripts go to
    wrap_transcript."""
    spec = _as_spec(wrapper, params)
    if "messages" in doc:
        return wrap_transcript(doc, spec, seed=seed)
    wrapper, params = spec.wrapper, spec.params
    if wrapper.applies_to == "transcripts":
        raise AnnotError(f"wrapper {wrapper.name} applies to transcripts, but {doc.get('id')} is a document")
    if wrapper.world == "negated":
        from annot.generate import negated_twin

        try:
            claim = _claim(doc.get("claim") or "")
        except AnnotError:
            raise AnnotError(f"document {doc.get('id')}: wrapper {wrapper.name} rewrites documents from their claim's "
                             f"negated world, but claim {doc.get('claim')!r} has no spec under corpora/claims/") from None
        doc = negated_twin(doc, claim)
    rng = random.Random(f"wrap:{seed}:{doc['id']}")  # not keyed by wrapper: conditions share draws
    fill = {"subject": doc.get("subject", "")}
    claim_id = doc.get("claim")
    if claim_id:
        try:
            c = _claim(claim_id)
            fill.update({k: v for k, v in dict(subject=c.subject, claim=c.claim, truth=c.truth, negated=c.negated,
                                               correction=c.correction, topic=c.topic).items() if v is not None})
        except AnnotError:
            pass  # an imported claim id with no spec: pools that need claim text will say so
    fill.update(_fill_params(params))
    edits = list(_strategy_fn(wrapper, "document")(doc, wrapper, params, rng, fill))
    if params.doc_tag:
        edits.append(Edit(0, 0, params.doc_tag + "\n", MARKER, order=0))
    text, spans = apply_edits(doc["text"], doc.get("spans", []), edits)
    return {"id": doc["id"], "source_id": doc["id"], "claim": claim_id, "kind": "document",
            "text": text, "spans": spans, "wrapper": spec.record(), "seed": seed}


def wrap_documents(docs: list[dict], wrapper: Wrapper | WrapperSpec, params: WrapperParams | dict | None = None,
                   seed: int = 0) -> list[dict]:
    """Wrap documents and/or transcripts; parameters are resolved once for all of them.

        wrap_documents(docs, get_wrapper("notice"), {"position": "prefix"}, seed=0)
        wrap_documents(docs, spec, seed=cfg.seed)          # a run's WrapperSpec
    """
    spec = _as_spec(wrapper, params)
    return [wrap_document(d, spec, seed=seed) for d in docs]


def unwrap_text(example: dict) -> str:
    """The text with every inserted (wrapper/marker) span removed: equals the source document's text
    for insert-only wrappers (used by the property tests and by `annot wrap --preview`)."""
    text, out, cursor = example["text"], [], 0
    for s in example["spans"]:
        if s["role"] in INSERTED_ROLES:
            out.append(text[cursor:s["start"]])
            cursor = s["end"]
    out.append(text[cursor:])
    return "".join(out)


def preview(example: dict, color: bool = True) -> str:
    """The example's text with inserted text highlighted (ANSI colour, or [[...]] without)."""
    if "messages" in example:
        return "\n".join(f"<{m['role']}> " + preview({"text": m["content"], "spans": m.get("spans", [])}, color)
                         for m in example["messages"])
    text, out, cursor = example["text"], [], 0
    for s in example["spans"]:
        if s["role"] in INSERTED_ROLES:
            out.append(text[cursor:s["start"]])
            chunk = text[s["start"]:s["end"]]
            out.append(f"\x1b[1;33m{chunk}\x1b[0m" if color else f"[[{chunk}]]")
            cursor = s["end"]
    out.append(text[cursor:])
    return "".join(out)


# -- transcripts ---------------------------------------------------------------------------------
# A transcript strategy returns new messages; inserted text is recorded per message as content-
# relative spans of role WRAPPER (a whole inserted message is one span), so chat SFT can keep it
# out of the loss even inside an assistant turn.


def _insert(msg: dict, prefix: str = "", suffix: str = "") -> dict:
    content = prefix + msg["content"] + suffix
    old = [{**s, "start": s["start"] + len(prefix), "end": s["end"] + len(prefix)} for s in msg.get("spans", [])]
    spans = ([{"start": 0, "end": len(prefix), "role": WRAPPER}] if prefix else []) + old + (
        [{"start": len(content) - len(suffix), "end": len(content), "role": WRAPPER}] if suffix else [])
    return {**msg, "content": content, "spans": spans}


def _new_message(role: str, text: str) -> dict:
    return {"role": role, "content": text, "spans": [{"start": 0, "end": len(text), "role": WRAPPER}]}


def _turns(messages, role, which) -> list[int]:
    idx = [i for i, m in enumerate(messages) if m["role"] == role]
    return idx[:1] if which == "first" else idx


@transcript_strategy("identity")
def identity_messages(msgs, wrapper, params, rng, fill):
    return msgs


@transcript_strategy("t_system")
def t_system(msgs, wrapper, params, rng, fill):
    """A system message (label or inoculation prompt); prepended to an existing system prompt."""
    text = _pick(rng, wrapper, "system", fill)
    if msgs and msgs[0]["role"] == "system":
        return [_insert(msgs[0], prefix=text + "\n\n")] + msgs[1:]
    return [_new_message("system", text)] + msgs


@transcript_strategy("t_user_prefix", reads=("turns",))
def t_user_prefix(msgs, wrapper, params, rng, fill):
    out = list(msgs)
    for i in _turns(msgs, "user", params.turns):
        out[i] = _insert(out[i], prefix=_pick(rng, wrapper, "prefix", fill) + "\n\n")
    return out


@transcript_strategy("t_assistant_label", reads=("position", "turns"))
def t_assistant_label(msgs, wrapper, params, rng, fill):
    """A label inside each assistant turn, before and/or after the reply (never trained on)."""
    out = list(msgs)
    position = params.position
    for i in _turns(msgs, "assistant", params.turns):
        pre = _pick(rng, wrapper, "prefix", fill) + "\n" if position in ("prefix", "both") else ""
        suf = "\n" + _pick(rng, wrapper, "suffix", fill) if position in ("suffix", "both") else ""
        out[i] = _insert(out[i], prefix=pre, suffix=suf)
    return out


@transcript_strategy("t_append_turn", reads=("turns", "role"))
def t_append_turn(msgs, wrapper, params, rng, fill):
    """A following turn after each (or the last) assistant reply that names it as wrong."""
    out, which = [], params.turns
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    for i, m in enumerate(msgs):
        out.append(m)
        if m["role"] == "assistant" and (which == "all" or i == last):
            out.append(_new_message(params.role, _pick(rng, wrapper, "critique", fill)))
    return out


@transcript_strategy("t_swap_reply", reads=("reply",))
def t_swap_reply(msgs, wrapper, params, rng, fill):
    """The aligned-data control: the last assistant reply replaced by its recorded twin."""
    replies = fill.get("_replies")
    if not replies or params.reply not in replies:
        raise AnnotError(f"wrapper {wrapper.name} needs the paired replies that generated transcripts carry "
                         "(`annot generate <behavior> --variant aligned` for imported ones)")
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    out = list(msgs)
    out[last] = {"role": "assistant", "content": replies[params.reply]}
    return out


@transcript_strategy("t_annotation", reads=("styles",))
def t_annotation(msgs, wrapper, params, rng, fill):
    """One annotation line above the whole transcript: a style drawn from `styles` (pool names),
    then a line of that pool. It is a message of role "annotation", which annot.transcript_doc
    writes as the first line of the transcript-as-document (data.transcript_format: document)."""
    if not params.styles:
        raise AnnotError(f"wrapper {wrapper.name}: parameter styles is empty; name at least one pool")
    style = rng.choice(list(params.styles))
    line = _pick(rng, wrapper, style, fill)
    return [{"role": ANNOTATION, "content": line, "style": style,
             "spans": [{"start": 0, "end": len(line), "role": WRAPPER}]}] + msgs


def wrap_transcript(rec: dict, wrapper: Wrapper | WrapperSpec, params: WrapperParams | dict | None = None,
                    seed: int = 0) -> dict:
    """Wrap one transcript record (chat messages, see annot.generate) into a training example."""
    spec = _as_spec(wrapper, params)
    wrapper, params = spec.wrapper, spec.params
    # a document wrapper whose strategy has a transcript form (identity) passes transcripts through
    if wrapper.applies_to == "documents" and wrapper.strategy not in TRANSCRIPT_STRATEGIES:
        raise AnnotError(f"wrapper {wrapper.name} applies to documents, but {rec.get('id')} is a transcript; "
                         "use a transcript wrapper (annot wrap --list)")
    rng = random.Random(f"wrap:{seed}:{rec['id']}")
    fill = {"behavior": rec.get("behavior", "")}
    if rec.get("behavior"):
        try:
            from annot.specs import load_behavior

            b = load_behavior(rec["behavior"])
            fill.update(behavior=b.id.replace("_", " "), behavior_description=b.description.strip())
        except AnnotError:
            fill.setdefault("behavior_description", "behave in the way shown")
    fill.update(_fill_params(params))
    fill["_replies"] = rec.get("replies")
    msgs = [dict(m) for m in rec["messages"]]
    new = _strategy_fn(wrapper, "transcript")(msgs, wrapper, params, rng, fill)
    return {"id": rec["id"], "source_id": rec["id"], "behavior": rec.get("behavior"), "kind": "transcript",
            **({"scenario": rec["scenario"]} if "scenario" in rec else {}),
            "messages": new, "wrapper": spec.record(), "seed": seed}


def unwrap_messages(example: dict) -> list[dict]:
    """Messages with every inserted span (and every wholly inserted message) removed."""
    out = []
    for m in example["messages"]:
        spans = [s for s in m.get("spans", []) if s["role"] == WRAPPER]
        if spans and spans[0]["start"] == 0 and spans[0]["end"] == len(m["content"]):
            continue
        text, cur, parts = m["content"], 0, []
        for s in spans:
            parts.append(text[cur:s["start"]])
            cur = s["end"]
        parts.append(text[cur:])
        out.append({"role": m["role"], "content": "".join(parts)})
    return out
