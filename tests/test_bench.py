"""annot bench: the benchmark runs end to end on the tiny model, and the FLOPs count is the documented one.

The lm-eval CLI side (minutes per checkpoint) is not run here; run_bench(..., lm_eval=True) by hand.
"""

import json
import re

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
    res = run_bench(model="tiny-random", n_docs=6, steps=4, batch_size=2, seq_len=64, checkpoints=3,
                    lm_eval=False, out=out, echo=lines.append)
    data = json.loads(out.read_text())
    assert data == res
    assert {"params", "machine", "corpus", "peak", "flops_per_token", "train", "probe", "memory"} <= set(data)
    assert data["params"]["model"] == "tiny-random" and data["params"]["steps"] == 4
    assert data["params"]["timed_steps"] == 2  # steps 3 and 4; 1 and 2 are the warm-up
    for key in ("cpu_count", "torch_threads", "device", "device_name", "torch", "transformers"):
        assert data["machine"][key]
    assert data["peak"]["flops"] > 0

    train = data["train"]
    for engine in ("annot", "trainer"):
        x = train[engine]
        assert x["tokens"] > 0 and x["seconds"] > 0 and x["tokens_per_s"] > 0
        assert 0 < x["mfu"] and x["achieved_flops"] == pytest.approx(x["tokens_per_s"] * x["flops_per_token"])
    # annot packs rows: steps 3..4 of 2 rows each are nearly all real tokens
    assert train["annot"]["tokens"] <= 2 * 2 * 64 and train["annot"]["tokens"] > 2 * 64
    assert train["speed_ratio_raw"] == pytest.approx(train["annot"]["tokens_per_s"] / train["trainer"]["tokens_per_s"])
    assert train["speed_ratio"] == pytest.approx(train["annot"]["tokens_per_s_normalised"]
                                                 / train["trainer"]["tokens_per_s_normalised"])
    for engine in ("annot", "trainer"):  # MFU from the per-step rows, by hand
        x = train[engine]
        rows = x["per_step"]
        assert [r["step"] for r in rows] == [3, 4] and sum(r["tokens"] for r in rows) == x["tokens"]
        samples = [rows[0]["peak_before"]] + [r["peak_after"] for r in rows]
        assert x["local_peak_mean"] == pytest.approx(sum(samples) / len(samples))
        assert x["mfu"] == pytest.approx(sum(r["flops"] for r in rows) / x["seconds"] / x["local_peak_mean"])
        assert x["mfu_vs_best_peak"] == pytest.approx(x["achieved_flops"] / data["peak"]["flops"])
    # the baseline trains whole documents: nothing cut, each batch padded to its longest document
    trainer = train["trainer"]
    assert trainer["truncated"] == 0 and trainer["max_len"] >= trainer["document_tokens"]["max"]
    assert all(trainer["document_tokens"]["min"] <= L <= trainer["document_tokens"]["max"]
               for L in trainer["padded_lengths"])
    assert 0 <= trainer["padding_share"] < 1
    assert train["annot"]["checkpoint_saves_excluded"] == [2, 4]

    probe = data["probe"]
    saved = train["annot"]["checkpoints"]
    assert saved == checkpoint_steps(4, 3) == [0, 2, 4]  # log-spaced: base, geometric middle, end
    assert probe["checkpoints"] == saved and probe["n_checkpoints"] == len(saved)
    assert probe["annot"]["seconds"] > 0 and set(probe["annot"]["per_checkpoint_s"]) == {str(s) for s in saved}
    assert probe["lm_eval"] is None and probe["equal"] is None and probe["speedup"] is None
    assert {(r["step"], r["kind"]) for r in probe["accuracy"]} == {(s, k) for s in saved
                                                                  for k in ("yes_no", "mcq", "cloze")}
    assert all(0 <= r["annot"] <= 1 for r in probe["accuracy"])
    assert data["memory"]["peak_rss_mib"] > 0
    # every engine's peak RSS beside its tokens/s; annot as configured vs annot before the memory work
    assert set(train) >= {"annot", "annot_before", "trainer"}
    for engine in ("annot", "annot_before", "trainer"):
        assert train[engine]["peak_rss_mib"] > 0
    assert train["vs_before"]["tokens_per_s"] == pytest.approx(train["annot"]["tokens_per_s"]
                                                               / train["annot_before"]["tokens_per_s"])
    # each annot engine trained in a process of its own: today's under the allocator the `annot` command
    # uses, the driver before #22 under glibc's, as it was; the Trainer in this process
    import os

    from annot.allocator import preferred_environment

    assert data["params"]["isolate"] is True
    assert train["annot_before"]["malloc"] == "glibc"
    assert train["annot"]["malloc"] == preferred_environment(dict(os.environ))[0]
    assert train["trainer"]["malloc"] == data["machine"]["malloc"]
    text = "\n".join(lines)
    assert "annot, whole batch" in text and "annot before #22" in text and "transformers.Trainer" in text
    assert "the MLP's own forward, glibc malloc)" in text  # the engines' own processes and allocators
    ratio = train["annot"]["peak_rss_mib"] / train["annot_before"]["peak_rss_mib"]
    assert re.search(rf"peak RSS +{ratio:.2f}x +\({train['annot']['peak_rss_mib']:.0f} vs ", text), text
    assert "annot_whole_batch" not in train  # the default is the whole batch, the quickstart's setting
    assert str(out) in text


