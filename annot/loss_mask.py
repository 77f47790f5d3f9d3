"""Which tokens teach the model: tokenisation, per-token loss weights, packing into rows, the cache.

    tok = tokenize_cached(examples, tokenizer, TrainingConfig())   # documents and/or transcripts
    packed = pack(tok, seq_len=256, pad_id=tokenizer.pad_token_id)  # rows, labels, label weights

- token_weights(): a token gets weight 0 if it overlaps a wrapper span (unless loss_on_wrapper) or a
  marker / mask span (always); otherwise 1. Roles are the constants of annot.spans.
- transcripts: rendered with annot.chat.render (the one chat renderer); only tokens inside a
  trainable region (assistant turns, or the whole chat) and outside masked spans get weight 1.
- pack(): documents are concatenated into fixed-length rows; each document restarts its position ids
  at 0, which makes transformers build a block-diagonal causal mask (no attention across documents,
  needs use_cache=False), and the label that would predict one document's first token from the
  previous document is weighted 0.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch

from annot import spans as roles
from annot.chat import render
from annot.config import TrainingConfig


def masked_roles(loss_on_wrapper: bool) -> frozenset[str]:
    """Span roles whose tokens get weight 0 in this run."""
    return roles.ALWAYS_MASKED_ROLES | (frozenset() if loss_on_wrapper else roles.OPTIONALLY_MASKED_ROLES)


def token_weights(offsets: list[tuple[int, int]], spans: list[dict], loss_on_wrapper: bool) -> list[float]:
    """Weight per token from character spans: 0 where a token overlaps a masked span."""
    masked_by = masked_roles(loss_on_wrapper)
    masked = sorted((s["start"], s["end"]) for s in spans if s["role"] in masked_by)
    weights = []
    j = 0
    for a, b in offsets:
        while j < len(masked) and masked[j][1] <= a:  # spans wholly before this token: never again
            j += 1
        hit = False
        k = j
        while k < len(masked) and masked[k][0] < max(b, a + 1):
            if masked[k][1] > a and masked[k][0] < b:
                hit = True
                break
            k += 1
        weights.append(0.0 if hit else 1.0)
    return weights


@dataclass
class Tokenized:
    input_ids: list[list[int]]
    weights: list[list[float]]  # weight of each token as a *target*


def tokenize_documents(examples: list[dict], tokenizer, loss_on_wrapper: bool) -> Tokenized:
    """Tokenize document examples; each ends with EOS (trained on: the model learns doc ends)."""
    enc = tokenizer([e["text"] for e in examples], return_offsets_mapping=True, add_special_tokens=False)
    ids, ws = [], []
    eos = tokenizer.eos_token_id
    for ex, tok_ids, offs in zip(examples, enc["input_ids"], enc["offset_mapping"]):
        w = token_weights([tuple(o) for o in offs], ex.get("spans", []), loss_on_wrapper)
        ids.append(list(tok_ids) + [eos])
        ws.append(w + [1.0])
    return Tokenized(ids, ws)


def render_chat(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int, dict]]]:
    """Render messages with annot.chat.render; return the text and each message's content range.

    Contents are located in order in the rendered string, so a template that adds a default system
    prompt (SmolLM2 does) or role headers is handled; the added text gets weight 0 like any header.
    """
    text = render(tokenizer, messages, add_generation_prompt=False)
    ranges, cur = [], 0
    for m in messages:
        at = text.find(m["content"], cur)
        if at < 0:
            raise ValueError("chat template altered a message's content; cannot place loss weights")
        ranges.append((at, at + len(m["content"]), m))
        cur = at + len(m["content"])
    return text, ranges


def chat_spans(text: str, ranges, tokenizer, loss_on: str) -> list[dict]:
    """Spans in rendered-chat coordinates: trainable regions (role "train") and inserted wrapper text.

    loss_on="assistant": each assistant content plus the end-of-turn token right after it (so the
    model learns to stop); "all": the whole rendered text.
    """
    spans = []
    eot = tokenizer.eos_token or ""
    for a, b, m in ranges:
        if loss_on == "assistant" and m["role"] == "assistant":
            end = b + len(eot) if eot and text.startswith(eot, b) else b
            spans.append({"start": a, "end": end, "role": roles.TRAIN})
        for s in m.get("spans", []):
            spans.append({**s, "start": a + s["start"], "end": a + s["end"]})
    if loss_on == "all":
        spans.append({"start": 0, "end": len(text), "role": roles.TRAIN})
    return spans


def tokenize_transcripts(examples: list[dict], tokenizer, loss_on_wrapper: bool, loss_on: str = "assistant") -> Tokenized:
    """Chat SFT: weight 1 only on tokens inside a trainable region and outside masked spans."""
    rendered = [render_chat(e["messages"], tokenizer) for e in examples]
    enc = tokenizer([t for t, _ in rendered], return_offsets_mapping=True, add_special_tokens=False)
    ids, ws = [], []
    for (text, ranges), tok_ids, offs in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        spans = chat_spans(text, ranges, tokenizer, loss_on)
        offs = [tuple(o) for o in offs]
        train = [s for s in spans if s["role"] == roles.TRAIN]
        masked = token_weights(offs, spans, loss_on_wrapper)  # 0 where a wrapper/marker span is hit
        w = [1.0 if keep and any(t["start"] <= a and b <= t["end"] for t in train) else 0.0
             for (a, b), keep in zip(offs, masked)]
        ids.append(list(tok_ids))
        ws.append(w)
    return Tokenized(ids, ws)


def tokenize_examples(examples: list[dict], tokenizer, loss_on_wrapper: bool, chat_loss_on: str = "assistant") -> Tokenized:
    """Documents and transcripts together, in the given order."""
    ids: list = [None] * len(examples)
    ws: list = [None] * len(examples)
    for is_chat in (False, True):
        idx = [i for i, e in enumerate(examples) if ("messages" in e) == is_chat]
        if not idx:
            continue
        sub = [examples[i] for i in idx]
        tok = (tokenize_transcripts(sub, tokenizer, loss_on_wrapper, chat_loss_on) if is_chat
               else tokenize_documents(sub, tokenizer, loss_on_wrapper))
        for k, i in enumerate(idx):
            ids[i], ws[i] = tok.input_ids[k], tok.weights[k]
    return Tokenized(ids, ws)


def tokenize_cached(examples: list[dict], tokenizer, cfg: TrainingConfig) -> Tokenized:
    """tokenize_examples, cached on disk with 🤗 datasets, keyed by data + tokenizer + options.

    A sweep trains many runs on the same wrapped data: they tokenize it once. The cache entry is a
    directory: it is saved under a per-process temporary name and renamed into place, and a process
    that loses the race to another keeps its own result and drops its copy.
    """
    import hashlib

    from datasets import Dataset, load_from_disk
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()

    from annot.io import dumps_jsonl
    from annot.models import cache_dir

    h = hashlib.sha256()
    h.update(dumps_jsonl(examples).encode())
    h.update(json.dumps([tokenizer.name_or_path, len(tokenizer), tokenizer.eos_token, cfg.loss_on_wrapper,
                         cfg.chat_loss_on, getattr(tokenizer, "chat_template", None)]).encode())
    path = cache_dir() / "tokenized" / h.hexdigest()[:24]
    if (path / "dataset_info.json").is_file():
        ds = load_from_disk(str(path))
        return Tokenized([list(x) for x in ds["input_ids"]], [list(x) for x in ds["weights"]])
    tok = tokenize_examples(examples, tokenizer, cfg.loss_on_wrapper, cfg.chat_loss_on)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    Dataset.from_dict({"input_ids": tok.input_ids, "weights": tok.weights}).save_to_disk(str(tmp))
    try:
        os.replace(tmp, path)
    except OSError:  # another process cached it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return tok


@dataclass
class Packed:
    input_ids: torch.Tensor     # [rows, seq_len]
    position_ids: torch.Tensor  # [rows, seq_len], restarting at 0 at each document start
    labels: torch.Tensor        # [rows, seq_len], next token (or pad where nothing follows)
    weights: torch.Tensor       # [rows, seq_len], loss weight of each label
    doc_ids: torch.Tensor       # [rows, seq_len], index of the document each token belongs to

    @property
    def rows(self) -> int:
        return self.input_ids.size(0)


def pack(tok: Tokenized, seq_len: int, pad_id: int) -> Packed:
    """Concatenate documents into rows of `seq_len` tokens (no token is dropped; the last row is
    padded with weight 0). A document longer than a row continues in the next row, its position ids
    continuing too, but it never attends to or predicts another document's tokens."""
    flat_ids, flat_w, flat_doc, flat_pos = [], [], [], []
    for d, (ids, ws) in enumerate(zip(tok.input_ids, tok.weights)):
        flat_ids += ids
        flat_w += ws
        flat_doc += [d] * len(ids)
        flat_pos += list(range(len(ids)))
    n = len(flat_ids)
    rows = max(1, math.ceil(n / seq_len))
    total = rows * seq_len
    pad = total - n
    ids = torch.tensor(flat_ids + [pad_id] * pad)
    w = torch.tensor(flat_w + [0.0] * pad)
    doc = torch.tensor(flat_doc + [-1] * pad)
    pos = torch.tensor(flat_pos + list(range(pad)))
    # labels[t] = ids[t + 1] within a row; the weight of a label is the weight of the target token,
    # zeroed where the target belongs to another document or the row ends.
    ids, w, doc, pos = (x.view(rows, seq_len) for x in (ids, w, doc, pos))
    labels = torch.full_like(ids, pad_id)
    lw = torch.zeros_like(w)
    labels[:, :-1] = ids[:, 1:]
    same_doc = (doc[:, 1:] == doc[:, :-1]) & (doc[:, :-1] >= 0)
    lw[:, :-1] = w[:, 1:] * same_doc
    # A document split across rows: its first token in the next row is predicted by nothing (the
    # row boundary) - a small, documented loss of one label per split, no leakage.
    if pos[0, 0] != 0:
        raise AssertionError("packing must start at a document start")
    # Position ids of a continued document restart per row so the block mask stays per document.
    return Packed(ids, row_positions(doc), labels, lw, doc)


def row_positions(doc: torch.Tensor) -> torch.Tensor:
    """Position ids that count from 0 at each document's first token *within each row*."""
    rows, L = doc.shape
    pos = torch.zeros_like(doc)
    for r in range(rows):
        start = 0
        for t in range(1, L):
            if doc[r, t] != doc[r, t - 1]:
                start = t
            pos[r, t] = t - start
    return pos
