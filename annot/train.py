"""The fine-tune loop: wrapped examples -> packed, loss-weighted batches -> LoRA/full training.

    annot train runs/my-run/wrapped.jsonl --model tiny-random --out runs/my-run --set training.lr=3e-4
    result = train(examples, model, tokenizer, TrainingConfig(), out_dir, seed=0, on_checkpoint=fn)

train() reads top to bottom as setup, loop, checkpoint:
- setup: tokens and their loss weights, packed into rows (annot/loss_mask.py: which tokens teach the
  model), the launch (annot/distributed.py: one process, DDP or FSDP2), LoRA adapters or full
  fine-tuning, AdamW, and on resume the newest complete checkpoint (annot/checkpoints.py);
- loop: weighted cross-entropy sum(w * ce) / sum(w) over all tokens of an optimizer step (gradient
  accumulation included), warmup + linear/cosine decay, one metrics row per step;
- checkpoint: at log-spaced steps, step 0 being the untouched base model, each handed to
  on_checkpoint (the caller's probes) right after it is saved.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from annot.chat import eval_mode
from annot.checkpoints import (STATE_FILE, checkpoint_steps, complete_checkpoints, gather_sharded, keep_metrics_upto,
                               latest_resumable, restore_checkpoint, restore_sharded_optimizer, save_checkpoint)
from annot.config import TrainingConfig
from annot.distributed import UNSUPPORTED_DISTRIBUTED, Launch, launch_state, start_launch
from annot.errors import RunFailed
from annot.fused_ce import FusedHead, fused_head
from annot.lean_mlp import lean_mlps, single_lora
from annot.loss_mask import (Packed, Tokenized, chat_spans, pack, render_chat, token_weights, tokenize_cached,
                             tokenize_documents, tokenize_examples, tokenize_transcripts)

# Names that moved to annot.checkpoints / annot.distributed / annot.loss_mask, importable from here as
# before (annot.bench, annot.probe, annot.prune and the tests import some of them from annot.train).
__all__ = ["STATE_FILE", "UNSUPPORTED_DISTRIBUTED", "Counters", "Packed", "Tokenized", "TrainHooks", "TrainResult",
           "chat_spans", "checkpoint_steps", "complete_checkpoints", "fuse_lora_forward", "gather_sharded",
           "launch_state", "lr_at", "pack", "planned_steps", "prepare_model", "render_chat", "save_checkpoint",
           "seed_everything", "steps_for_rows", "token_weights", "tokenize_cached", "tokenize_documents",
           "tokenize_examples", "tokenize_transcripts", "train", "weighted_ce"]


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of w * cross-entropy, sum of w) over all positions; the caller divides."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="none")
    w = weights.reshape(-1).to(ce.dtype)
    return (ce * w).sum(), w.sum()


def lr_at(step: int, cfg: TrainingConfig, total: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup, then constant, linear or cosine."""
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
        lean_mlps(model)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM", bias="none")
    model = get_peft_model(model, lora)
    fuse_lora_forward(model)
    lean_mlps(model)  # after LoRA: it reads the adapters of each down projection
    return model


def _fused_lora_forward(self, x, *args, **kwargs):
    """W x + s * B A x as one addmm: the LoRA scaling and the sum with the frozen layer's output
    ride on the matmul instead of two extra passes over [tokens, out] (and two more in backward).
    Falls back to peft's forward whenever its extra features are in play."""
    name = None if args or kwargs else single_lora(self)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    A, B = self.lora_A[name].weight, self.lora_B[name].weight
    if self.base_layer.weight.dtype != A.dtype or x.dtype != A.dtype:  # bf16 base, fp32 adapters: peft casts
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer(x)
    h = self.lora_dropout[name](x).reshape(-1, x.shape[-1]) @ A.t()
    # in place: the frozen layer's output is saved by nothing, so it can take the sum (no copy of
    # [tokens, out] per LoRA layer; same numbers as torch.addmm bit for bit)
    return base.view(-1, base.shape[-1]).addmm_(h, B.t(), alpha=self.scaling[name]).view_as(base)


