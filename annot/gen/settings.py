"""What an LLM-written corpus is made with: backend, model, limits and quality gates, as plain values.

    settings = GenSettings(backend="openai", model="meta-llama/Llama-3.1-8B-Instruct",
                           base_url="http://localhost:8000/v1", concurrency=64, workdir=Path("docs.work"))

The CLI (`annot generate --backend ...`) and a run config's `data.generation:` block both build one
of these; nothing in it is secret (the API key stays in the environment variable it names).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from annot.errors import AnnotError

BACKENDS = ("template", "hf", "openai")
MIN_WORDS = {"documents": 80, "transcripts": 8}


@dataclass(frozen=True)
class GateSettings:
    """Quality gates applied after generation (see annot.gen.gates).

    min_words / max_words: length filter (words, as `\\w+` runs; a document's text, a transcript's
    replies; min_words None: 80 for documents, 8 for transcripts); dup_threshold: two documents whose
    word 5-gram Jaccard similarity reaches it are near-duplicates (the later one is dropped; 1.0 keeps
    all but exact copies); claim_check: each document must state the claim (claim world) or state
    the truth and assert no claim sentence (negated world), by the claim spec's detector."""

    min_words: int | None = None
    max_words: int = 2000
    dup_threshold: float = 0.5
    claim_check: bool = True

    def __post_init__(self):
        if self.min_words is not None and (self.min_words < 0 or self.max_words < max(1, self.min_words)):
            raise AnnotError(f"length gate: need 0 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if not 0 < self.dup_threshold <= 1:
            raise AnnotError(f"--dup-threshold: {self.dup_threshold} is not in (0, 1]")

    def for_kind(self, kind: str) -> "GateSettings":
        """These settings with min_words resolved for `kind` (documents | transcripts)."""
        if self.min_words is not None:
            return self
        return replace(self, min_words=MIN_WORDS[kind])


@dataclass(frozen=True)
class GenSettings:
    """One generation job's settings. `backend="template"` ignores everything but nothing is lost."""

    backend: str = "template"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 32          # HTTP requests in flight, or the hf backend's batch size
    max_tokens: int | None = None  # budget: prompt + reply tokens of new (uncached) calls, this invocation
    max_cost: float | None = None  # budget in USD, priced by `price`
    price: tuple[float, float] | None = None  # USD per million (prompt, reply) tokens
    temperature: float | None = None   # overrides every stage's temperature
    max_new_tokens: int | None = None  # caps every stage's reply length
    revise: bool = False
    workdir: Path | None = None
    cache_dir: Path | None = None  # default: $ANNOT_CACHE/responses
    prompts: Path | None = None    # default: corpora/prompts/<kind>.yaml
    gates: GateSettings = field(default_factory=GateSettings)
    attempts_factor: float = 3.0   # give up after this many documents written per document asked for
    timeout_s: float = 600.0
    progress: bool = True

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise AnnotError(f"--backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.concurrency < 1:
            raise AnnotError(f"--concurrency: {self.concurrency}; give at least 1")
        if self.max_cost is not None and self.price is None:
            raise AnnotError("--max-cost needs --price IN/OUT (USD per million prompt / reply tokens, e.g. 0.15/0.60)")
        for name in ("max_tokens", "max_cost"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise AnnotError(f"--{name.replace('_', '-')}: {value}; give a positive number")
        if self.temperature is not None and not 0 <= self.temperature <= 5:
            raise AnnotError(f"--temperature: {self.temperature} is not in [0, 5]")
        if self.backend == "openai":
            if not self.model:
                raise AnnotError("--backend openai needs --model (the model name the server serves)")
            if not self.base_url or not re.match(r"^https?://", self.base_url):
                raise AnnotError(f"--backend openai needs --base-url http(s)://HOST[:PORT]/v1, got {self.base_url!r} "
                                 "(a local vLLM server: http://localhost:8000/v1)")

    def with_workdir(self, workdir: Path) -> "GenSettings":
        return replace(self, workdir=Path(workdir))


def parse_price(text: str | None) -> tuple[float, float] | None:
    """'0.15/0.60' -> (0.15, 0.60): USD per million prompt and reply tokens."""
    if text is None:
        return None
    parts = text.split("/")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or not all(v >= 0 and math.isfinite(v) for v in values):
        raise AnnotError(f"--price {text!r}: expected IN/OUT in USD per million tokens, e.g. 0.15/0.60")
    return values  # type: ignore[return-value]


def sanitize_url(url: str | None) -> str | None:
    """The URL without user:password@ and without a query string, fit for provenance and logs."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


# CLI option -> GenSettings field, for the options only an LLM backend reads
LLM_OPTIONS = {"--model": "model", "--base-url": "base_url", "--api-key-env": "api_key_env", "--workdir": "workdir",
               "--cache-dir": "cache_dir", "--prompts": "prompts", "--max-tokens": "max_tokens",
               "--max-cost": "max_cost", "--price": "price", "--temperature": "temperature",
               "--max-new-tokens": "max_new_tokens", "--revise": "revise", "--min-words": "min_words"}


def settings_from_options(out: str | None = None, *, backend: str, min_words: int | None, max_words: int,
                          dup_threshold: float, price: str | None, workdir: str | None, cache_dir: str | None,
                          prompts: str | None, **fields) -> GenSettings:
    """`annot generate`'s options as GenSettings; the work folder defaults to OUT.work beside -o.

    An LLM-only option given with the template backend is an error (it would be silently ignored)."""
    given = {"price": price, "workdir": workdir, "cache_dir": cache_dir, "prompts": prompts, "min_words": min_words,
             **fields}
    if backend == "template":
        for option, name in LLM_OPTIONS.items():
            if given.get(name) not in (None, False):
                raise AnnotError(f"{option} applies to --backend hf or openai; the template backend composes from the spec")
    if backend != "template" and workdir is None and out:
        workdir = str(Path(out).with_suffix("")) + ".work"
    path = lambda p: Path(p) if p else None  # noqa: E731
    return GenSettings(backend=backend, **fields, price=parse_price(price), workdir=path(workdir),
                       cache_dir=path(cache_dir), prompts=path(prompts),
                       gates=GateSettings(min_words=min_words, max_words=max_words, dup_threshold=dup_threshold))
