"""FLOPs per token, the machine's matmul rate and the step clock: (b) of `annot bench`.

    flops = model_flops(model, seq_len=256)      # terms of C = 4 N_frozen + 6 N_trainable + attention
    peak = matmul_peak("cpu")                    # best square torch.mm rate, up front
    clock = StepClock("cpu")                     # times steps from callbacks, sampling the rate around each
    figures = throughput(clock.steps(3, 9, tokens, flops), peak)

See annot.bench for how these make the MFU figures.
"""

from __future__ import annotations

import time

PEAK_SIZES = {"cpu": (1024, 2048), "cuda": (2048, 4096, 8192)}
PEAK_REPS = 5
SAMPLE_SIZE, SAMPLE_REPS = 1024, 3  # the matmul-rate sample taken around every timed step (CPU)
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


def throughput(steps: list[dict], peak: dict) -> dict:
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
