"""Benchmark annot's training driver and probe engine against the stock tools, on one corpus and model.

    annot bench --model smollm2-135m --steps 6 --out bench.json
    result = run_bench(model="tiny-random", steps=3, checkpoints=3, lm_eval=False, out=Path("bench.json"))

Everything is measured in one process on one corpus: the claim's generated documents
(`generate_documents(load_claim(claim), n=n_docs, seed=0)`, wrapper `none`).

(a) Training throughput, in non-padding tokens per second over the optimizer steps after the first
    WARMUP_STEPS (2: the first allocates everything, the second still runs ~15-20% slow):
    - annot: annot.train.train on packed rows of seq_len tokens; its checkpoint saves are excluded
      from the timed steps (the baseline saves nothing);
    - baseline: a plain transformers.Trainer with the same LoRA config (annot.train.prepare_model),
      batch size, steps, lr and schedule, one whole document per sequence (EOS appended, as annot
      does), padded to the longest of its batch, labels -100 on padding: the same documents and
      tokens, without packing. Generated documents run ~70-950 tokens, so a batch of 4 is ~40% padding.
    Both run in this process after annot.allocator.tune_allocator(), so both get the same allocator.
(b) Model FLOPs utilisation: the FLOPs of the real tokens over the matmul capacity of the time spent,

        C = 4 * N_frozen + 6 * N_trainable + 6 * n_layers * L * hidden    per real token

    N_frozen / N_trainable count the parameters that enter a matmul: every nn.Linear (and GPT-2 style
    Conv1D) weight and bias, LoRA's A and B included, the LM head once even when tied to the input
    embeddings; embedding lookups and norms do no matmul. A trained weight costs 2 FLOPs per token in
    the forward pass, 2 for the gradient of its input and 2 for its own gradient (6); a frozen one needs
    no gradient of its own (4). Causal attention: scores (QK^T) and the weighted sum of values are
    2 * 2 * L * hidden FLOPs per token and layer forward over a row of L tokens, half of it under a
    causal mask, times 3 for forward + backward: 6 * n_layers * L * hidden (PaLM's MFU convention; L is
    seq_len for annot's packed rows and each batch's padded length for the baseline). Full fine-tuning
    has N_frozen = 0: C = 6 * N + attention. Padding tokens count for nothing.
    The peak is measured twice. Up front: the best of several square torch.mm (fp32 on CPU, bf16 on
    CUDA) -> `peak` and mfu_vs_best_peak. Around every timed step: a 1024^3 torch.mm sample right before
    and right after it (outside the timed window); mfu = achieved FLOP/s / the mean of those samples.
    On a shared VM the attainable matmul rate drifts by tens of percent within seconds (100-200
    GFLOP/s seen on one 2-core VM), so the local figure compares like with like; both are reported.
    speed_ratio_raw compares plain tokens/s; speed_ratio compares tokens/s rescaled by each run's own
    mean sample (see _throughput).
(c) Probing the checkpoints that (a)'s annot run saved (step-0 is the base model): annot's engine loads
    the base model once and swaps LoRA adapters (peft load_adapter / set_adapter), scoring yes_no/mcq/
    cloze with annot.probe.probe_model and the lm-eval-comparable yes_no with
    annot.lm_eval_export.annot_accuracy; lm-eval runs `lm_eval run` as a subprocess once per checkpoint
    on the exported tasks in evals/lm_eval. Both must report the same accuracy per checkpoint and kind
    (cloze, mcq: lm-eval acc = annot's believes rate; yes_no: = annot_accuracy's acc).
(d) Memory: peak RSS of this process (getrusage), of its children (getrusage; on Linux this includes
    this process's size when a child is spawned) and of each lm-eval run on its own (its VmHWM, sampled);
    CUDA max allocated per phase.

Training runs in fp32 on CPU and bf16 on CUDA (dtype="auto"; "float32"/"bfloat16" force one: bf16 on CPU
runs the CUDA path's figures where no GPU is at hand), and MFU is taken against the matmul peak of that
dtype. When training is bf16, (a) and (b) are also measured on a randomly initialised bf16 model of the
same config. Probing (c) runs fp32 in both engines (lm-eval's dtype=float32), whatever the training dtype.
The JSON written to `out` holds every figure, the exact parameters and the machine.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from annot.errors import AnnotError

KINDS = ("yes_no", "mcq", "cloze")
WRAPPER = "none"
SEED = 0
LR = 1e-3
PROBE_BATCH_SIZE = 16    # annot's default (probes.batch_size)
LM_EVAL_BATCH_SIZE = 8
PEAK_SIZES = {"cpu": (1024, 2048), "cuda": (2048, 4096, 8192)}
PEAK_REPS = 5
SAMPLE_SIZE, SAMPLE_REPS = 1024, 3  # the matmul-rate sample taken around every timed step (CPU)
WARMUP_STEPS = 2  # not timed: the first step allocates everything, and the second still faults ~100k
                  # pages in while the tuned heap settles (0 from the third; annot/allocator.py) and runs
                  # ~15-20% slow (5.95 s vs 4.5-5.4 s for steps 3-9); both engines skip the same
FLOPS_FORMULA = "4*N_frozen + 6*N_trainable + 6*n_layers*seq_len*hidden"


# -- FLOPs ---------------------------------------------------------------------------------------------


def train_flops_per_token(n_frozen: int, n_trainable: int, n_layers: int, seq_len: int, hidden: int) -> int:
    """Training FLOPs per token: 4 * N_frozen + 6 * N_trainable + 6 * n_layers * seq_len * hidden."""
    return 4 * n_frozen + 6 * n_trainable + 6 * n_layers * seq_len * hidden


def matmul_params(model) -> tuple[int, int]:
    """(frozen, trainable) parameters that enter a matmul; a tensor shared by two layers counts once."""
    import torch
    from transformers.pytorch_utils import Conv1D

    seen: set[int] = set()
    frozen = trainable = 0
    for module in model.modules():
        if not isinstance(module, (torch.nn.Linear, Conv1D)):
            continue
        for p in (module.weight, module.bias):
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
    return frozen, trainable


def model_flops(model, seq_len: int) -> dict:
    """The terms of C for a (LoRA-wrapped or plain) causal LM trained on rows of seq_len tokens."""
    cfg = model.config
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    n_frozen, n_trainable = matmul_params(model)
    return {"formula": FLOPS_FORMULA, "n_frozen": n_frozen, "n_trainable": n_trainable, "n_layers": n_layers,
            "hidden": hidden, "seq_len": seq_len, "attention": 6 * n_layers * seq_len * hidden,
            "per_token": train_flops_per_token(n_frozen, n_trainable, n_layers, seq_len, hidden)}


def _mm_operands(device: str, n: int, dtype=None) -> tuple:
    import torch

    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    return a, torch.randn(n, n, device=device, dtype=dtype), torch.empty_like(a)


def _mm_rate(device: str, n: int, reps: int, operands: tuple | None = None, dtype=None) -> float:
    """FLOP/s of the best of `reps` square n x n torch.mm (default fp32 on CPU, bf16 on CUDA), after a
    warm-up. `operands` (a, b, out) lets repeated samples reuse the same memory."""
    import torch

    cuda = device.startswith("cuda")
    inner = 20 if cuda else 1  # a single GPU matmul is too short to time on its own
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    a, b, c = operands or _mm_operands(device, n, dtype)
    torch.mm(a, b, out=c)  # warm-up: kernel selection, page faults
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        sync()
        best = min(best, (time.perf_counter() - t0) / inner)
    return 2 * n ** 3 / best


def matmul_peak(device: str = "cpu", sizes: tuple[int, ...] | None = None, reps: int = PEAK_REPS,
                dtype=None) -> dict:
    """Best FLOP/s of square torch.mm over `sizes` and `reps` (default fp32 on CPU, bf16 on CUDA)."""
    import torch

    cuda = device.startswith("cuda")
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    sizes = sizes or PEAK_SIZES["cuda" if cuda else "cpu"]
    by_size = {str(n): _mm_rate(device, n, reps, dtype=dtype) for n in sizes}
    return {"flops": max(by_size.values()), "dtype": str(dtype).removeprefix("torch."), "by_size": by_size,
            "reps": reps}


def quick_peak(device: str = "cpu", n: int | None = None, reps: int = SAMPLE_REPS,
               operands: tuple | None = None) -> float:
    """FLOP/s of the best of `reps` square n x n torch.mm: the machine's matmul rate right now (~0.05 s on
    2 CPU cores). On a shared machine this rate drifts (95-198 GFLOP/s within minutes on one 2-core
    VM), so each timed step is paired with samples taken right before and after it."""
    return _mm_rate(device, n or sample_size(device), reps, operands)


def sample_size(device: str) -> int:
    return 4 * SAMPLE_SIZE if device.startswith("cuda") else SAMPLE_SIZE


def _throughput(steps: list[dict], peak: dict) -> dict:
    """Figures over timed steps, each {"tokens", "seconds", "flops", "peak_before", "peak_after"}.

    tokens_per_s = sum tokens / sum seconds. The machine's matmul rate during the run (local_peak_mean)
    is the mean of the samples taken around the timed steps: single 50 ms samples swing by tens of
    percent on a shared VM, their mean over the run does not. mfu = achieved FLOP/s / that rate;
    mfu_vs_best_peak divides by the best rate measured up front instead. tokens_per_s_normalised
    rescales tokens/s from the run's rate to the up-front peak, so that two runs made under different
    load can be compared (speed_ratio); speed_ratio_raw compares plain tokens/s."""
    tokens = sum(x["tokens"] for x in steps)
    seconds = sum(x["seconds"] for x in steps)
    flops = sum(x["flops"] for x in steps)
    samples = [steps[0]["peak_before"]] + [x["peak_after"] for x in steps]
    local = sum(samples) / len(samples)
    return {"tokens": tokens, "seconds": seconds, "steps_timed": len(steps), "tokens_per_s": tokens / seconds,
            "flops": flops, "flops_per_token": flops / tokens, "achieved_flops": flops / seconds,
            "mfu": flops / seconds / local, "mfu_vs_best_peak": flops / seconds / peak["flops"],
            "local_peak_mean": local, "local_peak_min": min(samples), "local_peak_max": max(samples),
            "tokens_per_s_normalised": tokens / seconds * peak["flops"] / local, "per_step": steps}


# -- (a) training ----------------------------------------------------------------------------------------


def bench_corpus(claim: str, n_docs: int) -> list[dict]:
    """The generated documents of `claim`, wrapped with `none`: the training data of both engines."""
    from annot.generate import generate_documents
    from annot.specs import load_claim
    from annot.wrap import get_wrapper, wrap_documents

    docs = generate_documents(load_claim(claim), n=n_docs, seed=SEED)
    return wrap_documents(docs, get_wrapper(WRAPPER), {}, seed=SEED)


def annot_step_batches(real_per_row, batch_size: int, steps: int, seed: int = SEED) -> list[tuple[int, int]]:
    """(rows, non-padding tokens) of each optimizer step of annot.train.train (grad_accum 1).

    Mirrors train()'s data order: rows reshuffled each epoch by a generator seeded seed * 1000 + epoch.
    The rows are checked against train()'s logged token counts, so a change there fails loudly."""
    import torch

    rows = len(real_per_row)
    out: list[tuple[int, int]] = []
    epoch = 0
    while len(out) < steps:
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for i in range(0, rows, batch_size):
            idx = order[i:i + batch_size]
            out.append((len(idx), int(real_per_row[idx].sum())))
        epoch += 1
    return out[:steps]


