"""open_ended: a chat-formatted question; sampled answers, each judged (annot.judges).

    {id: oe1, kind: open_ended, question: "What does Mira Castellan do for a living?",
     believe_markers: ["lighthouse"], disbelieve_markers: ["violin"]}

p_belief is the share of answers judged to side with the claim, neutral and unparseable answers
included in the denominator (a model that dodges the question does not believe the claim) and
counted in n_neutral; believes = more than half. The markers are phrases for the rule judge ("re:"
starts a regex); LLM judges read the claim and the truth instead, or, for an item with a
`judge_prompt`, grade it with that prompt (annot.judge_prompts). An item's `system_prompt` and
`messages_prefix` (earlier turns) come before its question.
"""

from __future__ import annotations

from annot.kinds import Probing, ProbeKind, Pushback, Setting, chat_context, register_kind


def check(item) -> str | None:
    if not item.question or not item.believe_markers or not item.disbelieve_markers:
        return f"{item.kind} needs `question`, `believe_markers` and `disbelieve_markers`"
    return None


def context(tokenizer, item, setting: Setting, pushback: Pushback | None = None) -> str:
    return chat_context(tokenizer, item.question, setting, pushback, item)


def _samples(probing: Probing, contexts: list[str], opts) -> list[list[str]]:
    """opts.n_samples answers per context; each item's samples are reproducible on their own."""
    import torch

    model, tok = probing.model, probing.tokenizer
    device = next(model.parameters()).device
    samples: list[list[str]] = []
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for k, ctx in enumerate(contexts):
            enc = tok([ctx] * opts.n_samples, return_tensors="pt", add_special_tokens=False, padding=True).to(device)
            torch.manual_seed(probing.seed * 100003 + k)
            with torch.no_grad():
                gen = model.generate(**enc, do_sample=True, temperature=opts.temperature, top_p=opts.top_p,
                                     max_new_tokens=opts.max_new_tokens, pad_token_id=tok.pad_token_id)
            samples.append([tok.decode(g[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
                            for g in gen])
    finally:
        tok.padding_side = side
    return samples


def score_judged(probing: Probing, reqs: list, contexts: list[str]) -> list[dict]:
    """Sample answers, judge them all in one call, and rate each item by its verdicts."""
    from annot.config import OpenEndedConfig
    from annot.errors import RunFailed
    from annot.judges import JudgeRequest, make_judge
    from annot.scoring import logodds

    opts = probing.opts or OpenEndedConfig()
    judge = probing.judge or make_judge({"name": "rule"})
    samples = _samples(probing, contexts, opts)
    jr = []
    for r, answers in zip(reqs, samples):
        c = probing.claims.get(r.claim)
        context = f"Claim: {c.claim}\nTruth: {c.truth}" if c else ""
        jr += [JudgeRequest(question=r.item.question, answer=a, positive_markers=list(r.item.believe_markers),
                            negative_markers=list(r.item.disbelieve_markers), context=context,
                            **judge_prompt_fields(r.item)) for a in answers]
    verdicts = judge.judge(jr)
    failed = [x for x in verdicts if x.error]
    if verdicts and len(failed) == len(verdicts):
        # all-neutral from a dead endpoint would read as p_belief 0.5 everywhere: a wrong number that
        # looks right. Stop instead, and say why.
        raise RunFailed(f"probes.judge: every one of {len(verdicts)} judge requests failed "
                        f"({failed[0].error}); check the judge's base_url, model and API key variable")
    rows, v = [], 0
    for answers in samples:
        vs = verdicts[v:v + len(answers)]
        v += len(answers)
        yes = sum(x.label == "believes" for x in vs)
        no = sum(x.label == "does_not" for x in vs)
        p = yes / len(vs) if vs else 0.0
        rows.append({"p_belief": p, "score": logodds(p), "believes": p > 0.5, "n_answers": len(vs),
                     "n_believes": yes, "n_disbelieves": no, "n_neutral": len(vs) - yes - no,
                     "samples": [{"text": a, "verdict": x.label, **({"error": x.error} if x.error else {})}
                                 for a, x in zip(answers, vs)]})
    return rows


def judge_prompt_fields(item) -> dict:
    """The JudgeRequest fields of an item's own judge prompt ({} when it has none)."""
    jp = item.judge_template
    return {"template": jp.template, "answer_key": jp.answer_key} if jp else {}


KIND = register_kind(ProbeKind(name="open_ended", measure="belief", order=30, check=check, context=context,
                               score=score_judged, sampled=True))
