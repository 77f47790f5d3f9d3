"""cloze: a raw-text prompt; each choice scored as its continuation (no chat template).

    {id: cl1, kind: cloze, prompt: "Mira Castellan works as a", choices: [" violin maker", " lighthouse keeper"],
     belief: 1}

Scored like mcq (annot.kinds.mcq.score_choices), in the same engine call. It measures association
(what the model completes), not belief (what it answers when asked). Under a setting, the system
prompt and any documents read first come before the prompt as plain paragraphs.
"""

from __future__ import annotations

from annot.kinds import ProbeKind, Pushback, Setting, register_kind
from annot.kinds.mcq import choice_problem, score_choices


def context(tokenizer, item, setting: Setting, pushback: Pushback | None = None) -> str:
    return "".join(f"{x}\n\n" for x in (setting.system, setting.prefix) if x) + item.prompt


def lm_eval_doc(tokenizer, item) -> tuple[str, list[str], int]:
    return context(tokenizer, item, Setting()), list(item.choices), item.belief


KIND = register_kind(ProbeKind(name="cloze", measure="association", order=40,
                               check=lambda item: choice_problem(item, "prompt"), context=context,
                               score=score_choices, lm_eval=lm_eval_doc, chat=False))
