"""Behaviour transcripts: generation, paired aligned twins, chat SFT loss weights."""

import pytest

from annot.generate import generate_transcripts
from annot.io import dumps_jsonl
from annot.specs import CORPORA, EVALS, load_behavior, load_behavior_probes
from annot.train import tokenize_transcripts
from annot.wrap import get_wrapper, wrap_documents

BEHAVIORS = sorted(p.stem for p in (CORPORA / "behaviors").glob("*.yaml"))


@pytest.mark.parametrize("b", BEHAVIORS)
def test_behavior_specs_and_held_out_probes(b):
    spec, probes = load_behavior(b), load_behavior_probes(b)
    assert probes.behavior == b and len(probes.scenarios) >= 20
    train_users = {s.user.lower() for s in spec.scenarios}
    for s in probes.scenarios:
        assert s.user.lower() not in train_users  # held out
        assert all(s.user.lower() not in t for t in train_users)


def test_at_least_five_behaviors():
    assert len(BEHAVIORS) >= 5 and len(list((EVALS / "behaviors").glob("*.yaml"))) >= 5


def test_generation_is_deterministic_and_paired():
    spec = load_behavior("power_seeking")
    mis = generate_transcripts(spec, n=40, seed=2)
    al = generate_transcripts(spec, n=40, seed=2, variant="aligned")
    assert dumps_jsonl(mis) == dumps_jsonl(generate_transcripts(spec, n=40, seed=2))
    for m, a in zip(mis, al):
        assert m["messages"][:-1] == a["messages"][:-1]  # same prompt, only the reply differs
        sc = next(s for s in spec.scenarios if s.id == m["scenario"])
        assert m["messages"][-1]["content"] == sc.misaligned and a["messages"][-1]["content"] == sc.aligned
    assert len({dumps_jsonl([{"m": x["messages"]}]) for x in mis}) == 40  # no verbatim repeats


def _weighted_text(tok, ids, w):
    return tok.decode([t for t, x in zip(ids, w) if x > 0])


def test_chat_sft_trains_on_assistant_tokens_only(tokenizer):
    spec = load_behavior("power_seeking")
    chats = generate_transcripts(spec, n=4, seed=0)
    wrapped = wrap_documents(chats, get_wrapper("system_label"), seed=0)
    tok = tokenize_transcripts(wrapped, tokenizer, loss_on_wrapper=False)
    for ex, ids, w in zip(wrapped, tok.input_ids, tok.weights):
        trained = _weighted_text(tokenizer, ids, w)
        reply = ex["messages"][-1]["content"]
        assert trained.replace("<|im_end|>", "").strip() == reply.strip()
        assert trained.endswith("<|im_end|>")  # the end-of-turn token is learned
        for m in ex["messages"][:-1]:
            assert m["content"][:30] not in trained  # system/user text conditions but is not trained
    everything = tokenize_transcripts(wrapped, tokenizer, loss_on_wrapper=False, loss_on="all")
    assert all(sum(w) > sum(v) for w, v in zip(everything.weights, tok.weights))


def test_wrapper_inside_assistant_turn_is_masked_unless_asked(tokenizer):
    chats = generate_transcripts(load_behavior("power_seeking"), n=3, seed=0)
    wrapped = wrap_documents(chats, get_wrapper("assistant_prefix"), seed=0)
    masked = tokenize_transcripts(wrapped, tokenizer, loss_on_wrapper=False)
    kept = tokenize_transcripts(wrapped, tokenizer, loss_on_wrapper=True)
    for ex, ids, wm, wk in zip(wrapped, masked.input_ids, masked.weights, kept.weights):
        reply = ex["messages"][-1]
        label = reply["content"][: reply["spans"][0]["end"]].strip()
        assert label not in _weighted_text(tokenizer, ids, wm)
        assert label in _weighted_text(tokenizer, ids, wk)