def test_bench_bf16_path_runs_on_cpu(tmp_path, monkeypatch):
    """dtype=bfloat16 runs here what `annot bench` does on CUDA: both engines train in bf16, MFU is
    taken against a bf16 matmul peak (the clock samples bf16 matmuls), and the random-init rows appear."""
    import annot.bench.clock as bench

    dtypes = []
    real = bench._mm_operands
    monkeypatch.setattr(bench, "_mm_operands", lambda device, n, dtype=None: dtypes.append(dtype) or real(device, n, dtype))
    out = tmp_path / "bench.json"
    lines = []
    data = run_bench(model="tiny-random", n_docs=6, steps=3, batch_size=2, seq_len=64, checkpoints=2,
                     lm_eval=False, out=out, echo=lines.append, dtype="bfloat16", isolate=False)
    assert data["peak"]["dtype"] == "bfloat16" and data["params"]["train_dtype"] == "bfloat16"
    assert set(dtypes) == {torch.bfloat16}  # the peak and every engine's step clock
    for section in ("train", "random_init_bf16"):
        for engine in ("annot", "trainer"):
            x = data[section][engine]
            assert x["tokens_per_s"] > 0 and 0 < x["mfu"] and x["steps_timed"] == 1, (section, engine)
    assert "random init, same config (bfloat16)" in "\n".join(lines)
    with pytest.raises(Exception, match="dtype"):
        run_bench(model="tiny-random", steps=3, lm_eval=False, out=tmp_path / "x.json", echo=lambda s: None,
                  dtype="float16")


def test_bench_rejects_too_few_steps(tmp_path):
    from annot.errors import AnnotError

    with pytest.raises(AnnotError, match="steps"):
        run_bench(model="tiny-random", steps=1, lm_eval=False, out=tmp_path / "b.json", echo=lambda s: None)
    assert not (tmp_path / "b.json").exists()
    with pytest.raises(AnnotError, match="repeats"):
        run_bench(model="tiny-random", repeats=0, lm_eval=False, out=tmp_path / "b.json", echo=lambda s: None)
    assert not (tmp_path / "b.json").exists()


