"""The files a model is benchmarked from: ONNX graphs per precision, TensorRT engines, and their sizes.

An ONNX file the exporter already wrote into the model's folder is used as it is; otherwise it is
made in a work folder with the exporter's own functions (same tensor names, opset and onnxslim
pass as `vitshrink export`), so ONNX Runtime numbers always describe the graph users deploy.
Engines are never built here: they belong to the device and come from `vitshrink export --target trt`.
"""

from __future__ import annotations

from pathlib import Path

from vitshrink.compressor.artifact import WEIGHTS_FILE
from vitshrink.compressor.loaded import LoadedModel
from vitshrink.exporters.layout import ONNX_FILES, engine_file


def onnx_file(loaded: LoadedModel, precision: str, work_dir: Path) -> tuple[Path, str]:
    """(path, origin) of the `precision` ONNX graph of `loaded`; origin is "folder" or "exported"."""
    name = ONNX_FILES[precision]
    if loaded.path is not None and (loaded.path / name).is_file():
        return loaded.path / name, "folder"
    out = work_dir / name
    if not out.is_file():
        work_dir.mkdir(parents=True, exist_ok=True)
        if precision == "fp32":
            from vitshrink.exporters.io_spec import IOSpec
            from vitshrink.exporters.onnx_export import DEFAULT_OPSET, export_onnx

            io = IOSpec.from_model(loaded.model, loaded.data_config)
            export_onnx(loaded.model, io, out, dynamo=False, opset=DEFAULT_OPSET, simplify=True)
        else:
            source, _ = onnx_file(loaded, "fp32", work_dir)
            if precision == "fp16":
                from vitshrink.exporters.fp16 import convert_fp16

                convert_fp16(source, out)
            else:
                from vitshrink.exporters.int8 import quantize_int8

                quantize_int8(source, out)
    return out, "exported"


def engine_files(folder: Path | None) -> dict[str, Path]:
    """precision -> TensorRT engine `vitshrink export --target trt` wrote into `folder`."""
    if folder is None:
        return {}
    return {p: folder / engine_file(p) for p in ("fp16", "fp32", "int8") if (folder / engine_file(p)).is_file()}


def file_sizes(folder: Path | None, extra: dict[str, Path] | None = None) -> dict[str, int]:
    """Bytes of the weights, ONNX graphs and engines in `folder`, plus `extra` files (name -> path)."""
    found: dict[str, int] = {}
    if folder is not None:
        names = [WEIGHTS_FILE, *ONNX_FILES.values(), *(engine_file(p) for p in ("fp16", "fp32", "int8"))]
        for name in names:
            path = folder / name
            if path.is_file():
                found[name] = path.stat().st_size
                data = path.with_name(path.name + ".data")  # external ONNX weights, when over 2 GB
                if data.is_file():
                    found[data.name] = data.stat().st_size
    for name, path in (extra or {}).items():
        if name not in found and Path(path).is_file():
            found[name] = Path(path).stat().st_size
    return found
