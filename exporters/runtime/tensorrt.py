"""Importing TensorRT: the module, or one error that says how to install it (it is never a hard dependency)."""

from __future__ import annotations

from vitshrink.exporters.errors import TensorRTUnavailableError

INSTALL_HINT = (
    "on a Jetson the tensorrt package comes with JetPack (python3-libnvinfer); on x86 `pip install tensorrt` "
    "(it downloads from NVIDIA's index). Without it, copy the export folder to the device and run build_engine.sh"
)


def import_tensorrt():
    """The tensorrt module, or an error that says how to get it."""
    try:
        import tensorrt
    except ImportError as e:
        raise TensorRTUnavailableError(
            f"the tensorrt Python package is not installed ({e}); {INSTALL_HINT}"
        ) from e
    return tensorrt