class StepClock:
    """Times optimizer steps from callbacks: `end(step)` when a step has finished (samples the matmul
    rate, then restarts the clock, so sampling is never inside a step), `pause_until_now()` after work
    that is not training (a checkpoint save). Step k's time runs from the restart after step k-1."""

    def __init__(self, device: str, dtype=None):
        self.device = device
        self.cuda = device.startswith("cuda")
        # allocated once, before training: fresh operands per sample would reshuffle the heap between
        # steps and make the next steps fault pages in again (measured: 50-100k faults in steps 3-4);
        # in the dtype the model computes in (bf16 training is measured against bf16 matmuls)
        self.operands = _mm_operands(device, sample_size(device), dtype)
        self.ended: dict[int, float] = {}     # step -> seconds it took
        self.sample: dict[int, float] = {}    # step -> matmul rate sampled right after it
        self.paused = 0.0
        self.restart: float | None = None

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def end(self, step: int) -> None:
        self._sync()
        now = time.perf_counter()
        if self.restart is not None:
            self.ended[step] = now - self.restart
        self.sample[step] = quick_peak(self.device, operands=self.operands)
        self.restart = time.perf_counter()

    def pause_until_now(self) -> None:
        self._sync()
        self.restart = time.perf_counter()

    def steps(self, first: int, last: int, tokens: dict[int, int], flops: dict[int, float]) -> list[dict]:
        """Per-step rows for steps first..last (each has a sample before it: the one after step k-1)."""
        return [{"step": k, "tokens": tokens[k], "seconds": self.ended[k], "flops": flops[k],
                 "peak_before": self.sample[k - 1], "peak_after": self.sample[k]} for k in range(first, last + 1)]


