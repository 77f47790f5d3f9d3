"""annot bench: the benchmark runs end to end on the tiny model, and the FLOPs count is the documented one.

The lm-eval CLI side (minutes per checkpoint) is not run here; run_bench(..., lm_eval=True) by hand.
"""

import json

import pytest
import torch

from annot.bench import model_flops, run_bench, train_flops_per_token
from annot.config import TrainingConfig
from annot.train import checkpoint_steps, prepare_model

# A tiny Llama whose matmul parameters are counted by hand below.
HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 128, 2, 4, 2, 100


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_flops_formula_on_a_known_config():
    kv = KV_HEADS * HIDDEN // HEADS  # k and v project to the kv heads only (GQA): 32
    per_layer = HIDDEN * HIDDEN * 2 + HIDDEN * kv * 2 + HIDDEN * INTER * 3  # q, o; k, v; gate, up, down
    n = LAYERS * per_layer + VOCAB * HIDDEN  # + the LM head, tied to the embeddings: counted once
    assert n == 80128
    seq = 32
    attention = 6 * LAYERS * seq * HIDDEN

    full = model_flops(prepare_model(_tiny_llama(), TrainingConfig(method="full")), seq)
    assert (full["n_frozen"], full["n_trainable"]) == (0, n)
    assert full["per_token"] == 6 * n + attention == train_flops_per_token(0, n, LAYERS, seq, HIDDEN)

    r = 2  # LoRA on every linear layer but the head: r * (in + out) each
    lora_per_layer = r * ((HIDDEN + HIDDEN) * 2 + (HIDDEN + kv) * 2 + (HIDDEN + INTER) * 3)
    lora = model_flops(prepare_model(_tiny_llama(), TrainingConfig(lora_r=r)), seq)
    assert (lora["n_frozen"], lora["n_trainable"]) == (n, LAYERS * lora_per_layer) == (80128, 4096)
    assert lora["attention"] == attention == 24576
    assert lora["per_token"] == 4 * n + 6 * 4096 + attention


def test_bench_on_the_tiny_model(tmp_path):
    out = tmp_path / "bench.json"
    lines = []
    res = run_bench(model="tiny-random", n_docs=6, steps=3, batch_size=2, seq_len=64, checkpoints=3,
                    lm_eval=False, out=out, echo=lines.append)
    data = json.loads(out.read_text())
    assert data == res
    assert {"params", "machine", "corpus", "peak", "flops_per_token", "train", "probe", "memory"} <= set(data)
    assert data["params"]["model"] == "tiny-random" and data["params"]["steps"] == 3
    assert data["params"]["timed_steps"] == 2
    for key in ("cpu_count", "torch_threads", "device", "device_name", "torch", "transformers"):
        assert data["machine"][key]
    assert data["peak"]["flops"] > 0

    train = data["train"]
    for engine in ("annot", "trainer"):
        x = train[engine]
        assert x["tokens"] > 0 and x["seconds"] > 0 and x["tokens_per_s"] > 0
        assert 0 < x["mfu"] and x["achieved_flops"] == pytest.approx(x["tokens_per_s"] * x["flops_per_token"])
    # annot packs rows: steps 2..3 of 2 rows each are nearly all real tokens
    assert train["annot"]["tokens"] <= 2 * 2 * 64 and train["annot"]["tokens"] > 2 * 64
    assert train["speed_ratio"] == pytest.approx(train["annot"]["tokens_per_s"] / train["trainer"]["tokens_per_s"])

    probe = data["probe"]
    saved = train["annot"]["checkpoints"]
    assert saved == checkpoint_steps(3, 3) == [0, 2, 3]  # log-spaced: base, geometric middle, end
    assert probe["checkpoints"] == saved and probe["n_checkpoints"] == len(saved)
    assert probe["annot"]["seconds"] > 0 and set(probe["annot"]["per_checkpoint_s"]) == {str(s) for s in saved}
    assert probe["lm_eval"] is None and probe["equal"] is None and probe["speedup"] is None
    assert {(r["step"], r["kind"]) for r in probe["accuracy"]} == {(s, k) for s in saved
                                                                  for k in ("yes_no", "mcq", "cloze")}
    assert all(0 <= r["annot"] <= 1 for r in probe["accuracy"])
    assert data["memory"]["peak_rss_mib"] > 0
    text = "\n".join(lines)
    assert "annot driver" in text and "transformers.Trainer" in text and str(out) in text


def test_bench_rejects_too_few_steps(tmp_path):
    from annot.errors import AnnotError

    with pytest.raises(AnnotError, match="steps"):
        run_bench(model="tiny-random", steps=1, lm_eval=False, out=tmp_path / "b.json", echo=lambda s: None)
    assert not (tmp_path / "b.json").exists()
