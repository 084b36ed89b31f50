"""Every progress bar in vitshrink: a live tqdm bar on a terminal, one plain line per bar in a log.

A tqdm bar redraws itself with carriage returns; written to a file or a pipe (CI, batch jobs,
`> log.txt 2>&1`) that becomes thousands of updates per epoch. So when the stream is not a terminal,
`progress_bar()` stays silent while it runs and prints one line when the bar closes: what it was, how many
steps, how long, and its last postfix (e.g. an epoch's loss, lr and images/s).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    stream: IO[str] | None = None,
    **tqdm_options: Any,
):
    """A tqdm bar over `iterable` on a terminal; a `LineProgress` (one line at the end) anywhere else.

    Both offer iteration, `update`, `set_postfix`, `set_postfix_str`, `close`, `total` and `with`.
    `enabled=False` (--no-progress, or a process other than rank 0) prints nothing at all.
    """
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, desc=desc, disable=True)
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, file=stream, **tqdm_options)
    return LineProgress(iterable, total=total, desc=desc, stream=stream)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """Counts silently and writes one summary line when closed (or when iteration ends)."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 stream: IO[str] | None = None):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.desc = desc
        self.n = 0
        self.postfix = ""
        self.stream = stream if stream is not None else sys.stderr
        self._started = time.perf_counter()
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()  # only when iteration ran to the end: a stopped loop leaves no summary line

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def summary(self) -> str:
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        line = f"{self.desc + ': ' if self.desc else ''}{count} in {time.perf_counter() - self._started:.1f} s"
        return f"{line} ({self.postfix})" if self.postfix else line

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stream.write(self.summary() + "\n")
        self.stream.flush()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