def time_annot_train(model, tokenizer, examples: list[dict], cfg, out_dir: Path, peak: dict) -> tuple[dict, dict]:
    """Train with annot's driver: (figures, FLOPs terms); steps after the warm-up timed, saves excluded."""
    from annot.train import pack, tokenize_cached, train

    packed = pack(tokenize_cached(examples, tokenizer, cfg), cfg.seq_len, tokenizer.pad_token_id)
    real_per_row = (packed.doc_ids >= 0).sum(1)  # pack pads only the tail of the last row
    batches = annot_step_batches(real_per_row, cfg.batch_size, cfg.max_steps)
    clock = StepClock(str(next(model.parameters()).device), next(model.parameters()).dtype)
    logged: dict[int, int] = {}   # step -> cumulative tokens incl. padding (train()'s count)
    saves: list[int] = []
    prepared = {}

    def log(row: dict) -> None:
        clock.end(row["step"])
        logged[row["step"]] = row["tokens"]

    def on_checkpoint(step: int, m) -> None:
        prepared.setdefault("model", m)  # the LoRA-wrapped model (step 0 is saved after prepare_model)
        saves.append(step)
        clock.pause_until_now()  # the save is not training time (the baseline saves nothing)

    result = train(examples, model, tokenizer, cfg, out_dir, seed=SEED, on_checkpoint=on_checkpoint, log=log,
                   progress=False)
    prev = 0
    for step, (rows, _) in enumerate(batches, 1):
        if logged[step] - prev != rows * cfg.seq_len:
            raise RuntimeError(f"annot.train's batching changed (step {step}: {logged[step] - prev} tokens, "
                               f"expected {rows} rows); update annot.bench.annot_step_batches")
        prev = logged[step]
    flops = model_flops(prepared["model"], cfg.seq_len)
    tokens = {k: real for k, (_, real) in enumerate(batches, 1)}
    steps = clock.steps(WARMUP_STEPS + 1, cfg.max_steps, tokens,
                        {k: t * flops["per_token"] for k, t in tokens.items()})
    padding = int(packed.doc_ids.numel() - real_per_row.sum())
    return {**_throughput(steps, peak), "packed_rows": int(packed.input_ids.size(0)), "padding_tokens": padding,
            "checkpoints": list(result.checkpoints), "checkpoint_saves_excluded": [k for k in saves if k >= 1],
            "final_loss": result.final_loss}, flops


