"""What `vitshrink export` is asked to do: one frozen config, checked when it is built."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from vitshrink.exporters.errors import ExportError
from vitshrink.exporters.int8 import Int8Recipe
from vitshrink.exporters.int8_accuracy import DEFAULT_MAX_DROP
from vitshrink.exporters.onnx_export import DEFAULT_OPSET, check_opset
from vitshrink.exporters.trtexec import PRECISIONS, EngineProfile
from vitshrink.exporters.validate import DEFAULT_TOLERANCE, ENGINE_TOLERANCE, Tolerance

TARGETS = ("onnx", "onnx-fp16", "onnx-int8", "trt")


@dataclass(frozen=True)
class ExportConfig:
    """Options of one export; the defaults give a validated FP32 ONNX file for TensorRT 10.3 (JetPack 6)."""

    target: str = "onnx"  # onnx | onnx-fp16 | onnx-int8 | trt
    out_dir: Path | None = None  # where the files go; None: into the artifact folder
    dynamo: bool = False  # False: TorchScript exporter + onnxslim, the smallest graph (docs/exporters.md)
    opset: int = DEFAULT_OPSET
    static_batch: int | None = None  # fixed batch size for runtimes that want it; None: dynamic batch
    simplify: bool = True  # run onnxslim on the exported graph
    # tolerances of the file the target produces (None: the default for its precision, see validate.py)
    atol: float | None = None
    rtol: float | None = None
    min_agreement: float | None = None  # top-1 agreement with PyTorch, 0..1
    check_batches: tuple[int, ...] = (1, 16)  # batch sizes of the random validation inputs (dynamic batch)
    dataset: str | None = None  # a vitshrink.compressor.data.datasets dataset for validation on real images
    data_dir: Path | None = None  # its folder (not needed for digits)
    limit: int = 256  # images taken from the dataset's eval split
    # TensorRT (target trt)
    # INT8 (target onnx-int8, and trt --precision int8, whose engine is built from the Q/DQ graph)
    int8: Int8Recipe = field(default_factory=Int8Recipe)
    int8_max_drop: float = DEFAULT_MAX_DROP  # validation top-1 points INT8 may lose against FP32 (else refused)
    val_split: float | int | None = None  # held-out training images; None: the artifact's compress run's, else 10%
    seed: int | None = None  # of the validation split and calibration subset; None: the compress run's, else 0
    val_limit: int = 2000  # validation images the INT8 accuracy is checked on
    precision: str = "fp16"  # engine precision: fp32 | fp16 | int8
    min_batch: int = 1  # optimization profile (ignored with static_batch)
    opt_batch: int = 1  # the batch TensorRT tunes for: 1 for latency on the device
    max_batch: int = 16
    workspace_mb: int = 1024  # TensorRT workspace memory pool limit
    timing_cache: Path | None = None  # None: timing.cache in the output folder
    require_engine: bool = False  # fail when no engine can be built here

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ExportError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        check_opset(self.opset, self.dynamo)
        if self.static_batch is not None and self.static_batch < 1:
            raise ExportError(f"static batch must be >= 1, got {self.static_batch}")
        if self.require_engine and self.target != "trt":
            raise ExportError(f"--require-engine applies to --target trt, not {self.target}")
        if self.precision not in PRECISIONS:
            raise ExportError(
                f"unknown engine precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        EngineProfile(self.min_batch, self.opt_batch, self.max_batch)  # raises on a bad order
        if self.limit < 1 or not self.check_batches or min(self.check_batches) < 1 or self.workspace_mb < 1:
            raise ExportError("limit, validation batch sizes and workspace must be positive")
        if any(v is not None and v < 0 for v in (self.atol, self.rtol)):
            raise ExportError(f"tolerances must be >= 0, got atol={self.atol} rtol={self.rtol}")
        if self.int8_max_drop < 0 or self.val_limit < 1:
            raise ExportError(f"--int8-max-drop must be >= 0 and --val-limit >= 1, got {self.int8_max_drop} and "
                              f"{self.val_limit}")
        if self.makes_int8 and self.int8.mode == "static" and self.dataset is None:
            raise ExportError("static INT8 calibrates on training images and checks accuracy on held-out ones: pass "
                              "--dataset (and --data-dir), or --int8-mode dynamic")
        if self.makes_int8 and self.int8.mode == "dynamic" and self.target == "trt":
            raise ExportError("TensorRT builds INT8 engines from the static Q/DQ graph; drop --int8-mode dynamic")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ExportError(f"min top-1 agreement is a fraction in 0..1, got {self.min_agreement}")

    @property
    def makes_int8(self) -> bool:
        return self.target == "onnx-int8" or (self.target == "trt" and self.precision == "int8")

    @property
    def product(self) -> tuple[str, bool]:
        """(precision, is_engine) of the file this target is for."""
        return {"onnx": ("fp32", False), "onnx-fp16": ("fp16", False), "onnx-int8": ("int8", False)}.get(
            self.target, (self.precision, True)
        )

    def tolerance(self, precision: str, *, engine: bool = False) -> Tolerance:
        """The user's tolerance for the file the target produces; the default for its precision elsewhere."""
        default = (ENGINE_TOLERANCE if engine else DEFAULT_TOLERANCE)[precision]
        if (precision, engine) != self.product:
            return default
        return Tolerance(
            atol=default.atol if self.atol is None else self.atol,
            rtol=default.rtol if self.rtol is None else self.rtol,
            min_agreement=default.min_agreement if self.min_agreement is None else self.min_agreement,
        )

    def to_dict(self) -> dict:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        return {**d, "int8": self.int8.to_dict()}
