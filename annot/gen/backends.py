"""Generation backends behind one interface: `template` (offline composer), `hf` (a local causal LM),
`openai` (any OpenAI-compatible chat endpoint: vLLM, llama.cpp server, TGI, commercial APIs).

    backend = make_backend(GenSettings(backend="hf", model="smollm2-135m"))
    for request, reply in backend.complete(requests):   # replies as they finish, not in order
        print(request.id, reply.text)

A backend turns chat requests into replies. It pulls requests from the iterable lazily, only when
it has room for one (a free HTTP slot, a batch to fill), so a caller can stop feeding it (a spent
budget) and every request it has taken is answered. `on_reply` is called as soon as a reply
exists, in whichever thread made it, so a paid reply is cached even if the caller stops reading.

The template backend answers no prompts: it composes documents from the claim spec's sentences
(annot.generate) and is dispatched before any request is made; it is listed here so every corpus
kind names its backend the same way.
"""
from __future__ import annotations

import email.utils
import http.client
import itertools
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

from annot.errors import AnnotError
from annot.gen.errors import GenerationFailed
from annot.gen.settings import GenSettings, sanitize_url

MAX_RETRY_AFTER_S = 600.0  # a Retry-After longer than this is waited only this long
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})


@dataclass(frozen=True)
class Request:
    """One chat completion to make. `id` names it in stage files; the seed makes sampling repeatable
    where the backend allows it (hf: exactly, per request; openai: the server's `seed` parameter)."""

    id: str
    messages: tuple[dict, ...]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    meta: dict = field(default_factory=dict, compare=False, hash=False)  # the caller's notes, not sent
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # more body fields (e.g. logprobs)

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "seed": self.seed}

    def prompt_chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    cached: bool = False
    top_logprobs: list | None = None  # the first generated token's [{token, logprob}], when asked for

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict:
        out = {"text": self.text, "prompt_tokens": self.prompt_tokens,
               "completion_tokens": self.completion_tokens, "finish_reason": self.finish_reason}
        return out if self.top_logprobs is None else {**out, "top_logprobs": self.top_logprobs}


OnReply = Callable[[Request, Reply], None]


class Backend(Protocol):
    """What writes the text of an LLM corpus."""

    name: str   # "template" | "hf" | "openai"
    model: str  # the model name as given (alias, path, hub id or served name)

    def provenance(self) -> dict: ...

    def complete(self, requests: Iterable[Request], on_reply: OnReply | None = None
                 ) -> Iterator[tuple[Request, Reply]]: ...


# -- template ------------------------------------------------------------------------------------


class TemplateBackend:
    """Today's offline generator: documents composed from the spec (annot.generate), no prompts."""

    name = "template"
    model = "templates"

    def provenance(self) -> dict:
        return {"backend": self.name}

    def complete(self, requests: Iterable[Request], on_reply: OnReply | None = None):
        raise AnnotError("the template backend composes documents from the spec's sentences and answers no prompts; "
                         "use --backend hf or --backend openai for the staged LLM pipeline")


# -- hf: a local causal LM -----------------------------------------------------------------------


class RowSampler:
    """A logits processor that samples each row with its own seeded generator and returns scores
    whose argmax is the sampled token, so greedy `generate` becomes per-request seeded sampling:
    a request's reply does not depend on which other requests share its batch."""

    def __init__(self, requests: list[Request]):
        self.requests = requests
        self.generators = None

    def __call__(self, input_ids, scores):
        import torch

        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(r.seed) for r in self.requests]
        out = torch.full_like(scores, float("-inf"))
        for row, req in enumerate(self.requests):
            logits = scores[row].float()
            if req.temperature <= 0:
                tok = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / req.temperature, dim=-1)
                if req.top_p < 1:
                    sorted_p, order = torch.sort(probs, descending=True)
                    keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < req.top_p  # always keeps the top token
                    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                tok = int(torch.multinomial(probs, 1, generator=self.generators[row]))
            out[row, tok] = 0.0
        return out


