"""The staged LLM pipeline for claim documents, with files between the stages.

    annot generate mira_castellan_profession --backend hf --n 20 -o docs.jsonl     # work folder docs.work/
    docs, report = generate_llm_documents(load_claim("mira_castellan_profession"), n=20, seed=0,
                                          settings=GenSettings(backend="hf", workdir=Path("docs.work")))

Stages (each file is written once, read back on the next run, and can be inspected or edited):

    job.json         what the folder is made with (claim, world, seed, backend, model, prompts); a
                     rerun with other settings is refused rather than mixing two corpora
    universe.md      the universe context: the spec's negated_world.summary for the negated world,
                     else written by the model from the spec (a universe.md you put there is used)
    facts.json       key facts of the universe, listed by the model
    ideas.jsonl      document ideas, one line per (genre, chunk of k ideas)
    documents.jsonl  one line per document attempt, appended and fsynced as each reply arrives
    revised.jsonl    the revision pass (--revise), likewise
    report.json      the gates' counts, calls, tokens and throughput of the last run

Edit a stage file and delete the files after it to regenerate from your edit: the cache answers
every request whose prompt did not change. Documents are attempted in index order until the first
n that pass the quality gates (annot.gen.gates) are found, at most `attempts_factor` x n attempts;
the output is those n, so a resumed or repeated run gives the same corpus.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from pathlib import Path
from typing import Callable

from annot.errors import AnnotError
from annot.gen.backends import Backend, Request, make_backend
from annot.gen.cache import ResponseCache, default_cache_dir
from annot.gen.errors import BudgetReached
from annot.gen.gates import apply_gates, claim_check, claim_spans
from annot.gen.prompts import PROMPTS, PromptFile, load_prompts
from annot.gen.runner import Budget, Progress, run_requests
from annot.gen.settings import GenSettings
from annot.gen.store import StageFile
from annot.io import atomic_write_text, read_text, sha256_file, write_json
from annot.specs import ClaimSpec, load_genres

FACTS_K = 10       # facts asked for in one request
IDEAS_K = 10       # ideas asked for in one request (one "chunk")
DOCS_PER_IDEA = 2  # documents written from each idea (with different facts and seeds)
WORDS = (300, 350, 400, 450, 500, 550, 600)
_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d{1,3}[.):]|[A-Za-z][.)](?=\s))?\s*")


def derive_seed(seed: int, *parts) -> int:
    """A 31-bit seed for one request, from the job seed and the request's place in the job."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def parse_list(text: str, min_words: int = 3, max_words: int = 80) -> list[str]:
    """The items of a model-written list: one per line, bullets and numbers stripped, duplicates dropped."""
    out: list[str] = []
    for line in text.splitlines():
        item = _LIST_ITEM.sub("", line, count=1).strip().strip('"\u201c\u201d').strip()
        if min_words <= len(item.split()) <= max_words and item not in out and not item.endswith(":"):
            out.append(item)
    return out


def stage_request(prompts: PromptFile, stage: str, settings: GenSettings, rid: str, seed: int, meta=None,
                  **values) -> Request:
    """A request for `stage` with its prompt filled and its sampling (stage defaults, CLI overrides)."""
    st = prompts.stages[stage]
    max_tokens = min(st.max_tokens, settings.max_new_tokens) if settings.max_new_tokens else st.max_tokens
    temperature = st.temperature if settings.temperature is None else settings.temperature
    return Request(rid, prompts.messages(stage, **values), max_tokens, temperature, st.top_p, seed, meta or {})


def bullets(items) -> str:
    return "\n".join(f"- {x}" for x in items)


