"""(a) of `annot bench`: training throughput of annot's driver and of a plain transformers.Trainer.

    result = train_pair(make_model, tokenizer, bench_corpus(claim, 32), cfg, work, peak, print, "pretrained", memory)

Both engines train the same documents with the same LoRA config, batch size, steps and optimizer;
steps after WARMUP_STEPS are timed (annot's checkpoint saves excluded) and turned into tokens/s and
MFU by annot.bench.clock.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
from pathlib import Path
from typing import Callable

from annot.allocator import malloc_in_use, wanted_malloc
from annot.bench.clock import StepClock, model_flops, throughput, train_flops_per_token
from annot.bench.machine import reset_peak_rss, rss_mib, window_peak_rss_mib
from annot.bench.settings import SEED, WARMUP_STEPS, WRAPPER


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
                               f"expected {rows} rows); update annot.bench.training.annot_step_batches")
        prev = logged[step]
    flops = model_flops(prepared["model"], cfg.seq_len)
    tokens = {k: real for k, (_, real) in enumerate(batches, 1)}
    steps = clock.steps(WARMUP_STEPS + 1, cfg.max_steps, tokens,
                        {k: t * flops["per_token"] for k, t in tokens.items()})
    padding = int(packed.doc_ids.numel() - real_per_row.sum())
    return {**throughput(steps, peak), "packed_rows": int(packed.input_ids.size(0)), "padding_tokens": padding,
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
    return {**throughput(steps, peak), "sequences": len(data), "truncated": sum(len(ids) + 1 > max_len for ids in enc),
            "max_len": max_len, "padded_lengths": [L for _, L, _ in per_step.values()],
            "padding_share": 1 - sum(r for r, _, _ in timed) / sum(n * L for _, L, n in timed),
            "document_tokens": {"min": min(lengths), "median": sorted(lengths)[len(lengths) // 2],
                                "max": max(lengths)}}


# annot's driver as it was before the memory work (issue #22): the whole batch in one forward, the
# [tokens, vocabulary] logits built for the loss, the MLP's own forward. Its figures are the ones the
# memory work must not lose more than 5% of; it runs in the same process, beside the others.
BEFORE_ENV = {"ANNOT_FUSED_LOSS": "0", "ANNOT_LEAN_MLP": "0"}


@contextlib.contextmanager
def _env(overrides: dict):
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def annot_engines(cfg) -> list[tuple[str, object, dict]]:
    """(name, training config, environment) of each annot engine: as configured (`annot`), the whole
    batch at once with today's driver when that differs, and the driver before the memory work."""
    whole = cfg.model_copy(update={"micro_batch_tokens": None})
    engines = [("annot", cfg, {})]
    if cfg.micro_batch_tokens:
        engines.append(("annot_whole_batch", whole, {}))
    engines.append(("annot_before", whole, BEFORE_ENV))
    return engines


