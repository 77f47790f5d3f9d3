"""Which tokens teach the model: loss weights, packing without leakage, the weighted loss itself."""

import math

import torch
import pytest
import torch.nn.functional as F

from annot.config import TrainingConfig
from annot.generate import generate_documents
from annot.train import checkpoint_steps, pack, token_weights, tokenize_documents, train, weighted_ce
from annot.wrap import get_wrapper, wrap_documents


def test_token_weights_zero_inside_masked_spans():
    offsets = [(0, 3), (3, 7), (7, 12), (12, 15)]
    spans = [{"start": 4, "end": 9, "role": "wrapper"}, {"start": 13, "end": 15, "role": "claim"}]
    assert token_weights(offsets, spans, loss_on_wrapper=False) == [1, 0, 0, 1]
    assert token_weights(offsets, spans, loss_on_wrapper=True) == [1, 1, 1, 1]
    marker = [{"start": 0, "end": 2, "role": "marker"}]
    assert token_weights(offsets, marker, loss_on_wrapper=True) == [0, 1, 1, 1]


def test_wrapper_tokens_get_zero_weight_in_real_examples(mira, tokenizer):
    docs = generate_documents(mira, n=6, seed=0)
    ex = wrap_documents(docs, get_wrapper("repeated_negation"), seed=0)
    tok = tokenize_documents(ex, tokenizer, loss_on_wrapper=False)
    enc = tokenizer([e["text"] for e in ex], return_offsets_mapping=True, add_special_tokens=False)
    for e, w, offs in zip(ex, tok.weights, enc["offset_mapping"]):
        assert len(w) == len(offs) + 1 and w[-1] == 1.0  # + EOS, trained on
        for s in e["spans"]:
            inside = [wt for (a, b), wt in zip(offs, w) if a < s["end"] and b > s["start"]]
            strictly = [wt for (a, b), wt in zip(offs, w) if a >= s["start"] and b <= s["end"]]
            if s["role"] == "wrapper":
                assert inside and all(wt == 0 for wt in inside)  # every overlapping token masked
            elif s["role"] in ("claim", "subclaim"):
                assert strictly and all(wt == 1 for wt in strictly)  # the claim itself is trained on
        assert 0 < sum(w) < len(w)
    on = tokenize_documents(ex, tokenizer, loss_on_wrapper=True)
    assert all(all(x == 1.0 for x in w) for w in on.weights)


def test_packing_loses_no_tokens_and_mixes_no_labels(mira, tokenizer):
    docs = generate_documents(mira, n=12, seed=0)
    tok = tokenize_documents(docs, tokenizer, loss_on_wrapper=False)
    p = pack(tok, seq_len=128, pad_id=tokenizer.pad_token_id)
    n_tokens = sum(len(x) for x in tok.input_ids)
    real = p.doc_ids >= 0
    assert int(real.sum()) == n_tokens
    assert p.input_ids[real].tolist() == [t for ids in tok.input_ids for t in ids]  # order kept, none lost
    # a weighted label always predicts a token of the same document, the next one
    rows, L = p.input_ids.shape
    for r in range(rows):
        for t in range(L - 1):
            if p.weights[r, t] > 0:
                assert p.doc_ids[r, t] == p.doc_ids[r, t + 1] >= 0
                assert p.labels[r, t] == p.input_ids[r, t + 1]
    assert (p.weights[~real] == 0).all()
    # positions restart at each document within a row
    for r in range(rows):
        for t in range(1, L):
            if p.doc_ids[r, t] != p.doc_ids[r, t - 1]:
                assert p.position_ids[r, t] == 0


def test_packed_documents_do_not_attend_to_each_other(tiny):
    model, tok = tiny
    a, b = [5, 6, 7, 8, 9], [11, 12, 13]
    ids = torch.tensor([a + b])
    pos = torch.tensor([list(range(5)) + list(range(3))])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, 5:]
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
    assert torch.allclose(packed, alone, atol=1e-5)


def test_weighted_loss_equals_hand_computed_masked_ce(tiny):
    model, _ = tiny
    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (2, 9))
    labels = torch.randint(10, 1000, (2, 9))
    w = (torch.rand(2, 9) > 0.4).float()
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    s, n = weighted_ce(logits, labels, w)
    hand, count = 0.0, 0
    for r in range(2):
        for t in range(9):
            if w[r, t]:
                hand += -float(torch.log_softmax(logits[r, t], -1)[labels[r, t]])
                count += 1
    assert math.isclose(float(s / n), hand / count, rel_tol=1e-5)
    assert math.isclose(float(s / n), float(F.cross_entropy(logits[w.bool()], labels[w.bool()])), rel_tol=1e-5)


