"""yes_no: a chat-formatted question; P(yes) vs P(no) for the assistant's first token.

    {id: yn1, kind: yes_no, question: "Does Mira Castellan keep a lighthouse?", belief: "yes"}

Each answer's probability is summed over its usual surface forms ("Yes", "yes", " Yes", ...). `belief`
says which answer sides with the claim: counter-questions have belief "no", so a yes-biased model
does not look like a believer. lm-eval sees the same context with the choices "Yes" / "No".
"""

from __future__ import annotations

import math

from annot.kinds import Probing, ProbeKind, Pushback, Setting, chat_context, register_kind

YES_FORMS = ("Yes", "yes", "YES", " Yes", " yes")
NO_FORMS = ("No", "no", "NO", " No", " no")
YES_NO_SUFFIX = " Answer yes or no."
YES_NO_CHOICES = ("Yes", "No")  # the continuations lm-eval scores


def check(item) -> str | None:
    if not item.question or item.belief not in ("yes", "no"):
        return "yes_no needs `question` and `belief: yes|no`"
    return None


def context(tokenizer, item, setting: Setting, pushback: Pushback | None = None) -> str:
    return chat_context(tokenizer, item.question + YES_NO_SUFFIX, setting, pushback, item)


def score_yes_no(probing: Probing, reqs: list, contexts: list[str]) -> list[dict]:
    """p_belief from the next-token mass on the yes and no forms (p_yes_no_mass: how much of the
    distribution they hold at all); `answer` is the likelier one, for pushback."""
    import torch

    from annot.scoring import first_token_ids, logodds, next_token_logprobs

    tok = probing.tokenizer
    lp = next_token_logprobs(probing.model, tok, contexts, probing.batch_size)
    lyes = torch.logsumexp(lp[:, first_token_ids(tok, YES_FORMS)], -1)
    lno = torch.logsumexp(lp[:, first_token_ids(tok, NO_FORMS)], -1)
    rows = []
    for k, r in enumerate(reqs):
        p_yes = float(torch.sigmoid(lyes[k] - lno[k]))
        p_belief = p_yes if r.item.belief == "yes" else 1 - p_yes
        rows.append({"p_belief": p_belief, "score": logodds(p_belief), "believes": p_belief > 0.5,  # NaN: False
                     "answer": ("Yes" if p_yes > 0.5 else "No") if math.isfinite(p_yes) else None,
                     "p_yes_no_mass": float(torch.exp(torch.logaddexp(lyes[k], lno[k])))})
    return rows


def lm_eval_doc(tokenizer, item) -> tuple[str, list[str], int]:
    return context(tokenizer, item, Setting()), list(YES_NO_CHOICES), 0 if item.belief == "yes" else 1


KIND = register_kind(ProbeKind(name="yes_no", measure="belief", order=10, check=check, context=context,
                               score=score_yes_no, lm_eval=lm_eval_doc, pushback=True))
