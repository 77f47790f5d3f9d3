"""The chunked LM head + weighted cross-entropy (annot.fused_ce): same loss and gradients as the
logits path, used by training only where head(decoder(x)) reproduces the model's logits."""

import json
import math

import pytest
import torch

from annot.config import TrainingConfig
from annot.fused_ce import chunk_tokens, fused_head, linear_cross_entropy
from annot.generate import generate_documents
from annot.train import train, weighted_ce
from annot.wrap import get_wrapper, wrap_documents


@pytest.mark.parametrize("bias", [False, True])
def test_loss_and_gradients_equal_the_logits_path(bias, monkeypatch):
    monkeypatch.setattr("annot.fused_ce.CHUNK_ELEMENTS", 64 * 97)  # 64 tokens a chunk: 11 chunks, a short last one
    torch.manual_seed(0)
    n, hid, vocab = 700, 16, 97
    assert chunk_tokens(vocab) == 64
    h = torch.randn(n, hid, requires_grad=True)
    w = torch.randn(vocab, hid, requires_grad=True)
    b = torch.randn(vocab, requires_grad=True) if bias else None
    y = torch.randint(0, vocab, (n,))
    lw = torch.rand(n)
    lw[::7] = 0
    params = [h, w] + ([b] if bias else [])
    got_loss = linear_cross_entropy(h, w, b, y, lw)
    got = torch.autograd.grad(got_loss * 1.7, params)
    want_loss, _ = weighted_ce(h @ w.t() + (b if bias else 0), y, lw)
    want = torch.autograd.grad(want_loss * 1.7, params)
    assert math.isclose(float(got_loss.detach()), float(want_loss.detach()), rel_tol=1e-6)
    for g, e in zip(got, want):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-5)
    # a frozen head gets no gradient and the hidden states' one is unchanged
    (gh,) = torch.autograd.grad(linear_cross_entropy(h, w.detach(), None if b is None else b.detach(), y, lw) * 1.7, [h])
    assert torch.allclose(gh, want[0], rtol=1e-4, atol=1e-5)


def test_fused_head_is_refused_when_the_model_post_processes_its_logits(tiny):
    model, _ = tiny
    assert fused_head(model) is not None

    class Scaled(torch.nn.Module):  # a model whose logits are not head(decoder(x)): e.g. soft-capped
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_decoder(self):
            return self.inner.get_decoder()

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, **kw):
            out = self.inner(**kw)
            out.logits = 30 * torch.tanh(out.logits / 30)
            return out

    weight = model.get_output_embeddings().weight  # the session's shared model: restored exactly below
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(50)  # large logits so the cap shows
        try:
            assert fused_head(Scaled(model)) is None
        finally:
            weight.copy_(kept)


def test_training_with_the_fused_loss_equals_the_logits_path(mira, tmp_path, monkeypatch):
    from annot.models import load_model

    docs = wrap_documents(generate_documents(mira, n=6, seed=0), get_wrapper("repeated_negation"), seed=0)
    out = {}
    for name, flag in (("fused", "1"), ("plain", "0")):
        monkeypatch.setenv("ANNOT_FUSED_LOSS", flag)
        m, tok = load_model("tiny-random", device="cpu")
        cfg = TrainingConfig(batch_size=4, seq_len=64, lr=1e-2, max_steps=3, checkpoints=2)
        train(docs, m, tok, cfg, tmp_path / name, seed=0, progress=False)
        out[name] = [json.loads(x) for x in (tmp_path / name / "train_metrics.jsonl").read_text().splitlines()]
    assert len(out["fused"]) == 3
    for a, b in zip(out["fused"], out["plain"]):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4), (a, b)
        assert (a["tokens"], a["tokens_loss"]) == (b["tokens"], b["tokens_loss"])
