"""The training loss without the [tokens, vocab] logits: LM head and weighted cross-entropy in chunks.

    head = fused_head(model)                 # None: the model's logits are not decoder -> head
    if head is not None:
        hidden = head.decoder(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
        loss_sum = linear_cross_entropy(hidden, head.weight, head.bias, labels, weights)

A step on the default model (4 x 256 tokens, vocabulary 49,152) otherwise holds the logits, their
log-softmax (kept for the backward) and, in the backward, two gradients of that size: 4 x 192 MiB for
tensors that exist only to be reduced to one number per token. Here the head runs on a few hundred
tokens at a time; for each chunk the forward computes the loss *and* the gradient with respect to the
chunk's hidden states (softmax - one-hot, times the token's weight, times the head's weight matrix:
the same product the backward would do), so nothing of vocabulary size outlives its chunk and the
backward only scales the stored [tokens, hidden] gradient. No work is repeated: the head's matmul
runs once per token as before. A trainable head (full fine-tuning) gets its gradient summed the same
way; a frozen one (LoRA) gets none.

`fused_head` (one process; DDP/FSDP keep their wrapper's forward) checks on a few tokens that head(decoder(x)) reproduces the model's own logits: models
that scale, cap or post-process their logits (or hide the decoder) keep the plain path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

CHUNK_ELEMENTS = 1 << 23  # logits entries per chunk (32 MiB in fp32): 170 tokens of a 49k vocabulary


def chunk_tokens(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_t w_t * CE(hidden_t @ weight.T + bias, label_t), gradients computed during the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, weights):
        n = hidden.shape[0]
        step = chunk_tokens(weight.shape[0])
        want_w, want_b = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if want_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for i in range(0, n, step):
            h = hidden[i:i + step]
            logits = h @ weight.t()
            if bias is not None:
                logits = logits + bias
            logits = logits.float()
            y = labels[i:i + step].unsqueeze(1)
            w = weights[i:i + step].to(torch.float32)
            # one pass of exp: shift by the row max, CE = log(sum exp) - shifted logit of the label
            logits.sub_(logits.amax(dim=-1, keepdim=True))
            picked = logits.gather(1, y).squeeze(1)
            g = logits.exp_()
            norm = g.sum(dim=-1)
            total += ((norm.log() - picked) * w).sum()
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            # d(w * CE)/d logits = w * (softmax - onehot), built in place in the logits' buffer
            g.div_(norm.unsqueeze(1))
            g.scatter_add_(1, y, torch.full_like(y, -1.0, dtype=g.dtype))
            g.mul_(w.unsqueeze(1))
            g = g.to(hidden.dtype)
            if grad_h is not None:
                torch.mm(g, weight, out=grad_h[i:i + step])
            if grad_w is not None:
                grad_w.addmm_(g.t().float(), h.float())
            if grad_b is not None:
                grad_b += g.float().sum(0)
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.has = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        gh, gw, gb = (next(saved) if has else None for has in ctx.has)
        gh = gh * grad_out.to(gh.dtype) if gh is not None else None
        gw = (gw * grad_out).to(ctx.dtypes[0]) if gw is not None else None
        gb = (gb * grad_out).to(ctx.dtypes[1]) if gb is not None else None
        return gh, gw, gb, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * cross-entropy) of the head `hidden @ weight.T + bias` against `labels` (all positions:
    hidden [..., H], labels and weights [...]), without materialising the logits of all tokens."""
    h = hidden.reshape(-1, hidden.shape[-1])
    return _LinearCrossEntropy.apply(h, weight, bias, labels.reshape(-1), weights.reshape(-1))


@dataclass
class FusedHead:
    decoder: torch.nn.Module
    head: torch.nn.Linear

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.head.bias

    def loss_sum(self, batch: dict, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder(**batch, use_cache=False).last_hidden_state
        return linear_cross_entropy(hidden, self.weight, self.bias, labels, weights)


def fused_head(model, probe_ids: torch.Tensor | None = None) -> FusedHead | None:
    """The model's decoder and linear LM head when head(decoder(x)) equals its logits (checked on
    `probe_ids`, default a few token ids); None otherwise (the caller keeps the plain logits path).
    ANNOT_FUSED_LOSS=0 keeps the plain path (for comparisons, like ANNOT_FUSED_LORA)."""
    if os.environ.get("ANNOT_FUSED_LOSS", "1") == "0":
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if get_decoder is None or not isinstance(head, torch.nn.Linear):
        return None
    try:
        decoder = get_decoder()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or decoder is base:
        return None
    device = head.weight.device
    ids = probe_ids if probe_ids is not None else torch.arange(1, 9, device=device).unsqueeze(0) % head.out_features
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(input_ids=ids, use_cache=False).logits.float()
            got = head(decoder(input_ids=ids, use_cache=False).last_hidden_state).float()
    except (TypeError, ValueError, AttributeError, RuntimeError):
        return None
    finally:
        model.train(was_training)
    if not torch.isfinite(want).all():  # broken weights: the plain path (its loss check stops the run)
        return None
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-3, atol=1e-3 * float(want.abs().max()) + 1e-5):
        return None
    return FusedHead(decoder, head)
