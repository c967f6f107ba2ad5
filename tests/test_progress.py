"""Progress bars: tqdm's redraw rate on a terminal, one redraw a minute in a log file."""

import io
import time

from tqdm import tqdm
from tqdm._monitor import TMonitor

from metarl.progress import FILE_INTERVAL_S, interactive, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_in_a_file_redraws_once_a_minute():
    log = io.StringIO()
    bar = progress_bar(total=1000, file=log)
    assert not interactive(log)
    assert bar.mininterval == FILE_INTERVAL_S == bar.maxinterval
    for _ in range(1000):
        bar.update(1)
        bar.set_postfix_str("x", refresh=False)
    bar.close()
    # The first draw and the final one at close, nothing in between.
    assert log.getvalue().count("\r") <= 3


class _TimedLog(io.StringIO):
    """A log file that notes when each redraw is written."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[float] = []

    def write(self, s: str) -> int:
        if "\r" in s or "\n" in s:
            self.draws.append(time.monotonic())
        return super().write(s)


def test_tqdms_monitor_thread_never_adds_a_second_line_in_the_same_interval():
    # Intervals of 0.3 s stand for the minute, updates every 0.1 s for the iterations, and a monitor
    # waking every 10 ms for tqdm's (which wakes every 10 s). Before the fix the monitor redrew the
    # bar and the next update redrew it again at once: a gap of under 5 ms, every run.
    log = _TimedLog()
    bar = progress_bar(total=100, file=log, mininterval=0.3, maxinterval=0.3)
    monitor = TMonitor(tqdm, 0.01)
    try:
        for _ in range(30):
            time.sleep(0.1)
            bar.update(1)
        draws = list(log.draws)  # the close's draw aside
    finally:
        monitor.exit()
        bar.close()
    gaps = [b - a for a, b in zip(draws[:-1], draws[1:], strict=True)]
    assert len(gaps) >= 5
    assert min(gaps) >= 0.25, gaps


def test_bar_on_a_terminal_keeps_tqdm_defaults():
    term = _Terminal()
    bar = progress_bar(total=10, file=term)
    assert interactive(term)
    assert bar.mininterval == 0.1
    bar.close()


def test_explicit_interval_wins_and_closed_streams_are_not_terminals():
    bar = progress_bar(total=10, file=io.StringIO(), mininterval=5.0)
    assert bar.mininterval == 5.0
    bar.close()
    closed = io.StringIO()
    closed.close()
    assert not interactive(closed)
