"""Errors of the benchmark harness: each says what came in, what was expected and what to do."""

from __future__ import annotations

from vitshrink.compressor.errors import VitShrinkError


class BenchError(VitShrinkError):
    """A benchmark that cannot start or cannot finish (bad option, missing file, failed runtime)."""


class RuntimeUnavailableError(BenchError):
    """A backend that cannot run here: its package, GPU or model file is missing."""


class GateConfigError(BenchError):
    """A gate file (TOML) or baseline that cannot be read or has a bad entry."""


class CompareError(BenchError):
    """A method comparison that cannot start or continue (bad method list, missing result, unmet target)."""
