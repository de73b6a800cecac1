"""The time-throttled progress lines of long loops (cprec_core.progress), on a fake clock."""

from cprec_core.progress import Progress, Throttled, counted, duration, each, time_left


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_durations_and_rates_read_naturally():
    assert [duration(s) for s in (0.44, 9.9, 12.4, 185, 3599.6, 7620)] == [
        "0.4 s", "9.9 s", "12 s", "3 min 05 s", "1 h 00 min", "2 h 07 min"]
    assert [each(e, n) for e in (12.0, 0.5, 0.004) for n in (10,)] == ["1.20 s", "50 ms",
                                                                       "0.4 ms"]
    assert time_left(0, 10, 5.0) == ""  # nothing done yet: no estimate
    assert time_left(40, 500, 48.0) == "about 9 min 12 s left"  # 460 cases x 1.2 s


def test_counted_lines_say_what_is_left_then_the_total():
    assert counted("crime test: llara seed 0", 40, 500, "cases", 48.0) == (
        "crime test: llara seed 0: 40/500 cases, 1.20 s each, about 9 min 12 s left")
    assert counted("SASRec Crime epoch 2/50", 100, 400, "batches", 20.0, ", loss 7.1234",
                   "left in this epoch") == (
        "SASRec Crime epoch 2/50: 100/400 batches, loss 7.1234, 200 ms each,"
        " about 1 min 00 s left in this epoch")
    assert counted("x", 1200, 1200, "users", 3.0) == "x: 1,200/1,200 users in 3.0 s, 2.5 ms each"


def test_throttled_logs_at_most_every_interval_and_when_forced():
    clock, lines, built = Clock(), [], []
    throttled = Throttled(lines.append, every_s=30, clock=clock)

    def message(text):
        def build():
            built.append(text)
            return text
        return build

    clock.now += 10
    assert not throttled(message("at 10"))  # not due: the message is not even built
    clock.now += 21
    assert throttled(message("at 31"))
    clock.now += 29
    assert not throttled(message("at 60"))
    assert throttled(message("forced at 60"), force=True)
    clock.now += 30
    assert throttled("at 90")  # 30 s after the last line, not after the last call
    assert lines == built + ["at 90"] == ["at 31", "forced at 60", "at 90"]
    assert throttled.elapsed == 90
    every = Throttled(lines.append, every_s=0, clock=clock)  # tests: every line
    assert every("a") and every("b")


def test_progress_logs_every_interval_and_always_the_end():
    clock, lines = Clock(), []
    progress = Progress(lines.append, "crime candidate sets (test)", 100, "users", 30,
                        clock=clock)
    for done in range(1, 101):
        clock.now += 1.0
        progress.update(done)
    assert lines == ["crime candidate sets (test): 30/100 users, 1.00 s each,"
                     " about 1 min 10 s left",
                     "crime candidate sets (test): 60/100 users, 1.00 s each,"
                     " about 40 s left",
                     "crime candidate sets (test): 90/100 users, 1.00 s each,"
                     " about 10 s left",
                     "crime candidate sets (test): 100/100 users in 1 min 40 s, 1.00 s each"]
    first = []
    progress = Progress(first.append, "slow", 10, every_s=30, clock=clock, first=True)
    clock.now += 5
    progress.update(1)  # the first rate is the earliest estimate of a slow loop
    clock.now += 5
    progress.update(2)
    assert first == ["slow: 1/10 cases, 5.00 s each, about 45 s left"]
