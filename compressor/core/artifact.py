"""The compressed-model artifact: a folder with a recipe (JSON) and weights (safetensors), never a pickle.

    config.json        timm's folder format (architecture, num_classes, model_args, pretrained_cfg)
    compression.json   format version, the per-block spec, method, budget and per-stage metrics
    model.safetensors  the state dict of the dense, pruned model

Loading rebuilds the base model through `timm.create_model`, replays the spec (block count and
per-block widths), then loads the weights with `strict=True`.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.data import resolve_data_config
from torch import nn

from vitshrink.compressor.core.atomic import atomic_dir
from vitshrink.compressor.core.errors import ArtifactError
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.reading import read_json, read_safetensors
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.surgery import reshape_to_spec

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
COMPRESSION_FILE = "compression.json"
WEIGHTS_FILE = "model.safetensors"


def is_artifact(path: str | Path) -> bool:
    path = Path(path)
    return (path / COMPRESSION_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def timm_config(loaded_name: str, model: nn.Module, model_args: dict, pretrained_cfg: dict, depth: int) -> dict:
    """config.json in timm's folder format; `depth` is the pruned block count."""
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model_args.items()}
    args["depth"] = depth
    args["num_classes"] = model.num_classes
    return {
        "architecture": loaded_name,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": model.global_pool,
        "model_args": args,
        "pretrained_cfg": _jsonable(pretrained_cfg),
    }


def save_artifact(out_dir: str | Path, loaded: LoadedModel, compression: dict) -> Path:
    """Write `loaded` (model, spec, recipe) as an artifact folder, atomically."""
    out_dir = Path(out_dir)
    config = timm_config(loaded.name, loaded.model, loaded.model_args, loaded.pretrained_cfg, loaded.spec.depth)
    record = {"format_version": FORMAT_VERSION, "spec": loaded.spec.to_dict(), **compression}
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / COMPRESSION_FILE).write_text(json.dumps(_jsonable(record), indent=2) + "\n")
    return out_dir


def load_artifact(path: str | Path) -> LoadedModel:
    """Rebuild the model an artifact folder describes and load its weights strictly."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a folder; pass the folder that `vitshrink compress --out` wrote")
    missing = [f for f in (CONFIG_FILE, COMPRESSION_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
    if missing:
        raise ArtifactError(
            f"{path} is not a vitshrink artifact: missing {', '.join(missing)} "
            "(a plain timm folder can be passed to --model instead)"
        )
    config = read_json(path / CONFIG_FILE)
    record = read_json(path / COMPRESSION_FILE)
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path}: compression.json format_version {version!r}; this vitshrink reads {FORMAT_VERSION}")
    spec = ArchSpec.from_dict(record.get("spec", {}))
    name, model_args, pretrained_cfg = _parse_config(config, path)
    base_args = dict(model_args)
    base_args["depth"] = max(spec.depth, 1)
    try:
        model = timm.create_model(name, pretrained=False, pretrained_cfg=pretrained_cfg, **base_args)
    except Exception as e:  # timm raises many types for bad args; report them as one
        raise ArtifactError(f"{path}: timm could not build {name!r} with {base_args}: {e}") from e
    reshape_to_spec(model, spec)
    load_state_dict_strict(model, read_safetensors(path / WEIGHTS_FILE), path / WEIGHTS_FILE)
    model.eval()
    return LoadedModel(
        model=model,
        spec=ArchSpec.from_model(model, [b.source_index for b in spec.blocks]),
        name=name,
        model_args=model_args,
        pretrained_cfg=pretrained_cfg,
        data_config=resolve_data_config({}, model=model),
        path=path,
        compression=record,
    )


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], origin: str | Path) -> None:
    """`load_state_dict(strict=True)` with an error naming the first bad tensor and both shapes."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ArtifactError(f"{origin}: weight {key!r} (shape {tuple(tensor.shape)}) is missing")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ArtifactError(
                f"{origin}: weight {key!r} has shape {tuple(state[key].shape)} but the model expects "
                f"{tuple(tensor.shape)}; the weights do not belong to this architecture"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ArtifactError(f"{origin}: unexpected weight {extra[0]!r} ({len(extra)} extra in total)")
    model.load_state_dict(state, strict=True)


def _parse_config(config: dict, path: Path) -> tuple[str, dict, dict]:
    try:
        name = config["architecture"]
    except KeyError:
        raise ArtifactError(f"{path / CONFIG_FILE} has no 'architecture' field") from None
    model_args = dict(config.get("model_args", {}))
    model_args.setdefault("num_classes", config.get("num_classes"))
    if model_args["num_classes"] is None:
        model_args.pop("num_classes")
    for key in ("img_size", "patch_size"):
        if isinstance(model_args.get(key), list):
            model_args[key] = tuple(model_args[key])
    return name, model_args, dict(config.get("pretrained_cfg", {}))


def _jsonable(obj):
    """Tuples to lists, drop values JSON cannot hold (timm cfgs may carry callables)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if _is_plain(v)}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _is_plain(v) -> bool:
    if isinstance(v, dict | list | tuple):
        return True
    return v is None or isinstance(v, str | int | float | bool)