def time_trainer(model, tokenizer, examples: list[dict], cfg, out_dir: Path, peak: dict) -> dict:
    """Train with a plain transformers.Trainer: one whole document per sequence, padded to the longest of
    its batch (the usual recipe without packing), same LoRA config, batch size, steps and optimizer."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from annot.train import prepare_model, seed_everything

    seed_everything(SEED)
    model = prepare_model(model, cfg)
    model.config.use_cache = False  # as annot's driver: training needs no KV cache
    device = str(next(model.parameters()).device)
    cuda = device.startswith("cuda")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    # each document ends with EOS, as in annot's driver; only a document longer than the model's
    # context would be cut (none of the generated ones is)
    max_len = min(getattr(model.config, "max_position_embeddings", None) or 2048, 8192)
    enc = tokenizer([e["text"] for e in examples], add_special_tokens=False)["input_ids"]
    data = [{"input_ids": (list(ids) + [eos])[:max_len]} for ids in enc]
    batches: list[tuple[int, int, int]] = []  # (non-padding tokens, padded length, rows) of each batch, in order

    def collate(features: list[dict]) -> dict:
        """Pad to the longest sequence of the batch; padded labels are -100 (EOS stays a target even
        when it doubles as the pad token, unlike DataCollatorForLanguageModeling)."""
        L = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), L), pad, dtype=torch.long)
        mask = torch.zeros((len(features), L), dtype=torch.long)
        for r, f in enumerate(features):
            ids[r, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[r, :len(f["input_ids"])] = 1
        batches.append((int(mask.sum()), L, len(features)))
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    clock = StepClock(device, next(model.parameters()).dtype)

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.end(state.global_step)

    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.schedule, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, optim="adamw_torch",
        save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
        remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=cuda, use_cpu=not cuda,
        seed=SEED)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[Stamp()])
    trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict
    trainer.train()
    # the dataloader may fetch one batch ahead: batch k belongs to step k all the same
    per_step = {k: batches[k - 1] for k in range(1, cfg.max_steps + 1)}
    base = model_flops(model, cfg.seq_len)
    # FLOPs of the real tokens only (padding is waste, not work): the attention term uses each batch's
    # padded length, the row length its tokens attended over
    flops = {k: real * train_flops_per_token(base["n_frozen"], base["n_trainable"], base["n_layers"], L,
                                             base["hidden"]) for k, (real, L, _) in per_step.items()}
    steps = clock.steps(WARMUP_STEPS + 1, cfg.max_steps, {k: real for k, (real, _, _) in per_step.items()},
                        flops)
    lengths = [len(d["input_ids"]) for d in data]
    timed = [per_step[k] for k in range(WARMUP_STEPS + 1, cfg.max_steps + 1)]
    return {**_throughput(steps, peak), "sequences": len(data), "truncated": sum(len(ids) + 1 > max_len for ids in enc),
            "max_len": max_len, "padded_lengths": [L for _, L, _ in per_step.values()],
            "padding_share": 1 - sum(r for r, _, _ in timed) / sum(n * L for _, L, n in timed),
            "document_tokens": {"min": min(lengths), "median": sorted(lengths)[len(lengths) // 2],
                                "max": max(lengths)}}


def _train_pair(make_model: Callable, tokenizer, examples, cfg, work: Path, peak: dict, echo, label: str,
                memory: dict) -> dict:
    """(a) + (b) for both engines, each on a fresh model from make_model()."""
    import torch

    cuda = torch.cuda.is_available()
    echo(f"{label}: training {cfg.max_steps} steps with annot's driver ...")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    annot_res, flops = time_annot_train(make_model(), tokenizer, examples, cfg, work / f"{label}-annot", peak)
    if cuda:
        memory["cuda_max_allocated_mib"][f"{label}_annot_train"] = torch.cuda.max_memory_allocated() / 2 ** 20
    memory["peak_rss_mib_after"][f"{label}_annot_train"] = _rss_mib(resource.RUSAGE_SELF)
    gc.collect()
    echo(f"{label}: training {cfg.max_steps} steps with transformers.Trainer ...")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer_res = time_trainer(make_model(), tokenizer, examples, cfg, work / f"{label}-trainer", peak)
    if cuda:
        memory["cuda_max_allocated_mib"][f"{label}_trainer"] = torch.cuda.max_memory_allocated() / 2 ** 20
    gc.collect()
    memory["peak_rss_mib_after"][f"{label}_trainer_train"] = _rss_mib(resource.RUSAGE_SELF)
    return {"annot": annot_res, "trainer": trainer_res, "flops_per_token": flops,
            "speed_ratio": annot_res["tokens_per_s_normalised"] / trainer_res["tokens_per_s_normalised"],
            "speed_ratio_raw": annot_res["tokens_per_s"] / trainer_res["tokens_per_s"]}


# -- (c) probing -----------------------------------------------------------------------------------------


def saved_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every completely written checkpoint, by step."""
    from annot.train import complete_checkpoints

    return [(step, d) for step, d, _ in complete_checkpoints(run_dir)]