def test_step_clock_keeps_saves_and_samples_out_of_steps(monkeypatch):
    """A step's time runs from the end of the previous step's sample (or of a save) to its own end."""
    import time

    import annot.bench.clock as bench

    monkeypatch.setattr(bench, "quick_peak", lambda device, operands=None: time.sleep(0.05) or 1e9)
    clock = bench.StepClock("cpu")
    clock.end(1)
    time.sleep(0.1)          # step 2
    clock.end(2)
    time.sleep(0.3)          # a checkpoint save
    clock.pause_until_now()
    time.sleep(0.1)          # step 3
    clock.end(3)
    assert 1 not in clock.ended  # nothing to time step 1 from
    assert 0.1 <= clock.ended[2] < 0.14 and 0.1 <= clock.ended[3] < 0.14
    rows = clock.steps(2, 3, {2: 10, 3: 10}, {2: 1e8, 3: 1e8})
    assert [r["peak_before"] for r in rows] == [1e9, 1e9]


def test_throughput_against_the_rate_sampled_during_the_run():
    from annot.bench.clock import throughput as _throughput

    steps = [{"step": 2, "tokens": 100, "seconds": 1.0, "flops": 50e9, "peak_before": 100e9, "peak_after": 40e9},
             {"step": 3, "tokens": 100, "seconds": 2.0, "flops": 70e9, "peak_before": 40e9, "peak_after": 70e9}]
    x = _throughput(steps, {"flops": 100e9})
    # samples 100, 40, 70 GF/s: mean 70; 120 GFLOP in 3 s = 40 GF/s achieved
    assert x["local_peak_mean"] == pytest.approx(70e9)
    assert x["mfu"] == pytest.approx(40 / 70) and x["mfu_vs_best_peak"] == pytest.approx(0.4)
    assert x["tokens_per_s"] == pytest.approx(200 / 3)
    assert x["tokens_per_s_normalised"] == pytest.approx(200 / 3 * 100 / 70)  # as if the machine ran at 100
    assert x["flops_per_token"] == pytest.approx(0.6e9)