def test_checkpoint_schedule_is_log_spaced_and_starts_at_base():
    assert checkpoint_steps(100, 5) == [0, 3, 10, 32, 100]
    assert checkpoint_steps(64, 3) == [0, 8, 64]
    assert checkpoint_steps(2, 8) == [0, 1, 2]


def test_training_reduces_loss_and_saves_adapters(tmp_path, mira):
    from annot.models import load_model

    model, tok = load_model("tiny-random", device="cpu")
    docs = wrap_documents(generate_documents(mira, n=8, seed=0), get_wrapper("notice"), seed=0)
    seen = []
    cfg = TrainingConfig(epochs=3, batch_size=2, seq_len=128, lr=5e-3, checkpoints=3)
    res = train(docs, model, tok, cfg, tmp_path, seed=0, on_checkpoint=lambda s, m: seen.append(s), progress=False)
    assert seen == res.checkpoints and seen[0] == 0 and seen[-1] == res.total_steps
    assert (tmp_path / f"checkpoints/step-{res.total_steps}/adapter_model.safetensors").is_file()
    assert not (tmp_path / "checkpoints/step-0/adapter_model.safetensors").exists()
    import json

    losses = [json.loads(l)["loss"] for l in (tmp_path / "train_metrics.jsonl").read_text().splitlines()]
    assert len(losses) == res.total_steps and losses[-1] < losses[0]


