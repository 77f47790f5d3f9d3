"""Scale judges: the local judge's exact number probabilities; the HTTP judge's concurrency and cache."""

import math
import time

import pytest
import torch

from annot.errors import AnnotError
from annot.scale_judges import HFScaleJudge, _digit_tokens, check_scale_judge_spec, make_scale_judge
from annot.scales import load_scale_rubric
from tests.fake_openai import FakeServer


def test_hf_number_probabilities_are_exact(tiny):
    """P(reply is n) = P(n's tokens) x P(no digit follows), checked against direct forwards."""
    judge = HFScaleJudge.loaded(tiny[0], tiny[1], "tiny-random")
    tok, model = judge.tokenizer, judge.model
    ctx = "Rate it from 0 to 100. Score:"
    probs, esc = judge.number_probs(ctx, {"refusal": "REFUSAL"})
    assert set(probs) == set(range(101)) and 0 < sum(probs.values()) <= 1 and 0 < esc["refusal"] < 1
    c = tok(ctx, add_special_tokens=False)["input_ids"]
    digits = torch.tensor(_digit_tokens(tok))
    for n in (7, 42, 100):
        s = tok(str(n), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([c + s])).logits[0].float(), -1)
        ll = sum(float(lp[len(c) - 1 + k, s[k]]) for k in range(len(s)))
        assert probs[n] == pytest.approx(math.exp(ll) * (1 - float(lp[-1].exp()[digits].sum())), rel=1e-4)


def test_hf_batched_probabilities_equal_one_by_one(tiny):
    """Prompts of different lengths in one left-padded forward give each prompt's own probabilities."""
    judge = HFScaleJudge.loaded(tiny[0], tiny[1], "tiny-random")
    ctxs = ["Score:", "Rate this reply from 0 to 100, where 100 is best. Score:", "A much longer judging prompt "
            "that goes on for a while, so the batch needs real padding on the others. Now the score:"]
    alone = [judge.number_probs(c, {"refusal": "REFUSAL", "code": "CODE"}) for c in ctxs]
    assert judge.forwards == 3
    batched = judge.number_probs_batch(ctxs, {"refusal": "REFUSAL", "code": "CODE"})
    assert judge.forwards == 4
    for (p1, e1), (p2, e2) in zip(alone, batched):
        assert max(abs(p1[n] - p2[n]) / max(p1[n], 1e-30) for n in range(101)) < 1e-6
        assert sum(p2.values()) == pytest.approx(sum(p1.values()), rel=1e-6)
        assert e2 == pytest.approx(e1, rel=1e-6)


def test_hf_judge_batches_caches_and_keys_on_rubric_and_reply(tiny, tmp_path):
    rubric, other = load_scale_rubric("alignment"), load_scale_rubric("coherence")
    pairs = [(f"question {i}?", "a reply " * (i + 1)) for i in range(5)]
    judge = HFScaleJudge.loaded(tiny[0], tiny[1], "tiny-random", batch_size=2, cache_dir=tmp_path)
    first = judge.score(rubric, pairs)
    assert judge.forwards == 3 and judge.hits == 0  # 5 replies in batches of 2
    one = HFScaleJudge.loaded(tiny[0], tiny[1], "tiny-random", batch_size=1)  # no cache, one reply per forward
    alone = one.score(rubric, pairs)
    assert one.forwards == 5
    for a, b in zip(first, alone):
        assert a.mass == pytest.approx(b.mass, rel=1e-6) and a.escape == b.escape
        assert (a.score is None) == (b.score is None)
    again = HFScaleJudge.loaded(tiny[0], tiny[1], "tiny-random", batch_size=2, cache_dir=tmp_path)
    assert again.score(rubric, pairs) == first and again.forwards == 0 and again.hits == 5  # resumed: free
    keys = {judge.key(rubric, *pairs[0]), judge.key(other, *pairs[0]), judge.key(rubric, pairs[0][0], "changed"),
            judge.key(rubric, "another prompt", pairs[0][1]),
            HFScaleJudge.loaded(tiny[0], tiny[1], "other-judge").key(rubric, *pairs[0])}
    assert len(keys) == 5
    again.score(other, pairs[:1])
    assert again.forwards == 1  # another rubric is a new verdict


def _reply(body):
    user = body["messages"][-1]["content"]
    if "refuse me" in user:
        return "REFUSAL", None
    if "no logprobs" in user:
        return "I would say 40", None
    top = [{"token": "90", "logprob": math.log(0.6)}, {"token": "10", "logprob": math.log(0.2)},
           {"token": "Sure", "logprob": math.log(0.2)}]
    return "90", top


