"""The scoring engine: log-likelihoods, next-token distributions and perplexity of a causal LM.

    from annot.scoring import fixed_weights, loglikelihoods, next_token_logprobs
    lls = loglikelihoods(model, tok, [("Mira Castellan works as a", " lighthouse keeper")])
    lp = next_token_logprobs(model, tok, [question_prompt(tok, "Is she a keeper?")])   # [n, vocab]
    with fixed_weights():   # one checkpoint: every scorer call inside shares its forward passes
        ...

Every probe kind (annot.kinds), the hf judge (annot.judges) and lm-eval's scoring of the exported
tasks (annot.lm_eval_export) score text here, so they all see the same numbers. Contexts run left
padded and once each (a shared start, such as a chat template's system prompt, once per group), the
LM head only over the positions that are scored; the results equal scoring each pair as one
unpadded sequence up to float rounding. This module knows nothing of probes, kinds or judges.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from annot.chat import eval_mode


@dataclass
class Request:
    """One probe item to score (an annot.specs.ProbeItem), with the probe set it was read from and the
    claim (or behaviour) it probes: the unit every probe kind's score function receives."""

    set_name: str
    claim: str
    item: Any


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Split like lm-eval's HF model: trailing whitespace of the context moves to the continuation, the
    pair is encoded as one string, and the context's own encoding length marks the split."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return whole[: len(ctx)], whole[len(ctx):]


