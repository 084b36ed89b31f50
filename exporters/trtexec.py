"""The `trtexec` command and `build_engine.sh` that build the engine on the device.

Engines are tied to the GPU and the TensorRT version, so for a Jetson they are built on the
Jetson. The same profile, file names and workspace are used as by the Python builder.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from vitshrink.exporters.errors import ExportError
from vitshrink.exporters.io_spec import INPUT_NAME, IOSpec
from vitshrink.exporters.layout import TIMING_CACHE, engine_file, engine_onnx_file

PRECISIONS = ("fp32", "fp16", "int8")  # int8: explicit quantization of the Q/DQ graph (model.int8.onnx)


@dataclass(frozen=True)
class EngineProfile:
    """Batch sizes of the TensorRT optimization profile (all equal for a static-batch graph)."""

    min_batch: int
    opt_batch: int  # the batch size TensorRT tunes kernels for
    max_batch: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ExportError(
                f"engine batch sizes must satisfy 1 <= min <= opt <= max, got min={self.min_batch} "
                f"opt={self.opt_batch} max={self.max_batch}"
            )

    @classmethod
    def for_io(cls, io: IOSpec, min_batch: int, opt_batch: int, max_batch: int) -> EngineProfile:
        """The profile asked for, or the graph's own batch size when it is static."""
        if io.static_batch is not None:
            return cls(io.static_batch, io.static_batch, io.static_batch)
        return cls(min_batch, opt_batch, max_batch)

    def shapes(self, io: IOSpec) -> dict[str, tuple[int, ...]]:
        return {
            "min": io.input_shape(self.min_batch),
            "opt": io.input_shape(self.opt_batch),
            "max": io.input_shape(self.max_batch),
        }

    def to_dict(self, io: IOSpec) -> dict:
        return {"input": INPUT_NAME, **{k: list(v) for k, v in self.shapes(io).items()}}


def trtexec_args(
    io: IOSpec, profile: EngineProfile, precision: str, trt_major: int, workspace_mb: int
) -> list[str]:
    """trtexec arguments (without the program), with file names relative to the export folder."""
    strongly_typed = trt_major >= 11
    args = [
        f"--onnx={engine_onnx_file(precision, strongly_typed)}",
        f"--saveEngine={engine_file(precision)}",
    ]
    if io.dynamic:
        args += [
            f"--minShapes={io.trt_shape(profile.min_batch)}",
            f"--optShapes={io.trt_shape(profile.opt_batch)}",
            f"--maxShapes={io.trt_shape(profile.max_batch)}",
        ]
    if strongly_typed:
        args.append("--stronglyTyped")  # the only mode in TensorRT 11: precision comes from the ONNX
    elif precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args += ["--int8", "--fp16"]  # INT8 where the Q/DQ nodes say; the layers left in float may run FP16
    args += [f"--memPoolSize=workspace:{workspace_mb}M", f"--timingCacheFile={TIMING_CACHE}"]
    return args


def trtexec_commands(io: IOSpec, profile: EngineProfile, precision: str, workspace_mb: int) -> dict[str, str]:
    """The command for each TensorRT generation, to run inside the export folder."""
    return {
        f"tensorrt{major}": shlex.join(
            ["trtexec", *trtexec_args(io, profile, precision, major, workspace_mb)]
        )
        for major in (10, 11)
    }


_SCRIPT = """\
#!/usr/bin/env bash
# Build the TensorRT engine {engine} on the device that will run it (written by `vitshrink export`).
# Engines are tied to the GPU and the TensorRT version: build them on the Jetson itself.
#
# usage: ./{script} [TRT_MAJOR]
#   TRT_MAJOR  TensorRT major version (10 on JetPack 6); read from `trtexec --version` when omitted
#   TRTEXEC    environment variable: the trtexec to use (default: trtexec on PATH, else JetPack's)
set -euo pipefail
cd "$(dirname "$0")"

trtexec_bin="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$trtexec_bin" ]; then
  echo "trtexec not found: install TensorRT (JetPack has /usr/src/tensorrt/bin/trtexec) or set TRTEXEC" >&2
  exit 1
fi

major="${{1:-}}"
if [ -z "$major" ]; then
  # trtexec's banner reads "[TensorRT v100300]" for 10.3.0 and "[TensorRT v8602]" for 8.6.2
  code="$("$trtexec_bin" --version 2>&1 | grep -oE 'TensorRT v[0-9]+' | head -n 1 | tr -dc '0-9' || true)"
  if [ -z "$code" ]; then
    echo "cannot read the TensorRT version from '$trtexec_bin --version'; pass it: $0 10" >&2
    exit 1
  fi
  if [ "$code" -ge 100000 ]; then major=$((code / 10000)); else major=$((code / 1000)); fi
fi
case "$major" in
  '' | *[!0-9]*) echo "TRT_MAJOR must be a number such as 10 or 11, got '$major'" >&2; exit 1 ;;
esac

echo "building {engine} with TensorRT $major.x" >&2
if [ "$major" -ge 11 ]; then
  # TensorRT >= 11 builds strongly typed networks only: the precision comes from the ONNX file
  "$trtexec_bin" {args11}
else
  "$trtexec_bin" {args10}
fi
"""


def build_script(
    io: IOSpec, profile: EngineProfile, precision: str, workspace_mb: int, script_name: str
) -> str:
    """A bash script that builds the engine with trtexec on the device, for TensorRT 10 or >= 11."""
    return _SCRIPT.format(
        engine=engine_file(precision),
        script=script_name,
        args10=shlex.join(trtexec_args(io, profile, precision, 10, workspace_mb)),
        args11=shlex.join(trtexec_args(io, profile, precision, 11, workspace_mb)),
    )
