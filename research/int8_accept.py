"""INT8 against FP32 on what ships: `vitshrink export --target onnx-int8` (default recipe) of a model, its top-1 on
the whole test split against the FP32 model (paired), and its ONNX Runtime CPU time against the FP32 file (and the
dynamic INT8 file), interleaved in one loop per batch size.

    python -m research.int8_accept accuracy --model runs/int8-student --data-dir ../shared/datasets/cifar10 \
        --out research/results/int8/accept-student
    python -m research.int8_accept speed --model runs/int8-student --data-dir ../shared/datasets/cifar10 \
        --out research/results/int8/accept-student
    python -m research.int8_accept speed --model vit_small_patch16_224 --out research/results/int8/accept-vit-s
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from research.int8_formats import _cpu, images_of
from vitshrink.benchmarks.stats import speedup
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.data.datasets import build_dataset
from vitshrink.exporters.config import ExportConfig
from vitshrink.exporters.export_job import export_loaded
from vitshrink.exporters.int8 import Int8Recipe, quantize_int8
from vitshrink.exporters.int8_accuracy import int8_accuracy
from vitshrink.exporters.runtime.backends import BackendSpec, RuntimeOptions, Subject, build_runtime
from vitshrink.exporters.runtime.timing import TimingPolicy, measure
from vitshrink.exporters.validate import onnx_runner, run_batched, torch_runner


def _export(loaded, data_dir: str | None, work: Path) -> tuple[Path, Path, dict | None]:
    """(fp32, static int8) files as `vitshrink export --target onnx-int8` writes them; random weights: calibrated
    on random images (the graph, and so the time, is the same)."""
    if data_dir is not None:
        report = export_loaded(loaded, ExportConfig(target="onnx-int8", out_dir=work, dataset="imagefolder",
                                                    data_dir=Path(data_dir)))
        return work / "model.onnx", work / "model.int8.onnx", report.int8
    export_loaded(loaded, ExportConfig(target="onnx", out_dir=work))
    calib = np.random.default_rng(0).standard_normal((32, *loaded.input_size)).astype(np.float32)
    quantize_int8(work / "model.onnx", work / "model.int8.onnx", Int8Recipe(calibration_images=32), calib)
    return work / "model.onnx", work / "model.int8.onnx", None


def accuracy(args) -> dict:
    loaded = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8, record = _export(loaded, args.data_dir, Path(tmp))
        test = build_dataset("imagefolder", args.data_dir, "eval", loaded.data_config)
        x, y = images_of(test)
        ref = run_batched(torch_runner(loaded.model.eval()), x)
        out = run_batched(onnx_runner(int8, args.threads), x)
    acc = int8_accuracy(ref, out, y, max_drop=0.5)
    return {"model": args.model, "test_images": len(y), "export_int8": record, "test": acc.to_dict(), "line": acc.line()}


def speed(args) -> dict:
    loaded = load_model(args.model)
    result = {"model": args.model, "threads": args.threads, "cpu": _cpu(), "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8, _ = _export(loaded, args.data_dir, Path(tmp))
        dynamic = Path(tmp) / "model.dynamic.onnx"
        quantize_int8(fp32, dynamic, Int8Recipe(mode="dynamic"))
        files = {"fp32": fp32, "int8 static (default)": int8, "int8 dynamic": dynamic}
        options = RuntimeOptions(threads=args.threads, seed=0)
        runtimes = {n: build_runtime(BackendSpec("ort-cpu", "fp32"), Subject(n, loaded.input_size, onnx={"fp32": p}),
                                     options) for n, p in files.items()}
        policy = TimingPolicy(min_iters=20, min_time_s=args.min_time, max_time_s=120)
        for batch in args.batches:
            samples = measure({n: (lambda rt=rt, b=batch: rt.run(b)) for n, rt in runtimes.items()}, policy)
            for name in list(files)[1:]:
                s = speedup(samples["fp32"], samples[name])
                result[f"fp32/{name} b{batch}"] = {"ratio": round(s.ratio, 3), "ci95": [round(s.ci_low, 3),
                                                   round(s.ci_high, 3)], "rounds": s.pairs}
    result["load_average_after"] = os.getloadavg()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("accuracy", "speed"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 8])
    ap.add_argument("--min-time", type=float, default=4.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.what == "accuracy" and args.data_dir is None:
        ap.error("accuracy needs --data-dir")
    result = accuracy(args) if args.what == "accuracy" else speed(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.what}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
