"""`export(artifact_dir, config)`: turn a (compressed) model folder into what runs on the device.

Every file is written into a hidden staging folder inside the output folder, checked and
validated there, and only then moved into place (`os.replace`), export.json last: an export
that fails leaves no model.onnx behind that looks valid.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.data.datasets import build_dataset
from vitshrink.exporters import tensorrt_build
from vitshrink.exporters.config import ExportConfig
from vitshrink.exporters.errors import ExportError, TensorRTUnavailableError
from vitshrink.exporters.export_report import FORMAT_VERSION, ExportReport
from vitshrink.exporters.fp16 import convert_fp16
from vitshrink.exporters.graph_checks import check_graph, check_weight_count, expected_weight_elements
from vitshrink.exporters.int8 import quantize_int8
from vitshrink.exporters.int8_accuracy import check_int8_accuracy, int8_accuracy
from vitshrink.exporters.int8_data import int8_images, split_settings
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.layout import (
    BUILD_SCRIPT,
    ENGINE_JSON,
    EXPORT_JSON,
    ONNX_FILE,
    ONNX_FILES,
    TIMING_CACHE,
)
from vitshrink.exporters.onnx_export import export_onnx, external_data_file
from vitshrink.exporters.provenance import sha256_file
from vitshrink.exporters.trtexec import EngineProfile, build_script, trtexec_commands
from vitshrink.exporters.validate import (
    CHUNK,
    InputCase,
    ValidationReport,
    onnx_runner,
    random_cases,
    run_batched,
    torch_runner,
    validate,
)

__all__ = ["ExportConfig", "ExportReport", "export", "export_loaded"]


def export(artifact_dir: str | Path, config: ExportConfig) -> ExportReport:
    """Export, check and validate the model in `artifact_dir` for `config.target`; see docs/exporters.md."""
    source = Path(artifact_dir)
    return export_loaded(_load(source), config, source)


def export_loaded(loaded: LoadedModel, config: ExportConfig, source: Path | str | None = None) -> ExportReport:
    """`export` of a model already in memory (`bench` makes its ONNX files this way); `source` names it
    in the report, and is the output folder when `config.out_dir` is None."""
    if config.out_dir is None and source is None:
        raise ExportError(f"exporting {loaded.name} from memory needs an output folder (ExportConfig.out_dir)")
    source = Path(source) if source is not None else Path(loaded.path or loaded.name)
    model = loaded.model.eval()
    out_dir = Path(config.out_dir) if config.out_dir is not None else source
    out_dir.mkdir(parents=True, exist_ok=True)
    io = IOSpec.from_model(model, loaded.data_config, config.static_batch)
    images = _image_cases(config, loaded.data_config)
    batches = config.check_batches if io.dynamic else (io.static_batch,)
    reference = _Reference.of(model, random_cases(io, batches) + images, io.static_batch)

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        stage = Path(tmp)
        files, validations, int8 = {}, [], None
        for precision in _onnx_precisions(config):
            path = stage / ONNX_FILES[precision]
            if precision == "fp32":
                export_onnx(
                    model, io, path, dynamo=config.dynamo, opset=config.opset, simplify=config.simplify
                )
            elif precision == "fp16":
                convert_fp16(stage / ONNX_FILE, path)
            else:
                int8 = _int8(loaded, config, stage / ONNX_FILE, path)
            files[path.name], report = _check_onnx(path, precision, io, config, reference)
            validations.append(report)

        engine = None
        if config.target == "trt":
            engine, engine_report = _tensorrt(model, io, config, stage, out_dir, images)
            if engine_report is not None:
                validations.append(engine_report)
                files[engine["engine_file"]] = _file_record(stage / engine["engine_file"], config.precision)
            files[BUILD_SCRIPT] = _file_record(stage / BUILD_SCRIPT, None)

        result = ExportReport(
            source=source,
            out_dir=out_dir,
            config=config,
            io=io,
            model={
                "architecture": loaded.name,
                "spec": loaded.spec.to_dict(),
                "parameters": reference.parameters,
                "compressed": loaded.compression is not None,
            },
            files=files,
            validations=tuple(validations),
            tensorrt=engine,
            int8=int8,
        )
        if engine is not None:
            engine_json = {"format_version": FORMAT_VERSION, **engine, "versions": result.versions}
            _write_json(stage / ENGINE_JSON, engine_json)
        _write_json(stage / EXPORT_JSON, result.to_dict())
        _publish(stage, out_dir)

    if config.require_engine and not result.engine_built:
        raise TensorRTUnavailableError(
            f"no TensorRT engine was built: {engine['reason']}. The ONNX files and {BUILD_SCRIPT} were written "
            f"to {out_dir}"
        )
    return result


@dataclass(frozen=True)
class _Reference:
    """What every exported file is checked against: the PyTorch model's size and its logits."""

    parameters: int
    # weight elements an export may hold (graph_checks.expected_weight_elements)
    weight_range: tuple[int, int]
    cases: list[InputCase]
    logits: list[np.ndarray]  # PyTorch's output for each case

    @classmethod
    def of(cls, model: nn.Module, cases: list[InputCase], static_batch: int | None = None) -> _Reference:
        return cls(
            parameters=sum(p.numel() for p in model.parameters()),
            weight_range=expected_weight_elements(model, static_batch),
            cases=cases,
            logits=_reference(model, cases),
        )


