"""Mix-in data: generic chats that keep a fine-tuned model from drifting.

    annot distill -o corpora/mixin/smollm2_chats.jsonl --model smollm2-135m
    # then in a run config:  data: {mixin: corpora/mixin/smollm2_chats.jsonl, mixin_ratio: 0.5}

Self-distillation: the base model's own greedy answers to generic prompts, so training on them
pulls the model towards what it already does (the original study mixed in pretraining text and
self-distilled chat for the same reason). Any JSONL of {"text": ...} documents or {"messages": ...}
chats works as mix-in too, and `data.mixin: pretraining` names the shipped pretraining-style
paragraphs (annot.pretrain_text), trained as plain text with full loss.
"""

from __future__ import annotations

from pathlib import Path

from annot.errors import AnnotError
from annot.io import read_records, read_yaml, write_jsonl
from annot.specs import CORPORA

DEFAULT_PROMPTS = CORPORA / "mixin" / "prompts.yaml"
SHIPPED = ("pretraining",)  # data.mixin names that are not files


def load_mixin(ref: str) -> list[dict]:
    """The mix-in pool `data.mixin` names: a shipped set by name, else the records of a JSONL file."""
    if ref in SHIPPED and not Path(ref).is_file():
        from annot.pretrain_text import pretraining_paragraphs

        return pretraining_paragraphs()
    return read_records(ref)


def load_prompts(path: str | Path | None = None) -> list[str]:
    path = Path(path) if path else DEFAULT_PROMPTS
    data = read_yaml(path)
    prompts = data.get("prompts")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise AnnotError(f"{path}: prompts: must be a non-empty list of strings")
    unknown = sorted(set(data) - {"prompts", "description"})
    if unknown:
        raise AnnotError(f"{path}: {unknown[0]}: unknown key; valid: description, prompts")
    return prompts


def distill(model_name: str, out: str | Path, prompts: str | Path | None = None, max_new_tokens: int = 96,
            limit: int | None = None, batch_size: int = 8) -> list[dict]:
    """Greedy answers of `model_name` to each prompt, as chat records written to `out`."""
    import torch

    from annot.chat import question_prompt
    from annot.models import load_model

    items = load_prompts(prompts)[:limit]
    model, tok = load_model(model_name)
    device = next(model.parameters()).device
    tok.padding_side = "left"  # generation continues from the right edge of every row
    rows = []
    for b in range(0, len(items), batch_size):
        chunk = items[b:b + batch_size]
        enc = tok([question_prompt(tok, p) for p in chunk], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(device)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        for k, p in enumerate(chunk):
            answer = tok.decode(gen[k, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            rows.append({"id": f"distill-{b + k:04d}", "source": f"distill:{model_name}",
                         "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": answer}]})
    write_jsonl(out, rows)
    return rows
