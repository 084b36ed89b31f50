"""Turn what the user names (timm name, timm folder, vitshrink artifact, + checkpoint) into a LoadedModel."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config

from vitshrink.compressor.core.artifact import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    _parse_config,
    is_artifact,
    load_artifact,
    load_state_dict_strict,
)
from vitshrink.compressor.core.errors import ArtifactError, ModelSourceError
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.reading import read_json, read_safetensors, read_torch_weights
from vitshrink.compressor.core.rebuild_args import rebuild_args
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.supported_models import check_supported


def load_model(
    source: str,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    model_args: dict | None = None,
) -> LoadedModel:
    """Load a supported timm ViT from a timm name, a timm folder or a vitshrink artifact folder.

    `model_args` (timm name only) are passed to `timm.create_model`, e.g. num_classes or img_size.
    """
    path = Path(source)
    if path.is_dir():
        if checkpoint is not None:
            raise ModelSourceError(f"--checkpoint is for timm names; {source} is a folder that holds its own weights")
        loaded = load_artifact(path) if is_artifact(path) else _load_timm_folder(path)
    else:
        loaded = _load_timm_name(source, checkpoint, pretrained, dict(model_args or {}))
    check_supported(loaded.model)
    return loaded


def wrap_module(model: torch.nn.Module, *, name: str | None = None, model_args: dict | None = None) -> LoadedModel:
    """A timm ViT built in memory (e.g. by `timm.create_model(..., img_size=32)`) as a LoadedModel.

    An artifact rebuilds its model as `timm.create_model(name, **model_args)`, so both must be known:
    `name` defaults to the architecture timm recorded in `model.pretrained_cfg`, `model_args` to the
    shape arguments read off the model. Check, then act: the rebuilt model must have every tensor of
    `model` with the same shape, else this raises naming the first differences.
    """
    check_supported(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = name or (cfg.get("architecture") if isinstance(cfg, dict) else getattr(cfg, "architecture", None))
    if not name:
        raise ModelSourceError("the model records no timm architecture name (pretrained_cfg['architecture']); "
                               "pass name=, e.g. name='vit_small_patch16_224'")
    args = dict(model_args) if model_args is not None else rebuild_args(model)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        rebuilt = _create(name, pretrained=False, **args)
    bad = _differences(_layout(model), _layout(rebuilt))
    if bad:
        raise ModelSourceError(
            f"timm.create_model({name!r}, **{args}) does not rebuild this model ({len(bad)} tensors or layers differ: "
            f"{'; '.join(bad[:3])}); pass model_args= with the arguments the model was created with"
        )
    return _wrap(model, name, args, None)


def _layout(model: torch.nn.Module) -> dict[str, object]:
    """What a rebuilt model must match: the shape of every tensor and the class of every layer (a rotary
    embedding or an activation holds no weights)."""
    tensors = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    layers = {f"{name or 'model'} (layer)": type(m).__name__ for name, m in model.named_modules()}
    return {**tensors, **layers}


def _differences(want: dict, got: dict) -> list[str]:
    return [f"{k}: {want.get(k)} in the model, {got.get(k)} rebuilt" for k in sorted(want.keys() | got.keys())
            if want.get(k) != got.get(k)]


def _load_timm_folder(path: Path) -> LoadedModel:
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise ModelSourceError(
            f"{path} is neither a timm model folder (config.json + model.safetensors) nor a vitshrink artifact"
        )
    config = read_json(path / CONFIG_FILE)
    name, model_args, pretrained_cfg = _parse_config(config, path)
    model = _create(name, pretrained=False, pretrained_cfg=pretrained_cfg, **model_args)
    try:
        load_state_dict_strict(model, read_safetensors(path / WEIGHTS_FILE), path / WEIGHTS_FILE)
    except ArtifactError as e:
        raise ModelSourceError(str(e)) from e
    return _wrap(model, name, model_args, path)


def _load_timm_name(name: str, checkpoint, pretrained: bool, model_args: dict) -> LoadedModel:
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models("*vit*"), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelSourceError(f"unknown model {name!r}: not a timm model name nor an existing folder{hint}")
    overlay = model_args.pop("pretrained_cfg_overlay", None)  # mean/std/input size; kept via pretrained_cfg
    model = _create(name, pretrained=pretrained and checkpoint is None, pretrained_cfg_overlay=overlay, **model_args)
    if checkpoint is not None:
        state = read_checkpoint(Path(checkpoint))
        try:
            load_state_dict_strict(model, state, checkpoint)
        except ArtifactError as e:
            raise ModelSourceError(f"{e} (is --checkpoint for {name!r} with these model options?)") from e
    return _wrap(model, name, model_args, None)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, or from a `.pth` with `weights_only=True` (no unpickling of code)."""
    if not path.is_file():
        raise ModelSourceError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj = read_torch_weights(path)
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelSourceError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _create(name: str, **kwargs) -> torch.nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        if kwargs.get("pretrained"):
            raise ModelSourceError(
                f"could not download pretrained weights for {name!r} ({type(e).__name__}: {e}); "
                "check the network, or pass --checkpoint FILE / a local model folder"
            ) from e
        raise ModelSourceError(f"timm could not build {name!r} with {kwargs}: {e}") from e


def _wrap(model: torch.nn.Module, name: str, model_args: dict, path: Path | None) -> LoadedModel:
    model.eval()
    check_supported(model)
    cfg = model.pretrained_cfg
    pretrained_cfg = dict(cfg if isinstance(cfg, dict) else cfg.to_dict())
    # a model built at another image size than its pretrained config (e.g. img_size=32) takes that size
    size = (model.patch_embed.proj.in_channels, *model.patch_embed.img_size)
    if tuple(pretrained_cfg.get("input_size", size)) != size:
        pretrained_cfg["input_size"] = size
        model.pretrained_cfg = pretrained_cfg
    return LoadedModel(
        model=model,
        spec=ArchSpec.from_model(model),
        name=name,
        model_args=model_args,
        pretrained_cfg=dict(pretrained_cfg),
        data_config=resolve_data_config({}, model=model),
        path=path,
    )


def parse_model_args(items: tuple[str, ...] | list[str]) -> dict:
    """`key=value` strings (the CLI's --model-arg) as timm.create_model keyword arguments; values are Python
    literals where they parse as one (32, (32, 32), True), else strings."""
    import ast

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ModelSourceError(f"--model-arg {item!r}: write it as key=value, e.g. img_size=32")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out