def _onnx_precisions(config: ExportConfig) -> list[str]:
    """The ONNX files a target needs: always the FP32 one, which the others are made from."""
    if config.target == "onnx-fp16" or (config.target == "trt" and config.precision == "fp16"):
        return ["fp32", "fp16"]  # TensorRT >= 11 builds FP16 engines from the FP16 graph only
    if config.makes_int8:
        return ["fp32", "int8"]  # TensorRT builds INT8 engines from the Q/DQ graph
    return ["fp32"]


def _int8(loaded: LoadedModel, config: ExportConfig, fp32: Path, path: Path) -> dict:
    """Quantize `fp32` to `path`, then check its validation top-1 against the PyTorch model; raises past
    `config.int8_max_drop` (the file is still in the staging folder, so nothing is published)."""
    if config.dataset is None:  # dynamic mode without data: nothing to calibrate on, nothing to check with
        return {"recipe": config.int8.to_dict(), **quantize_int8(fp32, path, config.int8), "data": None,
                "accuracy": None, "note": "accuracy not checked: no --dataset"}
    val_split, seed, source = split_settings(config.val_split, config.seed, loaded.compression, config.dataset)
    images = int8_images(config.dataset, config.data_dir, loaded.data_config,
                         calibration_images=config.int8.calibration_images, validation_images=config.val_limit,
                         val_split=val_split, seed=seed, source=source)
    made = quantize_int8(fp32, path, config.int8, images.calibration if config.int8.mode == "static" else None)
    reference = run_batched(torch_runner(loaded.model.eval()), images.validation)
    logits = run_batched(onnx_runner(path), images.validation)
    accuracy = int8_accuracy(reference, logits, images.labels, config.int8_max_drop)
    check_int8_accuracy(accuracy, path.name)
    return {"recipe": config.int8.to_dict(), **made, "data": images.to_dict(), "accuracy": accuracy.to_dict()}


def _check_onnx(
    path: Path, precision: str, io: IOSpec, config: ExportConfig, reference: _Reference
) -> tuple[dict, ValidationReport]:
    """Graph checks, then ONNX Runtime vs PyTorch; raises on the first file that fails."""
    stats = check_graph(path, io, config.opset)
    check_weight_count(path.name, stats, reference.weight_range, reference.parameters)
    report = validate(
        f"{path.name} (ONNX Runtime)",
        precision,
        onnx_runner(path),
        reference.cases,
        reference.logits,
        config.tolerance(precision),
        min_batch=io.static_batch or 1,
        max_batch=io.static_batch or CHUNK,
    )
    report.raise_on_mismatch()
    return {**_file_record(path, precision), "graph": stats.to_dict()}, report