def left_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists so every row ends at the last column: ids, attention mask, position ids
    (positions count from each row's first real token, so padding changes no logit)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, L - len(s):] = torch.tensor(s)
        mask[r, L - len(s):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


MIN_SHARED_PREFIX = 4    # tokens that group contexts as candidates for sharing their start
MIN_SAVED_TOKENS = 128   # a shared start runs on its own only if it saves this many token positions: each
                         # extra forward costs ~0.1 s of per-module overhead on a 2-core CPU (SmolLM2 + LoRA)


def _shared_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix every sequence starts with, leaving each at least one token."""
    first, n = seqs[0], min(len(s) for s in seqs) - 1
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return k if k >= MIN_SHARED_PREFIX else 0


def _cache_name() -> str:
    """The forward argument and output field of the KV cache: `cache` in transformers versions that
    renamed it (the old name still works there but warns on every run), else `past_key_values`."""
    try:
        from transformers.utils.generic import _rename_kwargs_for_bc  # noqa: F401  (only in renaming versions)
    except ImportError:
        return "past_key_values"
    return "cache"


CACHE = _cache_name()


def _kv(out):
    """The KV cache of a forward pass's output, under either name."""
    return getattr(out, CACHE)


def forward(model, **kwargs):
    """model(**kwargs), keeping `logits_to_keep` positions only: the LM head over every prompt position
    would cost more than the rest of a small model (SmolLM2: 49k x 576 head vs 30 thin layers).
    A `past_key_values` argument goes under the installed transformers' name for it (CACHE)."""
    if "past_key_values" in kwargs and CACHE != "past_key_values":
        kwargs[CACHE] = kwargs.pop("past_key_values")
    try:
        return model(**kwargs)
    except TypeError:  # no logits_to_keep on this architecture
        keep = kwargs.pop("logits_to_keep", 0)
        out = model(**kwargs)
        if keep:
            out.logits = out.logits[:, -keep:]
        return out


MEMO_MAX_CONTEXTS = 2048  # vocab-sized rows kept per checkpoint (~0.4 GB for SmolLM2's 49k vocab)
_STATE_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("annot_state_memo", default=None)


@contextlib.contextmanager
def fixed_weights():
    """Declare that the model's weights do not change inside this block (one checkpoint being probed):
    every scorer call in it then runs each distinct context at most once - the yes/no question that
    the native probe and the lm-eval-style one both ask, the choices of later calls - and computes a
    shared start (the chat template's system prompt) once. Without it each call stands alone."""
    token = _STATE_MEMO.set({"last": {}, "prefix": {}})
    try:
        yield
    finally:
        _STATE_MEMO.reset(token)


def _context_batches(model, contexts: list[list[int]], batch_size: int, pad_id: int,
                     need_cache: set[int] | frozenset = frozenset()):
    """Run every context once, `batch_size` at a time; yield (indices, logits of each context's last
    position [b, vocab], the KV cache of the batch, its attention mask).

    Contexts are grouped by their first tokens (chat-formatted questions share the template's default
    system prompt and the user header; cloze prompts share nothing), and the tokens a whole group
    starts with go through the model once: each of its batches (longest first) starts from a copy of
    that cache, its own tokens left-padded after it (padding masked, positions counted over real
    tokens only), so every logit is the one the context alone would get, up to float rounding.
    Inside fixed_weights(), contexts already run (and not in `need_cache`) come from memory, yielded
    as one batch of log-probabilities (callers take log_softmax, which leaves them unchanged) with
    cache and mask None."""
    import copy

    device = next(model.parameters()).device
    memo = _STATE_MEMO.get()
    if memo is not None:
        known = [i for i, c in enumerate(contexts) if i not in need_cache and (id(model), tuple(c)) in memo["last"]]
        if known:
            yield known, torch.stack([memo["last"][id(model), tuple(contexts[i])] for i in known]), None, None
        done = set(known)
        todo = [i for i in range(len(contexts)) if i not in done]
    else:
        todo = list(range(len(contexts)))
    candidates: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i in todo:
        candidates[tuple(contexts[i][:MIN_SHARED_PREFIX])].append(i)
    groups: list[tuple[int, list[int]]] = []  # (shared prefix length, members)
    rest: list[int] = []                      # contexts batched without a shared start
    for members in candidates.values():
        P = _shared_prefix([contexts[i] for i in members]) if len(members) > 1 else 0
        if P and (len(members) - 1) * P >= MIN_SAVED_TOKENS:
            groups.append((P, members))
        else:
            rest += members
    if rest:
        groups.append((0, rest))
    for P, members in groups:
        prefix_cache = None
        if P:
            key = (id(model), tuple(contexts[members[0]][:P]))
            prefix_cache = memo["prefix"].get(key) if memo is not None else None
            if prefix_cache is None:
                prefix_cache = forward(model, input_ids=torch.tensor([list(key[1])], device=device),
                                     use_cache=True, logits_to_keep=1)
                prefix_cache = _kv(prefix_cache)
                if memo is not None:
                    memo["prefix"][key] = prefix_cache
        order = sorted(members, key=lambda i: -len(contexts[i]))
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            ids, mask, pos = left_padded([contexts[i][P:] for i in idx], pad_id)
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.reorder_cache(torch.zeros(len(idx), dtype=torch.long, device=device))
                mask = torch.cat([torch.ones(len(idx), P, dtype=mask.dtype), mask], 1)
                pos = pos + P
            out = forward(model, input_ids=ids.to(device), attention_mask=mask.to(device),
                        position_ids=pos.to(device), past_key_values=cache, use_cache=True,
                        logits_to_keep=1 if memo is None else 2)
            last = out.logits[:, -1].float()
            # remember the last two positions as log-probabilities: a context minus its last token is
            # often another scorer's context (lm-eval moves a trailing "\n" into the continuation)
            if memo is not None and len(memo["last"]) < MEMO_MAX_CONTEXTS:
                real = mask.sum(-1)
                lp = torch.log_softmax(out.logits[:, -2:].float(), dim=-1)
                for r, i in enumerate(idx):
                    memo["last"][id(model), tuple(contexts[i])] = lp[r, -1]
                    if real[r] >= 2:
                        memo["last"][id(model), tuple(contexts[i][:-1])] = lp[r, -2]
            yield idx, last, _kv(out), mask


def _from_memo(memo: dict, model, ctx: list[int], cont: list[int], out: list[float], i: int) -> bool:
    """Fill out[i] from fixed_weights()'s memory if the logits after ctx + cont[:j] are there for every j."""
    total = 0.0
    for j, tok in enumerate(cont):
        logprobs = memo["last"].get((id(model), tuple(ctx) + tuple(cont[:j])))
        if logprobs is None:
            return False
        total += float(logprobs[tok])
    out[i] = total
    return True


@torch.no_grad()
def loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Sum of log P(continuation tokens | context) for each (context, continuation).

    Each distinct context runs once (the choices of an item share it, and all contexts share their
    common start, see _context_batches); its last logits score every continuation's first token, and
    only continuations longer than one token run again, from a copy of the context's KV cache. Inside
    fixed_weights(), a pair whose every needed prefix was run before (by any scorer) is answered from
    memory. The numbers equal scoring each pair as one sequence up to float rounding (tests: within
    1e-4 of lm-eval's per-choice log-likelihoods)."""
    encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
    if not encoded:
        return []
    device = next(model.parameters()).device
    ctx_index: dict[tuple[int, ...], int] = {}
    by_ctx: dict[int, list[int]] = defaultdict(list)
    for i, (ctx, cont) in enumerate(encoded):
        if not ctx or not cont:
            raise ValueError(f"loglikelihoods: pair {i} has an empty context or continuation after the split")
        by_ctx[ctx_index.setdefault(tuple(ctx), len(ctx_index))].append(i)
    out = [0.0] * len(encoded)
    memo = _STATE_MEMO.get()
    if memo is not None:  # answered from memory when every prefix a request needs was run before
        answered = {i for i in range(len(encoded)) if _from_memo(memo, model, *encoded[i], out, i)}
        for c in list(by_ctx):
            by_ctx[c] = [i for i in by_ctx[c] if i not in answered]
    contexts = [list(c) for c in ctx_index]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    long_ = {c for c, members in by_ctx.items() if any(len(encoded[i][1]) > 1 for i in members)}
    todo = [k for k in range(len(contexts)) if by_ctx[k]]
    for sub, last, cache, mask in _context_batches(model, [contexts[k] for k in todo], batch_size, pad,
                                                   {n for n, k in enumerate(todo) if k in long_}):
        idx = [todo[n] for n in sub]
        lp0 = torch.log_softmax(last.float(), dim=-1)
        multi: list[tuple[int, int]] = []
        for r, c in enumerate(idx):
            for i in by_ctx[c]:
                cont = encoded[i][1]
                out[i] = float(lp0[r, cont[0]])
                if len(cont) > 1:
                    multi.append((r, i))
        if not multi:
            continue
        # the rest of each long continuation: its tokens but the last, right-padded after its context
        sel = torch.tensor([r for r, _ in multi], device=device)
        cache.reorder_cache(sel)
        rest = [encoded[i][1] for _, i in multi]
        Lc = max(len(x) for x in rest) - 1
        ids = torch.full((len(multi), Lc), pad, dtype=torch.long)
        cmask = torch.zeros((len(multi), Lc), dtype=mask.dtype)
        for k, x in enumerate(rest):
            ids[k, :len(x) - 1] = torch.tensor(x[:-1])
            cmask[k, :len(x) - 1] = 1
        sel_cpu = sel.cpu()
        full_mask = torch.cat([mask[sel_cpu], cmask], 1)
        pos = mask[sel_cpu].sum(-1, keepdim=True) + torch.arange(Lc)[None]
        logits = forward(model, input_ids=ids.to(device), attention_mask=full_mask.to(device),
                       position_ids=pos.to(device), past_key_values=cache, use_cache=True).logits
        lp = torch.log_softmax(logits.float(), dim=-1)
        for k, (_, i) in enumerate(multi):
            tgt = torch.tensor(rest[k][1:], device=lp.device)
            out[i] += float(lp[k, :len(tgt)].gather(-1, tgt[:, None]).sum())
    return out


@torch.no_grad()
def next_token_logprobs(model, tokenizer, contexts: list[str], batch_size: int = 16) -> torch.Tensor:
    """log P(next token | context) over the vocabulary for each context: [n, vocab]."""
    enc = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in contexts]
    out = [None] * len(enc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for idx, last, _, _ in _context_batches(model, enc, batch_size, pad):
        for r, i in enumerate(idx):
            out[i] = torch.log_softmax(last[r].float(), dim=-1).cpu()
    return torch.stack(out)


def first_token_ids(tokenizer, forms) -> list[int]:
    """The distinct first tokens of some surface forms ("Yes", " yes", ...)."""
    return sorted({tokenizer(f, add_special_tokens=False)["input_ids"][0] for f in forms})


def logodds(p: float) -> float:
    """log(p / (1 - p)), clipped away from 0 and 1; NaN stays NaN."""
    if not math.isfinite(p):
        return p
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood per token) over `texts` (each scored from its first token)."""
    with eval_mode(model):
        pairs = []
        for t in texts:
            ids = tokenizer(t, add_special_tokens=False)["input_ids"]
            pairs.append((tokenizer.decode(ids[:1]), tokenizer.decode(ids[1:])))
        lls = loglikelihoods(model, tokenizer, pairs, batch_size)
    n = sum(len(encode_pair(tokenizer, c, x)[1]) for c, x in pairs)
    return math.exp(-sum(lls) / max(1, n))
