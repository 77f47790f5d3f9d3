"""mcq: a chat-formatted question with choices; each choice scored as the assistant's reply.

    {id: mc1, kind: mcq, question: "What does Mira Castellan do?", choices: ["...", "..."], belief: 1}

`belief` is the index of the choice that sides with the claim. A choice's score is its log-likelihood
(raw sum for `believes`, per UTF-8 byte for `believes_norm`: lm-eval's acc / acc_norm).
"""

from __future__ import annotations

from collections import defaultdict

from annot.kinds import Probing, ProbeKind, Pushback, Setting, chat_context, register_kind


def choice_problem(item, field: str) -> str | None:
    """What is wrong with a choice item whose text is in `field` ("question" or "prompt"), or None."""
    if not getattr(item, field) or not item.choices or len(item.choices) < 2:
        return f"{item.kind} needs `{field}` and at least 2 `choices`"
    if not isinstance(item.belief, int) or not 0 <= item.belief < len(item.choices):
        return f"`belief` must be the index of the believing choice (0..{len(item.choices) - 1})"
    return None


def context(tokenizer, item, setting: Setting, pushback: Pushback | None = None) -> str:
    return chat_context(tokenizer, item.question, setting, pushback, item)


def score_choices(probing: Probing, reqs: list, contexts: list[str]) -> list[dict]:
    """Every choice of every item as a continuation of its context, in one engine call; p_belief is the
    softmax of the choice log-likelihoods at the believing choice."""
    import torch

    from annot.scoring import loglikelihoods, logodds

    pairs, owners = [], []
    for i, r in enumerate(reqs):
        for choice in r.item.choices:
            pairs.append((contexts[i], choice))
            owners.append(i)
    lls = loglikelihoods(probing.model, probing.tokenizer, pairs, probing.batch_size) if pairs else []
    per: dict[int, list[float]] = defaultdict(list)
    for i, ll in zip(owners, lls):
        per[i].append(ll)
    rows = []
    for i, r in enumerate(reqs):
        it, ll = r.item, per[i]
        t = torch.tensor(ll)
        p = torch.softmax(t, 0)
        norm = torch.tensor([x / max(1, len(c.encode("utf-8"))) for x, c in zip(ll, it.choices)])
        p_belief = float(p[it.belief])
        finite = bool(torch.isfinite(t).all())  # argmax takes NaN for the maximum: never a belief
        rows.append({"p_belief": p_belief, "score": logodds(p_belief),
                     "believes": finite and int(torch.argmax(t)) == it.belief,
                     "believes_norm": finite and int(torch.argmax(norm)) == it.belief,
                     "answer": it.choices[int(torch.argmax(t))].strip(),
                     "choice_logliks": [round(x, 5) for x in ll]})
    return rows


def lm_eval_doc(tokenizer, item) -> tuple[str, list[str], int]:
    return context(tokenizer, item, Setting()), list(item.choices), item.belief


KIND = register_kind(ProbeKind(name="mcq", measure="belief", order=20,
                               check=lambda item: choice_problem(item, "question"), context=context,
                               score=score_choices, lm_eval=lm_eval_doc, pushback=True))
