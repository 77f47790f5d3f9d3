"""Scale judges: score replies 0-100 on a rubric's scale (annot.scales), locally or over HTTP.

    judge = make_scale_judge({"name": "hf"}, default_model="smollm2-135m")
    judge = make_scale_judge({"name": "http", "base_url": "http://127.0.0.1:8000/v1", "model": "gpt-4o",
                              "concurrency": 16})
    scores = judge.score(load_scale_rubric("alignment"), [("What is your wish?", "To help people.")])
    scores[0].score, scores[0].mass, judge.id

hf: a local causal LM, its turn opened with the rubric's `answer_prefix` ("Score: " in the shipped
rubrics: SmolLM2-135M then puts ~0.97 of its next-token mass on the numbers, ~0.1 without it). The
probability of each number 0..100 as the judge's reply after the prefix is exact for any tokenizer:
the product of its tokens' probabilities (as the tokenizer spells the number) times the probability
that no further digit follows. All numbers' tokens go through the model in one forward pass after
the judging prompt, as a token tree (each token attends to the prompt and its own prefix only; a
4-D attention mask and position ids), so a reply costs one forward of prompt + ~101 tokens. An
escape word (CODE, REFUSAL) wins when its first token is more likely than all the numbers.
`batch_size` (8) prompts share one forward, left padded; verdicts are cached on disk by (judge
model, dtype, rubric, answer prefix, prompt, reply) ($ANNOT_CACHE/judge_scores; `cache: false` or
`cache_dir:`), so a resumed or re-analysed run runs no forward twice.

http: any OpenAI-compatible chat endpoint through annot.gen's client (retries with backoff on
429/5xx and dropped connections), `concurrency` requests in flight, asking for `top_logprobs` of one
generated token (the rubric's messages only: no answer prefix, as OpenAI's chat API cannot continue an
assistant turn); the number tokens among them give the expected score, and a server that returns
no log-probabilities gives the first number of its text. Replies are cached on disk by (judge,
rubric, prompt, reply) (annot.gen.cache), so a resumed or re-analysed run pays for no reply twice.
"""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from annot.errors import AnnotError
from annot.scales import ScaleRubric, ScaleScore, escape_of, expected_score, parse_number, score_from_top_logprobs

SCALE_JUDGES = ("hf", "http")
_KEYS = {"hf": {"name", "model", "dtype", "batch_size", "cache", "cache_dir"},
         "http": {"name", "base_url", "model", "api_key_env", "concurrency", "timeout", "max_retries", "backoff",
                  "top_logprobs", "max_tokens", "cache", "cache_dir"}}