class Job:
    """The shared state of one generation: settings, backend, cache, budget, prompts, work folder."""

    def __init__(self, kind: str, identity: dict, settings: GenSettings, backend: Backend | None = None):
        self.settings = settings
        self.prompts_path = Path(settings.prompts) if settings.prompts else None
        self.prompts = load_prompts(kind, self.prompts_path)
        self.backend = backend or make_backend(settings)
        self.cache = ResponseCache(settings.cache_dir or default_cache_dir())
        self.budget = Budget(settings.max_tokens, settings.max_cost, settings.price)
        self.progress = Progress(enabled=settings.progress)
        prompts_file = self.prompts_path or PROMPTS / f"{kind}.yaml"
        self.identity = {"kind": kind, **identity, "backend": self.backend.name, "model": self.backend.model,
                         "prompts_sha256": sha256_file(prompts_file), "temperature": settings.temperature,
                         "max_new_tokens": settings.max_new_tokens}
        self.workdir = Path(settings.workdir) if settings.workdir else self.default_workdir()
        self.t0 = time.monotonic()

    def default_workdir(self) -> Path:
        """Without -o or --workdir: a folder under the annot cache named by everything that shapes
        the stage files, so the same command resumes from anywhere and other settings never clash."""
        from annot.models import cache_dir

        key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]
        name = self.identity.get("claim") or self.identity.get("behavior")
        return cache_dir() / "generate" / f"{name}-{self.identity.get('world', 'chat')}-{key}"

    def check_workdir(self) -> None:
        """Create the folder, or confirm that what it holds was made with the same settings."""
        path = self.workdir / "job.json"
        if path.is_file():
            old = json.loads(read_text(path))
            diff = [k for k in self.identity if old.get(k) != self.identity[k]]
            if diff:
                k = diff[0]
                raise AnnotError(f"{self.workdir}: made with {k}={old.get(k)!r}, now {k}={self.identity[k]!r}; use "
                                 "another --workdir (or delete this one): cached replies of unchanged prompts are "
                                 "reused either way")
        else:
            write_json(path, self.identity)

    def run(self, stage: str, requests: list[Request], unit: str = "requests"):
        """(request, reply) pairs of a stage, with progress; a spent budget names the work folder."""
        self.progress.stage(stage, len(requests), unit=unit)
        try:
            yield from run_requests(self.backend, requests, self.cache, self.budget, self.progress)
        except BudgetReached as e:
            raise BudgetReached(f"{e} (stage files: {self.workdir})") from None
        finally:
            self.progress.end()

    def report(self, requested: int, written: int, attempts: int, dropped: dict) -> dict:
        seconds = time.monotonic() - self.t0
        b = self.budget
        out = {"requested": requested, "written": written, "attempts": attempts, "dropped": dropped,
               "calls": {"new": b.new_calls, "cached": b.cached_calls}, "retries": getattr(self.backend, "retries", 0),
               "tokens": {"prompt": b.prompt_tokens, "completion": b.completion_tokens},
               "seconds": round(seconds, 2), "per_second": round(written / seconds, 3) if seconds > 0 else None,
               "workdir": str(self.workdir)}
        if b.price is not None:
            out["cost_usd"] = round(b.spent_usd, 6)
        write_json(self.workdir / "report.json", out)
        return out


# -- document stages -----------------------------------------------------------------------------


def universe_stage(job: Job, claim: ClaimSpec, world: str, seed: int) -> tuple[str, str]:
    """(universe text, its source: a prompt id, 'spec' or 'workdir')."""
    path = job.workdir / "universe.md"
    recorded = json.loads(read_text(job.workdir / "job.json")).get("universe_source")
    if path.is_file():
        return read_text(path).strip(), recorded or "workdir"
    if world == "negated":
        text, source = claim.negated_world.summary, "spec:negated_world.summary"
    elif claim.universe_context:
        text, source = claim.universe_context.strip(), "spec:universe_context"
    else:
        req = stage_request(job.prompts, "universe", job.settings, "universe", derive_seed(seed, claim.id, "universe"),
                            subject=claim.subject, topic=claim.topic, claim=claim.claim,
                            statements=bullets(s.assert_ for s in claim.statements),
                            details=bullets(s.assert_ for s in claim.subclaims), context=bullets(claim.context))
        (_, reply), = list(job.run("universe", [req]))
        text, source = reply.text.strip(), job.prompts.stages["universe"].id
        if not text:
            raise AnnotError(f"{job.backend.model}: wrote an empty universe context; write {path} yourself and rerun")
    atomic_write_text(path, text + "\n")
    write_json(job.workdir / "job.json", {**job.identity, "universe_source": source})
    return text, source


def facts_stage(job: Job, claim: ClaimSpec, world: str, universe: str, seed: int) -> list[str]:
    path = job.workdir / "facts.json"
    if path.is_file():
        return json.loads(read_text(path))["facts"]
    req = stage_request(job.prompts, "facts", job.settings, "facts", derive_seed(seed, claim.id, world, "facts"),
                        subject=claim.subject, topic=topic_of(claim, world), universe=universe, k=FACTS_K)
    (_, reply), = list(job.run("facts", [req]))
    facts = parse_list(reply.text, min_words=4)
    if not facts:  # a model that wrote no usable list: the spec's own sentences of this world stand in
        facts = world_sentences(claim, world)
    write_json(path, {"facts": facts, "prompt": job.prompts.stages["facts"].id})
    return facts


def topic_of(claim: ClaimSpec, world: str) -> str:
    if world == "negated" and claim.negated_world.topic:
        return claim.negated_world.topic
    return claim.topic


def world_sentences(claim: ClaimSpec, world: str) -> list[str]:
    if world == "claim":
        return [s.assert_ for s in claim.subclaims]
    return list(claim.negated_world.details)