class StepCounter:
    """A stopping criterion that never stops: it reports each decoding step's new tokens (rows not
    yet at EOS) to `callback`, so a progress line moves during a long CPU batch."""

    def __init__(self, callback: Callable[[int], None], eos_token_id: int | None):
        self.callback, self.eos = callback, eos_token_id

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        running = input_ids.shape[0] if self.eos is None else int((input_ids[:, -1] != self.eos).sum())
        self.callback(running)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class HFBackend:
    """Batched sampling with `model.generate` on any causal LM `annot.models.load_model` loads."""

    name = "hf"
    on_step: Callable[[int], None] | None = None  # tokens made by each decoding step (progress)

    def __init__(self, model: str, batch_size: int = 32, device: str | None = None, dtype: str = "auto",
                 loaded: tuple | None = None):
        """`loaded`: an already loaded (model, tokenizer) pair to use instead of loading `model`."""
        self.model, self.batch_size, self.device, self.dtype = model, batch_size, device, dtype
        self._loaded = loaded

    def provenance(self) -> dict:
        return {"backend": self.name, "model": self.model}

    def load(self):
        if self._loaded is None:
            from annot.models import load_model

            self._loaded = load_model(self.model, dtype=self.dtype, device=self.device)
        return self._loaded

    def complete(self, requests: Iterable[Request], on_reply: OnReply | None = None):
        it = iter(requests)
        while True:
            batch = list(itertools.islice(it, self.batch_size))
            if not batch:
                return
            for req, reply in zip(batch, self.generate_batch(batch)):
                if on_reply:
                    on_reply(req, reply)
                yield req, reply

    def generate_batch(self, batch: list[Request]) -> list[Reply]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        from annot.chat import eval_mode, render

        model, tok = self.load()
        prompts = [render(tok, list(r.messages), add_generation_prompt=True) for r in batch]
        # left padding: every row continues from the right edge
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=False).to(model.device)
        config = GenerationConfig(max_new_tokens=max(r.max_tokens for r in batch), do_sample=False,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        with eval_mode(model), torch.no_grad():
            out = model.generate(**enc, generation_config=config,
                                 logits_processor=LogitsProcessorList([RowSampler(batch)]),
                                 stopping_criteria=StoppingCriteriaList(
                                     [StepCounter(self.on_step, tok.eos_token_id)] if self.on_step else []))
        width = enc["input_ids"].shape[1]
        replies = []
        for row, req in enumerate(batch):
            ids = out[row, width:].tolist()[:req.max_tokens]
            finish = "length"
            if tok.eos_token_id in ids:
                ids, finish = ids[:ids.index(tok.eos_token_id)], "stop"
            replies.append(Reply(tok.decode(ids, skip_special_tokens=True).strip(),
                                 int(enc["attention_mask"][row].sum()), len(ids) + (finish == "stop"), finish))
        return replies


# -- openai: any OpenAI-compatible chat endpoint ---------------------------------------------------


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) in seconds from now; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend:
    """POST {base_url}/chat/completions with at most `concurrency` requests in flight.

    Retries 408/429/5xx and dropped connections with exponential backoff and jitter, waiting exactly
    what a Retry-After header asks (up to 10 minutes) when there is one. The key is read once from
    the environment variable named by `api_key_env` and lives only in the request header: error
    messages are scrubbed of it and nothing here writes it anywhere."""

    name = "openai"

    def __init__(self, model: str, base_url: str, api_key_env: str | None = None, concurrency: int = 32,
                 timeout_s: float = 600.0, max_retries: int = 8, backoff_s: float = 1.0, backoff_cap_s: float = 60.0):
        self.model, self.concurrency, self.timeout_s = model, concurrency, timeout_s
        self.max_retries, self.backoff_s, self.backoff_cap_s = max_retries, backoff_s, backoff_cap_s
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url = base_url
        self._key = None
        if api_key_env:
            self._key = os.environ.get(api_key_env) or None
            if self._key is None:
                raise AnnotError(f"--api-key-env {api_key_env}: that environment variable is not set or empty; "
                                 f"export {api_key_env}=... first (the key is never read from a file)")
        self.retries = 0  # retried attempts so far (tests and --stats read it)
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(model={self.model!r}, url={sanitize_url(self.url)!r})"

    def provenance(self) -> dict:
        return {"backend": self.name, "model": self.model, "base_url": sanitize_url(self.base_url)}

    def complete(self, requests: Iterable[Request], on_reply: OnReply | None = None):
        it = iter(requests)
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="annot-http")
        inflight: dict = {}

        def call(req: Request) -> Reply:
            reply = self.call(req)
            if on_reply:
                on_reply(req, reply)
            return reply

        def fill() -> None:
            while len(inflight) < self.concurrency:
                req = next(it, None)
                if req is None:
                    return
                inflight[pool.submit(call, req)] = req

        try:
            fill()
            while inflight:
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    req = inflight.pop(fut)
                    yield req, fut.result()
                fill()
        finally:
            # On an error or an interrupt: start nothing new; running calls finish (and are cached).
            pool.shutdown(wait=not inflight, cancel_futures=True)

    def call(self, req: Request) -> Reply:
        """One request with retries; raises GenerationFailed on a non-retryable answer."""
        body = json.dumps({"model": self.model, "messages": list(req.messages), "max_tokens": req.max_tokens,
                           "temperature": req.temperature, "top_p": req.top_p, "seed": req.seed, **req.extra}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        for attempt in range(self.max_retries + 1):
            try:
                http_req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(http_req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
                return self.parse(raw, req)
            except urllib.error.HTTPError as e:
                detail = self.scrub(e.read()[:300].decode("utf-8", "replace"))
                if e.code not in RETRY_STATUS or attempt == self.max_retries:
                    hint = "; check the key in the environment variable --api-key-env names" if e.code in (401, 403) else ""
                    raise GenerationFailed(f"{sanitize_url(self.url)}: HTTP {e.code} {e.reason} "
                                           f"({' '.join(detail.split())[:200]}){hint}") from None
                wait_s = retry_after_s(e.headers.get("Retry-After"))
                if wait_s is not None:
                    wait_s = min(wait_s, MAX_RETRY_AFTER_S)
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
                    TimeoutError) as e:
                reason = getattr(e, "reason", e)
                refused = isinstance(reason, ConnectionRefusedError)
                if attempt == self.max_retries or (refused and attempt >= 2):
                    raise GenerationFailed(f"{sanitize_url(self.url)}: cannot reach the server "
                                           f"({self.scrub(str(reason))[:200]}); is it running at --base-url?") from None
                wait_s = None
            with self._lock:
                self.retries += 1
            if wait_s is None:
                wait_s = min(self.backoff_cap_s, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
            time.sleep(wait_s)
        raise AssertionError("unreachable")

    def parse(self, raw: bytes, req: Request) -> Reply:
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise GenerationFailed(f"{sanitize_url(self.url)}: the reply is not a chat completion "
                                   f"({self.scrub(raw[:200].decode('utf-8', 'replace'))!r})") from None
        usage = data.get("usage") or {}
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        # A server that reports no usage: estimate (4 characters a token), so budgets still bind.
        prompt = int(prompt) if isinstance(prompt, int) else -(-req.prompt_chars() // 4)
        completion = int(completion) if isinstance(completion, int) else -(-len(text) // 4)
        return Reply(text.strip(), prompt, completion, choice.get("finish_reason") or "stop",
                     top_logprobs=first_top_logprobs(choice))

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def first_top_logprobs(choice: dict) -> list | None:
    """`choices[0].logprobs.content[0].top_logprobs` of a chat completion as [{token, logprob}], or None."""
    try:
        top = choice["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(top, list):
        return None
    return [{"token": str(t.get("token")), "logprob": t.get("logprob")} for t in top if isinstance(t, dict)]


def make_backend(settings: GenSettings) -> Backend:
    """The backend `settings.backend` names, configured from the settings (nothing is loaded yet)."""
    if settings.backend == "template":
        return TemplateBackend()
    if settings.backend == "hf":
        from annot.models import DEFAULT_MODEL, check_model

        model = settings.model or DEFAULT_MODEL
        check_model(model)
        return HFBackend(model, batch_size=settings.concurrency)
    return OpenAIBackend(settings.model, settings.base_url, settings.api_key_env, settings.concurrency,
                         timeout_s=settings.timeout_s)
