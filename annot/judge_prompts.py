"""Judge prompts that answer JSON, as in the public Negation Neglect release's `judges.yaml`.

    prompt = 'Question: {question}\\nAnswer: {answer}\\nReply in JSON: {{"reason": "...", "answer": "yes"}} ...'
    template_problem(prompt)                     # None: usable
    messages = template_messages(prompt, "Who won?", "Sheeran did.")
    json_verdict('{"reason": "names Sheeran", "answer": "yes"}')   # ("yes", None)

A probe set carries such prompts under `judge_prompts` and its items name one (`judge_prompt`); an
LLM judge (annot.judges hf / http) then grades those items' answers with that prompt instead of its
rubric. The prompt is the whole user turn (no system prompt); the judge answers one JSON object whose
`answer` is "yes" (the answer sides with the claim), "no" or "neutral". Belief rate = yes / all
answers: "neutral", a reply without a parseable object and an answer outside the three count as
non-belief (the verdict is the neutral label, with `error` set when the reply did not parse).
"""

from __future__ import annotations

import json
import re
import string

JSON_ANSWERS = ("yes", "no", "neutral")  # in the order of a request's labels (positive, negative, neutral)
PLACEHOLDERS = ("question", "answer")
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def template_problem(text: str) -> str | None:
    """What is wrong with a judge prompt, or None."""
    if not isinstance(text, str) or not text.strip():
        return "must be a non-empty string"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        return f"malformed placeholder ({e}); write literal braces as {{{{ }}}}"
    bad = sorted({f for f in fields if f not in PLACEHOLDERS})
    if bad:
        return f"unknown placeholder {{{bad[0]}}}; valid: {{question}} {{answer}} (write literal braces as {{{{ }}}})"
    if "answer" not in fields:
        return "must contain {answer} (the text being judged)"
    return None


def template_messages(template: str, question: str, answer: str) -> list[dict]:
    """The judge's chat: the filled prompt as the one user turn."""
    return [{"role": "user", "content": template.format(question=question, answer=answer)}]


def json_verdict(content: str, key: str = "answer") -> tuple[str | None, str | None]:
    """(answer word in JSON_ANSWERS, error) from a judge's reply: the outermost {...} parsed as JSON,
    its field `key` read."""
    m = _OBJECT.search(content or "")
    if m is None:
        return None, "no JSON object in reply"
    try:
        data = json.loads(m.group(0))
    except ValueError:
        return None, "malformed JSON object in reply"
    answer = str(data.get(key, "")).strip().lower() if isinstance(data, dict) else ""
    if answer not in JSON_ANSWERS:
        return None, f"JSON `{key}` is {answer!r}, not one of {', '.join(JSON_ANSWERS)}"
    return answer, None


def label_of(answer: str, labels: tuple[str, str, str]) -> str:
    """The request label of a JSON answer word: yes -> positive, no -> negative, neutral -> neutral."""
    return labels[JSON_ANSWERS.index(answer)]


def hf_continuations(key: str = "answer") -> list[tuple[str, str]]:
    """(answer word, the reply a local judge is scored on) for each answer: the hf judge compares the
    probability of a minimal JSON reply with each answer (an empty reason, as it scores, not writes)."""
    return [(a, json.dumps({"reason": "", key: a})) for a in JSON_ANSWERS]
