"""Library warnings as a few lines of ours: each kind shown once, its repeats counted.

A folder of hospital DICOM can make pydicom warn for every header it reads ("Invalid value for
VR UI", once per file and tag: 1,724 times for three studies), and it both logs and warns each
time. Inside :func:`counted_warnings`, the first warning of a kind (its message with quoted
values and numbers left out) is shown as one line; the rest are counted, and ``WarningTally.lines``
says how many there were. pydicom's log records, twins of its warnings, are dropped. With
``verbose`` every warning and log record is shown as it comes.
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

# Loggers whose warnings duplicate a warnings.warn of the same event.
TWIN_LOGGERS = ("pydicom",)


def kind_of(message: str) -> str:
    """A warning's kind: its first line with quoted values and numbers left out."""
    text = (str(message).strip().splitlines() or [""])[0]
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)[:160]


def one_line(message, category, filename, lineno) -> str:
    text = (str(message).strip().splitlines() or [category.__name__])[0]
    return f"warning: {text} ({category.__name__}, {Path(filename).parent.name}/{Path(filename).name}:{lineno})"


class WarningTally:
    """How many warnings of each kind came (thread-safe: decoding threads warn too)."""

    def __init__(self, show: Callable[[str], None]):
        self.show = show
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        self.lock = threading.Lock()

    def add(self, kind: str, line: str) -> None:
        with self.lock:
            self.counts[kind] += 1
            new = kind not in self.first
            if new:
                self.first[kind] = line
        if new:
            self.show(line)

    def lines(self) -> list[str]:
        """One line per kind that came more than once."""
        return [f"warning: the warning above came {n:,} times ({self.first[k][9:60]}...); -v shows each"
                for k, n in self.counts.items() if n > 1]


def logging_verbose() -> bool:
    """Whether this process logs at INFO (the CLI's -v)."""
    return logging.getLogger().isEnabledFor(logging.INFO)


class _DropTwins(logging.Filter):
    def __init__(self, verbose: Callable[[], bool]):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or self.verbose()


@contextlib.contextmanager
def counted_warnings(show: Callable[[str], None], verbose: Callable[[], bool] = logging_verbose
                     ) -> Iterator[WarningTally]:
    """Within: library warnings shown once per kind through ``show`` and counted (see the module
    docstring); while ``verbose()`` says so, every one is shown as it comes, twins' log records too."""
    tally = WarningTally(show)

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        text = one_line(message, category, filename, lineno)
        if verbose():
            show(text)
        else:
            tally.add(kind_of(message), text)

    twins = [logging.getLogger(name) for name in TWIN_LOGGERS]
    dropping = _DropTwins(verbose)
    with warnings.catch_warnings():
        # Every repeat of a UserWarning (pydicom's kind) reaches the tally, not only the first per place
        # and text; other categories keep their filters (deprecations stay hidden).
        warnings.filterwarnings("always", category=UserWarning)
        warnings.showwarning = showwarning
        for logger in twins:
            logger.addFilter(dropping)
        try:
            yield tally
        finally:
            for logger in twins:
                logger.removeFilter(dropping)