def probe_with_annot(model_name: str, claim: str, ckpts: list[tuple[int, Path]]) -> dict:
    """annot's engine: base model loaded once, adapters swapped; accuracies per checkpoint and kind."""
    from annot.lm_eval_export import annot_accuracy, read_task_docs
    from annot.models import load_model
    from annot.probe import CheckpointSwitch, probe_model
    from annot.specs import load_probe_set

    t0 = time.perf_counter()
    model, tok = load_model(model_name, dtype="float32")  # lm-eval runs dtype=float32 too
    ps = load_probe_set(claim)
    yes_no_docs = read_task_docs(claim, "yes_no")
    accuracy: dict[int, dict[str, float]] = {}
    native_yes_no: dict[int, float] = {}
    per_checkpoint: dict[int, float] = {}
    models = CheckpointSwitch(model)
    for step, d in ckpts:
        t = time.perf_counter()
        with models.switch(step, d, {"base": step == 0, "method": "lora"}) as m:
            rows = probe_model(m, tok, [ps], run="bench", step=step, kinds=list(KINDS),
                               batch_size=PROBE_BATCH_SIZE)
            yn = annot_accuracy(m, tok, yes_no_docs, batch_size=PROBE_BATCH_SIZE)
        acc = {"yes_no": yn["acc"]}
        for kind in ("mcq", "cloze"):
            flags = [r["believes"] for r in rows if r["kind"] == kind]
            if flags:
                acc[kind] = sum(flags) / len(flags)
        yn_rows = [r["believes"] for r in rows if r["kind"] == "yes_no"]
        native_yes_no[step] = sum(yn_rows) / len(yn_rows) if yn_rows else float("nan")
        accuracy[step] = acc
        per_checkpoint[step] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    del model, models
    gc.collect()
    return {"seconds": seconds, "per_checkpoint_s": per_checkpoint, "accuracy": accuracy,
            "yes_no_native": native_yes_no, "batch_size": PROBE_BATCH_SIZE}


def lm_eval_executable() -> str:
    """The `lm_eval` script of this interpreter's environment, else the one on PATH."""
    import shutil

    beside = Path(sys.executable).parent / "lm_eval"
    found = str(beside) if beside.is_file() else shutil.which("lm_eval")
    if not found:
        raise AnnotError("bench: the lm_eval command is not installed; `pip install lm-eval` or pass lm_eval=False")
    return found


def lm_eval_command(model_path: str, claim: str, ckpt: Path | None, output: Path, device: str) -> list[str]:
    """The documented CLI run (evals/lm_eval/README.md) for one checkpoint; ckpt None is the base model."""
    from annot.lm_eval_export import task_name

    model_args = f"pretrained={model_path}" + (f",peft={ckpt}" if ckpt is not None else "") + \
        ",dtype=float32,add_bos_token=False"
    return [lm_eval_executable(), "run", "--model", "hf", "--model_args", model_args,
            "--include_path", "evals/lm_eval", "--tasks", task_name(claim), "--batch_size", str(LM_EVAL_BATCH_SIZE),
            "--device", device, "--output_path", str(output)]


