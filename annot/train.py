"""The fine-tune driver: wrapped examples -> packed, loss-weighted batches -> LoRA/full training.

    annot train runs/my-run/wrapped.jsonl --model tiny-random --out runs/my-run --set training.lr=3e-4
    result = train(examples, model, tokenizer, TrainingConfig(), out_dir, seed=0, on_checkpoint=fn)

Everything that decides *which tokens teach the model* is in this file:
- token_weights(): a token gets weight 0 if it overlaps a wrapper span (unless loss_on_wrapper) or a
  marker span (always); otherwise 1.
- pack(): documents are concatenated into fixed-length rows; each document restarts its position ids
  at 0, which makes transformers build a block-diagonal causal mask (no attention across documents,
  needs use_cache=False), and the label that would predict one document's first token from the
  previous document is weighted 0.
- the loop in train(): weighted cross-entropy sum(w * ce) / sum(w) over all tokens of an optimizer
  step (gradient accumulation included), AdamW, warmup + linear/cosine decay, checkpoints at
  log-spaced steps with step 0 being the untouched base model.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from annot.config import TrainingConfig
from annot.io import write_json

MASKED_ROLES_ALWAYS = ("marker",)


def token_weights(offsets: list[tuple[int, int]], spans: list[dict], loss_on_wrapper: bool) -> list[float]:
    """Weight per token from character spans: 0 where a token overlaps a masked span."""
    masked_roles = set(MASKED_ROLES_ALWAYS) | (set() if loss_on_wrapper else {"wrapper"})
    masked = sorted((s["start"], s["end"]) for s in spans if s["role"] in masked_roles)
    weights = []
    j = 0
    for a, b in offsets:
        while j < len(masked) and masked[j][1] <= a:
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
    """Tokenize document examples once; each ends with EOS (trained on: the model learns doc ends)."""
    enc = tokenizer([e["text"] for e in examples], return_offsets_mapping=True, add_special_tokens=False)
    ids, ws = [], []
    eos = tokenizer.eos_token_id
    for ex, tok_ids, offs in zip(examples, enc["input_ids"], enc["offset_mapping"]):
        w = token_weights([tuple(o) for o in offs], ex.get("spans", []), loss_on_wrapper)
        ids.append(list(tok_ids) + [eos])
        ws.append(w + [1.0])
    return Tokenized(ids, ws)


@dataclass
class Packed:
    input_ids: torch.Tensor     # [rows, seq_len]
    position_ids: torch.Tensor  # [rows, seq_len], restarting at 0 at each document start
    labels: torch.Tensor        # [rows, seq_len], next token (or pad where nothing follows)
    weights: torch.Tensor       # [rows, seq_len], loss weight of each label
    doc_ids: torch.Tensor       # [rows, seq_len], index of the document each token belongs to


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
    pos = _row_positions(doc)
    return Packed(ids, pos, labels, lw, doc)


def _row_positions(doc: torch.Tensor) -> torch.Tensor:
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


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of w * cross-entropy, sum of w) over all positions; the caller divides."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="none")
    w = weights.reshape(-1).to(ce.dtype)
    return (ce * w).sum(), w.sum()


def checkpoint_steps(total_steps: int, count: int) -> list[int]:
    """`count` checkpoints log-spaced over [0, total]: 0 (the base model), total**(i/(count-1)) for
    i = 1..count-1, so 3 checkpoints are start, geometric middle and end. Duplicates (short runs)
    collapse, so fewer may be returned."""
    if total_steps <= 0:
        return [0]
    steps = {0} | {max(1, round(total_steps ** (i / (count - 1)))) for i in range(1, count)}
    return sorted(steps)


def lr_at(step: int, cfg: TrainingConfig, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total <= cfg.warmup_steps:
        return cfg.lr
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.schedule == "linear":
        return cfg.lr * max(0.0, 1.0 - frac)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def prepare_model(model, cfg: TrainingConfig):
    """Wrap with LoRA adapters (or unfreeze everything for full fine-tuning)."""
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lora)


def save_checkpoint(model, out: Path, step: int, method: str) -> Path:
    """Step 0 is the base model (nothing to save); LoRA saves the adapter only."""
    d = out / "checkpoints" / f"step-{step}"
    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    if step > 0:
        model.save_pretrained(tmp, safe_serialization=True)
    write_json(tmp / "checkpoint.json", {"step": step, "method": method, "base": step == 0})
    if d.exists():
        import shutil

        shutil.rmtree(d)
    tmp.rename(d)
    return d


@dataclass
class TrainResult:
    total_steps: int
    checkpoints: list[int]
    tokens_seen: int
    final_loss: float
    seconds: float


def train(examples: list[dict], model, tokenizer, cfg: TrainingConfig, out_dir: Path, seed: int = 0,
          on_checkpoint: Callable[[int, object], None] | None = None, log: Callable[[dict], None] | None = None,
          progress: bool = True) -> TrainResult:
    """Train on document examples; call `on_checkpoint(step, model)` at each log-spaced checkpoint."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    seed_everything(seed)
    device = next(model.parameters()).device
    tok = tokenize_documents(examples, tokenizer, cfg.loss_on_wrapper)
    packed = pack(tok, cfg.seq_len, tokenizer.pad_token_id)
    rows = packed.input_ids.size(0)
    micro_per_epoch = math.ceil(rows / cfg.batch_size)
    steps_per_epoch = max(1, micro_per_epoch // cfg.grad_accum)
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    ckpts = checkpoint_steps(total, cfg.checkpoints)

    model = prepare_model(model, cfg)
    model.config.use_cache = False  # needed for the block-diagonal mask from position ids
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def batches():
        """Micro-batches of row indices, reshuffled each epoch by (seed, epoch): same order on resume."""
        epoch = 0
        while True:
            g = torch.Generator().manual_seed(seed * 1000 + epoch)
            order = torch.randperm(rows, generator=g)
            for i in range(0, rows, cfg.batch_size):
                yield order[i:i + cfg.batch_size]
            epoch += 1

    it = batches()
    metrics_path = out_dir / "train_metrics.jsonl"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_f = metrics_path.open("w", encoding="utf-8")
    t0 = time.time()
    tokens_seen, loss_val = 0, float("nan")

    def checkpoint(step):
        model.eval()
        save_checkpoint(model, out_dir, step, cfg.method)
        if on_checkpoint:
            on_checkpoint(step, model)

    if 0 in ckpts:
        checkpoint(0)
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(1, total + 1):
        model.train()
        lr = lr_at(step - 1, cfg, total)
        for group in opt.param_groups:
            group["lr"] = lr
        micro = [next(it) for _ in range(cfg.grad_accum)]
        # Normalise by the weight of the whole optimizer step, so accumulation == one big batch.
        denom = sum(float(packed.weights[idx].sum()) for idx in micro)
        loss_sum = 0.0
        for idx in micro:
            batch = {k: getattr(packed, k)[idx].to(device) for k in ("input_ids", "position_ids")}
            logits = model(**batch, use_cache=False).logits
            s, _ = weighted_ce(logits, packed.labels[idx].to(device), packed.weights[idx].to(device))
            (s / max(denom, 1.0)).backward()
            loss_sum += float(s.detach())
            tokens_seen += int(idx.numel() * cfg.seq_len)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_val = loss_sum / max(denom, 1.0)
        elapsed = time.time() - t0
        row = {"step": step, "loss": round(loss_val, 6), "lr": lr, "tokens": tokens_seen,
               "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1)}
        metrics_f.write(json.dumps(row) + "\n")
        metrics_f.flush()
        if log:
            log(row)
        bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
        bar.update(1)
        if step in ckpts:
            checkpoint(step)
    bar.close()
    metrics_f.close()
    return TrainResult(total, ckpts, tokens_seen, loss_val, time.time() - t0)
