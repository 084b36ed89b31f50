"""Which INT8 graph runs fastest on ONNX Runtime CPU at what accuracy cost: formats, activation types, op subsets.

Every variant is made from the same FP32 `model.onnx` (exported as `vitshrink export` writes it), calibrated
on training images outside the validation split, scored on validation images, and timed against the FP32
file in one interleaved loop (each round calls FP32 and every variant once; the ratio is the median of the
per-round FP32 / variant ratios, as `bench` takes it).

    python -m research.int8_formats --model runs/int8-student --data-dir ../shared/datasets/cifar10 \
        --out research/results/int8/formats-student
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vitshrink.benchmarks.stats import speedup
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.data.datasets import build_dataset, fixed_subset, split_train
from vitshrink.exporters.config import ExportConfig
from vitshrink.exporters.export_job import export_loaded
from vitshrink.exporters.int8 import OP_GROUPS, Int8Recipe, _reader, op_groups, quantize_int8
from vitshrink.exporters.runtime.backends import BackendSpec, RuntimeOptions, Subject, build_runtime
from vitshrink.exporters.runtime.timing import TimingPolicy, measure
from vitshrink.exporters.validate import onnx_runner, run_batched

# name -> (format, activation type, op groups quantized, calibration method); "dynamic" and "product:*" aside
VARIANTS = {
    "qdq-s8-all": ("QDQ", "s8", OP_GROUPS, "minmax"),
    "qdq-s8-nohead": ("QDQ", "s8", ("patch_embed", "linear", "attention"), "minmax"),
    "qdq-s8-linear+attn": ("QDQ", "s8", ("linear", "attention"), "minmax"),
    "qdq-s8-linear": ("QDQ", "s8", ("linear",), "minmax"),
    "qdq-u8-linear": ("QDQ", "u8", ("linear",), "minmax"),
    "qdq-u8-nohead": ("QDQ", "u8", ("patch_embed", "linear", "attention"), "minmax"),
    "qop-u8-linear": ("QOperator", "u8", ("linear",), "minmax"),
    "qop-s8-linear": ("QOperator", "s8", ("linear",), "minmax"),
    "qop-u8-nohead": ("QOperator", "u8", ("patch_embed", "linear", "attention"), "minmax"),
    "qdq-s8-nohead-pct": ("QDQ", "s8", ("patch_embed", "linear", "attention"), "percentile"),
    "qdq-s8-nohead-entropy": ("QDQ", "s8", ("patch_embed", "linear", "attention"), "entropy"),
    # inputs only: no Q/DQ on the outputs of the quantized ops (ORT then fuses MatMulIntegerToFloat)
    "qdq-s8-linear-in": ("QDQ", "s8", ("linear",), "minmax", "inputs"),
    "qdq-u8-linear-in": ("QDQ", "u8", ("linear",), "minmax", "inputs"),
    "qdq-s8-nohead-in": ("QDQ", "s8", ("patch_embed", "linear", "attention"), "minmax", "inputs"),
    "qdq-s8-all-in": ("QDQ", "s8", OP_GROUPS, "minmax", "inputs"),
    "qdq-s8-linear+patch-in": ("QDQ", "s8", ("patch_embed", "linear"), "minmax", "inputs"),
}


def make_variant(name: str, src: Path, dst: Path, calib: np.ndarray) -> None:
    if name == "dynamic":
        quantize_int8(src, dst, Int8Recipe(mode="dynamic"))
        return
    if name.startswith("product"):  # the default recipe; "product@N": calibrated on the first N images, "product-pct"
        count = int(name.split("@")[1]) if "@" in name else Int8Recipe().calibration_images
        method = {"product-pct": "percentile", "product-entropy": "entropy"}.get(name.split("@")[0], "minmax")
        quantize_int8(src, dst, Int8Recipe(calibration_images=count, calibration_method=method), calib)
        return
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fmt, act, groups, method, *where = VARIANTS[name]
    outputs = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"]} if where == ["inputs"] else {}
    found = op_groups(src)
    quantize_static(
        str(src), str(dst), _reader(calib),
        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        nodes_to_quantize=[n for g in groups for n in found[g]],
        per_channel=True,
        activation_type=QuantType.QInt8 if act == "s8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                          "entropy": CalibrationMethod.Entropy}[method],
        extra_options={"ActivationSymmetric": act == "s8", "WeightSymmetric": True, **outputs},
    )


def images_of(dataset, idx: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    idx = list(range(len(dataset))) if idx is None else idx
    xs, ys = zip(*(dataset[i] for i in idx), strict=True)
    return np.stack([np.asarray(x, dtype=np.float32) for x in xs]), np.asarray(ys)


def optimized_ops(path: Path, threads: int) -> dict[str, int]:
    """Op types of the graph ONNX Runtime actually runs (after its fusions)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for n in graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--val-split", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", type=int, default=1024, help="calibration images drawn (variants use the first ones)")
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--variants", default="dynamic,product," + ",".join(VARIANTS))
    ap.add_argument("--batches", default="1,8", help="batch sizes to time; 0: accuracy only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    loaded = load_model(args.model)
    plain = build_dataset("imagefolder", args.data_dir, "train", loaded.data_config)
    split = split_train(len(plain), args.val_split, args.seed)
    calib, _ = images_of(plain, fixed_subset(split.train, args.calib, args.seed + 1))
    val_x, val_y = images_of(plain, fixed_subset(split.val, args.val_images, args.seed))
    assert not set(fixed_subset(split.train, args.calib, args.seed + 1)) & set(split.val)

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="int8-formats-"))
    export_loaded(loaded, ExportConfig(target="onnx", out_dir=work))
    fp32 = work / "model.onnx"
    files = {"fp32": fp32}
    rows: dict[str, dict] = {}
    for name in args.variants.split(","):
        dst = work / f"{name}.onnx"
        start = time.perf_counter()
        make_variant(name, fp32, dst, calib)
        files[name] = dst
        rows[name] = {"quantize_s": round(time.perf_counter() - start, 1), "bytes": dst.stat().st_size}
    ref = run_batched(onnx_runner(fp32, args.threads), val_x)
    rows["fp32"] = {"bytes": fp32.stat().st_size}
    for name, path in files.items():
        out = run_batched(onnx_runner(path, args.threads), val_x)
        rows[name]["val_top1"] = float(np.mean(out.argmax(1) == val_y))
        rows[name]["agreement"] = float(np.mean(out.argmax(1) == ref.argmax(1)))
        rows[name]["ops_run"] = optimized_ops(path, args.threads)

    options = RuntimeOptions(threads=args.threads, seed=args.seed)
    runtimes = {
        name: build_runtime(BackendSpec("ort-cpu", "fp32"), Subject(name, loaded.input_size, onnx={"fp32": p}), options)
        for name, p in files.items()
    }
    policy = TimingPolicy(min_iters=20, min_time_s=args.min_time, max_time_s=60)
    load = os.getloadavg()
    for batch in [int(b) for b in args.batches.split(",") if int(b) > 0]:
        calls = {name: (lambda rt=rt, b=batch: rt.run(b)) for name, rt in runtimes.items()}
        samples = measure(calls, policy)
        for name in files:
            if name == "fp32":
                continue
            s = speedup(samples["fp32"], samples[name], seed=args.seed)
            rows[name][f"speedup_b{batch}"] = [round(s.ratio, 3), round(s.ci_low, 3), round(s.ci_high, 3), s.pairs]
    result = {
        "model": args.model, "threads": args.threads, "load_average_before": load, "load_average_after": os.getloadavg(),
        "calibration_images": args.calib, "val_images": len(val_y), "cpu": _cpu(), "rows": rows,
    }
    (args.out / "formats.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| variant | val top-1 | agreement | FP32/INT8 time b" + " | b".join(args.batches.split(",")) + " | MB |",
             "|---" * (4 + len(args.batches.split(","))) + "|"]
    for name, r in rows.items():
        sp = " | ".join(f"{r[k][0]:.2f}x ({r[k][1]:.2f}-{r[k][2]:.2f})" for k in r if k.startswith("speedup_b"))
        lines.append(f"| {name} | {r['val_top1']:.2%} | {r['agreement']:.2%} | {sp or '1.00x'} | {r['bytes'] / 1e6:.2f} |")
    (args.out / "formats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"load average before {load}, after {os.getloadavg()}")


def _cpu() -> str:
    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return f"{model}; " + " ".join(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"))


if __name__ == "__main__":
    main()
