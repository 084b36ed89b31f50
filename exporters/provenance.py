"""Facts recorded next to exported files: checksums and the versions of the libraries involved."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

LIBRARIES = ("vitshrink", "torch", "timm", "onnx", "onnxscript", "onnxruntime", "onnxslim", "numpy")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Installed versions; None for a package that is not installed (vitshrink run from a checkout)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
