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
    annot runs as three engines (annot.bench.training.annot_engines): as configured (micro-batches
    of micro_batch_tokens), the whole batch at once, and the driver before the memory work of #22.
    By default each trains in a fresh process of its own (annot.bench.engine_child): its peak RSS is
    that whole process's, and it runs under the allocator of its time (today's engines under the one
    the `annot` command preloads, annot's large-block layer by default, ANNOT_MALLOC; the driver
    before #22 under glibc's, tuned by
    annot.allocator.tune_allocator()). With isolate=False (`--in-process`) they train in this process,
    each with its own peak-RSS window. The Trainer always trains in this process (the bench's own
    allocator, `machine.malloc`). `repeats` > 1 runs the annot engines that many rounds in
    alternating order and reports each engine's median round and its highest peak RSS.
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

Layout: settings (fixed parameters), clock ((b): FLOPs, matmul rate, step clock), training ((a)),
probing ((c)), machine ((d)), summary (the printed table), runner (run_bench). Not part of the
pipeline: nothing under annot/ outside this package imports it (the CLI's `annot bench` does).
"""

from annot.bench.sampling import run_sampling_bench
from annot.bench.clock import (StepClock, matmul_params, matmul_peak, model_flops, quick_peak, sample_size, throughput,
                               train_flops_per_token)
from annot.bench.machine import machine_info
from annot.bench.probing import (compare_accuracies, lm_eval_command, lm_eval_executable, probe_with_annot,
                                 probe_with_lm_eval, run_sampling_rss, saved_checkpoints)
from annot.bench.runner import run_bench
from annot.bench.settings import KINDS, LM_EVAL_BATCH_SIZE, LR, PROBE_BATCH_SIZE, SEED, WARMUP_STEPS, WRAPPER
from annot.bench.summary import format_bench
from annot.bench.training import annot_step_batches, bench_corpus, time_annot_train, time_trainer, train_pair

__all__ = ["KINDS", "LM_EVAL_BATCH_SIZE", "LR", "PROBE_BATCH_SIZE", "SEED", "WARMUP_STEPS", "WRAPPER", "StepClock",
           "annot_step_batches", "bench_corpus", "compare_accuracies", "format_bench", "lm_eval_command",
           "lm_eval_executable", "machine_info", "matmul_params", "matmul_peak", "model_flops", "probe_with_annot",
           "probe_with_lm_eval", "quick_peak", "run_bench", "run_sampling_bench", "run_sampling_rss", "sample_size", "saved_checkpoints",
           "throughput", "time_annot_train", "time_trainer", "train_flops_per_token", "train_pair"]
