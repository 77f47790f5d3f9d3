"""`annot bench`: (a)-(d) in one process on one corpus and model, printed and written as JSON.

    annot bench --model smollm2-135m --steps 6 --out bench.json
    result = run_bench(model="tiny-random", steps=3, checkpoints=3, lm_eval=False, out=Path("bench.json"))
"""

from __future__ import annotations

import json
import resource
import tempfile
from pathlib import Path

from annot.bench.clock import matmul_peak
from annot.bench.machine import machine_info, rss_mib
from annot.bench.probing import (compare_accuracies, lm_eval_executable, probe_with_annot, probe_with_lm_eval,
                                 saved_checkpoints)
from annot.bench.settings import KINDS, LM_EVAL_BATCH_SIZE, LR, PROBE_BATCH_SIZE, SEED, WARMUP_STEPS, WRAPPER
from annot.bench.summary import format_bench, jsonable
from annot.bench.training import bench_corpus, train_pair
from annot.errors import AnnotError


def run_bench(model: str = "smollm2-135m", claim: str = "mira_castellan_profession", n_docs: int = 32,
              steps: int = 9, batch_size: int = 4, seq_len: int = 256, checkpoints: int = 8, lm_eval: bool = True,
              out: Path = Path("bench.json"), echo=print, dtype: str = "auto",
              micro_batch_tokens: int | None = None, repeats: int = 1, isolate: bool = True) -> dict:
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
    if repeats < 1:
        raise AnnotError(f"bench: repeats: {repeats}; run the annot engines at least once")
    cfg = validate(TrainingConfig, {"max_steps": steps, "batch_size": batch_size, "seq_len": seq_len,
                                    "checkpoints": checkpoints, "lr": LR,
                                    "micro_batch_tokens": micro_batch_tokens or None}, "bench")
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
                   "dtype": dtype, "micro_batch_tokens": micro_batch_tokens or None, "train_dtype": str(train_dtype).removeprefix("torch."),
                   "out": str(out), "seed": SEED, "wrapper": WRAPPER, "timed_steps": steps - WARMUP_STEPS,
                   "training": cfg.model_dump(), "probe_batch_size": PROBE_BATCH_SIZE,
                   "lm_eval_batch_size": LM_EVAL_BATCH_SIZE, "repeats": repeats, "isolate": isolate},
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

        own = {"model": model, "dtype": dtype, "init": "pretrained", "seed": SEED} if isolate else None
        pair = train_pair(pretrained, tokenizer, examples, cfg, work, peak, echo, "pretrained", memory, repeats, own)
        result["flops_per_token"] = pair.pop("flops_per_token")
        result["train"] = pair

        if train_dtype == torch.bfloat16:  # on CUDA by default; on CPU with dtype="bfloat16"
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(model_path)

            def random_init():
                torch.manual_seed(SEED)
                return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to(device)

            own = {**own, "init": "random_init"} if isolate else None
            result["random_init_bf16"] = train_pair(random_init, tokenizer, examples, cfg, work, peak, echo,
                                                     "random_init", memory, repeats, own)

        ckpts = saved_checkpoints(work / "pretrained-annot")
        echo(f"probing {len(ckpts)} checkpoints with annot's engine ...")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        ours = probe_with_annot(model, claim, ckpts)
        if cuda:
            memory["cuda_max_allocated_mib"]["probe_annot"] = torch.cuda.max_memory_allocated() / 2 ** 20
        memory["peak_rss_mib_after"]["probe_annot"] = rss_mib(resource.RUSAGE_SELF)
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
    memory["peak_rss_mib"] = rss_mib(resource.RUSAGE_SELF)
    # getrusage's children figure is kept as asked for, but on Linux it includes this process's size at
    # the spawn (see run_sampling_rss); lm_eval_peak_rss_mib is the lm-eval runs' own peak
    memory["children_peak_rss_mib"] = rss_mib(resource.RUSAGE_CHILDREN) if lm_eval else None
    sampled = [v for v in (theirs or {}).get("peak_rss_mib", {}).values() if v is not None]
    memory["lm_eval_peak_rss_mib"] = max(sampled) if sampled else None
    if not cuda:
        memory["cuda_max_allocated_mib"] = None
    result["memory"] = memory
    write_json(out, jsonable(result))
    result = json.loads(json.dumps(jsonable(result)))  # the same figures as the file (str keys)
    echo(format_bench(result))
    echo(f"wrote {out}")
    return result
