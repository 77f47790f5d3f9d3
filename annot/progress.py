"""Progress for work that takes more than a few seconds: training steps, probe items, generation,
sweep runs.

    bar = Progress(total=40, desc="train", unit="step")
    for step in range(40):
        ...
        bar.update(1, loss=f"{loss:.3f}", tok_s=f"{rate:.0f}")
    bar.close()

On a terminal it is a tqdm bar (rate, elapsed, ETA and the fields given to `update`). Anywhere else
(CI, `nohup`, a log file) a bar would write one carriage-return frame per update into the log, so it
prints one plain line at most every `interval` seconds (30 by default) and a last line when closed:

    train: 12/40 step (30%), elapsed 1m02s, ETA ~2m25s, loss=2.314, tok_s=241

The ETA is the remaining count at the mean rate measured so far in this process (work resumed from
disk does not count as speed).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

INTERVAL_S = 30.0


def fmt_duration(seconds: float) -> str:
    """73 -> '1m13s', 3725 -> '1h02m05s', 4.2 -> '4s'."""
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A progress display for `total` units of work (see the module docstring). `enabled=False`
    shows nothing; `tty` forces one mode (default: whether `stream` is a terminal)."""

    def __init__(self, total: int, desc: str, unit: str = "it", *, initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, interval: float = INTERVAL_S, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = self.start_n = int(initial)
        self.enabled = enabled and total > 0
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.clock = interval, clock
        self.t0 = self.last_line = clock()
        self.fields: dict[str, object] = {}
        self.lines = 0  # plain lines written (tests read it)
        self._bar = None
        self.closed = False
        if self.enabled and (tty if tty is not None else _is_tty(self.stream)):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=False)

    def eta_s(self) -> float | None:
        """Seconds left at the mean rate of this process so far; None before the first unit."""
        done = self.n - self.start_n
        elapsed = self.clock() - self.t0
        if done <= 0 or elapsed <= 0:
            return None
        return (self.total - self.n) * elapsed / done

    def line(self) -> str:
        pct = 100 * self.n / self.total if self.total else 100.0
        eta = self.eta_s()
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%)",
                 f"elapsed {fmt_duration(self.clock() - self.t0)}"]
        if self.n < self.total:
            parts.append(f"ETA ~{fmt_duration(eta)}" if eta is not None else "ETA unknown")
        parts += [f"{k}={v}" for k, v in self.fields.items()]
        return ", ".join(parts)

    def _emit(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.lines += 1
        self.last_line = self.clock()

    def update(self, n: int = 1, **fields) -> None:
        """`n` more units done; `fields` (e.g. loss="2.31") are shown beside the count."""
        self.n += n
        self.fields.update(fields)
        if not self.enabled:
            return
        if self._bar is not None:
            if fields:
                self._bar.set_postfix({k: str(v) for k, v in fields.items()}, refresh=False)
            self._bar.update(n)
        elif self.clock() - self.last_line >= self.interval:
            self._emit()

    def close(self) -> None:
        """The last line (plain mode, when anything was done) or the bar's removal; idempotent."""
        if self.closed:
            return
        self.closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif self.n > self.start_n:
            self._emit()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
