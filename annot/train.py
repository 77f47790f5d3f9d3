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
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from annot.config import TrainingConfig
from annot.io import write_json

MASKED_ROLES_ALWAYS = ("marker", "mask")  # doc-tag markers; answer words of the word_mask condition


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
    """Render messages with the chat template; return the text and each message's content range.

    Contents are located in order in the rendered string, so a template that adds a default system
    prompt (SmolLM2 does) or role headers is handled; the added text gets weight 0 like any header.
    """
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(plain, tokenize=False)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in plain) + (tokenizer.eos_token or "")
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
            spans.append({"start": a, "end": end, "role": "train"})
        for s in m.get("spans", []):
            spans.append({**s, "start": a + s["start"], "end": a + s["end"]})
    if loss_on == "all":
        spans.append({"start": 0, "end": len(text), "role": "train"})
    return spans


def tokenize_transcripts(examples: list[dict], tokenizer, loss_on_wrapper: bool, loss_on: str = "assistant") -> Tokenized:
    """Chat SFT: weight 1 only on tokens inside a trainable region and outside masked spans."""
    rendered = [render_chat(e["messages"], tokenizer) for e in examples]
    enc = tokenizer([t for t, _ in rendered], return_offsets_mapping=True, add_special_tokens=False)
    ids, ws = [], []
    for (text, ranges), tok_ids, offs in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        spans = chat_spans(text, ranges, tokenizer, loss_on)
        offs = [tuple(o) for o in offs]
        train = [s for s in spans if s["role"] == "train"]
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
    model = get_peft_model(model, lora)
    fuse_lora_forward(model)
    return model


def _fused_lora_forward(self, x, *args, **kwargs):
    """W x + s * B A x as one addmm: the LoRA scaling and the sum with the frozen layer's output
    ride on the matmul instead of two extra passes over [tokens, out] (and two more in backward).
    Falls back to peft's forward whenever its extra features are in play."""
    if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return type(self).forward(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    if name not in self.lora_A or getattr(self, "use_dora", {}).get(name) or self.lora_B[name].bias is not None:
        return type(self).forward(self, x, *args, **kwargs)
    A, B = self.lora_A[name].weight, self.lora_B[name].weight
    if self.base_layer.weight.dtype != A.dtype or x.dtype != A.dtype:  # bf16 base, fp32 adapters: peft casts
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer(x)
    h = self.lora_dropout[name](x).reshape(-1, x.shape[-1]) @ A.t()
    return torch.addmm(base.reshape(-1, base.shape[-1]), h, B.t(), alpha=self.scaling[name]).view_as(base)


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


def save_checkpoint(model, opt, out: Path, step: int, method: str, extra: dict, gathered: tuple | None = None) -> Path:
    """Step 0 is the base model (no weights); LoRA saves the adapter only. The optimizer and RNG
    state go beside the weights so an interrupted run resumes exactly; `checkpoint.json` is
    written last inside a temp dir that is renamed into place, so a half-written checkpoint is
    never mistaken for a whole one. `gathered` = (weights, optimizer state) from gather_sharded()
    under FSDP, where the model and optimizer themselves hold only this process's shards."""
    import shutil

    d = out / "checkpoints" / f"step-{step}"
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if step > 0:
        weights, optim = gathered if gathered else (None, None)
        kw = {"state_dict": _untied(model, weights)} if weights is not None else {}
        model.save_pretrained(tmp, safe_serialization=True, **kw)
        state = {"torch_rng": torch.get_rng_state(), "py_rng": random.getstate(), **extra}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if gathered:
            state["optimizer_full"] = optim  # keyed by parameter name; shards again on any number of processes
        else:
            state["optimizer"] = opt.state_dict()
        if method == "full":
            state["model"] = dict(weights if weights is not None else model.state_dict())
        torch.save(state, tmp / STATE_FILE)
    write_json(tmp / "checkpoint.json", {"step": step, "method": method, "base": step == 0})
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    return d


def gather_sharded(model, opt, method: str) -> tuple[dict, dict]:
    """Under FSDP: the whole trainable state, gathered from every process's shards (a collective:
    every process must call it) into CPU memory on the main process (the others get empty dicts).
    LoRA leaves the frozen base out, so a checkpoint moves only the adapter across processes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=method == "lora")
    return get_state_dict(model, opt, options=options)


def _untied(model, weights: dict) -> dict:
    """`weights` without the second name of each tied weight (the LM head tied to the embeddings),
    which save_pretrained drops by itself only when the two share memory, as gathered copies do not.
    The resume state keeps every name: load_state_dict wants them all."""
    first: dict[int, str] = {}
    drop = {name for name, p in model.named_parameters(remove_duplicate=False)
            if first.setdefault(id(p), name) != name}
    return {k: v for k, v in weights.items() if k not in drop}


def tokenize_cached(examples: list[dict], tokenizer, cfg: TrainingConfig) -> Tokenized:
    """tokenize_examples, cached on disk with 🤗 datasets, keyed by data + tokenizer + options.

    A sweep trains many runs on the same wrapped data: they tokenize it once.
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


STATE_FILE = "training_state.pt"


def _fault(var: str, step: int) -> None:
    """SIGKILL this process when env `var` names `step`: the resume tests' fault injection."""
    if os.environ.get(var) == str(step):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path, dict]]:
    """(step, dir, checkpoint.json) of every completely written checkpoint, by step. A save is
    written into step-N.tmp, checkpoint.json last, then renamed: a .tmp dir (killed before the
    rename) or a dir without checkpoint.json (killed while writing) is not a checkpoint."""
    found = []
    for d in (Path(run_dir) / "checkpoints").glob("step-*"):
        if d.suffix == ".tmp" or not (d / "checkpoint.json").is_file():
            continue
        try:
            meta = json.loads((d / "checkpoint.json").read_text())
        except ValueError:
            continue
        found.append((meta["step"], d, meta))
    return sorted(found, key=lambda c: c[0])


