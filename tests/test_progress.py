"""Progress bars: tqdm's redraw rate on a terminal, one redraw a minute in a log file."""

import io

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
