"""The files a model is benchmarked from: ONNX graphs per precision, TensorRT engines, and their sizes.

An ONNX file the exporter already wrote into the model's folder is used as it is; otherwise `vitshrink
export`'s own path makes it in a work folder (`exporters.api.export_loaded`: same tensor names, opset and
onnxslim pass, and the same validation against PyTorch), so ONNX Runtime numbers always describe a graph
users can deploy, checked the way they would check it.
Engines are never built here: they belong to the device and come from `vitshrink export --target trt`.
"""

from __future__ import annotations

from pathlib import Path

from vitshrink.compressor.core.artifact import WEIGHTS_FILE
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.exporters.layout import ONNX_FILES, engine_file


def onnx_file(loaded: LoadedModel, precision: str, work_dir: Path, dataset: str | None = None,
              data_dir: str | None = None) -> tuple[Path, str]:
    """(path, origin) of the `precision` ONNX graph of `loaded`; origin is "folder" or "exported".

    An INT8 graph is calibrated on `dataset`'s training images and checked on its validation split, as
    `vitshrink export --target onnx-int8` does; without a dataset there is nothing to calibrate on."""
    name = ONNX_FILES[precision]
    if loaded.path is not None and (loaded.path / name).is_file():
        return loaded.path / name, "folder"
    out = work_dir / name
    if not out.is_file():
        from vitshrink.benchmarks.errors import BenchError
        from vitshrink.exporters.config import ExportConfig
        from vitshrink.exporters.export_job import export_loaded

        if precision == "int8" and dataset is None:
            raise BenchError(f"{loaded.path or loaded.name} has no model.int8.onnx: export it with `vitshrink export "
                             "FOLDER --target onnx-int8 --dataset ...`, or pass --dataset so that bench calibrates one")
        target = {"fp32": "onnx", "fp16": "onnx-fp16", "int8": "onnx-int8"}[precision]
        # bench reports the INT8 file's accuracy per backend and leaves the verdict to gates (int8_drop/...)
        config = ExportConfig(target=target, out_dir=work_dir, dataset=dataset if precision == "int8" else None,
                              data_dir=Path(data_dir) if data_dir and precision == "int8" else None,
                              int8_max_drop=100.0)
        export_loaded(loaded, config)  # validated against PyTorch (INT8: and its validation top-1 against FP32)
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