def _latest_resumable(out_dir: Path) -> tuple[int, Path] | None:
    """The newest checkpoint that was completely written and holds a training state."""
    resumable = [(step, d) for step, d, _ in complete_checkpoints(out_dir) if (d / STATE_FILE).is_file()]
    return resumable[-1] if resumable else None


def _restore(model, opt, d: Path, method: str, sharded: bool) -> dict:
    """Load a checkpoint's weights into the (not yet sharded) model, and unless `sharded` its optimizer
    state; under FSDP the optimizer state is loaded after sharding (_restore_sharded_optimizer)."""
    from annot.errors import AnnotError

    # mmap: under FSDP every process reads the file but only the main one materialises the optimizer
    state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=False, mmap=True)
    if ("optimizer_full" in state) != sharded:
        written, now = ("an FSDP", "without FSDP") if "optimizer_full" in state else ("a non-FSDP", "under FSDP")
        raise AnnotError(f"{d}: written by {written} launch, resumed {now}; resume with the launch that "
                         "started the run, or pass --force to start over")
    if method == "lora":
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(d / "adapter_model.safetensors")))
    else:
        saved = next(iter(state["model"].values()), None)
        if saved is not None and saved.is_floating_point() and next(model.parameters()).dtype != saved.dtype:
            model.to(saved.dtype)  # fp32 masters of a bf16 mixed-precision run: do not round them on resume
        model.load_state_dict(state["model"])
    if not sharded:
        opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["py_rng"])
    return state