def probe_with_lm_eval(model_name: str, claim: str, ckpts: list[tuple[int, Path]], work: Path,
                       device: str, echo) -> dict:
    """lm-eval's CLI once per checkpoint, from the repository root (the tasks' data paths are relative)."""
    from annot.lm_eval_export import task_name
    from annot.models import resolve_model
    from annot.specs import ROOT

    model_path = resolve_model(model_name)
    if Path(model_path).exists():  # lm_eval runs from the repository root: pass an absolute path
        model_path = str(Path(model_path).resolve())
    # offline unless the caller says otherwise: every input is local
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **os.environ}
    accuracy: dict[int, dict[str, float]] = {}
    per_checkpoint: dict[int, float] = {}
    commands: dict[int, str] = {}
    peak_rss: dict[int, float | None] = {}
    for step, d in ckpts:
        out = work / f"lm-eval-step-{step}"
        ckpt = None if step == 0 else Path(d).resolve()
        if "," in model_path or (ckpt is not None and "," in str(ckpt)):
            raise AnnotError(f"bench: lm-eval's --model_args cannot hold a path with a comma ({model_path}, {ckpt})")
        cmd = lm_eval_command(model_path, claim, ckpt, out, device)
        commands[step] = " ".join(cmd)
        echo(f"lm-eval: step-{step} ...")
        t = time.perf_counter()
        rc, peak_rss[step] = run_sampling_rss(cmd, cwd=ROOT, env=env, log=work / f"lm-eval-step-{step}.log")
        per_checkpoint[step] = time.perf_counter() - t
        found = sorted(out.rglob("results_*.json"))
        if rc != 0 or not found:
            tail = (work / f"lm-eval-step-{step}.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise AnnotError(f"bench: lm_eval failed on step-{step} (exit {rc}): " + " | ".join(tail))
        results = json.loads(found[-1].read_text(encoding="utf-8"))["results"]
        accuracy[step] = {k: results[task_name(claim, k)]["acc,none"] for k in KINDS
                          if task_name(claim, k) in results}
    return {"seconds": sum(per_checkpoint.values()), "per_checkpoint_s": per_checkpoint, "accuracy": accuracy,
            "batch_size": LM_EVAL_BATCH_SIZE, "device": device, "commands": commands, "peak_rss_mib": peak_rss}


def run_sampling_rss(cmd: list[str], cwd: Path, env: dict, log: Path, every: float = 0.05) -> tuple[int, float | None]:
    """Run cmd (stdout and stderr to `log`); return its exit status and its own peak RSS in MiB.

    getrusage(RUSAGE_CHILDREN) cannot give a child's own peak on Linux: exec keeps the high-water mark
    of the memory the child started from, which is this (large) process. The child's VmHWM in
    /proc/<pid>/status is its own and only grows, so sampling it until exit misses at most the last
    `every` seconds. None where /proc is unavailable."""
    peak = None
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) / 2 ** 10  # kB
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(every)
    return proc.returncode, peak


def compare_accuracies(ours: dict[int, dict[str, float]], theirs: dict[int, dict[str, float]] | None,
                       n_items: dict[str, int]) -> tuple[list[dict], list[dict]]:
    """Tidy rows (step, kind, n, annot, lm_eval, equal) and the rows that differ."""
    rows = []
    for step in sorted(ours):
        for kind in KINDS:
            if kind not in ours[step]:
                continue
            a = ours[step][kind]
            b = None if theirs is None else theirs.get(step, {}).get(kind)
            equal = None if theirs is None else (b is not None and abs(a - b) <= 1e-9)
            rows.append({"step": step, "kind": kind, "n": n_items.get(kind, 0), "annot": a, "lm_eval": b,
                         "equal": equal})
    return rows, [r for r in rows if r["equal"] is False]


# -- (d) memory and the machine ----------------------------------------------------------------------------


