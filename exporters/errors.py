"""Errors of the exporters: each says what came in, what was expected and what to do."""

from __future__ import annotations

from collections.abc import Sequence

from vitshrink.compressor.core.errors import VitShrinkError


class ExportError(VitShrinkError):
    """An export that cannot start or cannot produce a valid file (bad input, bad option, bad graph)."""


class ParityError(ExportError):
    """The exported model does not compute what the PyTorch model computes; lists every mismatch."""

    def __init__(self, what: str, mismatches: Sequence[str]):
        self.what = what
        self.mismatches = tuple(mismatches)
        lines = "\n".join(f"  - {m}" for m in self.mismatches)
        super().__init__(
            f"{what} does not match the PyTorch model ({len(self.mismatches)} failed checks); "
            f"nothing was written:\n{lines}"
        )


class TensorRTUnavailableError(ExportError):
    """No engine can be built here: TensorRT or a CUDA GPU is missing."""


class EngineBuildError(ExportError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class SessionError(ExportError):
    """ONNX Runtime or TensorRT cannot load or run a file (corrupt file, wrong GPU, wrong version)."""
