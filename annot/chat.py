"""One chat renderer for the whole package, and the model-mode context manager.

Every place that turns messages into model text (training transcripts, probe questions, judge
prompts, lm-eval export) calls `render`, so a model is always trained and asked in the same markup.

Fallback, for a tokenizer without a chat template (base models): each message becomes a line
"Role: content" (role capitalised), and a prompt that waits for the model's reply ends with
"Assistant:". Transcript training refuses such tokenizers in preflight, so this fallback only ever
renders questions and judge prompts for base models.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

FALLBACK_REPLY_HEADER = "Assistant:"


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """Messages (dicts with `role` and `content`; other keys ignored) as one string.

    With `add_generation_prompt` the text ends where the assistant's reply begins."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in plain)
    return text + FALLBACK_REPLY_HEADER if add_generation_prompt else text + (tokenizer.eos_token or "")


def question_prompt(tokenizer, question: str, system: str | None = None, history: list[dict] | None = None) -> str:
    """A question as the user's turn (after an optional system prompt and earlier turns), ending at
    the start of the assistant's reply."""
    messages = ([{"role": "system", "content": system}] if system else []) + list(history or []) + [
        {"role": "user", "content": question}]
    return render(tokenizer, messages, add_generation_prompt=True)


@contextlib.contextmanager
def eval_mode(model) -> Iterator:
    """`model.eval()` for the block, then the mode it had before, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()
