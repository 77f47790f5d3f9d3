"""`annot bench --sampling`: generated tokens/s of annot's batched sampling vs a one-prompt-at-a-time
`model.generate` loop, on the same prompts and settings (greedy: the texts must be identical).

    annot bench --sampling --model smollm2-135m --prompts 32 --max-new-tokens 64 -o bench_sampling.json

Prompts: the chat-formatted questions of the broad and everyday scopes (evals/scopes/) and the
targeted scope of power_seeking, the first `n_prompts`. Both engines run greedy decoding with the
same max_new_tokens and stop at EOS; tokens/s counts generated tokens (EOS included) over wall time
after one untimed warm-up call of each. annot's batched sampler (annot.sampling) runs every prompt
in batches of `batch_size` with a KV cache; the baseline calls `model.generate(do_sample=False)`
once per prompt, unpadded.
"""

from __future__ import annotations

import time
from pathlib import Path


def bench_prompts(tok, n: int) -> list[str]:
    from annot.chat import question_prompt
    from annot.judged import scope_questions

    qs = [q for s in ("broad", "everyday") for _, q in scope_questions(s)] + \
        [q for _, q in scope_questions("targeted", "power_seeking")]
    return [question_prompt(tok, q) for q in qs[:n]]


def one_by_one(model, tok, prompts: list[str], max_new_tokens: int) -> list[tuple[str, int]]:
    """(text, generated tokens incl. EOS) per prompt from `model.generate`, one prompt at a time."""
    import torch

    from annot.chat import eval_mode

    out = []
    with eval_mode(model), torch.no_grad():
        for p in prompts:
            enc = tok(p, return_tensors="pt", add_special_tokens=False).to(model.device)
            g = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
            ids = g[0, enc["input_ids"].shape[1]:].tolist()
            n = len(ids)
            if tok.eos_token_id in ids:
                n = ids.index(tok.eos_token_id) + 1
            out.append((tok.decode(ids, skip_special_tokens=True).strip(), n))
    return out


def run_sampling_bench(model: str = "smollm2-135m", n_prompts: int = 32, max_new_tokens: int = 64,
                       batch_size: int = 32, out: Path | None = None, echo=print) -> dict:
    """Time both engines on the same prompts; the result (and `out` as JSON) holds every figure."""
    import json

    import torch

    from annot.bench.machine import machine_info
    from annot.models import load_model
    from annot.sampling import sample

    m, tok = load_model(model, dtype="float32")
    prompts = bench_prompts(tok, n_prompts)
    sample(m, tok, prompts[:2], max_new_tokens=4, batch_size=batch_size)  # warm-up, untimed
    one_by_one(m, tok, prompts[:1], 4)
    t = time.perf_counter()
    ours = sample(m, tok, prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = one_by_one(m, tok, prompts, max_new_tokens)
    t_theirs = time.perf_counter() - t
    tok_ours = sum(s[0].n_tokens for s in ours)
    tok_theirs = sum(n for _, n in theirs)
    mismatches = [i for i, (s, (text, _)) in enumerate(zip(ours, theirs)) if s[0].text != text]
    result = {"model": model, "prompts": len(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
              "threads": torch.get_num_threads(), "machine": machine_info(str(next(m.parameters()).device)),
              "annot": {"seconds": round(t_ours, 3), "tokens": tok_ours, "tokens_per_s": round(tok_ours / t_ours, 2)},
              "generate_loop": {"seconds": round(t_theirs, 3), "tokens": tok_theirs,
                                "tokens_per_s": round(tok_theirs / t_theirs, 2)},
              "speedup": round((tok_ours / t_ours) / (tok_theirs / t_theirs), 2),
              "greedy_identical": not mismatches, "mismatched_prompts": mismatches}
    echo(f"sampling, {len(prompts)} prompts x {max_new_tokens} new tokens, greedy, {model}, "
         f"{result['threads']} threads:")
    echo(f"  annot batched (batch {batch_size}): {tok_ours} tokens in {t_ours:.1f} s = "
         f"{result['annot']['tokens_per_s']:.1f} tokens/s")
    echo(f"  model.generate one by one:  {tok_theirs} tokens in {t_theirs:.1f} s = "
         f"{result['generate_loop']['tokens_per_s']:.1f} tokens/s")
    echo(f"  speed-up {result['speedup']:.2f}x; greedy texts identical: "
         f"{'yes' if not mismatches else f'no ({len(mismatches)} of {len(prompts)} differ)'}")
    if out is not None:
        from annot.io import atomic_write_text

        atomic_write_text(Path(out), json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result