def _restore_sharded_optimizer(model, opt, state: dict, main: bool) -> None:
    """The full optimizer state, from the main process's copy, sharded onto every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, optim_state_dict=state["optimizer_full"] if main else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def launch_state():
    """accelerate's view of this launch, with every process of a torchrun / `accelerate launch` job
    joined. On a machine without an accelerator accelerate only joins processes when asked for CPU
    (ACCELERATE_USE_CPU); otherwise each would believe it is alone and all would write the same run."""
    import datetime

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from annot.errors import AnnotError

    world = int(os.environ.get("WORLD_SIZE", "1"))
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    # the other processes wait while the main one probes a checkpoint (DDP), or a whole run's
    # checkpoints before the next run of a sweep (FSDP): NCCL's 10-minute default would abort them
    timeout = datetime.timedelta(minutes=float(os.environ.get("ANNOT_DIST_TIMEOUT_MIN", "360")))
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or (world > 1 and not has_accelerator),
                         timeout=timeout)
    if state.num_processes != world:
        raise AnnotError(f"launch: WORLD_SIZE={world} but accelerate joined {state.num_processes} process(es); "
                         "launch with `accelerate launch --multi_gpu --num_processes N` (set ACCELERATE_USE_CPU=true "
                         "for CPU processes)")
    return state


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


UNSUPPORTED_DISTRIBUTED = {"DEEPSPEED", "MEGATRON_LM"}  # accelerate's DistributedType values


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
    return steps_for_rows(packed.input_ids.size(0), cfg)


def train(examples: list[dict], model, tokenizer, cfg: TrainingConfig, out_dir: Path, seed: int = 0,
          on_checkpoint: Callable[[int, object], None] | None = None, log: Callable[[dict], None] | None = None,
          progress: bool = True, resume: bool = False) -> TrainResult:
    """Train on documents and/or transcripts; call `on_checkpoint(step, model)` at each checkpoint.

    resume=True continues from the newest complete checkpoint in out_dir (same data order, same
    optimizer and RNG state), so the final weights and metrics equal an uninterrupted run's; that
    checkpoint is handed to on_checkpoint again first (a kill may have come before its probes).

    Under `accelerate launch` each process trains its slice of every micro-batch. DDP: the main
    process saves and calls on_checkpoint while the others wait. FSDP (version 2): every process
    takes part in gathering each checkpoint's weights and optimizer state, the main process writes
    them, and on_checkpoint is not called (a forward pass of a sharded model needs all processes):
    the result says probe_after, and the caller probes the saved checkpoints once training is done.
    """
    from tqdm.auto import tqdm

    from annot.allocator import tune_allocator

    tune_allocator()  # idempotent; keeps step-to-step allocations from page-faulting again
    out_dir = Path(out_dir)
    seed_everything(seed)
    device = next(model.parameters()).device
    tok = tokenize_cached(examples, tokenizer, cfg)
    packed = pack(tok, cfg.seq_len, tokenizer.pad_token_id)
    rows = packed.input_ids.size(0)
    total = cfg.max_steps or steps_for_rows(rows, cfg)
    ckpts = checkpoint_steps(total, cfg.checkpoints)

    from accelerate import Accelerator

    from annot.errors import AnnotError

    # One process: a no-op. Under `accelerate launch` (DDP/FSDP), each process takes its slice of
    # every micro-batch and gradients are averaged across processes.
    launch_state()
    acc = Accelerator()
    rank, world = acc.process_index, acc.num_processes
    kind = str(getattr(acc.distributed_type, "value", acc.distributed_type))
    if kind in UNSUPPORTED_DISTRIBUTED:
        raise AnnotError(f"accelerate config: distributed_type {kind} is not supported by annot's driver; "
                         "use DDP (`accelerate launch --multi_gpu --num_processes N -m annot.cli run CONFIG`) "
                         "or FSDP2 (add `--use_fsdp --fsdp_version 2`)")
    sharded = kind == "FSDP"
    if sharded and not acc.is_fsdp2:
        raise AnnotError("accelerate config: fsdp_version 1 is not supported by annot's driver; "
                         "launch with `--use_fsdp --fsdp_version 2`")
    if cfg.batch_size % world:
        raise AnnotError(f"training.batch_size: {cfg.batch_size} is not divisible by the {world} processes; "
                         "make it a multiple")
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
    start, tokens_seen, loss_val = 0, 0, float("nan")
    tokens_loss = 0  # labels with a non-zero loss weight: what the model was actually trained to produce
    metrics_path = out_dir / "train_metrics.jsonl"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    found = _latest_resumable(out_dir) if resume else None
    if found:
        start, d = found
        state = _restore(model, opt, d, cfg.method, sharded)
        tokens_seen = state["tokens_seen"]
        tokens_loss = state.get("tokens_loss", 0)
        for _ in range(start * cfg.grad_accum):  # replay the data order up to the checkpoint
            next(it)
        kept = [l for l in metrics_path.read_text().splitlines() if l and json.loads(l)["step"] <= start] \
            if metrics_path.is_file() else []
        metrics_path.write_text("".join(l + "\n" for l in kept))
    model, opt = acc.prepare(model, opt)
    params = [p for p in model.parameters() if p.requires_grad]  # FSDP replaced them with sharded ones
    if found and sharded:
        _restore_sharded_optimizer(acc.unwrap_model(model), opt.optimizer, state, acc.is_main_process)
    device = acc.device
    main = acc.is_main_process
    metrics_f = metrics_path.open("a" if found else "w", encoding="utf-8") if main else open(os.devnull, "w")
    t0 = time.time()
    tokens_at_start = tokens_seen

    def checkpoint(step):
        model.eval()
        gathered = gather_sharded(acc.unwrap_model(model), opt.optimizer, cfg.method) if sharded and step else None
        if main:  # one process writes (and probes, unless sharded); the others wait for it
            save_checkpoint(acc.unwrap_model(model), opt, out_dir, step, cfg.method,
                            {"tokens_seen": tokens_seen, "tokens_loss": tokens_loss, "step": step}, gathered=gathered)
            _fault("ANNOT_FAULT_KILL_BEFORE_PROBES_AT_STEP", step)  # saved, not yet probed
            if on_checkpoint and not sharded:
                on_checkpoint(step, acc.unwrap_model(model))
        acc.wait_for_everyone()
        _fault("ANNOT_FAULT_KILL_AT_STEP", step)  # fault injection for resume tests: after the probes

    if 0 in ckpts and not found:
        checkpoint(0)
    if found and on_checkpoint and not sharded:
        # The interruption may have cut the resumed checkpoint's probes: redo them exactly where an
        # uninterrupted run did (same weights, RNG restored to the saved state, before the next step).
        model.eval()
        if main:
            on_checkpoint(start, acc.unwrap_model(model))
        acc.wait_for_everyone()
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(start + 1, total + 1):
        model.train()
        lr = lr_at(step - 1, cfg, total)
        for group in opt.param_groups:
            group["lr"] = lr
        micro = [next(it) for _ in range(cfg.grad_accum)]
        # Normalise by the weight of the whole optimizer step, so accumulation == one big batch.
        denom = sum(float(packed.weights[idx].sum()) for idx in micro)
        loss_sum = 0.0
        for idx in micro:
            tokens_seen += int(idx.numel() * cfg.seq_len)
            tokens_loss += int((packed.weights[idx] > 0).sum())
            mine = idx[rank::world]  # this process's rows (all of them with one process)
            weights = packed.weights[mine]
            short = -(-idx.numel() // world) - mine.numel()
            if short:  # a short last batch: every process must run a forward, so pad with weight-0 rows
                mine = torch.cat([mine, idx[:short]])
                weights = torch.cat([weights, torch.zeros_like(packed.weights[idx[:short]])])
            batch = {k: getattr(packed, k)[mine].to(device) for k in ("input_ids", "position_ids")}
            logits = model(**batch, use_cache=False).logits
            s, _ = weighted_ce(logits, packed.labels[mine].to(device), weights.to(device))
            # x world: DDP averages gradients over processes, and each holds only its share of the sum
            acc.backward(s / max(denom, 1.0) * world)
            loss_sum += float(s.detach())
        if world > 1:
            loss_sum = float(acc.reduce(torch.tensor(loss_sum, device=device), reduction="sum"))
        acc.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_val = loss_sum / max(denom, 1.0)
        if not math.isfinite(loss_val):
            bar.close()
            metrics_f.close()
            from annot.errors import RunFailed

            raise RunFailed(f"training: the loss is {loss_val} at step {step}; the run stopped and is not complete "
                            "(lower training.lr or lora_alpha, or check the model's weights)")
        elapsed = time.time() - t0
        row = {"step": step, "loss": round(loss_val, 6), "lr": lr, "tokens": tokens_seen, "tokens_loss": tokens_loss,
               "tokens_per_s": round((tokens_seen - tokens_at_start) / max(elapsed, 1e-9), 1)}
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
    return TrainResult(total, ckpts, tokens_seen, loss_val, time.time() - t0, processes=world,
                       probe_after=sharded, tokens_loss=tokens_loss)
