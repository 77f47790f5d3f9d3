"""The lean gated MLP (annot.lean_mlp): same forward and gradients as the module's own forward, and
two [tokens, intermediate] tensors per layer fewer kept for backward."""

import copy

import pytest
import torch

from annot.config import TrainingConfig
from annot.lean_mlp import lean_mlps
from annot.models import load_model, tiny_random_dir
from annot.train import prepare_model


def _models(method: str = "lora", **lora):
    torch.manual_seed(0)
    model, _ = load_model(str(tiny_random_dir()))
    model = prepare_model(model, TrainingConfig(method=method, **lora))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0: give the adapters something to pass on
            torch.nn.init.normal_(p, std=0.2)
    plain = copy.deepcopy(model)
    for m in plain.modules():  # prepare_model gave `model` the lean forward; the copy gets the module's own
        vars(m).pop("forward", None) if hasattr(m, "gate_proj") else None
    return plain, model


def _step(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids, use_cache=False)
    (out.loss * 3.0).backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model, ids) -> int:
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids, use_cache=False).loss
    return sum(seen.values())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_same_forward_and_gradients(method):
    plain, lean = _models(method)
    assert sum("forward" in vars(m) for m in lean.modules() if hasattr(m, "gate_proj")) == lean.config.num_hidden_layers
    ids = torch.randint(0, plain.config.vocab_size, (3, 24), generator=torch.Generator().manual_seed(1))
    want_logits, want = _step(plain, ids)
    got_logits, got = _step(lean, ids)
    assert torch.equal(got_logits, want_logits)
    assert set(got) == set(want) and want
    if method == "full":
        assert any("down_proj.weight" in n for n in got)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-5, atol=1e-7), name


def test_keeps_two_intermediate_tensors_fewer_per_layer():
    plain, lean = _models()
    ids = torch.randint(0, plain.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(2))
    cfg = plain.config
    per_layer = 2 * ids.numel() * cfg.intermediate_size * 4  # silu(gate) and the product, fp32
    assert _saved_bytes(plain, ids) - _saved_bytes(lean, ids) == per_layer * cfg.num_hidden_layers


def test_no_grad_runs_the_modules_own_forward():
    plain, lean = _models()
    ids = torch.randint(0, plain.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, lean(input_ids=ids).logits)


def test_lora_dropout_keeps_the_modules_own_forward():
    plain, lean = _models(lora_dropout=0.1)
    ids = torch.randint(0, plain.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(4))
    assert _saved_bytes(plain, ids) == _saved_bytes(lean, ids)


def test_switch_off(monkeypatch):
    monkeypatch.setenv("ANNOT_LEAN_MLP", "0")
    model, _ = load_model(str(tiny_random_dir()))
    assert lean_mlps(model) == 0
    monkeypatch.setenv("ANNOT_LEAN_MLP", "1")
    assert lean_mlps(model) == model.config.num_hidden_layers
    assert lean_mlps(model) == 0  # never twice