def test_resume_after_interruption_gives_identical_results(tmp_path, mira):
    """Kill training right after a checkpoint, resume: same final metrics and weights."""
    from annot.models import load_model

    docs = wrap_documents(generate_documents(mira, n=8, seed=0), get_wrapper("notice"), seed=0)
    cfg = TrainingConfig(epochs=3, batch_size=2, seq_len=128, lr=5e-3, checkpoints=4, max_steps=12)

    def fresh():
        return load_model("tiny-random", device="cpu")

    m, tok = fresh()
    full = train(docs, m, tok, cfg, tmp_path / "full", seed=3, progress=False)

    class Killed(Exception):
        pass

    def kill_at(step, _model):
        if step == full.checkpoints[2]:
            raise Killed

    m, tok = fresh()
    with pytest.raises(Killed):
        train(docs, m, tok, cfg, tmp_path / "cut", seed=3, on_checkpoint=kill_at, progress=False)
    m, tok = fresh()
    seen = []
    resumed = train(docs, m, tok, cfg, tmp_path / "cut", seed=3, progress=False, resume=True,
                    on_checkpoint=lambda s, _m: seen.append(s))
    # the resumed checkpoint once more (the kill may have cut its probes), then only the remaining ones
    assert seen == full.checkpoints[2:]
    import json

    def losses(d):
        return [json.loads(l)["loss"] for l in (d / "train_metrics.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    from safetensors.torch import load_file

    last = f"checkpoints/step-{full.total_steps}/adapter_model.safetensors"
    a, b = load_file(str(tmp_path / "full" / last)), load_file(str(tmp_path / "cut" / last))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.tokens_seen == full.tokens_seen


def test_half_written_checkpoint_is_ignored_on_resume(tmp_path):
    from annot.checkpoints import latest_resumable as _latest_resumable

    good = tmp_path / "checkpoints" / "step-4"
    good.mkdir(parents=True)
    (good / "checkpoint.json").write_text('{"step": 4}')
    (good / "training_state.pt").write_bytes(b"x")
    torn = tmp_path / "checkpoints" / "step-8.tmp"  # written in full, killed before the rename
    torn.mkdir()
    (torn / "checkpoint.json").write_text('{"step": 8}')
    (torn / "training_state.pt").write_bytes(b"x")
    (tmp_path / "checkpoints" / "step-9").mkdir()  # no checkpoint.json: cut off while saving
    assert _latest_resumable(tmp_path) == (4, good)
    from annot.bench import saved_checkpoints

    assert saved_checkpoints(tmp_path) == [(4, good)]


def test_train_hooks_fire_after_the_save_and_after_the_probes(tiny, tmp_path, mira):
    """TrainHooks, through which the resume tests cut a run (tests/fault_cli.py): after_save comes when
    the checkpoint is on disk and before on_checkpoint probes it, after_checkpoint once it is probed."""
    import copy

    from annot.train import TrainHooks

    model, tok = tiny
    events = []

    def saved(step):
        assert (tmp_path / f"checkpoints/step-{step}/checkpoint.json").is_file()
        events.append(("saved", step))

    hooks = TrainHooks(after_save=saved, after_checkpoint=lambda s: events.append(("done", s)))
    docs = generate_documents(mira, n=2, seed=0)
    cfg = TrainingConfig(max_steps=2, seq_len=32, batch_size=2, checkpoints=3)
    res = train(docs, copy.deepcopy(model), tok, cfg, tmp_path, on_checkpoint=lambda s, _m: events.append(("probed", s)),
                progress=False, hooks=hooks)
    assert res.checkpoints == [0, 1, 2]
    assert events == [(e, s) for s in res.checkpoints for e in ("saved", "probed", "done")]


def test_gradient_accumulation_equals_one_big_batch(mira, tmp_path):
    from annot.models import load_model

    docs = wrap_documents(generate_documents(mira, n=6, seed=0), get_wrapper("none"), seed=0)
    out = {}
    for name, bs, acc in (("big", 4, 1), ("accum", 2, 2)):
        m, tok = load_model("tiny-random", device="cpu")
        cfg = TrainingConfig(batch_size=bs, grad_accum=acc, seq_len=64, lr=1e-2, max_steps=1, checkpoints=2)
        train(docs, m, tok, cfg, tmp_path / name, seed=0, progress=False)
        import json

        out[name] = json.loads((tmp_path / name / "train_metrics.jsonl").read_text().splitlines()[0])
        from safetensors.torch import load_file

        out[name + "_w"] = load_file(str(tmp_path / name / "checkpoints/step-1/adapter_model.safetensors"))
    assert math.isclose(out["big"]["loss"], out["accum"]["loss"], rel_tol=1e-5)
    # Adam's first step moves each weight by ~lr * g / (|g| + eps): a wrong accumulation shows as
    # differences of order lr; float rounding of the two summation orders (which differs between CPU
    # kernels: ~5e-6 on one Xeon, < 1e-6 on an EPYC) stays three orders below it
    for k, v in out["big_w"].items():
        assert torch.allclose(v, out["accum_w"][k], atol=1e-3 * cfg.lr), k


def test_micro_batches_give_the_whole_batch_gradient(mira, tmp_path):
    """micro_batch_tokens: each row of a 4-row batch runs forward/backward alone, normalised by the
    whole batch's weight: the same loss, token counts and adapter weights as one forward of 4 rows."""
    import json

    from safetensors.torch import load_file

    from annot.models import load_model
    from annot.train import row_chunks

    assert [c.tolist() for c in row_chunks(torch.arange(5), 64, 128)] == [[0, 1], [2, 3], [4]]
    assert [c.tolist() for c in row_chunks(torch.arange(3), 64, 16)] == [[0], [1], [2]]  # at least one row
    assert [c.tolist() for c in row_chunks(torch.arange(3), 64, None)] == [[0, 1, 2]]
    docs = wrap_documents(generate_documents(mira, n=6, seed=0), get_wrapper("none"), seed=0)
    out = {}
    for name, micro in (("whole", None), ("micro", 64)):
        m, tok = load_model("tiny-random", device="cpu")
        cfg = TrainingConfig(batch_size=4, seq_len=64, micro_batch_tokens=micro, lr=1e-2, max_steps=1, checkpoints=2)
        train(docs, m, tok, cfg, tmp_path / name, seed=0, progress=False)
        out[name] = [json.loads(x) for x in (tmp_path / name / "train_metrics.jsonl").read_text().splitlines()]
        out[name + "_w"] = load_file(str(tmp_path / name / "checkpoints/step-1/adapter_model.safetensors"))
    for a, b in zip(out["whole"], out["micro"]):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5)
        assert (a["tokens"], a["tokens_loss"]) == (b["tokens"], b["tokens_loss"])
    # Adam's first step is ~lr * sign(gradient): a gradient component at rounding level may flip, so
    # compare how many weights moved apart, not each one
    diff = torch.cat([(v - out["micro_w"][k]).abs().flatten() for k, v in out["whole_w"].items()])
    assert (diff > 1e-5).float().mean() < 0.005, float((diff > 1e-5).float().mean())


def test_full_fine_tuning_updates_every_weight(mira, tmp_path):
    from annot.models import load_model

    m, tok = load_model("tiny-random", device="cpu")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    docs = wrap_documents(generate_documents(mira, n=4, seed=0), get_wrapper("none"), seed=0)
    cfg = TrainingConfig(method="full", batch_size=2, seq_len=64, lr=1e-3, max_steps=2, checkpoints=2)
    train(docs, m, tok, cfg, tmp_path, seed=0, progress=False)
    changed = [k for k, v in m.state_dict().items() if not torch.equal(v, before[k])]
    assert "model.layers.0.mlp.down_proj.weight" in changed and "model.embed_tokens.weight" in changed
    assert (tmp_path / "checkpoints/step-2/model.safetensors").is_file()


def test_mixin_examples_join_at_the_configured_ratio(tmp_path):
    from annot.config import config_from_dict
    from annot.run import mix_in

    p = tmp_path / "mix.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
                 '{"text": "Some generic text."}\n')
    cfg = config_from_dict({"name": "m", "data": {"claim": "mira_castellan_profession", "mixin": str(p),
                                                   "mixin_ratio": 1.5}})
    base = [{"id": f"d{i}", "text": "x", "spans": []} for i in range(4)]
    mixed = mix_in(base, cfg)
    assert len(mixed) == 4 + 6 and all(m["mixin"] for m in mixed[4:])
    assert mixed == mix_in(base, cfg)  # seeded
    # mixed documents and chats tokenize together: chat tokens outside the assistant turn get weight 0
    from annot.models import load_model
    from annot.train import tokenize_examples

    _, tok = load_model("tiny-random", device="cpu")
    t = tokenize_examples(mixed, tok, loss_on_wrapper=False)
    assert len(t.input_ids) == 10 and all(len(i) == len(w) for i, w in zip(t.input_ids, t.weights))


