"""Run a stage's requests through cache, budget and backend, with a progress line.

    for request, reply in run_requests(backend, requests, cache, budget, progress):
        stage_file.append(record_from(request, reply))    # one complete record per reply

Cached replies come first and cost nothing; the rest go to the backend, which pulls them one at a
time as it has room, so the budget is checked before every new call. When the next call could
take the spend past `--max-tokens` / `--max-cost`, nothing more is sent, the calls in flight
finish (and are yielded, so they are written), and BudgetReached is raised.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TextIO

from annot.gen.backends import Backend, Reply, Request
from annot.gen.cache import ResponseCache
from annot.gen.errors import BudgetReached

INTERVAL_S = 30.0  # at most one progress line per this many seconds where stderr is not a terminal


@dataclass
class Budget:
    """Spend of new (uncached) calls in this invocation, against optional token and USD limits.

    A call is started only if the spend so far, the calls in flight and this call at its worst
    (its prompt at one token per 3 characters, its reply at max_tokens) stay within the limits."""

    max_tokens: int | None = None
    max_cost: float | None = None
    price: tuple[float, float] | None = None  # USD per million prompt / reply tokens
    prompt_tokens: int = 0
    completion_tokens: int = 0
    new_calls: int = 0
    cached_calls: int = 0
    reserved: dict = field(default_factory=dict)  # request id -> (prompt, reply) tokens at worst
    stopped: bool = False

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def cost(self, prompt: int, completion: int) -> float:
        if self.price is None:
            return 0.0
        return (prompt * self.price[0] + completion * self.price[1]) / 1e6

    @property
    def spent_usd(self) -> float:
        return self.cost(self.prompt_tokens, self.completion_tokens)

    def allows(self, req: Request) -> bool:
        worst = (-(-req.prompt_chars() // 3), req.max_tokens)
        pending = [worst, *self.reserved.values()]
        p = self.prompt_tokens + sum(a for a, _ in pending)
        c = self.completion_tokens + sum(b for _, b in pending)
        if self.max_tokens is not None and p + c > self.max_tokens:
            return False
        return self.max_cost is None or self.cost(p, c) <= self.max_cost

    def reserve(self, req: Request) -> None:
        self.reserved[req.id] = (-(-req.prompt_chars() // 3), req.max_tokens)

    def settle(self, req: Request, reply: Reply) -> None:
        self.reserved.pop(req.id, None)
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.new_calls += 1

    def summary(self) -> str:
        out = f"{self.new_calls} new calls, {self.tokens} tokens"
        if self.price is not None:
            out += f", ${self.spent_usd:.4f}"
        limits = ([f"--max-tokens {self.max_tokens}"] if self.max_tokens is not None else []) + (
            [f"--max-cost {self.max_cost}"] if self.max_cost is not None else [])
        return out + (f" (limit {', '.join(limits)})" if limits else "")


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """One status line per stage: done/total, documents/s, generated tokens and tokens/s, cache hits.

    On a terminal it redraws in place (at most 5 times a second); elsewhere (CI, nohup, a log file)
    it prints a plain line at most every `interval` seconds, and a last one when a stage that
    printed any ends (a short run prints nothing)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, interval: float = INTERVAL_S,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.enabled, self.stream = enabled, stream if stream is not None else sys.stderr
        self.interval, self.clock = interval, clock
        self.tty = _is_tty(self.stream) if tty is None else tty
        self.stage_name, self.total, self.done, self.tokens, self.cached = "", 0, 0, 0, 0
        self.start_done, self.unit, self.stage_lines, self.shown, self.live = 0, "requests", 0, -1, 0
        self.t0 = self.last = clock()
        self.lines = 0

    def stage(self, name: str, total: int, done: int = 0, unit: str = "requests") -> None:
        self.stage_name, self.total, self.done, self.tokens, self.cached = name, total, done, 0, 0
        self.start_done, self.unit, self.stage_lines, self.shown, self.live = done, unit, 0, -1, 0
        self.t0 = self.clock()

    def tick(self, reply: Reply) -> None:
        self.done += 1
        self.cached += reply.cached
        made = 0 if reply.cached else reply.completion_tokens  # generated tokens: the model's throughput
        self.tokens += made
        self.live = max(0, self.live - made)
        self.maybe_emit()

    def step(self, tokens: int) -> None:
        """Tokens generated by a batch still under way (a local model's decoding step)."""
        self.live += tokens
        self.maybe_emit()

    def maybe_emit(self) -> None:
        now = self.clock()
        if self.enabled and now - self.last >= (0.2 if self.tty else self.interval):
            self.emit(now)

    def line(self, now: float) -> str:
        dt = max(now - self.t0, 1e-9)
        rate = (self.done - self.start_done) / dt
        tokens = self.tokens + self.live
        return (f"{self.stage_name}: {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.2f} {self.unit}/s, {tokens / 1000:.1f}k tokens generated ({tokens / dt:.0f} tok/s), "
                f"{self.cached} cached, {dt:.0f}s")

    def emit(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.last, self.shown = now, (self.done, self.live)
        self.lines += 1
        self.stage_lines += 1
        if self.tty:
            self.stream.write("\r\033[K" + self.line(now))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def end(self) -> None:
        if not (self.enabled and self.total):
            return
        if self.shown != (self.done, self.live) and (self.tty or self.stage_lines):
            self.emit()
        if self.tty and self.stage_lines:
            self.stream.write("\n")


def run_requests(backend: Backend, requests: Iterable[Request], cache: ResponseCache, budget: Budget,
                 progress: Progress | None = None) -> Iterator[tuple[Request, Reply]]:
    """(request, reply) for every request: cached ones first, then new calls as they finish."""
    misses = []
    for req in requests:
        reply = cache.get(cache.key(backend, req))
        if reply is None:
            misses.append(req)
            continue
        budget.cached_calls += 1
        if progress:
            progress.tick(reply)
        yield req, reply

    def feed() -> Iterator[Request]:
        for req in misses:
            if not budget.allows(req):
                budget.stopped = True
                return
            budget.reserve(req)
            yield req

    if progress and hasattr(backend, "on_step"):
        backend.on_step = progress.step
    for req, reply in backend.complete(feed(), on_reply=lambda q, r: cache.put(cache.key(backend, q), r)):
        budget.settle(req, reply)
        if progress:
            progress.tick(reply)
        yield req, reply
    if budget.stopped:
        raise BudgetReached(f"budget reached: {budget.summary()}; stopped before the next call. Every record written "
                            "is complete; rerun the same command (with a larger budget) to continue: cached replies "
                            "are free")
