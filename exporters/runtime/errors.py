"""Errors of the runtime layer (sessions, timing, latency profiles): what came in, what was expected, what to do."""

from __future__ import annotations

from vitshrink.compressor.core.errors import VitShrinkError


class MeasureError(VitShrinkError):
    """A measurement that cannot start or cannot finish (bad option, unknown target, a model it cannot time)."""


class RuntimeUnavailableError(MeasureError):
    """A backend that cannot run here: its package, GPU or model file is missing."""