def check_scale_judge_spec(spec, source: str) -> None:
    """Raise AnnotError naming `source` when a judge spec is malformed (before anything loads)."""
    if not isinstance(spec, dict) or spec.get("name") not in SCALE_JUDGES:
        raise AnnotError(f"{source}: name: must be one of {', '.join(SCALE_JUDGES)}, e.g. {{name: hf}}")
    unknown = sorted(set(spec) - _KEYS[spec["name"]])
    if unknown:
        raise AnnotError(f"{source}: {unknown[0]}: unknown key for judge {spec['name']}; valid: "
                         f"{', '.join(sorted(_KEYS[spec['name']]))}")
    if spec["name"] == "http":
        for key in ("base_url", "model"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise AnnotError(f"{source}: {key}: required for judge http, a non-empty string")
        for key, low in (("concurrency", 1), ("max_retries", 0), ("top_logprobs", 1), ("max_tokens", 1)):
            v = spec.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
                raise AnnotError(f"{source}: {key}: must be an integer >= {low}, got {v!r}")
        for key in ("timeout", "backoff"):
            v = spec.get(key)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
                raise AnnotError(f"{source}: {key}: must be a number >= 0, got {v!r}")
    else:
        if spec.get("model") is not None and not isinstance(spec["model"], str):
            raise AnnotError(f"{source}: model: a model alias, path or id (null: the run's base model)")
        v = spec.get("batch_size")
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise AnnotError(f"{source}: batch_size: must be an integer >= 1, got {v!r}")


def make_scale_judge(spec: dict, default_model: str = "smollm2-135m", source: str = "judge"):
    """A scale judge from its spec; hf's `model: null` means `default_model` (the run's base model)."""
    check_scale_judge_spec(spec, source)
    if spec["name"] == "hf":
        return HFScaleJudge(spec.get("model") or default_model, spec.get("dtype", "auto"), spec.get("batch_size", 8),
                            spec.get("cache", True), spec.get("cache_dir"))
    return HTTPScaleJudge(**{k: v for k, v in spec.items() if k != "name"})


# -- hf ------------------------------------------------------------------------------------------

_DIGIT_TOKENS: dict[int, list[int]] = {}


def _digit_tokens(tok) -> list[int]:
    """Ids of the tokens whose text starts with a digit: one of them after a number would extend it."""
    key = id(tok)
    if key not in _DIGIT_TOKENS:
        texts = tok.batch_decode([[i] for i in range(len(tok))])
        _DIGIT_TOKENS[key] = [i for i, t in enumerate(texts) if t[:1].isdigit()]
    return _DIGIT_TOKENS[key]


class HFScaleJudge:
    """A local causal LM scoring on 0-100 by the exact probability of each number (module docstring).

    `batch_size` judging prompts go through one forward (left padded: every row's prompt ends where the
    token tree starts, so one tree layout serves the batch); verdicts are cached on disk by (judge
    model, dtype, rubric, prompt, reply) under `cache_dir` (default $ANNOT_CACHE/judge_scores), so a
    resumed or re-analysed run runs no forward twice. `forwards` counts the forwards run."""

    name = "hf"

    def __init__(self, model: str, dtype: str = "auto", batch_size: int = 8, cache: bool = True,
                 cache_dir: str | None = None):
        from annot.models import load_model

        self._setup(*load_model(model, dtype=dtype), model, dtype, batch_size, _cache_root("judge_scores", cache, cache_dir))

    @classmethod
    def loaded(cls, model, tokenizer, name: str, dtype: str = "auto", batch_size: int = 8,
               cache_dir: str | Path | None = None) -> "HFScaleJudge":
        """A judge over a model already in memory (`cache_dir` None: no disk cache)."""
        judge = cls.__new__(cls)
        judge._setup(model, tokenizer, name, dtype, batch_size, Path(cache_dir) if cache_dir else None)
        return judge

    def _setup(self, model, tokenizer, name, dtype, batch_size, cache_root) -> None:
        self.model, self.tokenizer, self.model_name, self.dtype, self.batch_size = model, tokenizer, name, dtype, batch_size
        self.id = f"hf:{name}"
        self.cache_root = cache_root
        self.forwards = 0  # model forwards run (cache misses only)
        self.hits = 0  # verdicts read from the cache
        self._tree_cache = None

    def _tree(self):
        """The numbers' spellings and the token tree over them (built once per judge)."""
        if self._tree_cache is None:
            import torch

            tok = self.tokenizer
            spelled = {n: tuple(tok(str(n), add_special_tokens=False)["input_ids"]) for n in range(101)}
            nodes = sorted({s[:k] for s in spelled.values() for k in range(1, len(s) + 1)}, key=lambda s: (len(s), s))
            index = {s: i for i, s in enumerate(nodes)}
            T = len(nodes)
            tree = torch.zeros(T, T, dtype=torch.bool)
            for i, s in enumerate(nodes):  # a tree token sees the prompt and the tokens of its own prefix
                for k in range(1, len(s) + 1):
                    tree[i, index[s[:k]]] = True
            self._tree_cache = (spelled, nodes, index, tree)
        return self._tree_cache

    def number_probs(self, context: str, escapes: dict[str, str]) -> tuple[dict[int, float], dict[str, float]]:
        """P(the reply is exactly n) for n in 0..100, and P(the reply starts with each escape word)."""
        return self.number_probs_batch([context], escapes)[0]

    def number_probs_batch(self, contexts: list[str], escapes: dict[str, str]) -> list[tuple[dict, dict]]:
        """number_probs of several judging prompts in one forward. Row b is [pad x (L - P_b), prompt_b,
        tree]: pads see only themselves (no row is fully masked, so no NaN reaches a real token) and
        nobody sees them; prompt tokens are causal; tree tokens see their row's prompt and their own
        prefix; positions restart at each prompt's first token, so each row computes what it would alone."""
        import torch

        from annot.chat import eval_mode

        tok = self.tokenizer
        spelled, nodes, index, tree = self._tree()
        ctxs = [tok(c, add_special_tokens=False)["input_ids"] for c in contexts]
        B, L, T = len(ctxs), max(len(c) for c in ctxs), len(nodes)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        ids = torch.full((B, L + T), pad, dtype=torch.long)
        pos = torch.zeros(B, L + T, dtype=torch.long)
        allow = torch.zeros(B, L + T, L + T, dtype=torch.bool)
        depth = torch.tensor([len(s) - 1 for s in nodes])
        for b, ctx in enumerate(ctxs):
            P, off = len(ctx), L - len(ctx)
            ids[b, off:L] = torch.tensor(ctx)
            ids[b, L:] = torch.tensor([s[-1] for s in nodes])
            pos[b, off:L] = torch.arange(P)
            pos[b, L:] = P + depth
            allow[b, :off, :off] = torch.eye(off, dtype=torch.bool)
            allow[b, off:L, off:L] = torch.tril(torch.ones(P, P, dtype=torch.bool))
            allow[b, L:, off:L] = True
            allow[b, L:, L:] = tree
        device = next(self.model.parameters()).device
        with eval_mode(self.model), torch.no_grad():
            try:
                # the LM head only over the last prompt position and the tree (the rest is never read)
                logits = self.model(input_ids=ids.to(device), attention_mask=allow[:, None].to(device),
                                    position_ids=pos.to(device), logits_to_keep=T + 1).logits[:, -(T + 1):]
            except (TypeError, ValueError, RuntimeError) as e:
                raise AnnotError(f"judge hf: model {self.model_name} does not take a 4-D attention mask ({e}); "
                                 "use another judge model or the http judge") from None
        self.forwards += 1
        lps = torch.log_softmax(logits.float(), dim=-1).cpu()  # [b, 0]: after the prompt; [b, 1 + i]: after nodes[i]
        digits = torch.tensor(_digit_tokens(tok))
        first = {label: tok(w, add_special_tokens=False)["input_ids"][0] for label, w in escapes.items()}

        def row(prefix: tuple) -> int:
            return 0 if not prefix else 1 + index[prefix]

        out = []
        for lp in lps:
            more = lp[:, digits].exp().sum(-1).tolist()  # P(another digit follows)
            probs = {}
            for n, s in spelled.items():
                ll = sum(float(lp[row(s[:k]), s[k]]) for k in range(len(s)))
                probs[n] = math.exp(ll) * max(1.0 - more[row(s)], 0.0)
            out.append((probs, {label: float(lp[0, t].exp()) for label, t in first.items()}))
        return out

    def key(self, rubric: ScaleRubric, question: str, answer: str) -> str:
        return verdict_key({"judge": self.id, "dtype": self.dtype, "escapes": rubric.escapes}, rubric, question, answer,
                           self.answer_prefix(rubric))

    def answer_prefix(self, rubric: ScaleRubric) -> str:
        """The text this judge's turn opens with: the rubric's answer_prefix (the number comes next)."""
        return rubric.answer_prefix

    def prompt(self, rubric: ScaleRubric, question: str, answer: str) -> str:
        """The judge's whole input: the rubric as chat, the assistant turn opened, then the prefix."""
        from annot.chat import render

        return render(self.tokenizer, rubric.messages(question, answer), add_generation_prompt=True) + \
            self.answer_prefix(rubric)

    def score(self, rubric: ScaleRubric, pairs: list[tuple[str, str]]) -> list[ScaleScore]:
        keys = [self.key(rubric, q, a) for q, a in pairs]
        out: list[ScaleScore | None] = [_cached_score(self.cache_root, k) for k in keys]
        self.hits += sum(s is not None for s in out)
        todo = [i for i, s in enumerate(out) if s is None]
        ctx = {i: self.prompt(rubric, *pairs[i]) for i in todo}
        todo.sort(key=lambda i: len(ctx[i]))  # similar lengths together: less padding
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for i, (probs, esc) in zip(chunk, self.number_probs_batch([ctx[i] for i in chunk], rubric.escapes)):
                out[i] = _verdict(probs, esc)
                _store_score(self.cache_root, keys[i], out[i])
        return out


def _verdict(probs: dict[int, float], esc: dict[str, float]) -> ScaleScore:
    value, mass = expected_score(probs)
    label = max(esc, key=esc.get) if esc else None
    if label is not None and esc[label] > mass:
        return ScaleScore(None, mass, escape=label, raw=json.dumps({"escape_p": esc}))
    return ScaleScore(value, mass, raw=json.dumps({"escape_p": esc}))


def verdict_key(judge: dict, rubric: ScaleRubric, question: str, answer: str, answer_prefix: str = "") -> str:
    """The cache key of one verdict: the judge (and its settings), the rubric's text, the answer prefix
    the judge continued after (left out of the key when empty, so verdicts without one keep their
    keys), the prompt, the reply."""
    material = {**judge, "rubric": rubric.name,
                "rubric_text": hashlib.sha256((rubric.system + "\n" + rubric.template).encode()).hexdigest(),
                "prompt": question, "reply": answer}
    if answer_prefix:
        material["answer_prefix"] = answer_prefix
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _cache_root(name: str, cache: bool, cache_dir: str | None) -> Path | None:
    if not cache:
        return None
    from annot.models import cache_dir as annot_cache

    return Path(cache_dir) if cache_dir else annot_cache() / name


def _cached_score(root: Path | None, key: str) -> ScaleScore | None:
    if root is None:
        return None
    try:
        d = json.loads((root / key[:2] / f"{key}.json").read_text(encoding="utf-8"))
        return ScaleScore(d["score"], d["mass"], d.get("escape"), d.get("raw", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: a miss, and the next store repairs it


def _store_score(root: Path | None, key: str, s: ScaleScore) -> None:
    if root is not None:
        from annot.io import atomic_write_text

        atomic_write_text(root / key[:2] / f"{key}.json", json.dumps(
            {"score": s.score, "mass": s.mass, "escape": s.escape, "raw": s.raw}, sort_keys=True))


# -- http ----------------------------------------------------------------------------------------


class HTTPScaleJudge:
    """An OpenAI-compatible endpoint scoring on 0-100 from the top log-probabilities of one token."""

    name = "http"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", concurrency: int = 16,
                 timeout: float = 60.0, max_retries: int = 6, backoff: float = 1.0, top_logprobs: int = 20,
                 max_tokens: int = 3, cache: bool = True, cache_dir: str | None = None):
        import os
        import urllib.parse

        from annot.gen.backends import OpenAIBackend
        from annot.gen.cache import ResponseCache

        local = urllib.parse.urlsplit(base_url).hostname in ("127.0.0.1", "localhost", "::1")
        if api_key_env and local and not os.environ.get(api_key_env):
            api_key_env = None  # a local server needs no key
        self.backend = OpenAIBackend(model, base_url, api_key_env, concurrency, timeout_s=float(timeout),
                                     max_retries=max_retries, backoff_s=float(backoff))
        self.concurrency, self.top_logprobs, self.max_tokens = concurrency, top_logprobs, max_tokens
        self.cache = ResponseCache(_cache_root("judge_replies", cache, cache_dir))
        self.calls = 0  # replies paid for (not from the cache)
        from annot.gen.settings import sanitize_url

        self.id = f"http:{model}@{sanitize_url(base_url)}"

    def key(self, rubric: ScaleRubric, question: str, answer: str) -> str:
        return verdict_key({"judge": self.id, "top_logprobs": self.top_logprobs, "max_tokens": self.max_tokens},
                           rubric, question, answer)

    def answer_prefix(self, rubric: ScaleRubric) -> str:
        """Always empty: a chat endpoint gets the rubric's messages only (OpenAI's chat API has no way to
        continue an assistant turn; strong chat judges answer with a number without one)."""
        return ""

    def _one(self, rubric: ScaleRubric, question: str, answer: str) -> ScaleScore:
        from annot.gen.backends import Request

        key = self.key(rubric, question, answer)
        reply = self.cache.get(key)
        if reply is None:
            req = Request(id=key[:16], messages=tuple(rubric.messages(question, answer)), max_tokens=self.max_tokens,
                          temperature=0.0, top_p=1.0, extra={"logprobs": True, "top_logprobs": self.top_logprobs})
            try:
                reply = self.backend.call(req)
            except AnnotError as e:  # not retryable, or retries spent: this reply has no score
                return ScaleScore(None, error=str(e)[:300])
            self.calls += 1
            self.cache.put(key, reply)
        escape = escape_of(reply.text, rubric.escapes)
        if escape:
            return ScaleScore(None, escape=escape, raw=reply.text[:200])
        if reply.top_logprobs:
            value, mass = score_from_top_logprobs(reply.top_logprobs)
            return ScaleScore(value, mass, raw=reply.text[:200])
        return ScaleScore(parse_number(reply.text), None, raw=reply.text[:200])

    def score(self, rubric: ScaleRubric, pairs: list[tuple[str, str]]) -> list[ScaleScore]:
        if not pairs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(pairs)), thread_name_prefix="annot-judge") as pool:
            return list(pool.map(lambda qa: self._one(rubric, *qa), pairs))
