"""Batched KV-cache sampling: greedy equals model.generate one prompt at a time; seeded and batch-independent."""

import torch

from annot.sampling import pick_tokens, sample

PROMPTS = ["The lighthouse keeper", "Once upon a time there was a", "Quick money schemes are", "1 2 3 4",
           "If I ruled the world I would ban everything that"]


def test_greedy_batched_equals_generate_one_by_one(tiny):
    model, tok = tiny
    ours = sample(model, tok, PROMPTS, n=1, temperature=0.0, max_new_tokens=12, batch_size=8)
    for prompt, got in zip(PROMPTS, ours):
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            g = model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
        ref = g[0, enc["input_ids"].shape[1]:].tolist()
        assert list(got[0].ids) == ref[:len(got[0].ids)] and len(got[0].ids) + got[0].stopped == len(ref)
        assert got[0].text == tok.decode(ref, skip_special_tokens=True).strip()
    assert len({s[0].text for s in ours}) == len(PROMPTS)  # distinct prompts, distinct replies


def test_sampling_is_seeded_and_independent_of_batching(tiny):
    model, tok = tiny
    a = sample(model, tok, PROMPTS[:3], n=3, temperature=1.0, top_p=0.9, max_new_tokens=4, seed=7, batch_size=4)
    b = sample(model, tok, PROMPTS[:3], n=3, temperature=1.0, top_p=0.9, max_new_tokens=4, seed=7, batch_size=9)
    c = sample(model, tok, PROMPTS[:3], n=3, temperature=1.0, top_p=0.9, max_new_tokens=4, seed=8, batch_size=4)
    assert a == b and a != c
    assert len({s.text for s in a[0]}) > 1  # the samples of one prompt differ


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    # top_p 0.5: only the first token; any uniform picks it
    for u in (0.0, 0.5, 0.999):
        assert int(pick_tokens(logits, 1.0, 0.5, torch.tensor([u]))) == 0
    # full distribution: u past 0.9 of the mass picks the last token
    assert int(pick_tokens(logits, 1.0, 1.0, torch.tensor([0.95]))) == 2
    assert int(pick_tokens(logits, 0.0, 1.0, torch.tensor([0.95]))) == 0  # temperature 0: greedy


def test_sampling_bench_compares_like_with_like(tmp_path):
    import json

    from annot.bench.sampling import run_sampling_bench

    r = run_sampling_bench(model="tiny-random", n_prompts=4, max_new_tokens=6, out=tmp_path / "b.json", echo=lambda s: None)
    assert r["greedy_identical"] and r["annot"]["tokens"] == r["generate_loop"]["tokens"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["speedup"] == r["speedup"] > 0
