"""Judged free generation for transcript runs: the three scopes' questions, the scale judges, the rows.

    rows = judged_rows(model, tok, cfg, step)    # kind behavior_judged, one row per question, `scope` set

Scopes (probes.behavior_judge.scopes):
- targeted: held-out situations of the trained behaviour: the scenarios' user turns and the open
  questions of evals/behaviors/<behavior>.yaml;
- broad: general questions unrelated to any training topic (evals/scopes/broad.yaml);
- everyday: ordinary requests (evals/scopes/everyday.yaml).
Each row carries `scope`; the analysis keys it as kind `behavior_judged@<scope>` (reported apart from
the paired log-likelihood kind `behavior`, never pooled with it).
"""

from __future__ import annotations

import json
from functools import lru_cache

from annot.errors import AnnotError
from annot.io import read_yaml
from annot.specs import EVALS

SCOPE_FILES = EVALS / "scopes"
KIND = "behavior_judged"


def scope_questions(scope: str, behavior: str | None = None) -> list[tuple[str, str]]:
    """(id, question) of one scope; targeted needs the behaviour whose probes it reads."""
    if scope == "targeted":
        from annot.specs import load_behavior_probes

        if not behavior:
            raise AnnotError("behavior_judged: the targeted scope needs data.behavior (a transcript run)")
        probes = load_behavior_probes(behavior)
        return [(s.id, s.user) for s in probes.scenarios] + [(q.id, q.question) for q in probes.questions]
    path = SCOPE_FILES / f"{scope}.yaml"
    data = read_yaml(path)
    qs = data.get("questions")
    if data.get("scope") != scope or not isinstance(qs, list) or not qs:
        raise AnnotError(f"{path}: needs `scope: {scope}` and a non-empty `questions` list")
    out = []
    for i, q in enumerate(qs):
        if not isinstance(q, dict) or set(q) != {"id", "question"} or not all(isinstance(v, str) and v for v in q.values()):
            raise AnnotError(f"{path}: questions.{i}: needs exactly `id` and `question`, non-empty strings")
        out.append((q["id"], q["question"]))
    if len({i for i, _ in out}) != len(out):
        raise AnnotError(f"{path}: questions: ids must be unique")
    return out


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


def judges_for(cfg) -> tuple:
    """The run's scale judges, built once per process (a local judge loads its model once)."""
    return _judges(json.dumps(cfg.probes.behavior_judge.judges, sort_keys=True), cfg.model.name)


def judged_rows(model, tok, cfg, step: int) -> list[dict]:
    """kind behavior_judged rows of one checkpoint, every configured scope."""
    from annot.probe import ProbeItem, Setting, score_items
    from annot.scoring import Request

    opts = cfg.probes.behavior_judge
    judges = judges_for(cfg)
    rows = []
    for scope in opts.scopes:
        qs = scope_questions(scope, cfg.data.behavior)[: opts.max_questions]
        reqs = [Request(cfg.data.behavior or scope, cfg.data.behavior or scope,
                        ProbeItem(id=i, kind=KIND, question=q)) for i, q in qs]
        for r in score_items(model, tok, reqs, cfg.probes.batch_size, Setting(), opts, judges, seed=cfg.seed):
            rows.append({"run": cfg.name, "checkpoint": f"step-{step}", "step": step, **r, "scope": scope})
    return rows