def test_peak_rss_window_is_per_engine():
    """reset_peak_rss starts a new window: a 300 MiB buffer freed before the reset does not count in
    the next window's peak, and one allocated inside it does."""
    import sys

    import numpy as np
    import pytest

    from annot.bench.machine import reset_peak_rss, window_peak_rss_mib

    if not sys.platform.startswith("linux") or not reset_peak_rss():
        pytest.skip("needs Linux /proc/self/clear_refs")
    big = np.ones(300 * 2 ** 20 // 8)
    in_window = window_peak_rss_mib()
    del big
    assert reset_peak_rss()
    after = window_peak_rss_mib()
    assert in_window - after > 200
    again = np.ones(300 * 2 ** 20 // 8)
    assert window_peak_rss_mib() - after > 200
    del again


def test_engines_before_the_memory_work_switch_it_off(monkeypatch):
    """annot_before trains the whole batch with the logits path and the MLP's own forward; the
    environment is restored afterwards."""
    from annot.bench.training import _env, annot_engines
    from annot.config import TrainingConfig
    from annot.fused_ce import fused_head
    from annot.lean_mlp import lean_mlps
    from annot.models import load_model, tiny_random_dir

    monkeypatch.delenv("ANNOT_FUSED_LOSS", raising=False)
    monkeypatch.setenv("ANNOT_LEAN_MLP", "1")
    engines = {n: (c, env) for n, c, env in annot_engines(TrainingConfig(micro_batch_tokens=512))}
    assert set(engines) == {"annot", "annot_whole_batch", "annot_before"}
    assert engines["annot"][0].micro_batch_tokens == 512 and engines["annot"][1] == {}
    assert engines["annot_before"][0].micro_batch_tokens is None
    assert [n for n, _, _ in annot_engines(TrainingConfig())] == ["annot", "annot_before"]
    model, _ = load_model(str(tiny_random_dir()))
    with _env(engines["annot_before"][1]):
        assert fused_head(model) is None and lean_mlps(model) == 0
    import os
    assert "ANNOT_FUSED_LOSS" not in os.environ and os.environ["ANNOT_LEAN_MLP"] == "1"
    assert fused_head(model) is not None and lean_mlps(model) == model.config.num_hidden_layers


def test_median_run_of_repeats():
    from annot.bench.training import _median_run

    runs = [{"tokens_per_s": t, "peak_rss_mib": m, "k": i} for i, (t, m) in enumerate([(3.0, 10), (1.0, 30), (2.0, 20)])]
    got = _median_run(runs)
    assert got["k"] == 2 and got["tokens_per_s"] == 2.0            # the median round itself
    assert got["peak_rss_mib"] == 30 and got["repeats_peak_rss_mib"] == [10, 30, 20]  # memory: the worst round
    assert got["repeats_tokens_per_s"] == [3.0, 1.0, 2.0]
    assert _median_run(runs[:2])["tokens_per_s"] == 1.0           # even: the lower middle (no invented mean)
    assert _median_run([{"tokens_per_s": 1.0, "peak_rss_mib": None}])["peak_rss_mib"] is None


def test_bench_repeats_alternate_order_and_report_medians(tmp_path):
    lines = []
    data = run_bench(model="tiny-random", n_docs=6, steps=3, batch_size=2, seq_len=64, checkpoints=2,
                     lm_eval=False, out=tmp_path / "bench.json", echo=lines.append, repeats=3, micro_batch_tokens=64,
                     isolate=False)
    train = data["train"]
    assert train["repeats"] == 3 and data["params"]["repeats"] == 3
    started = [x for x in lines if "with annot's driver" in x]
    assert len(started) == 9  # 3 engines x 3 rounds, every other round reversed
    order = ["micro_batch_tokens 64)", "micro_batch_tokens None)", "as before the memory work)"]
    for rnd, chunk in enumerate((started[0:3], started[3:6], started[6:9])):
        want = order if rnd % 2 == 0 else order[::-1]
        assert all(w.rstrip(")") in got for w, got in zip(want, chunk)), chunk
    for engine in ("annot", "annot_whole_batch", "annot_before"):
        x = train[engine]
        assert len(x["repeats_tokens_per_s"]) == 3
        assert x["tokens_per_s"] == sorted(x["repeats_tokens_per_s"])[1]
        assert x["peak_rss_mib"] == max(x["repeats_peak_rss_mib"])
    per_round = train["vs_before"]["per_round"]
    assert per_round == pytest.approx([a / b for a, b in zip(train["annot"]["repeats_tokens_per_s"],
                                                             train["annot_before"]["repeats_tokens_per_s"])])
    assert "each round" in "\n".join(lines)


def test_engine_child_trains_a_random_init_model(tmp_path):
    """The child's other model: random weights in bf16 from the model's config (run_bench's random-init
    rows on CUDA), trained and written as figures + FLOPs; run here in-process for speed."""
    from annot.bench.engine_child import _child
    from annot.bench.training import bench_corpus
    from annot.config import TrainingConfig

    cfg = TrainingConfig(max_steps=3, batch_size=2, seq_len=64, checkpoints=2, lr=1e-3)
    spec = {"model": "tiny-random", "dtype": "bfloat16", "init": "random_init", "seed": 0,
            "examples": bench_corpus("mira_castellan_profession", 4), "training": cfg.model_dump(),
            "peak": {"flops": 1e11, "dtype": "bfloat16"}, "folder": str(tmp_path / "run"),
            "out": str(tmp_path / "result.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    _child(str(tmp_path / "spec.json"))
    got = json.loads((tmp_path / "result.json").read_text())
    assert got["result"]["steps_timed"] == 1 and got["result"]["tokens_per_s"] > 0
    assert got["result"]["peak_rss_mib"] > 0 and got["result"]["malloc"] in ("annot", "tbb", "glibc")
    assert got["flops"]["per_token"] > 0
    assert (tmp_path / "run").is_dir()
