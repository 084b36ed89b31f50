"""Does the exported model compute what the PyTorch model computes? Numbers, not a yes/no.

Every exported file is run on the same inputs as the PyTorch model (random batches of several
sizes, plus real images when a dataset is given) and compared on the logits: an element fails
when |out - ref| > atol + rtol * |ref| (numpy's `allclose` rule), and the top-1 classes of all
samples together must agree with PyTorch's at least `min_agreement` of the time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitshrink.exporters.errors import ExportError, ParityError
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.sessions import ort_predict, ort_session

Runner = Callable[[np.ndarray], np.ndarray]  # (B, C, H, W) float32 -> (B, num_outputs) logits
CHUNK = 64  # largest batch sent to a runner with a dynamic batch axis


@dataclass(frozen=True)
class Tolerance:
    atol: float | None  # None: logits are not compared element-wise (INT8 is judged on top-1 only)
    rtol: float
    min_agreement: float  # fraction of samples whose top-1 class must equal PyTorch's

    def to_dict(self) -> dict:
        return asdict(self)


# ONNX Runtime on CPU vs eager FP32 differs by ~1e-6 (measured), so 1e-4 only catches real errors.
# FP16 keeps ~3 significant digits; INT8 moves logits too much for an element-wise rule, so it is held
# to top-1 agreement here, and to validation top-1 against FP32 by `int8_accuracy.py`.
DEFAULT_TOLERANCE = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_agreement=0.99),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_agreement=0.98),
    "int8": Tolerance(atol=None, rtol=0.0, min_agreement=0.90),
}
# TensorRT runs FP32 layers in TF32 on Ampere and newer GPUs (Jetson Orin included) unless told not to.
ENGINE_TOLERANCE = {
    "fp32": Tolerance(atol=1e-3, rtol=1e-3, min_agreement=0.99),
    "fp16": DEFAULT_TOLERANCE["fp16"],
    "int8": DEFAULT_TOLERANCE["int8"],
}


@dataclass(frozen=True)
class InputCase:
    name: str  # e.g. "random batch 16" or "cifar10 eval (256 images)"
    inputs: np.ndarray  # (B, C, H, W) float32, normalised like the model's training data
    labels: np.ndarray | None = None  # (B,) class indices, when the inputs are real images


@dataclass(frozen=True)
class CaseResult:
    name: str
    samples: int
    max_abs_diff: float
    max_rel_diff: float  # max of |out - ref| / |ref| over elements with ref != 0
    outside_tolerance: int  # logits beyond atol + rtol * |ref| (0 when atol is None)
    non_finite: int  # NaN or inf logits in the output (FP16 overflow shows up here)
    top1_agreement: float  # fraction of samples with the same top-1 class as PyTorch
    reference_top1: float | None = None  # accuracy of PyTorch on the labels
    top1: float | None = None  # accuracy of the exported model on the labels

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ValidationReport:
    what: str  # the file and runtime, e.g. "model.onnx (ONNX Runtime)"
    precision: str
    tolerance: Tolerance
    cases: tuple[CaseResult, ...]

    @property
    def top1_agreement(self) -> float:
        """Top-1 agreement over the samples of all cases together."""
        return sum(c.top1_agreement * c.samples for c in self.cases) / sum(c.samples for c in self.cases)

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.cases)

    def mismatches(self) -> list[str]:
        """One line with numbers per failed check; empty when everything matches."""
        tol, lines = self.tolerance, []
        for c in self.cases:
            if c.non_finite:
                lines.append(f"{c.name}: {c.non_finite} logits are NaN or inf")
            if c.outside_tolerance:
                lines.append(
                    f"{c.name}: {c.outside_tolerance} logits of {c.samples} samples beyond atol={tol.atol:g} + "
                    f"rtol={tol.rtol:g} x |ref| (max abs diff {c.max_abs_diff:.3g}, max rel diff {c.max_rel_diff:.3g})"
                )
        if self.top1_agreement < tol.min_agreement:
            per_case = ", ".join(f"{c.name} {c.top1_agreement:.2%}" for c in self.cases)
            lines.append(f"top-1 agreement {self.top1_agreement:.2%} < {tol.min_agreement:.2%} ({per_case})")
        return lines

    def raise_on_mismatch(self) -> None:
        problems = self.mismatches()
        if problems:
            raise ParityError(self.what, problems)

    def to_dict(self) -> dict:
        return {
            "what": self.what,
            "precision": self.precision,
            "tolerance": self.tolerance.to_dict(),
            "passed": not self.mismatches(),
            "top1_agreement": self.top1_agreement,
            "max_abs_diff": self.max_abs_diff,
            "cases": [c.to_dict() for c in self.cases],
        }


def random_cases(io: IOSpec, batch_sizes: Sequence[int], seed: int = 0) -> list[InputCase]:
    """Standard-normal inputs (the scale of normalised images) at each batch size."""
    rng = np.random.default_rng(seed)
    return [
        InputCase(f"random batch {b}", rng.standard_normal(io.input_shape(b)).astype(np.float32))
        for b in dict.fromkeys(batch_sizes)
    ]


def torch_runner(model: nn.Module) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).float().numpy()

    return run


def onnx_runner(path: Path, threads: int | None = None) -> Runner:
    """ONNX Runtime on the CPU through the session `bench` times with (`exporters.sessions.ort_session`)."""
    return ort_predict(ort_session(path, threads=threads), path)


def run_batched(run: Runner, x: np.ndarray, *, min_batch: int = 1, max_batch: int = CHUNK) -> np.ndarray:
    """Run `x` in chunks the runtime accepts; a short last chunk is zero-padded up to `min_batch`."""
    outputs = []
    for start in range(0, len(x), max_batch):
        chunk = x[start : start + max_batch]
        pad = max(min_batch - len(chunk), 0)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(run(chunk)[: len(chunk) - pad])
    return np.concatenate(outputs)


def compare_case(case: InputCase, reference: np.ndarray, output: np.ndarray, tol: Tolerance) -> CaseResult:
    if output.shape != reference.shape:
        raise ExportError(
            f"{case.name}: output shape {output.shape} differs from PyTorch's {reference.shape}"
        )
    output = output.astype(np.float64)
    reference = reference.astype(np.float64)
    finite = np.isfinite(output)
    diff = np.where(finite, np.abs(output - reference), np.inf)
    nonzero = reference != 0
    rel = diff[nonzero] / np.abs(reference[nonzero])
    outside = int(np.sum(diff > tol.atol + tol.rtol * np.abs(reference))) if tol.atol is not None else 0
    same = np.argmax(output, axis=1) == np.argmax(reference, axis=1)
    result = CaseResult(
        name=case.name,
        samples=len(reference),
        max_abs_diff=float(diff.max()),
        max_rel_diff=float(rel.max()) if rel.size else 0.0,
        outside_tolerance=outside,
        non_finite=int(np.sum(~finite)),
        top1_agreement=float(same.mean()),
    )
    if case.labels is None:
        return result
    return replace(
        result,
        reference_top1=float(np.mean(np.argmax(reference, axis=1) == case.labels)),
        top1=float(np.mean(np.argmax(output, axis=1) == case.labels)),
    )


def validate(
    what: str,
    precision: str,
    run: Runner,
    cases: Sequence[InputCase],
    reference: Sequence[np.ndarray],
    tolerance: Tolerance,
    *,
    min_batch: int = 1,
    max_batch: int = CHUNK,
) -> ValidationReport:
    """Run every case through `run` and compare with the PyTorch `reference` logits of the same case."""
    results = tuple(
        compare_case(
            case, ref, run_batched(run, case.inputs, min_batch=min_batch, max_batch=max_batch), tolerance
        )
        for case, ref in zip(cases, reference, strict=True)
    )
    return ValidationReport(what, precision, tolerance, results)
