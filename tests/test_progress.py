"""annot.progress: on a non-terminal stream, one plain line at most every interval with count,
elapsed time and an ETA from the measured rate; a last line on close; nothing when disabled."""
import io

from annot.progress import Progress, fmt_duration


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_plain_lines_at_most_every_interval_with_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress(100, "train", "step", stream=out, clock=clock, interval=30.0, tty=False)
    for i in range(100):  # 2 s per step: 200 s in all
        clock.t += 2.0
        p.update(1, loss=f"{3 - i / 100:.2f}")
    p.close()
    lines = out.getvalue().splitlines()
    # one line per 30 s of work (t = 30, 60, ..., 180) plus the closing one
    assert len(lines) == 7 and p.lines == 7
    first = lines[0]
    assert first.startswith("train: 15/100 step (15%), elapsed 30s, ETA ~2m50s")  # 85 steps x 2 s
    assert "loss=2.86" in first
    assert lines[-1].startswith("train: 100/100 step (100%), elapsed 3m20s") and "ETA" not in lines[-1]


def test_resumed_work_does_not_count_as_speed():
    clock, out = Clock(), io.StringIO()
    p = Progress(10, "train", "step", initial=8, stream=out, clock=clock, tty=False)
    assert p.eta_s() is None
    clock.t += 5.0
    p.update(1)
    assert p.eta_s() == 5.0  # 1 step left at 5 s per step measured here, not 9 steps in 5 s


def test_disabled_and_empty_print_nothing():
    out = io.StringIO()
    for p in (Progress(10, "x", stream=out, enabled=False, tty=False), Progress(0, "x", stream=out, tty=False)):
        p.update(5)
        p.close()
    assert out.getvalue() == ""


def test_durations():
    assert [fmt_duration(s) for s in (4.2, 73, 3725)] == ["4s", "1m13s", "1h02m05s"]
