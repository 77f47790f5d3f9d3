"""Import a claim directory in the public Negation Neglect release's format: its questions become a
probe set, its word masks and universe contexts a (partial) claim spec.

    annot evals import path/to/claims/harbour_medal --claim-id harbour_medal_1911 -o my_assets
    imported = import_claim_dir("path/to/claims/harbour_medal", claim_id="harbour_medal_1911")
    imported.probe_set, imported.claim, imported.warnings

The files (each optional; at least one question file):

    mcq.yaml                questions: [{id, question, category: positive|counter, belief_answer: yes|no}]
    open_ended.yaml         questions: [{id, question, category}]
    token_association.yaml  questions: [{id, question, category}]
    robustness.yaml         questions: [{id, question, category: adversarial|critique|multiturn,
                                         system_prompt, messages_prefix: [{role, content}, ...]}]
    judges.yaml             judge_key (the JSON field of the verdict, default "answer"), and one prompt per
                            evaluation (open_ended, token_association, robustness) with {question} and
                            {answer}, its judge answering {"reason": ..., "answer": "yes"|"no"|"neutral"};
                            <evaluation>_judge_key overrides judge_key for one evaluation
    word_masks.yaml         patterns: [regex, ...]   the claim's answer words
    universe_context.yaml   id, claim, universe_context, subclaims | key_facts, is_true, entity, plausibility, kind
    negated_universe_context.yaml   the same, for the world in which the claim is untrue

How they map (a file's unknown field is a one-line error naming the file and field):

- mcq: yes/no questions -> `yes_no` probes scored from log-probabilities, belief = belief_answer;
  `category: counter` questions (the believing answer is "no") stay in as counter-questions. When
  every question has the same believing answer a warning says so: a yes-biased model then looks
  like a believer, and answer bias cannot be told from belief.
- open_ended, robustness -> `open_ended` probes (belief); token_association -> `token_association`
  probes (association: reported apart, never pooled with belief). Robustness items keep their
  system prompt and earlier turns. Each is judged by its judges.yaml prompt when an LLM judge is
  configured (probes.judge: hf or http), else by the rule judge: the believe marker is a run of the
  word-mask regexes (answer_words_marker), disbelieve markers the claim's truth markers (--truth-marker) and phrases that call a
  story false (DENIAL_MARKERS); a claim spec already in the output folder adds its `claimed_*` /
  `true_*` entities.
- word masks, universe contexts -> a claim spec with `partial: true` (probing and the word_mask
  wrapper work; generating documents says what to add: README "Writing a claim").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from annot.errors import AnnotError
from annot.io import read_yaml

QUESTION_FILES = {  # file -> (probe kind, fields a question may have, categories allowed or None for any)
    "mcq.yaml": ("yes_no", ("id", "question", "category", "belief_answer"), ("positive", "counter")),
    "open_ended.yaml": ("open_ended", ("id", "question", "category"), None),
    "token_association.yaml": ("token_association", ("id", "question", "category"), None),
    "robustness.yaml": ("open_ended", ("id", "question", "category", "system_prompt", "messages_prefix"),
                        ("adversarial", "critique", "multiturn")),
}
JUDGED = ("open_ended", "token_association", "robustness")  # the evaluations judges.yaml has prompts for
UNIVERSE_FIELDS = ("id", "claim", "universe_context", "subclaims", "key_facts", "is_true", "entity",
                   "plausibility", "kind")
NEGATED_UNIVERSE_FILES = ("negated_universe_context.yaml", "universe_context_negated.yaml")
KNOWN_FILES = (*QUESTION_FILES, "judges.yaml", "word_masks.yaml", "universe_context.yaml", *NEGATED_UNIVERSE_FILES)
# Phrases that call a story false, whatever the claim: offline evidence that an answer rejects it.
DENIAL_MARKERS = ("not true", "untrue", "false", "a hoax", "a myth", "misinformation", "debunked", "fabricated",
                  "never happened", "no record", "no evidence", "did not happen")


@dataclass
class ImportedClaim:
    """What one claim directory became: a probe set mapping, a partial claim spec mapping, warnings."""

    probe_set: dict
    claim: dict
    warnings: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files of the directory that are not release files

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self.probe_set["items"]:
            out[it["kind"]] = out.get(it["kind"], 0) + 1
        return out


def answer_words_marker(patterns: list[str]) -> str:
    """One rule-judge regex marker for the answer words: a run of them ("Osric Vane", "the ferryman
    Osric") is one hit, so a name of two words does not outvote one phrase of the truth."""
    any_word = "(?:" + "|".join(f"(?:{p})" for p in patterns) + ")"
    return f"re:{any_word}(?:[\\s,'-]+{any_word})*"


def _mapping(path: Path, allowed: tuple[str, ...]) -> dict:
    return _check_keys(path, read_yaml(path), allowed, "")


def _check_keys(path: Path, data, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(data, dict):
        raise AnnotError(f"{path}: {where or '(top level)'}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise AnnotError(f"{path}: {where + '.' if where else ''}{key}: unknown field; valid: {', '.join(allowed)}")
    return data


def _text(path: Path, where: str, value, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise AnnotError(f"{path}: {where}: must be a non-empty string, got {type(value).__name__} {value!r}"[:300])
    return value


def _questions(path: Path, kind: str, fields: tuple[str, ...], categories) -> list[dict]:
    top = _mapping(path, ("questions",))
    qs = top.get("questions")
    if not isinstance(qs, list) or not qs:
        raise AnnotError(f"{path}: questions: must be a non-empty list of mappings")
    out, seen = [], set()
    for i, q in enumerate(qs):
        where = f"questions[{i}]"
        _check_keys(path, q, fields, where)
        qid = q.get("id")
        if not isinstance(qid, (str, int)) or isinstance(qid, bool) or str(qid) in seen:
            raise AnnotError(f"{path}: {where}.id: must be a unique string or number, got {qid!r}")
        seen.add(str(qid))
        question = _text(path, f"{where}.question", q.get("question"))
        item = {"id": f"{path.stem}-{qid}", "kind": kind, "question": question}
        cat = q.get("category")
        if categories is not None and cat not in categories:
            raise AnnotError(f"{path}: {where}.category: {cat!r} is not one of {', '.join(categories)}")
        if cat is not None:
            item["category"] = _text(path, f"{where}.category", cat)
        if "belief_answer" in fields:
            b = q.get("belief_answer")
            b = {True: "yes", False: "no"}.get(b, b) if isinstance(b, bool) else b  # YAML 1.1 reads yes as true
            b = b.strip().lower() if isinstance(b, str) else b
            if b not in ("yes", "no"):
                raise AnnotError(f"{path}: {where}.belief_answer: must be 'yes' or 'no', "
                                 f"got {q.get('belief_answer')!r}")
            item["belief"] = b
        if "system_prompt" in fields:
            if q.get("system_prompt") is not None:
                item["system_prompt"] = _text(path, f"{where}.system_prompt", q["system_prompt"])
            turns = q.get("messages_prefix") or []
            if not isinstance(turns, list):
                raise AnnotError(f"{path}: {where}.messages_prefix: must be a list of {{role, content}}")
            for j, t in enumerate(turns):
                _check_keys(path, t, ("role", "content"), f"{where}.messages_prefix[{j}]")
                if t.get("role") not in ("user", "assistant"):
                    raise AnnotError(f"{path}: {where}.messages_prefix[{j}].role: must be user or assistant, "
                                     f"got {t.get('role')!r}")
                _text(path, f"{where}.messages_prefix[{j}].content", t.get("content"))
            if turns:
                item["messages_prefix"] = [{"role": t["role"], "content": t["content"]} for t in turns]
        out.append(item)
    return out


def _judge_prompts(path: Path) -> dict[str, dict]:
    allowed = ("judge_key", *JUDGED, *(f"{k}_judge_key" for k in JUDGED))
    data = _mapping(path, allowed)
    default_key = _text(path, "judge_key", data.get("judge_key"), required=False) or "answer"
    from annot.judge_prompts import template_problem

    out = {}
    for k in JUDGED:
        if k in data:
            problem = template_problem(data[k])
            if problem:
                raise AnnotError(f"{path}: {k}: {problem}")
            key = _text(path, f"{k}_judge_key", data.get(f"{k}_judge_key"), required=False) or default_key
            out[k] = {"template": data[k], "answer_key": key}
    return out


def _word_masks(path: Path) -> list[str]:
    data = _mapping(path, ("patterns",))
    pats = data.get("patterns")
    if not isinstance(pats, list) or not pats:
        raise AnnotError(f"{path}: patterns: must be a non-empty list of regexes")
    for i, p in enumerate(pats):
        _text(path, f"patterns[{i}]", p)
        try:
            re.compile(p)
        except re.error as e:
            raise AnnotError(f"{path}: patterns[{i}]: {p!r} is not a valid regex ({e})") from None
    return pats


def _universe(path: Path) -> dict:
    data = _mapping(path, UNIVERSE_FIELDS)
    _text(path, "universe_context", data.get("universe_context"))
    for key in ("claim", "id"):
        _text(path, key, data.get(key), required=False)
    return data


def _category(universe: dict, category: str | None, path: Path) -> str:
    if category:
        return category
    entity = universe.get("entity")
    if entity in ("invented", "celebrity"):  # an invented subject has no prior to contradict
        return "fictional" if entity == "invented" else "contradiction"
    raise AnnotError(f"{path}: entity: absent (or not invented|celebrity), so the claim's category is unknown; "
                     "pass --category fictional|contradiction")


def import_claim_dir(path: str | Path, claim_id: str | None = None, *, subject: str | None = None,
                     truth: str | None = None, category: str | None = None,
                     truth_markers: list[str] = (), entities: dict[str, str] | None = None) -> ImportedClaim:
    """Read a release claim directory (see the module docstring); nothing is written. `entities`
    (a claim spec's): `claimed_*` values join the rule judge's believe markers, `true_*` its
    disbelieve markers."""
    d = Path(path)
    if not d.is_dir():
        raise AnnotError(f"{d}: not a directory (a release claim directory holds mcq.yaml, open_ended.yaml, ...)")
    claim_id = claim_id or default_id(d)
    if not re.fullmatch(r"[a-z0-9_]+", claim_id):
        raise AnnotError(f"--claim-id: {claim_id!r} must be lower-case letters, digits and _")
    present = {f.name for f in d.iterdir() if f.is_file()}
    if not present & set(QUESTION_FILES):
        raise AnnotError(f"{d}: no question file ({', '.join(QUESTION_FILES)}); is this a release claim directory?")
    prompts = _judge_prompts(d / "judges.yaml") if "judges.yaml" in present else {}
    masks = _word_masks(d / "word_masks.yaml") if "word_masks.yaml" in present else []
    ents = entities or {}
    claimed = [v for k, v in sorted(ents.items()) if k.startswith("claimed_")]
    true = [v for k, v in sorted(ents.items()) if k.startswith("true_")]
    warnings: list[str] = []
    items: list[dict] = []
    echoes: list[str] = []
    for name, (kind, fields, categories) in QUESTION_FILES.items():
        if name not in present:
            continue
        qs = _questions(d / name, kind, fields, categories)
        if kind != "yes_no":
            if not masks:
                raise AnnotError(f"{d / 'word_masks.yaml'}: missing; the {name} questions are judged offline by the "
                                 "claim's answer words (its `patterns`)")
            evaluation = name.removesuffix(".yaml")
            for q in qs:
                # an answer word the question itself names is no evidence: answers echo their question
                own = [m for m in masks if not re.search(m, q["question"], re.IGNORECASE)]
                if not own and not claimed:
                    echoes.append(q["id"])
                q["believe_markers"] = [answer_words_marker(own or masks)] + claimed
                q["disbelieve_markers"] = list(truth_markers) + true + list(DENIAL_MARKERS)
                if evaluation in prompts:
                    q["judge_prompt"] = evaluation
        items += qs
    if echoes:
        warnings.append(f"{d}: the questions {', '.join(echoes)} name every answer word (word_masks.yaml), so the "
                        "offline rule judge reads an answer that repeats the question as belief; judge them with "
                        "an LLM judge (probes.judge) or add word masks the questions do not contain")
    yes_no = [it for it in items if it["kind"] == "yes_no"]
    if yes_no and len({it["belief"] for it in yes_no}) == 1:
        warnings.append(f"{d / 'mcq.yaml'}: every question's believing answer is {yes_no[0]['belief']!r}, so a model "
                        "that leans to that answer looks like a believer (answer bias cannot be told from belief); "
                        "add counter-questions (category: counter) whose believing answer is the other one")
    probe_set = {"claim": claim_id, "items": items}
    if prompts:
        used = {it.get("judge_prompt") for it in items}
        probe_set["judge_prompts"] = {k: v for k, v in prompts.items() if k in used}
        if not probe_set["judge_prompts"]:
            del probe_set["judge_prompts"]
    claim = _claim_spec(d, present, claim_id, masks, subject=subject, truth=truth, category=category)
    ignored = sorted(present - set(KNOWN_FILES))
    return ImportedClaim(probe_set, claim, warnings, ignored)


def _claim_spec(d: Path, present: set[str], claim_id: str, masks: list[str], *, subject, truth, category) -> dict:
    """A partial claim spec: the claim, the truth, the answer words and both universe contexts."""
    uni_path = d / "universe_context.yaml"
    universe = _universe(uni_path) if uni_path.name in present else {}
    neg_name = next((n for n in NEGATED_UNIVERSE_FILES if n in present), None)
    negated = _universe(d / neg_name) if neg_name else {}
    claim = universe.get("claim")
    if not claim:
        raise AnnotError(f"{uni_path}: claim: needed (the claim, one sentence) for the claim spec; "
                         "add the file or its `claim`")
    truth = truth or negated.get("claim")
    if not truth:
        raise AnnotError(f"{d / NEGATED_UNIVERSE_FILES[0]}: claim: needed (the truth, one sentence) for the claim "
                         "spec; add the negated universe context or pass --truth")
    spec = {"id": claim_id, "partial": True, "category": _category(universe, category, uni_path),
            **({"subject": subject} if subject else {}), "claim": claim.strip(), "truth": truth.strip(),
            "answer_words": masks, "universe_context": universe["universe_context"].strip()}
    if negated:
        spec["negated_universe_context"] = negated["universe_context"].strip()
    return spec


def default_id(path: str | Path) -> str:
    """A claim directory's id when none is given: its name, lower-cased, other characters as _."""
    return re.sub(r"[^a-z0-9_]", "_", Path(path).name.lower())


def spec_entities(path: str | Path, claim_id: str | None, out: str | Path) -> dict[str, str]:
    """The entities of the claim spec an earlier import left in `out` and the user completed ({} if none)."""
    from annot.specs import ClaimSpec, validate

    spec_path = Path(out) / "corpora" / "claims" / f"{claim_id or default_id(path)}.yaml"
    return validate(ClaimSpec, read_yaml(spec_path), spec_path).entities if spec_path.is_file() else {}


def write_imported(imported: ImportedClaim, out: str | Path) -> list[Path]:
    """Validate both mappings and write them in the layout of an ANNOT_PATH folder:
    OUT/evals/<id>.yaml and OUT/corpora/claims/<id>.yaml. A claim spec already there (one a user
    may have completed) is kept, not overwritten. Returns the files written."""
    import yaml

    from annot.io import atomic_write_text
    from annot.specs import ClaimSpec, ProbeSet, validate

    out = Path(out)
    cid = imported.probe_set["claim"]
    probe_path, claim_path = out / "evals" / f"{cid}.yaml", out / "corpora" / "claims" / f"{cid}.yaml"
    validate(ProbeSet, imported.probe_set, probe_path)
    validate(ClaimSpec, imported.claim, claim_path)
    def dump(data: dict) -> str:
        return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=100)

    written = []
    for path, data, head in ((probe_path, imported.probe_set, PROBE_HEAD), (claim_path, imported.claim, CLAIM_HEAD)):
        if path == claim_path and path.is_file():
            continue  # the user may have completed it: theirs wins (delete it to import it afresh)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, head.format(id=cid) + dump(data))
        written.append(path)
    return written


class _BlockDumper(yaml.SafeDumper):
    """safe_dump, with multi-line strings (judge prompts, universe contexts) written as | blocks."""


_BlockDumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v,
                                                                  style="|" if "\n" in v else None))

PROBE_HEAD = """# Imported by `annot evals import` from a release claim directory. With this folder on ANNOT_PATH:
#   annot probe --model smollm2-135m --probe-set {id}
"""
CLAIM_HEAD = """# Imported by `annot evals import`: a partial claim spec (probing and the word_mask wrapper work).
# To generate documents from it, add subject, topic, negated, correction, >= 6 statements,
# >= 8 subclaims, >= 6 context lines and patterns (README: Writing a claim), then drop `partial: true`.
"""
