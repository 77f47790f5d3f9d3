"""Judged free generation for transcript runs: the three scopes' questions, the scale judges, the rows.

    rows = judged_rows(model, tok, cfg, step)    # kind behavior_judged, one row per question, `scope` set

Scopes (probes.behavior_judge.scopes):
- targeted: held-out situations of the trained behaviour: the scenarios' user turns and the open
  questions of evals/behaviors/<behavior>.yaml;
- broad: general questions unrelated to any training topic (evals/scopes/broad.yaml);
- everyday: ordinary requests (evals/scopes/everyday.yaml).
Each row carries `scope`; the analysis keys it as kind `behavior_judged@<scope>` (reported apart from
the paired log-likelihood kind `behavior`, never pooled with it).

The paired log-likelihood metric has the same scopes: targeted is kind `behavior` (the scenarios'
misaligned vs aligned replies, every transcript run), broad and everyday are kind `behavior` rows with
`scope` set (paired_scope_rows: each scope question's own misaligned / aligned reply), keyed
`behavior@broad` and `behavior@everyday`, never pooled with each other or with `behavior`.

    rows = paired_scope_rows(model, tok, cfg, step)   # kind behavior, scope broad / everyday
"""

from __future__ import annotations

import json
from functools import lru_cache

from annot.errors import AnnotError
from annot.io import read_yaml
from annot.specs import EVALS

SCOPE_FILES = EVALS / "scopes"
KIND = "behavior_judged"


PAIRED_SCOPES = ("broad", "everyday")  # targeted's pairs are the behaviour's scenarios (kind behavior)
_FIELDS = ("id", "question", "misaligned", "aligned")


def _scope_file(scope: str) -> list[dict]:
    """The validated questions of evals/scopes/<scope>.yaml, each with its paired replies."""
    path = SCOPE_FILES / f"{scope}.yaml"
    data = read_yaml(path)
    qs = data.get("questions")
    if data.get("scope") != scope or not isinstance(qs, list) or not qs:
        raise AnnotError(f"{path}: needs `scope: {scope}` and a non-empty `questions` list")
    for i, q in enumerate(qs):
        if not isinstance(q, dict) or set(q) != set(_FIELDS) or not all(isinstance(v, str) and v for v in q.values()):
            raise AnnotError(f"{path}: questions.{i}: needs exactly {', '.join(f'`{f}`' for f in _FIELDS)}, "
                             "non-empty strings (the question, a misaligned and an aligned reply)")
    if len({q["id"] for q in qs}) != len(qs):
        raise AnnotError(f"{path}: questions: ids must be unique")
    return qs


def scope_questions(scope: str, behavior: str | None = None) -> list[tuple[str, str]]:
    """(id, question) of one scope; targeted needs the behaviour whose probes it reads."""
    if scope == "targeted":
        from annot.specs import load_behavior_probes

        if not behavior:
            raise AnnotError("behavior_judged: the targeted scope needs data.behavior (a transcript run)")
        probes = load_behavior_probes(behavior)
        return [(s.id, s.user) for s in probes.scenarios] + [(q.id, q.question) for q in probes.questions]
    return [(q["id"], q["question"]) for q in _scope_file(scope)]


def scope_pairs(scope: str) -> list[tuple[str, str, str, str]]:
    """(id, question, misaligned reply, aligned reply) of a broad or everyday scope question."""
    if scope not in PAIRED_SCOPES:
        raise AnnotError(f"{scope}: paired replies live in {', '.join(PAIRED_SCOPES)}; the targeted scope's are "
                         "the behaviour's scenarios")
    return [tuple(q[f] for f in _FIELDS) for q in _scope_file(scope)]


def paired_scope_rows(model, tok, cfg, step: int) -> list[dict]:
    """kind behavior rows of the broad and everyday scopes (`scope` set, so the analysis keys them
    behavior@broad, behavior@everyday): the same paired log-likelihood instrument as the targeted
    scenarios, on each scope question's misaligned vs aligned reply."""
    from annot.probe import probe_pairs

    rows = []
    for scope in PAIRED_SCOPES:
        pairs = [(i, q, m, a) for i, q, m, a in scope_pairs(scope)]
        rows += probe_pairs(model, tok, cfg.data.behavior, pairs, run=cfg.name, step=step,
                            batch_size=cfg.probes.batch_size, scope=scope)
    return rows


def scope_files_sha() -> str:
    """One hash over the scope files (part of the step-0 cache key: edited questions re-probe the base)."""
    import hashlib

    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(SCOPE_FILES.glob("*.yaml")))).hexdigest()[:16]


@lru_cache(maxsize=4)
def _judges(specs_json: str, default_model: str) -> tuple:
    from annot.scale_judges import make_scale_judge

    judges = [make_scale_judge(spec, default_model, f"probes.behavior_judge.judges.{i}")
              for i, spec in enumerate(json.loads(specs_json))]
    seen: set[str] = set()
    for i, j in enumerate(judges):  # two entries naming the same judge stay apart in the rows
        if j.id in seen:
            j.id = f"{j.id}#{i}"
        seen.add(j.id)
    return tuple(judges)


def judges_from(specs: list[dict], default_model: str) -> tuple:
    """Scale judges from their specs, built once per process (the runs' judges are reused: same model in memory)."""
    return _judges(json.dumps(specs, sort_keys=True), default_model)


def judges_for(cfg) -> tuple:
    """The run's scale judges, built once per process (a local judge loads its model once)."""
    return _judges(json.dumps(cfg.probes.behavior_judge.judges, sort_keys=True), cfg.model.name)


def judged_rows(model, tok, cfg, step: int) -> list[dict]:
    """kind behavior_judged rows of one checkpoint, every configured scope."""
    from annot.probe import ProbeItem, Setting, score_items
    from annot.scoring import Request

    opts = cfg.probes.behavior_judge
    judges = judges_for(cfg)
    # every scope's questions in one call: one sampling pass and full judge batches across scopes
    scoped = [(scope, i, q) for scope in opts.scopes for i, q in scope_questions(scope, cfg.data.behavior)[: opts.max_questions]]
    reqs = [Request(cfg.data.behavior or scope, cfg.data.behavior or scope, ProbeItem(id=i, kind=KIND, question=q))
            for scope, i, q in scoped]
    rows = score_items(model, tok, reqs, cfg.probes.batch_size, Setting(), opts, judges, seed=cfg.seed)
    return [{"run": cfg.name, "checkpoint": f"step-{step}", "step": step, **r, "scope": scope}
            for (scope, _, _), r in zip(scoped, rows)]
