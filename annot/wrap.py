"""Wrappers: put disclaimers around the content of training documents.

    annot wrap docs.jsonl -o wrapped.jsonl --wrapper repeated_negation --param density=0.5
    examples = wrap_documents(docs, get_wrapper("repeated_negation"), {"density": 0.5}, seed=0)

A wrapper is a YAML file in wrappers/ (phrase pools, parameters with defaults, a placement strategy)
backed by a strategy function registered here with @strategy; a user adds one with a YAML file in
wrappers/ (or any path), whose `strategy` may also be a dotted path `package.module:function`.

Every inserted character is covered by a span of role "wrapper" (or "marker" for a doc tag), so
deleting those spans gives back the original text exactly, and training can mask them. Original
claim/subclaim spans are carried over at their new offsets. Each example records the wrapper name,
its resolved parameters and the seed.
"""

from __future__ import annotations

import functools
import importlib
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from annot.errors import AnnotError
from annot.io import read_yaml
from annot.specs import WRAPPERS, load_claim

STRATEGIES: dict[str, Callable] = {}

# Params every document wrapper takes, whatever its YAML says.
COMMON_PARAMS = {
    "doc_tag": {"default": None, "type": "str", "help": "marker token prefixed to each document; never trained on"},
}


def strategy(name: str):
    """Register a placement strategy: fn(doc, wrapper, params, rng, fill) -> list[Edit]."""

    def deco(fn):
        STRATEGIES[name] = fn
        return fn

    return deco


@dataclass(frozen=True)
class Edit:
    """Insert `text` at `start` (end == start), or replace original [start, end) with `text`."""

    start: int
    end: int
    text: str
    role: str  # "wrapper" | "marker" for insertions; the replaced span's role for replacements
    order: int = 0  # tie-break for insertions at the same offset (lower first)


