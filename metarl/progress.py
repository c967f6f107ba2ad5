"""Progress bars that suit both a terminal and a log file.

On a terminal a bar redraws as tqdm does. Written to a file (``nohup``, a cluster job's log, a
sweep's ``logs/``) every redraw is another line, so there the bar redraws at most once a minute and
a day-long run leaves a readable log rather than one line per second.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

#: Seconds between redraws when the bar goes to a file rather than a terminal.
FILE_INTERVAL_S = 60.0


def interactive(stream: Any = None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm writes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(**kwargs: Any) -> tqdm:
    """``tqdm(**kwargs)``, redrawing at most every :data:`FILE_INTERVAL_S` seconds off a terminal."""
    if not interactive(kwargs.get("file")):
        kwargs.setdefault("mininterval", FILE_INTERVAL_S)
        kwargs.setdefault("maxinterval", FILE_INTERVAL_S)
        # A fixed ``miniters`` keeps tqdm's monitor thread away: once ``miniters`` had grown above 1
        # it redrew a bar whose last draw was ``maxinterval`` old without restarting the interval,
        # so the next update drew again and the log got two lines in the same minute.
        kwargs.setdefault("miniters", 1)
    return tqdm(**kwargs)
