"""Errors of the benchmark harness: each says what came in, what was expected and what to do."""

from __future__ import annotations

from vitshrink.exporters.runtime.errors import MeasureError, RuntimeUnavailableError

__all__ = ["BenchError", "CompareError", "GateConfigError", "MeasureError", "RuntimeUnavailableError"]


class BenchError(MeasureError):
    """A benchmark that cannot start or cannot finish (bad option, missing file, failed runtime)."""


class GateConfigError(BenchError):
    """A gate file (TOML) or baseline that cannot be read or has a bad entry."""


class CompareError(BenchError):
    """A method comparison that cannot start or continue (bad method list, missing result, unmet target)."""