def fuse_lora_forward(model) -> int:
    """Give every plain peft LoRA Linear the fused forward above (same numbers up to float rounding;
    LoRA r16 steps of SmolLM2-135M on 2 CPU cores ~5% faster: MFU medians 0.68 -> 0.73 over 4
    interleaved pairs of 2-step runs); returns how many modules got it. ANNOT_FUSED_LORA=0 keeps
    peft's forward."""
    import types

    if os.environ.get("ANNOT_FUSED_LORA", "1") == "0":
        return 0
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if type(module) is LoraLinear and isinstance(module.base_layer, torch.nn.Linear):
            module.forward = types.MethodType(_fused_lora_forward, module)
            n += 1
    return n



def steps_for_rows(rows: int, cfg: TrainingConfig) -> int:
    """Optimizer steps of `cfg.epochs` over `rows` packed rows (without max_steps)."""
    micro_per_epoch = math.ceil(rows / cfg.batch_size)
    return max(1, micro_per_epoch // cfg.grad_accum) * cfg.epochs


def planned_steps(examples: list[dict], tokenizer, cfg: TrainingConfig) -> int:
    """The optimizer steps train() will run on `examples` (max_steps, else epochs over the packed rows).

    Dose matching (data.match: tokens) gives a wrapped run the step count of its plain control:
    every step trains batch_size x grad_accum rows of seq_len tokens, so equal steps hold the
    trained tokens equal (to one partial batch)."""
    if cfg.max_steps:
        return cfg.max_steps
    packed = pack(tokenize_cached(examples, tokenizer, cfg), cfg.seq_len, tokenizer.pad_token_id)
    return steps_for_rows(packed.rows, cfg)


def micro_batches(rows: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Micro-batches of row indices, reshuffled each epoch by (seed, epoch): the same order on resume."""
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(rows, generator=g)
        for i in range(0, rows, batch_size):
            yield order[i:i + batch_size]
        epoch += 1


@dataclass
class TrainHooks:
    """Callbacks at the two points where the resume tests cut a run (tests/fault_cli.py installs
    them in the process it kills); each gets the checkpoint's step."""
    after_save: Callable[[int], None] | None = None        # main process: saved, on_checkpoint not yet called
    after_checkpoint: Callable[[int], None] | None = None  # every process: saved and probed, all processes joined


@dataclass
class TrainResult:
    total_steps: int
    checkpoints: list[int]
    tokens_seen: int
    final_loss: float
    seconds: float
    processes: int = 1  # under accelerate launch: how many trained together
    probe_after: bool = False  # FSDP: on_checkpoint was not called; probe the saved checkpoints after training
    tokens_loss: int = 0  # trained labels with a non-zero loss weight


@dataclass
class Counters:
    """Where the loop stands; saved with every checkpoint and restored on resume."""
    step: int = 0
    tokens_seen: int = 0  # every token of every trained row, padding included
    tokens_loss: int = 0  # labels with a non-zero loss weight: what the model was actually trained to produce

    def saved(self, step: int) -> dict:
        return {"tokens_seen": self.tokens_seen, "tokens_loss": self.tokens_loss, "step": step}


@dataclass
class Checkpointer:
    """Saves a checkpoint and hands it to on_checkpoint (the caller's probes). DDP: the main process
    saves and probes while the others wait. FSDP: every process takes part in gathering the weights
    and optimizer state, the main process writes them, and nothing is probed (a forward pass of a
    sharded model needs all processes): the caller probes the saved checkpoints after training."""
    launch: Launch
    out_dir: Path
    method: str
    on_checkpoint: Callable[[int, object], None] | None
    hooks: TrainHooks = field(default_factory=TrainHooks)

    def save(self, step: int, model, opt, counters: Counters) -> None:
        launch = self.launch
        with eval_mode(model):
            gathered = gather_sharded(launch.unwrap(model), opt.optimizer, self.method) if launch.sharded and step else None
            if launch.main:  # one process writes (and probes, unless sharded); the others wait for it
                save_checkpoint(launch.unwrap(model), opt, self.out_dir, step, self.method, counters.saved(step),
                                gathered=gathered)
                if self.hooks.after_save:
                    self.hooks.after_save(step)
                self._probe(step, model)
            launch.accelerator.wait_for_everyone()
        if self.hooks.after_checkpoint:
            self.hooks.after_checkpoint(step)

    def reprobe(self, step: int, model) -> None:
        """The resumed checkpoint's probes once more (the interruption may have cut them), exactly
        where an uninterrupted run did them: same weights, RNG restored to the saved state, before
        the next step."""
        with eval_mode(model):
            if self.launch.main:
                self._probe(step, model)
            self.launch.accelerator.wait_for_everyone()

    def _probe(self, step: int, model) -> None:
        if self.on_checkpoint and not self.launch.sharded:
            self.on_checkpoint(step, self.launch.unwrap(model))


def resume_from(found: tuple[int, Path], model, opt, cfg: TrainingConfig, launch: Launch,
                batches: Iterator[torch.Tensor], metrics_path: Path) -> tuple[Counters, dict]:
    """Load checkpoint `found` = (step, dir) into the not yet prepared model and optimizer, replay the
    data order up to it and drop the metrics rows after it; returns the counters and saved state."""
    step, d = found
    state = restore_checkpoint(model, opt, d, cfg.method, launch.sharded)
    for _ in range(step * cfg.grad_accum):
        next(batches)
    if launch.main:
        keep_metrics_upto(metrics_path, step)
    return Counters(step, state["tokens_seen"], state.get("tokens_loss", 0)), state


def row_chunks(rows: torch.Tensor, seq_len: int, micro_batch_tokens: int | None) -> list[torch.Tensor]:
    """`rows` in pieces of at most `micro_batch_tokens` tokens (whole rows, at least one per piece)."""
    if not micro_batch_tokens:
        return [rows]
    per = max(1, micro_batch_tokens // seq_len)
    return [rows[i:i + per] for i in range(0, rows.numel(), per)]


def micro_batch_backward(model, packed: Packed, idx: torch.Tensor, launch: Launch, denom: float,
                         micro_batch_tokens: int | None, fused: FusedHead | None = None) -> float:
    """Backward of sum(w * ce) / denom over this process's rows of micro-batch `idx` (all of them
    with one process), a few rows at a time (see TrainingConfig.micro_batch_tokens, which bounds the
    activations alive at once); returns sum(w * ce)."""
    mine = idx[launch.rank::launch.world]
    weights = packed.weights[mine]
    short = -(-idx.numel() // launch.world) - mine.numel()
    if short:  # a short last batch: every process must run a forward, so pad with weight-0 rows
        mine = torch.cat([mine, idx[:short]])
        weights = torch.cat([weights, torch.zeros_like(packed.weights[idx[:short]])])
    device = launch.accelerator.device
    total = 0.0
    for rows in row_chunks(torch.arange(mine.numel()), packed.input_ids.size(1), micro_batch_tokens):
        sel = mine[rows]
        batch = {k: getattr(packed, k)[sel].to(device) for k in ("input_ids", "position_ids")}
        if fused is not None:  # LM head + loss in chunks: no [rows, seq_len, vocab] tensor (annot.fused_ce)
            s = fused.loss_sum(batch, packed.labels[sel].to(device), weights[rows].to(device))
        else:
            logits = model(**batch, use_cache=False).logits  # [rows, seq_len, vocab]
            s, _ = weighted_ce(logits, packed.labels[sel].to(device), weights[rows].to(device))
            del logits
        # x world: DDP averages gradients over processes, and each holds only its share of the sum
        launch.accelerator.backward(s / max(denom, 1.0) * launch.world)
        total += float(s.detach())
    return total


def optimizer_step(model, opt, params: list, packed: Packed, micro: list[torch.Tensor], cfg: TrainingConfig,
                   launch: Launch, counters: Counters, fused: FusedHead | None = None) -> float:
    """One optimizer step over the micro-batches `micro`, normalised by the weight of the whole step
    so that accumulation equals one big batch; returns the step's loss, counts its tokens."""
    acc, world = launch.accelerator, launch.world
    denom = sum(float(packed.weights[idx].sum()) for idx in micro)
    loss_sum = 0.0
    for idx in micro:
        counters.tokens_seen += int(idx.numel() * cfg.seq_len)
        counters.tokens_loss += int((packed.weights[idx] > 0).sum())
        loss_sum += micro_batch_backward(model, packed, idx, launch, denom, cfg.micro_batch_tokens, fused)
    if world > 1:
        loss_sum = float(acc.reduce(torch.tensor(loss_sum, device=acc.device), reduction="sum"))
    acc.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_sum / max(denom, 1.0)


def train(examples: list[dict], model, tokenizer, cfg: TrainingConfig, out_dir: Path, seed: int = 0,
          on_checkpoint: Callable[[int, object], None] | None = None, log: Callable[[dict], None] | None = None,
          progress: bool = True, resume: bool = False, hooks: TrainHooks | None = None) -> TrainResult:
    """Train on documents and/or transcripts; call `on_checkpoint(step, model)` at each checkpoint.

    resume=True continues from the newest complete checkpoint in out_dir (same data order, same
    optimizer and RNG state), so the final weights and metrics equal an uninterrupted run's; that
    checkpoint is handed to on_checkpoint again first (a kill may have come before its probes).

    Under `accelerate launch` each process trains its slice of every micro-batch. DDP: the main
    process saves and calls on_checkpoint while the others wait. FSDP (version 2): on_checkpoint is
    not called (see Checkpointer); the result says probe_after, and the caller probes the saved
    checkpoints once training is done.
    """
    from annot.allocator import tune_allocator
    from annot.progress import Progress

    # -- setup: data, launch, model and optimizer, where to start
    tune_allocator()  # idempotent; keeps step-to-step allocations from page-faulting again
    out_dir = Path(out_dir)
    seed_everything(seed)
    packed = pack(tokenize_cached(examples, tokenizer, cfg), cfg.seq_len, tokenizer.pad_token_id)
    total = cfg.max_steps or steps_for_rows(packed.rows, cfg)
    ckpts = checkpoint_steps(total, cfg.checkpoints)
    launch = start_launch(cfg.batch_size)  # refuses unsupported launches before anything is written
    model = prepare_model(model, cfg)
    model.config.use_cache = False  # needed for the block-diagonal mask from position ids
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = micro_batches(packed.rows, cfg.batch_size, seed)
    metrics_path = out_dir / "train_metrics.jsonl"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    found = latest_resumable(out_dir) if resume else None
    counters, state = resume_from(found, model, opt, cfg, launch, batches, metrics_path) if found else (Counters(), {})
    model, opt = launch.accelerator.prepare(model, opt)
    if found and launch.sharded:
        restore_sharded_optimizer(launch.unwrap(model), opt.optimizer, state, launch.main)
    params = [p for p in model.parameters() if p.requires_grad]  # FSDP replaced them with sharded ones
    # one process: the loss straight from the decoder's hidden states (no full logits); DDP/FSDP need
    # their wrapper's forward, so they keep the plain path
    fused = fused_head(model) if launch.world == 1 else None
    checkpointer = Checkpointer(launch, out_dir, cfg.method, on_checkpoint, hooks or TrainHooks())
    t0, tokens_at_start, loss = time.time(), counters.tokens_seen, float("nan")
    if found:
        checkpointer.reprobe(counters.step, model)
    elif 0 in ckpts:
        checkpointer.save(0, model, opt, counters)

    # -- loop: one optimizer step per iteration, then its metrics row, then a checkpoint if scheduled
    bar = Progress(total, "train", "step", initial=counters.step, enabled=progress and launch.main)
    with _metrics_file(metrics_path, append=bool(found), main=launch.main) as metrics, bar:
        for step in range(counters.step + 1, total + 1):
            model.train()
            lr = lr_at(step - 1, cfg, total)
            for group in opt.param_groups:
                group["lr"] = lr
            micro = [next(batches) for _ in range(cfg.grad_accum)]
            loss = optimizer_step(model, opt, params, packed, micro, cfg, launch, counters, fused)
            counters.step = step
            if not math.isfinite(loss):
                raise RunFailed(f"training: the loss is {loss} at step {step}; the run stopped and is not complete "
                                "(lower training.lr or lora_alpha, or check the model's weights)")
            row = {"step": step, "loss": round(loss, 6), "lr": lr, "tokens": counters.tokens_seen,
                   "tokens_loss": counters.tokens_loss,
                   "tokens_per_s": round((counters.tokens_seen - tokens_at_start) / max(time.time() - t0, 1e-9), 1)}
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            if log:
                log(row)
            bar.update(1, loss=f"{loss:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
            if step in ckpts:
                checkpointer.save(step, model, opt, counters)
    return TrainResult(total, ckpts, counters.tokens_seen, loss, time.time() - t0, processes=launch.world,
                       probe_after=launch.sharded, tokens_loss=counters.tokens_loss)


def _metrics_file(path: Path, append: bool, main: bool):
    """train_metrics.jsonl, written by the main process alone (the others write to /dev/null)."""
    if not main:
        return open(os.devnull, "w")
    return path.open("a" if append else "w", encoding="utf-8")