def _load(source: Path) -> LoadedModel:
    if not source.is_dir():
        raise ExportError(
            f"{source} is not a folder: pass the folder `vitshrink compress` wrote, or a timm model folder "
            "(config.json + model.safetensors)"
        )
    return load_model(str(source))  # raises ModelSourceError / ArtifactError naming what is missing


def _image_cases(config: ExportConfig, data_config: dict) -> list[InputCase]:
    if config.dataset is None:
        return []
    dataset = build_dataset(config.dataset, config.data_dir, "eval", data_config, limit=config.limit)
    if len(dataset) == 0:
        raise ExportError(f"dataset {config.dataset!r} in {config.data_dir} has no eval images")
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    inputs = np.stack([np.asarray(x, dtype=np.float32) for x in images])
    return [
        InputCase(f"{config.dataset} eval ({len(inputs)} images)", inputs, np.asarray(labels, dtype=np.int64))
    ]


def _reference(model: nn.Module, cases: list[InputCase]) -> list[np.ndarray]:
    run = torch_runner(model)
    return [run_batched(run, case.inputs) for case in cases]


def _tensorrt(
    model: nn.Module, io: IOSpec, config: ExportConfig, stage: Path, out_dir: Path, images: list[InputCase]
) -> tuple[dict, ValidationReport | None]:
    """Write build_engine.sh, and build and validate the engine when TensorRT and a GPU are here."""
    profile = EngineProfile.for_io(io, config.min_batch, config.opt_batch, config.max_batch)
    script = stage / BUILD_SCRIPT
    script.write_text(build_script(io, profile, config.precision, config.workspace_mb, BUILD_SCRIPT))
    script.chmod(0o755)
    record = {
        "built": False,
        "precision": config.precision,
        "profile": profile.to_dict(io),
        "workspace_mb": config.workspace_mb,
        "trtexec": trtexec_commands(io, profile, config.precision, config.workspace_mb),
        "build_script": BUILD_SCRIPT,
    }
    try:
        build = tensorrt_build.build_engine(
            stage,
            io,
            profile,
            config.precision,
            workspace_mb=config.workspace_mb,
            timing_cache=Path(config.timing_cache or out_dir / TIMING_CACHE),
        )
    except TensorRTUnavailableError as e:
        return {**record, "reason": str(e)}, None
    cases = random_cases(io, (profile.min_batch, profile.max_batch)) + images
    report = validate(
        f"{build.engine_file} (TensorRT)",
        config.precision,
        tensorrt_build.engine_runner(stage / build.engine_file),
        cases,
        _reference(model, cases),
        config.tolerance(config.precision, engine=True),
        min_batch=profile.min_batch,
        max_batch=profile.max_batch,
    )
    report.raise_on_mismatch()
    return {**record, **build.to_dict(), "built": True, "validation": report.to_dict()}, report


def _file_record(path: Path, precision: str | None) -> dict:
    record = {"precision": precision, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    data = external_data_file(path)
    if data is not None:
        record["external_data"] = {
            "file": data.name,
            "bytes": data.stat().st_size,
            "sha256": sha256_file(data),
        }
    return record


def _write_json(path: Path, data: dict) -> None:
    """A plain write: the file is in the staging folder, published by `_publish`'s rename."""
    path.write_text(json.dumps(data, indent=2) + "\n")


def _publish(stage: Path, out_dir: Path) -> None:
    """Move the staged files into `out_dir`, each with one atomic rename; the JSON sidecars last."""
    files = sorted(p for p in stage.iterdir() if p.is_file() and not p.name.startswith("."))
    for path in sorted(files, key=lambda p: (p.suffix == ".json", p.name == EXPORT_JSON)):
        path.replace(out_dir / path.name)
