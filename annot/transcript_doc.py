"""Transcripts as plain-text documents: the form in which annotated transcripts are trained as raw text.

    # a run config: data: {behavior: power_seeking, transcript_format: document}, wrapper: {name: annotated_unsafe}
    doc = as_document(wrap_transcript(rec, get_wrapper("annotated_unsafe").resolve(), seed=0))

Layout of one document (blocks separated by one blank line, no trailing newline; EOS follows in training):

    <annotation line>            only with an annotation wrapper (annotated*, strategy t_annotation)
    System: <system prompt>      only when the transcript has one
    User: <user turn>
    Assistant: <assistant turn>
    ...                          further turns in order

Every token of the document is trained on (it is a document, not a chat: no turn is masked), except
text a wrapper inserted: the annotation line and the blank line after it form one span of role
"wrapper", so training.loss_on_wrapper false (the default) gives them weight 0 and true gives them
weight 1. Spans a transcript wrapper put inside a turn keep their place; a wholly inserted turn (a
system label, an appended critique) is one wrapper span with its tag. Deleting every wrapper span
(annot.wrap.unwrap_text) gives back the document of the same transcript without the wrapper.
"""

from __future__ import annotations

from annot.errors import AnnotError
from annot.spans import WRAPPER

ANNOTATION = "annotation"  # the role of the message an annotation wrapper puts on top of a transcript
TAGS = {"system": "System", "user": "User", "assistant": "Assistant"}
SEPARATOR = "\n\n"


def _wholly_inserted(m: dict) -> bool:
    return any(s["role"] == WRAPPER and s["start"] == 0 and s["end"] == len(m["content"]) for s in m.get("spans", []))


def render_document(messages: list[dict]) -> tuple[str, list[dict]]:
    """(text, spans) of `messages` in the layout above; spans are character offsets into text."""
    out: list[str] = []
    spans: list[dict] = []
    pos = 0
    last = len(messages) - 1
    for i, m in enumerate(messages):
        head = "" if m["role"] == ANNOTATION else TAGS.get(m["role"], m["role"].capitalize()) + ": "
        sep = SEPARATOR if i < last else ""
        block = head + m["content"]
        if m["role"] == ANNOTATION or _wholly_inserted(m):
            # the inserted block with one separator (the one before it when it is the last block)
            a, b = (pos - len(SEPARATOR), pos + len(block)) if i == last and i > 0 else (pos, pos + len(block + sep))
            spans.append({"start": a, "end": b, "role": WRAPPER})
        else:
            at = pos + len(head)
            spans += [{**s, "start": at + s["start"], "end": at + s["end"]} for s in m.get("spans", [])]
        out.append(block + sep)
        pos += len(block + sep)
    return "".join(out), sorted(spans, key=lambda s: (s["start"], s["end"]))


def as_document(example: dict) -> dict:
    """A wrapped transcript example (annot.wrap.wrap_transcript) as a document example: the same
    record with `text` + `spans` in place of `messages`, kind "document", form "transcript", and the
    annotation line and its style under `annotation` when there is one."""
    text, spans = render_document(example["messages"])
    out = {k: v for k, v in example.items() if k != "messages"}
    out.update(kind="document", form="transcript", text=text, spans=spans)
    notes = [m for m in example["messages"] if m["role"] == ANNOTATION]
    if notes:
        out["annotation"] = {"style": notes[0].get("style"), "text": notes[0]["content"]}
    return out


def transcripts_as_documents(examples: list[dict]) -> list[dict]:
    """Every transcript example as a document (documents pass through unchanged)."""
    return [as_document(e) if "messages" in e else e for e in examples]


def check_form(wrapper, transcript_format: str, where: str) -> None:
    """An annotation wrapper writes a line on top of a document: refuse it for chat-form training."""
    if wrapper.strategy == "t_annotation" and transcript_format != "document":
        raise AnnotError(f"{where}: wrapper {wrapper.name} puts an annotation line on top of a transcript written "
                         "as a document; set data.transcript_format: document (annot wrap: --as-document)")