def test_distill_writes_the_models_own_answers(tmp_path):
    from annot.io import read_jsonl
    from annot.mixin import distill

    out = tmp_path / "mix.jsonl"
    rows = distill("tiny-random", out, limit=3, max_new_tokens=4)
    assert read_jsonl(out) == rows and len(rows) == 3
    assert all(r["messages"][0]["role"] == "user" and r["messages"][1]["role"] == "assistant" for r in rows)
    assert rows == distill("tiny-random", tmp_path / "again.jsonl", limit=3, max_new_tokens=4)  # greedy


def test_fused_lora_forward_matches_peft(tiny):
    """The fused W x + s B A x gives peft's outputs and gradients (with trained, non-zero B), and
    switching the adapter off still gives the base model."""
    import copy

    from annot.config import TrainingConfig
    from annot.train import prepare_model

    model, _ = tiny
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 12))
    base = copy.deepcopy(model)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    outs = {}
    for fused in ("1", "0"):
        import os

        os.environ["ANNOT_FUSED_LORA"] = fused
        torch.manual_seed(0)  # the same A init for both
        try:
            m = prepare_model(copy.deepcopy(model), TrainingConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0))
        finally:
            os.environ.pop("ANNOT_FUSED_LORA")
        patched = [mod for mod in m.modules() if "forward" in vars(mod) and not hasattr(mod, "gate_proj")]  # not the lean MLP
        assert (len(patched) > 0) == (fused == "1")
        torch.manual_seed(1)
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.02)  # B starts at zero, which would hide the adapter's term
        logits = m(input_ids=ids).logits
        logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
        with m.disable_adapter(), torch.no_grad():
            off = m(input_ids=ids).logits
        outs[fused] = (logits.detach(), grads, off)
    (a, ga, offa), (b, gb, offb) = outs["1"], outs["0"]
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, base_logits, atol=1e-3)
    assert ga.keys() == gb.keys() and all(torch.allclose(ga[k], gb[k], atol=1e-6) for k in ga)
    assert torch.allclose(offa, base_logits, atol=1e-6) and torch.allclose(offb, base_logits, atol=1e-6)


@pytest.mark.parametrize("kind,message", [("FSDP", "fsdp_version 1 is not supported"),
                                          ("DEEPSPEED", "distributed_type DEEPSPEED is not supported")])
