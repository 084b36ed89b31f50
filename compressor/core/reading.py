"""Read the files a user hands us (safetensors, .pth state dicts, JSON), one function per format.

Every weight and JSON file vitshrink reads goes through here, so a truncated download or a half-copied
artifact ends in one line naming the file and what is wrong (`UnreadableFileError`), never a traceback.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vitshrink.compressor.core.errors import UnreadableFileError

REDO = "re-export or re-download it"


def read_safetensors(path: str | Path, *, fix: str = REDO) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, on the CPU."""
    path = Path(path)
    _check_file(path, "safetensors file", fix)
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise UnreadableFileError(_damaged(path, "safetensors file", e, fix)) from e
    except OSError as e:
        raise UnreadableFileError(f"{path} cannot be read ({type(e).__name__}: {e})") from e


def read_torch_weights(path: str | Path, *, fix: str = REDO) -> Any:
    """What a `torch.save` file holds, loaded with `weights_only=True` (tensors and containers, no code)."""
    path = Path(path)
    _check_file(path, "PyTorch checkpoint", fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise UnreadableFileError(_damaged(path, "PyTorch checkpoint", e, fix)) from e
        raise UnreadableFileError(
            f"{path} cannot be loaded with weights_only=True: it holds more than tensors (a pickled module or "
            "custom classes), which vitshrink does not unpickle; save model.state_dict() (or convert it to "
            ".safetensors) instead"
        ) from e
    except Exception as e:  # a damaged zip surfaces as RuntimeError, OSError, EOFError, KeyError, ...
        raise UnreadableFileError(_damaged(path, "PyTorch checkpoint", e, fix)) from e


def read_json(path: str | Path, *, fix: str = REDO) -> dict:
    """The JSON object (a dict) a file holds."""
    path = Path(path)
    _check_file(path, "JSON file", fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnreadableFileError(_damaged(path, "JSON file", e, fix)) from e
    except OSError as e:
        raise UnreadableFileError(f"{path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise UnreadableFileError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def _check_file(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        raise UnreadableFileError(f"{path} does not exist (expected a {what}); {fix}")


def _damaged(path: Path, what: str, error: Exception, fix: str) -> str:
    first = str(error).strip().split(". ")[0]  # torch's zip errors run on for several sentences
    reason = first if isinstance(error, SafetensorError) else f"{type(error).__name__}: {first}".rstrip(": ")
    return f"{path} is not a readable {what} (truncated or corrupt: {reason}); {fix}"
