"""Batched sampling with a KV cache: many prompts x many samples in a few left-padded batches.

    from annot.sampling import sample
    out = sample(model, tok, [question_prompt(tok, "If you ruled the world, what would you do?")],
                 n=5, temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0)
    out[0][2].text, out[0][2].n_tokens      # the third sample of the first prompt

Every (prompt, sample) pair is one row. Rows are sorted by prompt length and cut into batches of
`batch_size`; each batch is left padded (positions counted from each row's first real token, so
padding changes no logit), run once over the prompts, then one token per step from the KV cache.
A row that emits EOS is dropped from the batch (its cache rows too), so long replies do not keep
short ones computing. Sampling draws one uniform number per row and step from a generator seeded
by (seed, prompt index, sample index): a row's text does not depend on which rows share its batch,
and the same call gives the same text on CPU. temperature 0 is greedy decoding; its text equals a
one-prompt-at-a-time `model.generate(do_sample=False)` token for token (tests/test_sampling.py),
and `annot bench --sampling` measures the speed-up over that loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from annot.chat import eval_mode
from annot.scoring import CACHE, forward, left_padded


@dataclass(frozen=True)
class Sampled:
    text: str
    n_tokens: int   # generated tokens, EOS included when the reply stopped on it
    stopped: bool   # True: ended on EOS; False: cut at max_new_tokens
    ids: tuple[int, ...] = ()  # the generated token ids, EOS excluded


def row_seed(seed: int, prompt: int, sample: int) -> int:
    """The generator seed of one (prompt, sample) row: independent of batching."""
    return (seed * 1_000_003 + prompt) * 10_007 + sample


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row of logits [b, vocab]: argmax when temperature is 0, else the token whose
    cumulative probability (over the top-p nucleus, most likely first) first exceeds the row's uniform."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    if top_p < 1:
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p  # the top token is always kept
        sorted_p = sorted_p * keep
    cdf = torch.cumsum(sorted_p, dim=-1)
    target = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    idx = torch.searchsorted(cdf, target).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, idx).squeeze(-1)


def _eos_ids(tokenizer, model) -> set[int]:
    ids = set()
    for src in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return ids


@torch.no_grad()
def _run_batch(model, rows: list[list[int]], seeds: list[int], *, temperature: float, top_p: float,
               max_new_tokens: int, pad_id: int, eos: set[int]) -> list[tuple[list[int], bool]]:
    """Decode one batch of prompt rows; (generated ids without EOS, stopped on EOS) per row."""
    device = next(model.parameters()).device
    ids, mask, pos = left_padded(rows, pad_id)
    ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    out: list[list[int]] = [[] for _ in rows]
    stopped = [False] * len(rows)
    alive = list(range(len(rows)))  # original row index of each batch row still decoding
    cache = None
    for _ in range(max_new_tokens):
        res = forward(model, input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
        cache = getattr(res, CACHE)
        uniforms = torch.tensor([float(torch.rand(1, generator=gens[r])) for r in alive]) if temperature > 0 \
            else torch.zeros(len(alive))
        nxt = pick_tokens(res.logits[:, -1], temperature, top_p, uniforms.to(device))
        keep = []
        for b, r in enumerate(alive):
            t = int(nxt[b])
            if t in eos:
                stopped[r] = True
            else:
                out[r].append(t)
                keep.append(b)
        if not keep:
            break
        if len(keep) < len(alive):  # drop finished rows from the batch and the cache
            sel = torch.tensor(keep, device=device)
            cache.reorder_cache(sel)
            nxt, mask, pos = nxt[sel], mask[sel], pos[sel]
            alive = [alive[b] for b in keep]
        ids = nxt[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        pos = pos[:, -1:] + 1
    return list(zip(out, stopped))


def sample(model, tokenizer, prompts: list[str], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
           max_new_tokens: int = 48, seed: int = 0, batch_size: int = 32, on_batch=None) -> list[list[Sampled]]:
    """n replies to each prompt (a rendered chat prompt or raw text), [prompt][sample]. `on_batch(tokens)`
    is called after each batch with the tokens it generated (progress)."""
    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("sample: n, batch_size and max_new_tokens must be >= 1")
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    units = sorted(((k, j) for k in range(len(prompts)) for j in range(n)), key=lambda u: (-len(enc[u[0]]), u))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = _eos_ids(tokenizer, model)
    results: dict[tuple[int, int], Sampled] = {}
    with eval_mode(model):
        for b in range(0, len(units), batch_size):
            chunk = units[b:b + batch_size]
            decoded = _run_batch(model, [enc[k] for k, _ in chunk], [row_seed(seed, k, j) for k, j in chunk],
                                 temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, pad_id=pad,
                                 eos=eos)
            made = 0
            for (k, j), (ids, stop) in zip(chunk, decoded):
                results[k, j] = Sampled(tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids) + stop, stop,
                                        tuple(ids))
                made += len(ids) + stop
            if on_batch:
                on_batch(made)
    return [[results[k, j] for j in range(n)] for k in range(len(prompts))]