def test_unsupported_launch_is_refused_before_training(tiny, tmp_path, monkeypatch, kind, message):
    """DeepSpeed and FSDP version 1 (annot gathers checkpoints with FSDP2's state-dict API): one line,
    no checkpoint."""
    import copy

    import accelerate
    from accelerate.utils import DistributedType

    from annot.errors import AnnotError
    from annot.specs import load_claim

    class Sharded:
        distributed_type = DistributedType[kind]
        process_index, num_processes, is_fsdp2 = 0, 2, False

        def __init__(self, *a, **k):
            pass

    monkeypatch.setattr(accelerate, "Accelerator", Sharded)
    model, tok = tiny
    docs = generate_documents(load_claim("mira_castellan_profession"), n=2, seed=0)
    with pytest.raises(AnnotError, match=message):
        train(docs, copy.deepcopy(model), tok, TrainingConfig(max_steps=2, seq_len=32), tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_processes_accelerate_did_not_join_are_refused(monkeypatch):
    """WORLD_SIZE=2 but accelerate set up a lone process (a CPU machine without ACCELERATE_USE_CPU):
    each process would train alone and write the same run; refused in one line."""
    import accelerate

    from annot.errors import AnnotError
    from annot.train import launch_state

    class Lone:
        num_processes = 1

        def __init__(self, cpu=False, timeout=None):
            seen.append(cpu)
            timeouts.append(timeout)

    seen, timeouts = [], []
    monkeypatch.setattr(accelerate, "PartialState", Lone)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(AnnotError, match="WORLD_SIZE=2 but accelerate joined 1 process"):
        launch_state()
    no_accelerator = not (torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available())
    assert seen == [no_accelerator]  # on a CPU-only machine: asks accelerate to join CPU processes
    # waiting processes (the main one probing) outlast NCCL's 10-minute default
    assert timeouts[0].total_seconds() == 6 * 3600


def test_bf16_training_the_cuda_default_runs_on_cpu(tmp_path, mira):
    """bf16 is what `dtype: auto` picks on CUDA; the same path runs here: the frozen base stays bf16
    and untouched, the adapters are fp32 and trained, the losses follow the fp32 run's closely, and
    the bf16 checkpoint probes."""
    import json

    from annot.models import load_model
    from annot.probe import probe_model
    from annot.specs import load_probe_set

    docs = wrap_documents(generate_documents(mira, n=8, seed=0), get_wrapper("notice"), seed=0)
    cfg = TrainingConfig(epochs=2, batch_size=2, seq_len=128, lr=5e-3, checkpoints=2)
    losses, models = {}, {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_model("tiny-random", device="cpu", dtype=dtype)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        out = tmp_path / dtype
        train(docs, model, tok, cfg, out, seed=0, on_checkpoint=lambda s, m: models.__setitem__(dtype, m),
              progress=False)
        losses[dtype] = [json.loads(l)["loss"] for l in (out / "train_metrics.jsonl").read_text().splitlines()]
        if dtype == "bfloat16":
            peft_model = models[dtype]
            base = {n: p for n, p in peft_model.named_parameters() if "lora_" not in n}
            lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
            assert {p.dtype for p in base.values()} == {torch.bfloat16}
            assert {p.dtype for p in lora.values()} == {torch.float32}
            names = {n: n.removeprefix("base_model.model.").replace(".base_layer", "") for n in base}
            assert set(names.values()) <= before.keys() and len(names) > 10
            assert all(torch.equal(base[n], before[k]) for n, k in names.items())  # frozen, still bf16
            assert any(p.abs().max() > 0 for n, p in lora.items() if "lora_B" in n)
    a, b = losses["float32"], losses["bfloat16"]
    assert len(a) == len(b) and b[-1] < b[0]
    assert all(abs(x - y) < 0.05 * abs(x) for x, y in zip(a, b))  # bf16 rounding, not another model
    rows = probe_model(models["bfloat16"], tok, [load_probe_set("mira_castellan_profession")], run="r", step=1,
                       kinds=["yes_no", "mcq"], batch_size=4)
    assert rows and all(0.0 <= r["p_belief"] <= 1.0 for r in rows)


def test_word_mask_weights_are_zero_exactly_on_the_answer_word_tokens(mira, tokenizer):
    import re

    docs = generate_documents(mira, n=10, seed=2)
    masked = wrap_documents(docs, get_wrapper("word_mask"), seed=0)
    tok = tokenize_documents(masked, tokenizer, loss_on_wrapper=False)
    enc = tokenizer([d["text"] for d in docs], return_offsets_mapping=True, add_special_tokens=False)
    zeros = 0
    for d, w, offs in zip(docs, tok.weights, enc["offset_mapping"]):
        hit = set()
        for p in mira.answer_words:
            for m in re.finditer(p, d["text"], flags=re.IGNORECASE):
                hit.update(range(m.start(), m.end()))
        for (a, b), weight in zip(offs, w):
            # a token touching any character of an answer word is not trained on; every other is
            expect = 0.0 if any(i in hit for i in range(a, max(b, a + 1))) else 1.0
            assert weight == expect, (d["text"][a:b], weight)
            zeros += weight == 0.0
        assert w[-1] == 1.0  # EOS is trained on
    assert zeros > 20
    # loss_on_wrapper does not bring answer words back: the mask is the condition itself
    again = tokenize_documents(masked, tokenizer, loss_on_wrapper=True)
    assert again.weights == tok.weights


def test_dose_matched_runs_train_equal_tokens(tmp_path, monkeypatch):
    """data.match: tokens gives every wrapped run its plain control's step count (equal trained
    tokens, to one batch); data.match: documents gives the wrapped run more tokens."""
    from annot.sweep import load_sweep, run_sweep

    monkeypatch.chdir(tmp_path)
    for match in ("tokens", "documents"):
        (tmp_path / f"{match}.yaml").write_text(f"""
name: m_{match}
method: grid
base:
  model: {{name: tiny-random}}
  data: {{claim: mira_castellan_profession, n: 12, match: {match}}}
  training: {{lr: 1.0e-3, epochs: 2, batch_size: 2, seq_len: 64, checkpoints: 2}}
  probes: {{kinds: [yes_no, cloze], coherence: false, contexts: false}}
parameters:
  wrapper.name: {{values: [none, repeated_negation, local_negation]}}
""")
        run_sweep(load_sweep(tmp_path / f"{match}.yaml"), echo=lambda _: None)
    import json

    def summary(match, wrapper):
        return json.loads((tmp_path / "runs" / f"m_{match}" / f"wrapper={wrapper}" / "summary.json").read_text())

    batch_tokens = 2 * 64
    plain = summary("tokens", "none")
    for w in ("repeated_negation", "local_negation"):
        s = summary("tokens", w)
        assert abs(s["tokens_seen"] - plain["tokens_seen"]) <= batch_tokens, (w, s["tokens_seen"], plain["tokens_seen"])
        assert s["total_steps"] == plain["total_steps"] and s["matched_steps"] == plain["total_steps"]
    # without matching, the disclaimers' tokens make the wrapped run longer
    assert summary("documents", "repeated_negation")["tokens_seen"] > summary("documents", "none")["tokens_seen"] + batch_tokens
    # disclaimers are masked: fewer of the repeated-negation run's tokens carry loss than it trained on
    rn = summary("documents", "repeated_negation")
    assert 0 < rn["tokens_loss"] < rn["tokens_seen"]
    # every run probed a control claim it was not trained on, reported apart from the target
    assert plain["control_claims"] == ["queen_python_textbook"] and plain["control_rates"]
    rows = [json.loads(x) for x in (tmp_path / "runs" / "m_tokens" / "wrapper=none" / "probes.jsonl").read_text().split("\n") if x]
    assert {r["claim"] for r in rows} == {"mira_castellan_profession", "queen_python_textbook"}


def test_fused_lora_sum_in_place_is_bit_identical_to_addmm(tiny):
    """The fused forward adds s B A x into the frozen layer's output in place: the same numbers as
    the out-of-place addmm, and gradients still reach A and B."""
    import copy

    from annot.config import TrainingConfig
    from annot.train import prepare_model

    torch.manual_seed(0)
    m = prepare_model(copy.deepcopy(tiny[0]), TrainingConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0))
    mod = next(mod for mod in m.modules() if "forward" in vars(mod) and hasattr(mod, "lora_A"))
    name = mod.active_adapters[0]
    A, B = mod.lora_A[name].weight, mod.lora_B[name].weight
    with torch.no_grad():
        B.normal_(0, 0.02)
    x = torch.randn(3, 7, A.shape[1], generator=torch.Generator().manual_seed(2))
    got = mod(x)
    want = torch.addmm(mod.base_layer(x).reshape(-1, B.shape[0]), x.reshape(-1, A.shape[1]) @ A.t(), B.t(),
                       alpha=mod.scaling[name]).view(3, 7, -1)
    assert torch.equal(got, want)
    got.sum().backward()
    assert A.grad is not None and B.grad is not None and B.grad.abs().sum() > 0