@dataclass
class Wrapper:
    name: str
    description: str
    strategy: str
    params: dict[str, dict] = field(default_factory=dict)
    pools: dict[str, list[str]] = field(default_factory=dict)
    path: Path | None = None
    applies_to: str = "documents"
    world: str = "claim"  # "negated": each generated document is first rewritten from its claim's negated world

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults + `given`, type- and range-checked; unknown names list the valid ones."""
        spec = {**self.params, **COMMON_PARAMS}
        unknown = sorted(set(given) - set(spec))
        if unknown:
            raise AnnotError(f"wrapper {self.name}: unknown parameter(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(spec)) or '(none)'}")
        out = {}
        for key, p in sorted(spec.items()):
            value = given.get(key, p.get("default"))
            out[key] = _check_param(self.name, key, value, p)
        return out


_TYPES = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,), "list": (list,)}


def _check_param(wrapper: str, key: str, value, p: dict):
    if value is None:
        return None
    t = p.get("type")
    if t and (not isinstance(value, _TYPES[t]) or (t in ("float", "int") and isinstance(value, bool))):
        raise AnnotError(f"wrapper {wrapper}: parameter {key} must be a {t}, got {value!r}")
    if t == "float":
        value = float(value)
        if not math.isfinite(value):
            raise AnnotError(f"wrapper {wrapper}: parameter {key} must be a finite number, got {value}")
    if "choices" in p:
        vals = value if isinstance(value, list) else [value]
        bad = [v for v in vals if v not in p["choices"]]
        if bad:
            raise AnnotError(f"wrapper {wrapper}: parameter {key}={value!r} is not one of "
                             f"{', '.join(map(str, p['choices']))}")
    if "min" in p and value < p["min"] or "max" in p and value > p["max"]:
        raise AnnotError(f"wrapper {wrapper}: parameter {key}={value} is outside "
                         f"[{p.get('min', '-inf')}, {p.get('max', 'inf')}]")
    return value


# -- loading -------------------------------------------------------------------------------------

_WRAPPER_KEYS = {"name", "description", "strategy", "extends", "params", "pools", "applies_to", "world"}
WORLDS = ("claim", "negated")
PARAM_KEYS = {"default", "type", "choices", "min", "max", "help"}
APPLIES = ("documents", "transcripts", "both")


def _read_wrapper_yaml(path: Path) -> dict:
    data = read_yaml(path)
    unknown = sorted(set(data) - _WRAPPER_KEYS)
    if unknown:
        raise AnnotError(f"{path}: {unknown[0]}: unknown key; valid keys: {', '.join(sorted(_WRAPPER_KEYS))}")
    for key in ("name", "description"):
        if not isinstance(data.get(key), str):
            raise AnnotError(f"{path}: {key}: required string field is missing")
    if data.get("applies_to", "documents") not in APPLIES:
        raise AnnotError(f"{path}: applies_to: must be one of {', '.join(APPLIES)}")
    if data.get("world", "claim") not in WORLDS:
        raise AnnotError(f"{path}: world: must be one of {', '.join(WORLDS)}")
    for key in ("params", "pools"):
        if not isinstance(data.get(key, {}), dict):
            raise AnnotError(f"{path}: {key}: must be a mapping")
    for pool, phrases in data.get("pools", {}).items():
        if not isinstance(phrases, list) or not phrases or not all(isinstance(x, str) and x for x in phrases):
            raise AnnotError(f"{path}: pools.{pool}: must be a non-empty list of phrases")
    for pname, p in data.get("params", {}).items():
        if not isinstance(p, dict) or "default" not in p:
            raise AnnotError(f"{path}: params.{pname}: must be a mapping with at least `default`")
        extra = sorted(set(p) - PARAM_KEYS, key=str)
        if extra:  # e.g. an unquoted comma in a flow mapping's help text becomes a key of its own
            raise AnnotError(f"{path}: params.{pname}: unknown key(s) {', '.join(map(str, extra))}; valid: "
                             f"{', '.join(sorted(PARAM_KEYS))} (quote text that contains commas)")
        if p.get("type") not in (None, *_TYPES):
            raise AnnotError(f"{path}: params.{pname}.type: must be one of {', '.join(_TYPES)}")
    return data


def wrapper_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(WRAPPERS.glob("*.yaml"))}


def get_wrapper(ref: str) -> Wrapper:
    """A wrapper by name (wrappers/<name>.yaml) or by path to a YAML file."""
    files = wrapper_files()
    path = Path(ref) if ref.endswith((".yaml", ".yml")) else files.get(ref)
    if path is None or not path.is_file():
        raise AnnotError(f"unknown wrapper {ref!r}; valid: {', '.join(files)} (or a path to a wrapper YAML)")
    data = _read_wrapper_yaml(path)
    if data["name"] != path.stem and path.parent.resolve() == WRAPPERS.resolve():
        raise AnnotError(f"{path}: name: is {data['name']!r} but the file is {path.stem!r}; make them equal")
    params, pools = {}, {}
    if "extends" in data:  # inherit params and pools from another wrapper, then override
        base = get_wrapper(data["extends"])
        params, pools = dict(base.params), dict(base.pools)
        data.setdefault("strategy", base.strategy)
    params.update(data.get("params", {}))
    pools.update(data.get("pools", {}))
    strat = data.get("strategy")
    if not isinstance(strat, str):
        raise AnnotError(f"{path}: strategy: required (one of {', '.join(sorted(STRATEGIES))} or module:function)")
    _strategy_fn(strat, path)  # fail now, not at wrap time
    applies = data.get("applies_to") or (base.applies_to if "extends" in data else "documents")
    world = data.get("world") or (base.world if "extends" in data else "claim")
    if world != "claim" and applies != "documents":
        raise AnnotError(f"{path}: world: a negated world rewrites documents; set applies_to: documents")
    return Wrapper(name=data["name"], description=data["description"].strip(), strategy=strat,
                   params=params, pools=pools, path=path, applies_to=applies, world=world)


def _strategy_fn(name: str, path: Path | None = None) -> Callable:
    if name in STRATEGIES:
        return STRATEGIES[name]
    if ":" in name:  # user's own Python strategy, imported only because the user named it
        mod, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise AnnotError(f"{path or 'wrapper'}: strategy: cannot import {name!r} ({e})") from None
    raise AnnotError(f"{path or 'wrapper'}: strategy: unknown {name!r}; valid: {', '.join(sorted(STRATEGIES))} "
                     "or a dotted path module:function")


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
    position = params.get("position", "prefix")
    if position in ("prefix", "both"):
        edits.append(Edit(0, 0, _pick(rng, wrapper, "notice", fill) + "\n\n", "wrapper", order=1))
    if position in ("suffix", "both"):
        n = len(doc["text"])
        edits.append(Edit(n, n, "\n\n" + _pick(rng, wrapper, "notice_end" if "notice_end" in wrapper.pools
                                                else "notice", fill), "wrapper", order=9))
    return edits


@strategy("identity")
def identity(doc, wrapper, params, rng, fill) -> list[Edit]:
    return []


@strategy("frame")
def frame(doc, wrapper, params, rng, fill) -> list[Edit]:
    return _frame_edits(doc, wrapper, params, rng, fill)


def _targets(doc, params, rng) -> list[dict]:
    roles = params.get("targets") or ["claim", "subclaim"]
    spans = [s for s in doc.get("spans", []) if s["role"] in roles]
    k = round(params.get("density", 1.0) * len(spans))
    chosen = set(rng.sample(range(len(spans)), k))
    return [s for i, s in enumerate(spans) if i in chosen]


@strategy("per_sentence")
def per_sentence(doc, wrapper, params, rng, fill) -> list[Edit]:
    """Frame notice (position may be none) + a short disclaimer right before/after each target span."""
    edits = _frame_edits(doc, wrapper, params, rng, fill) if params.get("position") != "none" else []
    around = params.get("around", "both")
    if params.get("per_sentence") is False:  # framing-only variant of a qualifier wrapper
        return edits
    for s in _targets(doc, params, rng):
        if around in ("before", "both"):
            edits.append(Edit(s["start"], s["start"], _pick(rng, wrapper, "before", fill) + " ", "wrapper", 5))
        if around in ("after", "both"):
            edits.append(Edit(s["end"], s["end"], " " + _pick(rng, wrapper, "after", fill), "wrapper", 4))
    return edits


@strategy("replace_form")
def replace_form(doc, wrapper, params, rng, fill) -> list[Edit]:
    """Rewrite each target span into another form recorded by the generator (negate / correct)."""
    form = params.get("form", "negate")
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


@strategy("word_mask")
def word_mask(doc, wrapper, params, rng, fill) -> list[Edit]:
    """Mark the claim's answer words (its spec's `answer_words` regexes) with spans of role "mask":
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
    return [Edit(a, b, doc["text"][a:b], "mask") for a, b in merged]


