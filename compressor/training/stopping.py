"""Stopping a training run cleanly: a checkpoint first, then `TrainingInterrupted`.

The first Ctrl-C, or the caller's `should_stop(epoch, step)` (tests use it to interrupt), asks the loop
to stop after the current step; a second Ctrl-C kills at once. Under torchrun a stop asked on one
process stops every process at the same step.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from vitshrink.compressor.core import distributed as ddp


class StopRequest:
    """Use as `with StopRequest(should_stop) as stop:`; inside, Ctrl-C sets the request instead of raising."""

    def __init__(self, should_stop: Callable[[int, int], bool] | None = None):
        self.should_stop = should_stop
        self.requested = False  # set by the first Ctrl-C
        self._previous = None

    def asked(self, epoch: int, step: int) -> bool:
        """Whether any process was asked to stop at (epoch, step); every process must call it at the same steps."""
        return ddp.any_rank(
            self.requested or (self.should_stop is not None and self.should_stop(epoch, step))
        )

    def __enter__(self) -> StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