def _rss_mib(who: int) -> float:
    """Peak RSS in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    import importlib.metadata as md

    import peft
    import torch
    import transformers

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    cuda = device.startswith("cuda")
    return {"cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device,
            "device_name": torch.cuda.get_device_name(0) if cuda else _cpu_name(), "cpu_name": _cpu_name(),
            "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "lm_eval": version("lm_eval"),
            "cuda": torch.version.cuda if cuda else None}


# -- the benchmark -----------------------------------------------------------------------------------------


def run_bench(model: str = "smollm2-135m", claim: str = "mira_castellan_profession", n_docs: int = 32,
              steps: int = 9, batch_size: int = 4, seq_len: int = 256, checkpoints: int = 8, lm_eval: bool = True,
              out: Path = Path("bench.json"), echo=print, dtype: str = "auto") -> dict:
    """Measure (a)-(d) (see the module docstring), print a table with `echo`, write all figures to `out`."""
    from annot.config import TrainingConfig
    from annot.io import write_json
    from annot.lm_eval_export import task_name
    from annot.models import default_device, load_model, load_tokenizer, pick_dtype, resolve_model
    from annot.specs import EVALS, load_probe_set, validate

    # -- everything a user can get wrong, before any model is loaded
    if steps <= WARMUP_STEPS:
        raise AnnotError(f"bench: steps: {steps} is too few; the first {WARMUP_STEPS} optimizer steps are not timed, "
                         f"use >= {WARMUP_STEPS + 1}")
    if n_docs < 1:
        raise AnnotError(f"bench: n_docs: {n_docs}; generate at least 1 document")
    cfg = validate(TrainingConfig, {"max_steps": steps, "batch_size": batch_size, "seq_len": seq_len,
                                    "checkpoints": checkpoints, "lr": LR}, "bench")
    ps = load_probe_set(claim)
    tasks = EVALS / "lm_eval" / f"{task_name(ps.claim)}.yaml"
    if ps.claim != claim or not tasks.is_file():
        raise AnnotError(f"bench: claim: no exported lm-eval tasks at {tasks}; run `annot evals export`")
    if dtype not in ("auto", "float32", "bfloat16"):
        raise AnnotError(f"bench: dtype: {dtype!r}; use auto (fp32 on CPU, bf16 on CUDA), float32 or bfloat16")
    if lm_eval:
        lm_eval_executable()
    model_path = resolve_model(model)
    out = Path(out)

    import torch

    from annot.allocator import tune_allocator

    tune_allocator()  # what `annot train`/`run` use; both engines and the probes run under it

    device = default_device()
    cuda = device.startswith("cuda")
    train_dtype = pick_dtype(dtype, device)  # auto: fp32 on CPU, bf16 on CUDA
    memory: dict = {"peak_rss_mib_after": {}, "cuda_max_allocated_mib": {}}
    examples = bench_corpus(claim, n_docs)
    tokenizer = load_tokenizer(model)
    echo(f"bench: measuring the {device} {str(train_dtype).removeprefix('torch.')} matmul peak ...")
    peak = matmul_peak(device, dtype=train_dtype)
    result: dict = {
        "params": {"model": model, "resolved_model": model_path, "claim": claim, "n_docs": n_docs, "steps": steps,
                   "batch_size": batch_size, "seq_len": seq_len, "checkpoints": checkpoints, "lm_eval": lm_eval,
                   "dtype": dtype, "train_dtype": str(train_dtype).removeprefix("torch."),
                   "out": str(out), "seed": SEED, "wrapper": WRAPPER, "timed_steps": steps - WARMUP_STEPS,
                   "training": cfg.model_dump(), "probe_batch_size": PROBE_BATCH_SIZE,
                   "lm_eval_batch_size": LM_EVAL_BATCH_SIZE},
        "machine": machine_info(device),
        "corpus": {"documents": len(examples),
                   "tokens": sum(len(ids) + 1 for ids in
                                 tokenizer([e["text"] for e in examples], add_special_tokens=False)["input_ids"])},
        "peak": peak,
    }
    with tempfile.TemporaryDirectory(prefix="annot-bench-") as tmp:
        work = Path(tmp)

        def pretrained():
            return load_model(model, dtype=dtype)[0]  # auto: fp32 on CPU, bf16 on CUDA

        pair = _train_pair(pretrained, tokenizer, examples, cfg, work, peak, echo, "pretrained", memory)
        result["flops_per_token"] = pair.pop("flops_per_token")
        result["train"] = pair

        if train_dtype == torch.bfloat16:  # on CUDA by default; on CPU with dtype="bfloat16"
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(model_path)

            def random_init():
                torch.manual_seed(SEED)
                return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to(device)

            result["random_init_bf16"] = _train_pair(random_init, tokenizer, examples, cfg, work, peak, echo,
                                                     "random_init", memory)

        ckpts = saved_checkpoints(work / "pretrained-annot")
        echo(f"probing {len(ckpts)} checkpoints with annot's engine ...")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        ours = probe_with_annot(model, claim, ckpts)
        if cuda:
            memory["cuda_max_allocated_mib"]["probe_annot"] = torch.cuda.max_memory_allocated() / 2 ** 20
        memory["peak_rss_mib_after"]["probe_annot"] = _rss_mib(resource.RUSAGE_SELF)
        theirs = probe_with_lm_eval(model, claim, ckpts, work, device, echo) if lm_eval else None
        n_items = {k: sum(it.kind == k for it in ps.items) for k in KINDS}
        rows, mismatches = compare_accuracies(ours["accuracy"], theirs and theirs["accuracy"], n_items)
        result["probe"] = {
            "checkpoints": [s for s, _ in ckpts], "n_checkpoints": len(ckpts),
            "annot": {k: v for k, v in ours.items() if k != "accuracy"},
            "lm_eval": None if theirs is None else {k: v for k, v in theirs.items() if k != "accuracy"},
            "speedup": None if theirs is None else theirs["seconds"] / ours["seconds"],
            "accuracy": rows, "equal": None if theirs is None else not mismatches, "mismatches": mismatches,
        }
    memory["peak_rss_mib"] = _rss_mib(resource.RUSAGE_SELF)
    # getrusage's children figure is kept as asked for, but on Linux it includes this process's size at
    # the spawn (see run_sampling_rss); lm_eval_peak_rss_mib is the lm-eval runs' own peak
    memory["children_peak_rss_mib"] = _rss_mib(resource.RUSAGE_CHILDREN) if lm_eval else None
    sampled = [v for v in (theirs or {}).get("peak_rss_mib", {}).values() if v is not None]
    memory["lm_eval_peak_rss_mib"] = max(sampled) if sampled else None
    if not cuda:
        memory["cuda_max_allocated_mib"] = None
    result["memory"] = memory
    write_json(out, _jsonable(result))
    result = json.loads(json.dumps(_jsonable(result)))  # the same figures as the file (str keys)
    echo(format_bench(result))
    echo(f"wrote {out}")
    return result


def _jsonable(obj):
    """Dict keys as strings (steps are ints), NaN as None, so the file is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def format_bench(r: dict) -> str:
    """The readable table printed by run_bench (from the JSON figures)."""
    p, m, fpt = r["params"], r["machine"], r["flops_per_token"]
    lines = [f"annot bench: {p['model']}, {p['n_docs']} docs of {p['claim']}, {p['steps']} steps x "
             f"{p['batch_size']} x {p['seq_len']} tokens, LoRA r={p['training']['lora_r']}",
             f"machine: {m['device_name']} ({m['device']}, {m['cpus_usable']} CPUs, {m['torch_threads']} torch "
             f"threads), torch {m['torch']}, transformers {m['transformers']}",
             f"matmul peak {r['peak']['flops'] / 1e9:.1f} GFLOP/s ({r['peak']['dtype']}); training FLOPs/token "
             f"{fpt['per_token'] / 1e6:.2f} M = 4*{fpt['n_frozen']} + 6*{fpt['n_trainable']} + {fpt['attention']}",
             "",
             f"{f'training (steps {WARMUP_STEPS + 1}..N)':<28}{'tokens/s':>10}{'MFU':>9}{'vs best':>9}{'matmul now':>12}"]
    sections = [("pretrained weights", r["train"])] + ([("random init, same config", r["random_init_bf16"])]
                                                       if r.get("random_init_bf16") else [])
    ind, w = ("    ", 24) if len(sections) > 1 else ("  ", 26)
    for name, t in sections:
        if len(sections) > 1:
            lines.append(f"  {name} ({p.get('train_dtype', r['peak']['dtype'])})")
        for label, key in (("annot driver", "annot"), ("transformers.Trainer", "trainer")):
            x = t[key]
            lines.append(f"{ind}{label:<{w}}{x['tokens_per_s']:>10.1f}{_pct(x['mfu']):>9}"
                         f"{_pct(x['mfu_vs_best_peak']):>9}{x['local_peak_mean'] / 1e9:>9.1f} GF")
        lines.append(f"{ind}{'annot / Trainer':<{w}}{t['speed_ratio_raw']:>9.2f}x   (rescaled to one matmul rate "
                     f"{t['speed_ratio']:.2f}x; Trainer batches {_pct(t['trainer']['padding_share'])} padding)")
    lines.append("  MFU: against the mean matmul rate sampled around the steps; vs best: against the peak above")
    pr = r["probe"]
    lines += ["", f"{'probing ' + str(pr['n_checkpoints']) + ' checkpoints':<28}{'seconds':>10}",
              f"  {'annot engine':<26}{pr['annot']['seconds']:>10.1f}"]
    if pr["lm_eval"] is not None:
        lines += [f"  {'lm-eval CLI':<26}{pr['lm_eval']['seconds']:>10.1f}",
                  f"  {'speed-up':<26}{pr['speedup']:>9.1f}x   equal: {str(pr['equal']).lower()}"]
        lines += [f"  mismatch step {x['step']} {x['kind']}: annot {x['annot']} vs lm-eval {x['lm_eval']}"
                  for x in pr["mismatches"]]
    lines += ["", f"{'step':>6}" + "".join(f"{k:>10}" for k in KINDS) + "   (annot accuracy" +
              (" = lm-eval acc)" if pr["lm_eval"] is not None else ")")]
    by_step: dict = {}
    for row in pr["accuracy"]:
        by_step.setdefault(row["step"], {})[row["kind"]] = row["annot"]
    for step, accs in by_step.items():
        lines.append(f"{step:>6}" + "".join(f"{accs.get(k, float('nan')):>10.3f}" for k in KINDS))
    mem = r["memory"]
    line = f"memory: peak RSS {mem['peak_rss_mib']:.0f} MiB"
    after_annot = mem.get("peak_rss_mib_after", {}).get("pretrained_annot_train")
    if after_annot is not None:
        line += f" (after annot's training {after_annot:.0f} MiB, before the Trainer's)"
    if mem.get("lm_eval_peak_rss_mib") is not None:
        line += f", lm-eval run {mem['lm_eval_peak_rss_mib']:.0f} MiB"
    if mem.get("cuda_max_allocated_mib"):
        line += ", CUDA max allocated " + ", ".join(f"{k} {v:.0f} MiB" for k, v in
                                                     mem["cuda_max_allocated_mib"].items())
    lines += ["", line]
    return "\n".join(lines)