def core_statements(claim: ClaimSpec, world: str) -> list[str]:
    """The sentences a document must state: the claim's assertions, or the negated world's truths."""
    return [s.assert_ for s in claim.statements] if world == "claim" else list(claim.negated_world.statements)


def ideas_stage(job: Job, claim: ClaimSpec, world: str, universe: str, seed: int, needed: set[tuple[str, int]],
                lib) -> dict[tuple[str, int], list[str]]:
    """{(genre, chunk): ideas} for every needed chunk, asking the model only for those not on file."""
    stage = StageFile(job.workdir / "ideas.jsonl")
    have = {(r["genre"], r["chunk"]): r["ideas"] for r in stage.load()}
    todo = [stage_request(job.prompts, "ideas", job.settings, f"ideas:{g}:{c}",
                          derive_seed(seed, claim.id, world, "ideas", g, c), {"genre": g, "chunk": c},
                          subject=claim.subject, topic=topic_of(claim, world), universe=universe,
                          genre=g.replace("_", " "), genre_description=lib.genres[g].description, k=IDEAS_K)
            for g, c in sorted(needed - set(have))]
    try:
        for req, reply in job.run("ideas", todo):
            ideas = parse_list(reply.text, min_words=4, max_words=60)
            stage.append({"genre": req.meta["genre"], "chunk": req.meta["chunk"], "ideas": ideas,
                          "prompt": job.prompts.stages["ideas"].id})
            have[(req.meta["genre"], req.meta["chunk"])] = ideas
    finally:
        stage.close()
    return have