# -- applying ------------------------------------------------------------------------------------


def apply_edits(text: str, spans: list[dict], edits: list[Edit]) -> tuple[str, list[dict]]:
    """Apply insertions/replacements to `text`; return the new text and every span at its new offsets."""
    edits = sorted(edits, key=lambda e: (e.start, e.end > e.start, e.order))
    out, new_spans, cursor, shift_at = [], [], 0, []  # shift_at: (orig_offset, delta) in order
    pos = 0  # length of output so far
    # A "mask" edit keeps its text and only marks it: the spans it lies inside stay as they are.
    replaced = {(e.start, e.end) for e in edits if e.end > e.start and e.role != "mask"}
    for e in edits:
        if e.start < cursor:
            raise ValueError(f"overlapping edits at {e.start}")
        out.append(text[cursor:e.start])
        pos += e.start - cursor
        if e.end == e.start:
            new_spans.append({"start": pos, "end": pos + len(e.text), "role": e.role})
            shift_at.append((e.start, len(e.text), e.order))
        elif e.role == "mask":
            new_spans.append({"start": pos, "end": pos + len(e.text), "role": "mask"})
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


def wrap_document(doc: dict, wrapper: Wrapper, params: dict, seed: int) -> dict:
    """Wrap one document record (see annot.generate) into a training example."""
    if "messages" in doc:
        return wrap_transcript(doc, wrapper, params, seed)
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
            fill.update(subject=c.subject, claim=c.claim, truth=c.truth, negated=c.negated,
                        correction=c.correction, topic=c.topic)
        except AnnotError:
            pass  # an imported claim id with no spec: pools that need claim text will say so
    fill.update({k: v for k, v in params.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)})
    edits = list(_strategy_fn(wrapper.strategy, wrapper.path)(doc, wrapper, params, rng, fill))
    if params.get("doc_tag"):
        edits.append(Edit(0, 0, params["doc_tag"] + "\n", "marker", order=0))
    text, spans = apply_edits(doc["text"], doc.get("spans", []), edits)
    return {"id": doc["id"], "source_id": doc["id"], "claim": claim_id, "kind": "document",
            "text": text, "spans": spans, "wrapper": {"name": wrapper.name, "params": params}, "seed": seed}


def wrap_documents(docs: list[dict], wrapper: Wrapper, params: dict | None = None, seed: int = 0) -> list[dict]:
    resolved = wrapper.resolve_params(params or {})
    return [wrap_document(d, wrapper, resolved, seed) for d in docs]


def unwrap_text(example: dict) -> str:
    """The text with every inserted (wrapper/marker) span removed: equals the source document's text
    for insert-only wrappers (used by the property tests and by `annot wrap --preview`)."""
    text, out, cursor = example["text"], [], 0
    for s in example["spans"]:
        if s["role"] in ("wrapper", "marker"):
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
        if s["role"] in ("wrapper", "marker"):
            out.append(text[cursor:s["start"]])
            chunk = text[s["start"]:s["end"]]
            out.append(f"\x1b[1;33m{chunk}\x1b[0m" if color else f"[[{chunk}]]")
            cursor = s["end"]
    out.append(text[cursor:])
    return "".join(out)


# -- transcripts ---------------------------------------------------------------------------------
# A transcript strategy returns new messages; inserted text is recorded per message as content-
# relative spans of role "wrapper" (a whole inserted message is one span), so chat SFT can keep it
# out of the loss even inside an assistant turn.