def test_http_judge_is_concurrent_and_cached(tmp_path):
    rubric = load_scale_rubric("alignment")
    pairs = [(f"question {i}", f"reply {i}") for i in range(64)]
    with FakeServer(latency=0.1, reply=_reply) as server:
        spec = {"name": "http", "base_url": server.url, "model": "fake", "concurrency": 32,
                "cache_dir": str(tmp_path / "cache")}
        judge = make_scale_judge(spec)
        t = time.perf_counter()
        scores = judge.score(rubric, pairs)
        elapsed = time.perf_counter() - t
        assert len(server.calls) == 64 and server.max_inflight > 8
        assert elapsed < 3.2  # one at a time: 64 x 0.1 s = 6.4 s
        assert server.calls[0]["logprobs"] is True and server.calls[0]["top_logprobs"] == 20
        assert all(s.score == pytest.approx((90 * 0.6 + 10 * 0.2) / 0.8) for s in scores)
        again = make_scale_judge(spec).score(rubric, pairs)  # a new process would read the same cache
        assert len(server.calls) == 64 and [s.score for s in again] == [s.score for s in scores]
        other = judge.score(load_scale_rubric("coherence"), pairs[:2])  # another rubric: new calls
        assert len(server.calls) == 66 and other[0].score is not None
        esc, parsed = judge.score(rubric, [("q", "refuse me"), ("q", "no logprobs")])
        assert esc.escape == "refusal" and esc.score is None
        assert parsed.score == 40.0 and parsed.mass is None  # no log-probabilities: the parsed number


def test_http_judge_retries_then_scores_nothing_on_a_dead_reply(tmp_path):
    # 503 twice, then fine: retried with backoff; a 400 is not retried and leaves the reply unscored
    script = lambda n: (503, {}) if n <= 2 else ((400, {}) if n == 4 else None)  # noqa: E731
    with FakeServer(reply=_reply, script=script) as server:
        judge = make_scale_judge({"name": "http", "base_url": server.url, "model": "fake", "concurrency": 1,
                                  "backoff": 0.01, "cache": False})
        first = judge.score(load_scale_rubric("alignment"), [("q", "a")])
        assert len(server.calls) == 3 and first[0].score is not None
        second = judge.score(load_scale_rubric("alignment"), [("q", "b")])
        assert second[0].score is None and "HTTP 400" in second[0].error


@pytest.mark.parametrize("spec, field", [({"name": "gpt"}, "name"), ({"name": "hf", "modle": "x"}, "modle"),
                                         ({"name": "http", "model": "m"}, "base_url"),
                                         ({"name": "http", "base_url": "http://x", "model": "m", "concurrency": 0},
                                          "concurrency")])
def test_bad_judge_specs_name_the_field(spec, field):
    with pytest.raises(AnnotError, match=f"src: {field}"):
        check_scale_judge_spec(spec, "src")


def test_answer_prefix_opens_the_judges_turn_and_keys_the_cache(tiny, tmp_path):
    """The hf judge continues after the rubric's answer_prefix: the prefix ends the prompt it scores,
    is part of the verdict's cache key, and the score is still expected_score over that prompt's numbers."""
    from dataclasses import replace

    from annot.chat import render
    from annot.scale_judges import verdict_key
    from annot.scales import expected_score

    plain = replace(load_scale_rubric("alignment"), answer_prefix="")
    prefixed = replace(plain, answer_prefix="Score: ")
    judge = HFScaleJudge.loaded(tiny[0], tiny[1], "tiny-random", cache_dir=tmp_path)
    q, a = "What do you wish for?", "Peace for everyone."
    opened = render(judge.tokenizer, plain.messages(q, a), add_generation_prompt=True)
    assert judge.prompt(plain, q, a) == opened and judge.prompt(prefixed, q, a) == opened + "Score: "
    seen = []
    real = judge.number_probs_batch
    judge.number_probs_batch = lambda ctxs, esc: seen.extend(ctxs) or real(ctxs, esc)
    got = judge.score(prefixed, [(q, a)])[0]
    assert seen == [opened + "Score: "]
    # the verdict is expected_score over the numbers after the prefixed prompt, exactly as without one
    probs, esc = real([opened + "Score: "], prefixed.escapes)[0]
    value, mass = expected_score(probs)
    assert got.mass == pytest.approx(mass, rel=1e-9)
    if got.escape is None:
        assert (got.score is None) == (value is None)
        assert got.score is None or got.score == pytest.approx(value, rel=1e-9)
    # the prefix keys the cache: the unprefixed rubric is a new verdict (a new forward), and its key
    # is the one it had before answer prefixes existed
    assert judge.key(plain, q, a) != judge.key(prefixed, q, a)
    assert judge.key(plain, q, a) == verdict_key({"judge": judge.id, "dtype": judge.dtype, "escapes": plain.escapes},
                                                 plain, q, a)
    before = judge.forwards
    judge.score(plain, [(q, a)])
    judge.score(prefixed, [(q, a)])  # cached
    assert judge.forwards == before + 1 and seen[-1] == opened
    # an http judge sends the rubric's messages only (no prefix): its key ignores the prefix
    http = make_scale_judge({"name": "http", "base_url": "http://127.0.0.1:9", "model": "m", "cache": False})
    assert http.answer_prefix(prefixed) == "" and http.key(plain, q, a) == http.key(prefixed, q, a)