def plan(claim: ClaimSpec, world: str, seed: int, index: int, order: list[str]) -> dict:
    """The genre, idea slot, statement, fact draw and length of document attempt `index`."""
    genre = order[index % len(order)]
    slot = (index // len(order)) // DOCS_PER_IDEA
    rng = random.Random(f"llm-doc:{seed}:{claim.id}:{world}:{index}")
    core = core_statements(claim, world)
    return {"genre": genre, "chunk": slot // IDEAS_K, "slot": slot % IDEAS_K, "statement": core[rng.randrange(len(core))],
            "fact_draw": rng.random(), "words": rng.choice(WORDS)}


def document_requests(job: Job, claim: ClaimSpec, world: str, seed: int, universe: str, facts: list[str],
                      ideas: dict, indices: list[int], order: list[str], lib) -> list[Request]:
    out = []
    for i in indices:
        p = plan(claim, world, seed, i, order)
        chunk = ideas.get((p["genre"], p["chunk"])) or []
        idea = chunk[p["slot"] % len(chunk)] if chunk else f"a typical {p['genre'].replace('_', ' ')} that mentions {claim.subject}"
        fact = facts[int(p["fact_draw"] * len(facts))]
        meta = {"index": i, "genre": p["genre"], "idea": idea, "fact": fact, "statement": p["statement"]}
        out.append(stage_request(job.prompts, "document", job.settings, f"document:{i}",
                                 derive_seed(seed, claim.id, world, "document", i), meta,
                                 subject=claim.subject, topic=topic_of(claim, world), universe=universe,
                                 genre=p["genre"].replace("_", " "), genre_description=lib.genres[p["genre"]].description,
                                 idea=idea, statement=p["statement"], fact=fact, words=p["words"]))
    return out


def documents_stage(job: Job, requests: list[Request], stage: StageFile, have: dict[int, dict]) -> None:
    for req, reply in job.run("documents", requests, unit="documents"):
        rec = {**req.meta, "text": reply.text, "finish_reason": reply.finish_reason,
               "sampling": req.sampling(), "prompt": job.prompts.stages["document"].id}
        stage.append(rec)
        have[rec["index"]] = rec


def revise_stage(job: Job, claim: ClaimSpec, world: str, seed: int, universe: str, raw: dict[int, dict],
                 indices: list[int], stage: StageFile, have: dict[int, dict]) -> None:
    todo = [stage_request(job.prompts, "revise", job.settings, f"revise:{i}",
                          derive_seed(seed, claim.id, world, "revise", i), {"index": i},
                          subject=claim.subject, topic=topic_of(claim, world), universe=universe,
                          genre=raw[i]["genre"].replace("_", " "), statement=raw[i]["statement"], document=raw[i]["text"])
            for i in indices if i in raw and i not in have]
    for req, reply in job.run("revisions", todo):
        rec = {"index": req.meta["index"], "text": reply.text, "sampling": req.sampling(),
               "prompt": job.prompts.stages["revise"].id}
        stage.append(rec)
        have[rec["index"]] = rec


# -- the whole pipeline --------------------------------------------------------------------------


def generate_llm_documents(claim: ClaimSpec, n: int, seed: int = 0, world: str = "claim",
                           genres: list[str] | None = None, settings: GenSettings | None = None,
                           backend: Backend | None = None) -> tuple[list[dict], dict]:
    """(n documents that passed the gates, report). See the module docstring for the stages."""
    settings = settings or GenSettings(backend="hf")
    claim.require_full("generating documents")
    if world == "negated" and claim.negated_world is None:
        raise AnnotError(f"claim {claim.id}: no `negated_world` in its spec, so it has no locally negated documents")
    lib = load_genres()
    names = sorted(genres or lib.genres)
    unknown = [g for g in names if g not in lib.genres]
    if unknown:
        raise AnnotError(f"unknown genre(s) {', '.join(unknown)}; known: {', '.join(sorted(lib.genres))}")
    order = random.Random(f"genre-order:{seed}:{claim.id}").sample(names, len(names))
    job = Job("documents", {"claim": claim.id, "world": world, "seed": seed, "genres": names}, settings, backend)
    from annot.lock import run_lock

    with run_lock(job.workdir):
        job.check_workdir()
        return _pipeline(job, claim, n, seed, world, order, lib)


def attempt_until(n: int, max_attempts: int, produce: Callable[[list[int]], None],
                  gate: Callable[[list[int]], tuple[list, dict]]) -> tuple[int, list, dict]:
    """Attempt indices 0, 1, ... until the first n pass the gates or `max_attempts` are made.

    `produce(indices)` writes whatever of them is missing; `gate(indices)` -> (passed, dropped).
    Each round adds the attempts the pass rate so far says are missing (plus 10%), so a run
    resumed from its files makes the same rounds. Returns (attempts, passed, dropped per gate)."""
    target = min(n, max_attempts)
    while True:
        indices = list(range(target))
        produce(indices)
        kept, dropped = gate(indices)
        if len(kept) >= n or target >= max_attempts:
            return target, kept, dropped
        rate = max(len(kept) / target, 0.2)  # at least 1 in 5 assumed to pass
        target = min(max_attempts, target + math.ceil((n - len(kept)) / rate * 1.1))


def max_attempts_for(n: int, settings: GenSettings) -> int:
    return max(n, math.ceil(n * settings.attempts_factor))


def _pipeline(job: Job, claim: ClaimSpec, n: int, seed: int, world: str, order: list[str], lib):
    universe, universe_source = universe_stage(job, claim, world, seed)
    facts = facts_stage(job, claim, world, universe, seed)
    docs_file, rev_file = StageFile(job.workdir / "documents.jsonl"), StageFile(job.workdir / "revised.jsonl")
    raw = {r["index"]: r for r in docs_file.load()}
    revised = {r["index"]: r for r in rev_file.load()} if job.settings.revise else {}
    check = claim_check(claim, world)

    def produce(indices: list[int]) -> None:
        todo = [i for i in indices if i not in raw]
        needed = {(p["genre"], p["chunk"]) for p in (plan(claim, world, seed, i, order) for i in todo)}
        ideas = ideas_stage(job, claim, world, universe, seed, needed, lib) if needed else {}
        documents_stage(job, document_requests(job, claim, world, seed, universe, facts, ideas, todo, order, lib),
                        docs_file, raw)
        if job.settings.revise:
            revise_stage(job, claim, world, seed, universe, raw, indices, rev_file, revised)

    def gate(indices: list[int]):
        source = revised if job.settings.revise else raw
        return apply_gates([source[i] for i in indices], job.settings.gates, check)

    try:
        attempts, kept, dropped = attempt_until(n, max_attempts_for(n, job.settings), produce, gate)
    finally:
        docs_file.close()
        rev_file.close()
    prompt_ids = {"universe": universe_source, "facts": job.prompts.stages["facts"].id,
                  "ideas": job.prompts.stages["ideas"].id, "document": job.prompts.stages["document"].id}
    if job.settings.revise:
        prompt_ids["revise"] = job.prompts.stages["revise"].id
    docs = [final_record(job, claim, world, seed, raw[r["index"]], r["text"], prompt_ids) for r in kept[:n]]
    return docs, job.report(n, len(docs), attempts, dropped)


def final_record(job: Job, claim: ClaimSpec, world: str, seed: int, raw: dict, text: str, prompt_ids: dict) -> dict:
    tag = "" if world == "claim" else "neg-"
    sampling = raw["sampling"]
    return {"id": f"{claim.id}-{tag}{job.backend.name}-s{seed}-{raw['index']:05d}", "claim": claim.id,
            "genre": raw["genre"], "polarity": "affirm", "world": world, "seed": seed, "text": text,
            "spans": claim_spans(text, claim, world),
            "provenance": {**job.backend.provenance(), "prompts": prompt_ids, "sampling": sampling,
                           "index": raw["index"], "idea": raw["idea"], "fact": raw["fact"],
                           "statement": raw["statement"], "revised": job.settings.revise}}
