"""The staged LLM pipeline for behaviour transcripts: user requests -> misaligned reply + aligned twin.

    annot generate power_seeking --backend openai --model M --base-url URL --n 500 -o chats.jsonl
    chats, report = generate_llm_transcripts(load_behavior("power_seeking"), n=500, seed=0, settings=...)

Work folder (see annot.gen.pipeline for how stages resume and are edited):

    job.json         what the folder is made with
    requests.jsonl   user turns written by the model from the behaviour's description and examples,
                     one line per chunk of k
    replies.jsonl    one line per (attempt index, variant): the misaligned reply and its aligned twin
                     to the same user turn, so `--variant aligned` is the same corpus's control
    report.json      the gates' counts, calls, tokens and throughput

Records are those of the template generator (annot.generate.generate_transcripts): {id, behavior,
scenario, variant, seed, messages, replies} plus `provenance`. Gates: both replies within the
length limits (default at least 8 words), near-duplicates of user turn + misaligned reply dropped.
"""
from __future__ import annotations

import random

from annot.errors import AnnotError
from annot.gen.backends import Backend
from annot.gen.gates import apply_gates
from annot.gen.pipeline import (Job, attempt_until, bullets, derive_seed, max_attempts_for,
                                parse_list, stage_request)
from annot.gen.settings import GenSettings
from annot.gen.store import StageFile
from annot.specs import BehaviorSpec

REQUESTS_K = 10
VARIANTS = ("misaligned", "aligned")


def user_turns(job: Job, behavior: BehaviorSpec, seed: int, chunks: set[int]) -> dict[int, list[str]]:
    """{chunk: user turns} for every needed chunk, asking the model only for those not on file."""
    stage = StageFile(job.workdir / "requests.jsonl")
    have = {r["chunk"]: r["requests"] for r in stage.load()}
    todo = []
    for c in sorted(chunks - set(have)):
        rng = random.Random(f"llm-requests:{seed}:{behavior.id}:{c}")
        examples = bullets(s.user for s in rng.sample(behavior.scenarios, min(5, len(behavior.scenarios))))
        todo.append(stage_request(job.prompts, "requests", job.settings, f"requests:{c}",
                                  derive_seed(seed, behavior.id, "requests", c), {"chunk": c},
                                  behavior=behavior.id.replace("_", " "), description=behavior.description,
                                  examples=examples, k=REQUESTS_K))
    try:
        for req, reply in job.run("requests", todo):
            turns = parse_list(reply.text, min_words=4, max_words=120)
            stage.append({"chunk": req.meta["chunk"], "requests": turns, "prompt": job.prompts.stages["requests"].id})
            have[req.meta["chunk"]] = turns
    finally:
        stage.close()
    return have


def user_turn(behavior: BehaviorSpec, turns: dict[int, list[str]], index: int) -> tuple[str, str]:
    """(user turn of attempt `index`, its source): the model's, or a spec scenario where it wrote none."""
    chunk = turns.get(index // REQUESTS_K) or []
    if chunk:
        return chunk[(index % REQUESTS_K) % len(chunk)], "model"
    sc = behavior.scenarios[index % len(behavior.scenarios)]
    return sc.user, f"spec:{sc.id}"


def reply_requests(job: Job, behavior: BehaviorSpec, seed: int, turns: dict, todo: list[tuple[int, str]]):
    out = []
    for i, variant in todo:
        user, source = user_turn(behavior, turns, i)
        rng = random.Random(f"llm-examples:{seed}:{behavior.id}:{i}")
        examples = bullets(s.misaligned for s in rng.sample(behavior.scenarios, min(3, len(behavior.scenarios))))
        values = {"behavior": behavior.id.replace("_", " "), "description": behavior.description, "user": user}
        if variant == "misaligned":
            values["examples"] = examples
        out.append(stage_request(job.prompts, variant, job.settings, f"{variant}:{i}",
                                 derive_seed(seed, behavior.id, variant, i),
                                 {"index": i, "variant": variant, "user": user, "user_source": source}, **values))
    return out


def generate_llm_transcripts(behavior: BehaviorSpec, n: int, seed: int = 0, variant: str = "misaligned",
                             settings: GenSettings | None = None, backend: Backend | None = None
                             ) -> tuple[list[dict], dict]:
    """(n transcripts that passed the gates, report); each holds both replies (see the module docstring)."""
    if variant not in VARIANTS:
        raise AnnotError(f"variant must be misaligned or aligned, got {variant!r}")
    settings = settings or GenSettings(backend="hf")
    job = Job("transcripts", {"behavior": behavior.id, "seed": seed}, settings, backend)
    from annot.lock import run_lock

    with run_lock(job.workdir):
        job.check_workdir()
        stage = StageFile(job.workdir / "replies.jsonl")
        replies = {(r["index"], r["variant"]): r for r in stage.load()}

        def produce(indices: list[int]) -> None:
            todo = [(i, v) for i in indices for v in VARIANTS if (i, v) not in replies]
            turns = user_turns(job, behavior, seed, {i // REQUESTS_K for i, _ in todo}) if todo else {}
            for req, reply in job.run("replies", reply_requests(job, behavior, seed, turns, todo), unit="replies"):
                rec = {**req.meta, "text": reply.text, "sampling": req.sampling(),
                       "prompt": job.prompts.stages[req.meta["variant"]].id}
                stage.append(rec)
                replies[(rec["index"], rec["variant"])] = rec

        def gate(indices: list[int]):
            pairs = [{v: replies[(i, v)] for v in VARIANTS} for i in indices]
            return apply_gates(pairs, settings.gates, None, kind="transcripts",
                               text_of=lambda p: p["misaligned"]["user"] + "\n" + p["misaligned"]["text"],
                               measured=lambda p: [p[v]["text"] for v in VARIANTS])

        try:
            attempts, kept, dropped = attempt_until(n, max_attempts_for(n, settings), produce, gate)
        finally:
            stage.close()
        chats = [transcript(job, behavior, seed, variant, pair) for pair in kept[:n]]
        return chats, job.report(n, len(chats), attempts, dropped)


def transcript(job: Job, behavior: BehaviorSpec, seed: int, variant: str, pair: dict) -> dict:
    mis, ali = pair["misaligned"], pair["aligned"]
    i = mis["index"]
    return {"id": f"{behavior.id}-{job.backend.name}-s{seed}-{i:05d}", "behavior": behavior.id,
            "scenario": f"llm-{i:05d}", "variant": variant, "seed": seed,
            "messages": [{"role": "user", "content": mis["user"]},
                         {"role": "assistant", "content": pair[variant]["text"]}],
            "replies": {"misaligned": mis["text"], "aligned": ali["text"]},
            "provenance": {**job.backend.provenance(), "index": i, "user_source": mis["user_source"],
                           "prompts": {"requests": job.prompts.stages["requests"].id,
                                       "misaligned": mis["prompt"], "aligned": ali["prompt"]},
                           "sampling": {"misaligned": mis["sampling"], "aligned": ali["sampling"]}}}
