"""`python -m vitshrink.benchmarks.memory_probe REQUEST_JSON`: peak memory of one model on one backend, as JSON.

One process per (model, backend), so the allocations of one backend never show up in another's
numbers. The process imports the backend's libraries, records its peak RSS so far (the baseline),
loads the model on the backend, runs the batch a few times and records the peak again.
On Linux the peak is `VmHWM` from /proc/self/status: `ru_maxrss` would be wrong here, because
Linux carries it over from the parent through fork and exec (the child would report at least the
parent's size). Elsewhere `ru_maxrss` is used (KiB on Linux, bytes on macOS). On a GPU it also reports the PyTorch
allocator's peak (torch-cuda) or the drop in free device memory (ONNX Runtime CUDA, TensorRT),
which the allocator cannot see.

REQUEST_JSON keys: runtime, precision, role, input_size, batch, iters, threads, and source (model
folder or timm name, for torch backends), onnx (ONNX file), engine (engine file), device_id.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (this program, not its parent) so far."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # "VmHWM:  123456 kB"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def probe(request: dict) -> dict:
    from vitshrink.exporters.runtime.backends import (
        BackendSpec,
        RuntimeOptions,
        Subject,
        build_runtime,
        get_runtime,
    )

    entry = get_runtime(request["runtime"])
    uses_torch = entry.needs == "model" or entry.device == "cuda"
    if uses_torch:
        import torch

        torch.set_num_threads(int(request["threads"]))
    if entry.needs == "model":
        from vitshrink.compressor.core.model_loading import (
            load_model,  # timm and torchvision: counted in the baseline
        )
    if entry.needs == "onnx":
        import onnxruntime  # noqa: F401  (counted in the baseline, like torch for torch backends)
    baseline = peak_rss_bytes()

    cuda_free_before = None
    if entry.device == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        cuda_free_before = torch.cuda.mem_get_info()[0]  # after the CUDA context exists

    model = None
    if entry.needs == "model":
        model = load_model(request["source"]).model
    precision = request["precision"]
    subject = Subject(
        role=request["role"],
        input_size=tuple(request["input_size"]),
        model=model,
        onnx={precision: Path(request["onnx"])} if request.get("onnx") else {},
        engines={precision: Path(request["engine"])} if request.get("engine") else {},
    )
    options = RuntimeOptions(threads=int(request["threads"]), device_id=int(request.get("device_id", 0)))
    runtime = build_runtime(BackendSpec(request["runtime"], precision), subject, options)
    for _ in range(int(request.get("iters", 3))):
        runtime.run(int(request["batch"]))

    result = {"rss_baseline_bytes": baseline, "rss_peak_bytes": peak_rss_bytes(), "cuda_peak_bytes": None,
              "cuda_method": None}
    if entry.device == "cuda":
        torch.cuda.synchronize()
        if entry.needs == "model":
            result.update(cuda_peak_bytes=torch.cuda.max_memory_allocated(), cuda_method="torch max_memory_allocated")
        else:
            used = cuda_free_before - torch.cuda.mem_get_info()[0]
            result.update(cuda_peak_bytes=int(used), cuda_method="drop in free device memory (mem_get_info)")
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m vitshrink.benchmarks.memory_probe REQUEST_JSON", file=sys.stderr)
        return 2
    print(json.dumps(probe(json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
