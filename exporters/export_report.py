"""What an export produced: the content of export.json and the summary the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vitshrink.exporters.config import ExportConfig
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.layout import BUILD_SCRIPT
from vitshrink.exporters.onnx_export import exporter_name
from vitshrink.exporters.provenance import library_versions
from vitshrink.exporters.validate import ValidationReport

FORMAT_VERSION = 1  # of export.json and engine.json


@dataclass(frozen=True)
class ExportReport:
    source: Path
    out_dir: Path
    config: ExportConfig
    io: IOSpec
    model: dict  # architecture, per-block spec, parameter count
    files: dict[str, dict]  # file name in out_dir -> precision, size, sha256, graph statistics
    validations: tuple[ValidationReport, ...]
    tensorrt: dict | None = None  # engine.json content (target trt)
    int8: dict | None = None  # how model.int8.onnx was made and its validation top-1 against FP32
    versions: dict = field(default_factory=library_versions)

    @property
    def engine_built(self) -> bool:
        return bool(self.tensorrt and self.tensorrt["built"])

    def to_dict(self) -> dict:
        """The content of export.json."""
        return {
            "format_version": FORMAT_VERSION,
            "source": str(self.source),
            "target": self.config.target,
            "exporter": exporter_name(self.config.dynamo),
            "opset": self.config.opset,
            "simplified": self.config.simplify,
            "io": self.io.to_dict(),
            "model": self.model,
            "files": self.files,
            "validation": [v.to_dict() for v in self.validations],
            "tensorrt": self.tensorrt,
            "int8": self.int8,
            "versions": self.versions,
            "config": self.config.to_dict(),
        }

    def summary(self) -> str:
        cfg = self.config
        batch = "dynamic batch" if self.io.dynamic else f"static batch {self.io.static_batch}"
        lines = [
            f"exported {self.source} -> {self.out_dir}",
            f"  target {cfg.target}, {exporter_name(cfg.dynamo)} exporter, opset {cfg.opset}, {batch}",
        ]
        for name, rec in self.files.items():
            graph = rec.get("graph")
            shape = f"{graph['nodes']:>5} nodes {graph['weight_elements']:>12,} weights" if graph else ""
            lines.append(f"  {name:<22} {rec['precision'] or '':<5} {shape:<32} sha256 {rec['sha256'][:12]}")
        lines.append("validation against PyTorch:")
        lines += [f"  {_validation_line(v)}" for v in self.validations]
        if self.int8 is not None:
            lines += _int8_lines(self.int8)
        if self.tensorrt is not None:
            lines += _tensorrt_lines(self.tensorrt)
        return "\n".join(lines)


def _validation_line(v: ValidationReport) -> str:
    tol = v.tolerance
    diff = f"max abs diff {v.max_abs_diff:.2g} (atol {tol.atol:g})" if tol.atol is not None else "top-1 only"
    samples = sum(c.samples for c in v.cases)
    line = f"{v.what:<34} {diff:<32} top-1 agreement {v.top1_agreement:.1%} of {samples}"
    for c in v.cases:
        if c.top1 is not None:
            change = (c.top1 - c.reference_top1) * 100
            line += f"; accuracy {c.reference_top1:.1%} -> {c.top1:.1%} ({change:+.1f} pt) on {c.name}"
    return line


def _int8_lines(int8: dict) -> list[str]:
    if int8["mode"] == "static":
        made = (f"static Q/DQ, {'+'.join(int8['quantized'])} in INT8, calibrated ({int8['calibration']['method']}) "
                f"on {int8['calibration']['images']} training images")
    else:
        made = "dynamic (activations quantized at run time; ONNX Runtime only)"
    lines = [f"INT8: {made}"]
    acc = int8["accuracy"]
    if acc is None:
        lines.append(f"  {int8['note']}")
    else:
        lo, hi = acc["drop_ci95"]
        lines.append(f"  validation top-1 {acc['fp32_top1']:.2%} (FP32) -> {acc['int8_top1']:.2%} (INT8) on "
                     f"{acc['images']} held-out training images: drop {acc['drop_points']:+.2f} points "
                     f"(95% CI {lo:+.2f} to {hi:+.2f}), at most {acc['max_drop']:g} allowed (--int8-max-drop)")
    return lines


def _tensorrt_lines(engine: dict) -> list[str]:
    if engine["built"]:
        return [
            f"TensorRT {engine['tensorrt_version']}: built {engine['engine_file']} from {engine['onnx_file']} on "
            f"{engine['gpu']} (sm {engine['compute_capability']}) in {engine['build_seconds']:.1f} s"
        ]
    return [
        f"TensorRT: NO engine was built here: {engine['reason']}",
        f"  build it on the device (engines are tied to GPU + TensorRT version): ./{BUILD_SCRIPT}",
        f"  or, inside the export folder, TensorRT 10.x: {engine['trtexec']['tensorrt10']}",
        f"                                TensorRT >= 11: {engine['trtexec']['tensorrt11']}",
    ]