def _median_run(results: list[dict]) -> dict:
    """The repeat with the median tokens/s (the lower of the two middle ones), carrying every
    repeat's tokens/s and the highest peak RSS of all (memory is judged by its worst repeat)."""
    ranked = sorted(results, key=lambda r: r["tokens_per_s"])
    out = dict(ranked[(len(ranked) - 1) // 2])
    rss = [r.get("peak_rss_mib") for r in results]
    out["repeats_tokens_per_s"] = [r["tokens_per_s"] for r in results]
    out["repeats_peak_rss_mib"] = rss
    out["peak_rss_mib"] = None if None in rss else max(rss)
    return out


def train_pair(make_model: Callable, tokenizer, examples, cfg, work: Path, peak: dict, echo, label: str,
               memory: dict, repeats: int = 1, spec: dict | None = None) -> dict:
    """(a) + (b) for every engine, each on a fresh model from make_model(): annot's driver as
    configured (micro-batches of training.micro_batch_tokens), the whole batch at once, the driver
    before the memory work (annot_engines), and a plain transformers.Trainer. Each engine's peak RSS is
    measured in a window of its own (`memory["peak_rss_mib_engine"]`). With repeats > 1 the annot
    engines run that many rounds, every other round in reverse order (so no engine always runs first
    or last); each reports its median round (tokens/s of every round kept) and its highest peak RSS,
    and `vs_before` gives the ratio of medians and the ratio within each round.

    With `spec` ({model, dtype, init, seed}: how to build the model in another process) every annot
    engine trains in a process of its own (annot.bench.isolated): its peak RSS is that process's,
    and it runs under the allocator of its time, the `annot` command's (ANNOT_MALLOC) for today's
    engines and glibc's for the driver before the memory work. Without it they train here, one after
    another."""
    import torch

    cuda = torch.cuda.is_available()
    engine_peak = memory.setdefault("peak_rss_mib_engine", {})
    runs: dict[str, list] = {}
    engines = annot_engines(cfg)
    for rnd in range(repeats):
        for name, c, env in (engines if rnd % 2 == 0 else engines[::-1]):
            gc.collect()
            windowed = reset_peak_rss()
            echo(f"{label}: training {c.max_steps} steps with annot's driver "
                 f"(micro_batch_tokens {c.micro_batch_tokens}{', as before the memory work' if env else ''})"
                 + (" in a process of its own" if spec is not None else "")
                 + (f", round {rnd + 1} of {repeats}" if repeats > 1 else "") + " ...")
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            folder = work / (f"{label}-{name}" + (f"-r{rnd + 1}" if rnd else ""))  # round 1's checkpoints get probed
            if spec is not None:
                from annot.bench.isolated import run_engine_process

                malloc = "glibc" if name == "annot_before" else wanted_malloc()
                res, flops = run_engine_process({**spec, "examples": examples, "training": c.model_dump(),
                                                 "peak": peak}, env, malloc, folder)
                if cuda:
                    memory["cuda_max_allocated_mib"][f"{label}_{name}_train"] = res["cuda_max_allocated_mib"]
                runs.setdefault(name, []).append((res, flops))
                continue
            with _env(env):
                res, flops = time_annot_train(make_model(), tokenizer, examples, c, folder, peak)
            if cuda:
                memory["cuda_max_allocated_mib"][f"{label}_{name}_train"] = torch.cuda.max_memory_allocated() / 2 ** 20
            memory["peak_rss_mib_after"][f"{label}_{name}_train"] = rss_mib(resource.RUSAGE_SELF)
            res["peak_rss_mib"] = window_peak_rss_mib() if windowed else None
            res["malloc"] = malloc_in_use()
            runs.setdefault(name, []).append((res, flops))
    flops = runs["annot"][0][1]  # the model's FLOPs per token: the same in every round
    rounds = {name: [r for r, _ in rs] for name, rs in runs.items()}
    out = {name: _median_run(rs) for name, rs in rounds.items()}
    for name, res in out.items():
        engine_peak[f"{label}_{name}"] = res["peak_rss_mib"]
    annot_res = out["annot"]
    gc.collect()
    windowed = reset_peak_rss()
    echo(f"{label}: training {cfg.max_steps} steps with transformers.Trainer ...")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with _env({"ANNOT_LEAN_MLP": "0"}):  # the stock MLP forward
        trainer_res = time_trainer(make_model(), tokenizer, examples, cfg, work / f"{label}-trainer", peak)
    if cuda:
        memory["cuda_max_allocated_mib"][f"{label}_trainer"] = torch.cuda.max_memory_allocated() / 2 ** 20
    engine_peak[f"{label}_trainer"] = window_peak_rss_mib() if windowed else None
    trainer_res["peak_rss_mib"] = engine_peak[f"{label}_trainer"]
    trainer_res["malloc"] = malloc_in_use()
    gc.collect()
    memory["peak_rss_mib_after"][f"{label}_trainer_train"] = rss_mib(resource.RUSAGE_SELF)
    before = out["annot_before"]
    return {**out, "trainer": trainer_res, "flops_per_token": flops,
            "micro_batch_tokens": cfg.micro_batch_tokens,
            "vs_before": {"tokens_per_s": annot_res["tokens_per_s"] / before["tokens_per_s"],
                          "tokens_per_s_normalised": annot_res["tokens_per_s_normalised"]
                          / before["tokens_per_s_normalised"],
                          "per_round": [a["tokens_per_s"] / b["tokens_per_s"]
                                        for a, b in zip(rounds["annot"], rounds["annot_before"])]},
            "repeats": repeats,
            "speed_ratio": annot_res["tokens_per_s_normalised"] / trainer_res["tokens_per_s_normalised"],
            "speed_ratio_raw": annot_res["tokens_per_s"] / trainer_res["tokens_per_s"]}