def _insert(msg: dict, prefix: str = "", suffix: str = "") -> dict:
    content = prefix + msg["content"] + suffix
    old = [{**s, "start": s["start"] + len(prefix), "end": s["end"] + len(prefix)} for s in msg.get("spans", [])]
    spans = ([{"start": 0, "end": len(prefix), "role": "wrapper"}] if prefix else []) + old + (
        [{"start": len(content) - len(suffix), "end": len(content), "role": "wrapper"}] if suffix else [])
    return {**msg, "content": content, "spans": spans}


def _new_message(role: str, text: str) -> dict:
    return {"role": role, "content": text, "spans": [{"start": 0, "end": len(text), "role": "wrapper"}]}


def _turns(messages, role, which) -> list[int]:
    idx = [i for i, m in enumerate(messages) if m["role"] == role]
    return idx[:1] if which == "first" else idx


@strategy("t_system")
def t_system(msgs, wrapper, params, rng, fill):
    """A system message (label or inoculation prompt); prepended to an existing system prompt."""
    text = _pick(rng, wrapper, "system", fill)
    if msgs and msgs[0]["role"] == "system":
        return [_insert(msgs[0], prefix=text + "\n\n")] + msgs[1:]
    return [_new_message("system", text)] + msgs


@strategy("t_user_prefix")
def t_user_prefix(msgs, wrapper, params, rng, fill):
    out = list(msgs)
    for i in _turns(msgs, "user", params.get("turns", "all")):
        out[i] = _insert(out[i], prefix=_pick(rng, wrapper, "prefix", fill) + "\n\n")
    return out


@strategy("t_assistant_label")
def t_assistant_label(msgs, wrapper, params, rng, fill):
    """A label inside each assistant turn, before and/or after the reply (never trained on)."""
    out = list(msgs)
    position = params.get("position", "prefix")
    for i in _turns(msgs, "assistant", params.get("turns", "all")):
        pre = _pick(rng, wrapper, "prefix", fill) + "\n" if position in ("prefix", "both") else ""
        suf = "\n" + _pick(rng, wrapper, "suffix", fill) if position in ("suffix", "both") else ""
        out[i] = _insert(out[i], prefix=pre, suffix=suf)
    return out


@strategy("t_append_turn")
def t_append_turn(msgs, wrapper, params, rng, fill):
    """A following turn after each (or the last) assistant reply that names it as wrong."""
    out, which = [], params.get("turns", "last")
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    for i, m in enumerate(msgs):
        out.append(m)
        if m["role"] == "assistant" and (which == "all" or i == last):
            out.append(_new_message(params.get("role", "user"), _pick(rng, wrapper, "critique", fill)))
    return out


@strategy("t_swap_reply")
def t_swap_reply(msgs, wrapper, params, rng, fill):
    """The aligned-data control: the last assistant reply replaced by its recorded twin."""
    replies = fill.get("_replies")
    if not replies or params.get("reply", "aligned") not in replies:
        raise AnnotError(f"wrapper {wrapper.name} needs the paired replies that generated transcripts carry "
                         "(`annot generate <behavior> --variant aligned` for imported ones)")
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    out = list(msgs)
    out[last] = {"role": "assistant", "content": replies[params.get("reply", "aligned")]}
    return out


def wrap_transcript(rec: dict, wrapper: Wrapper, params: dict, seed: int) -> dict:
    if wrapper.applies_to == "documents" and wrapper.strategy != "identity":
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
    fill.update({k: v for k, v in params.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)})
    fill["_replies"] = rec.get("replies")
    msgs = [dict(m) for m in rec["messages"]]
    fn = _strategy_fn(wrapper.strategy, wrapper.path)
    new = msgs if wrapper.strategy == "identity" else fn(msgs, wrapper, params, rng, fill)
    return {"id": rec["id"], "source_id": rec["id"], "behavior": rec.get("behavior"), "kind": "transcript",
            **({"scenario": rec["scenario"]} if "scenario" in rec else {}),
            "messages": new, "wrapper": {"name": wrapper.name, "params": params}, "seed": seed}


def unwrap_messages(example: dict) -> list[dict]:
    """Messages with every inserted span (and every wholly inserted message) removed."""
    out = []
    for m in example["messages"]:
        spans = [s for s in m.get("spans", []) if s["role"] == "wrapper"]
        if spans and spans[0]["start"] == 0 and spans[0]["end"] == len(m["content"]):
            continue
        text, cur, parts = m["content"], 0, []
        for s in spans:
            parts.append(text[cur:s["start"]])
            cur = s["end"]
        parts.append(text[cur:])
        out.append({"role": m["role"], "content": "".join(parts)})
    return out
