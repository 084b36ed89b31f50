"""A small latency table with round numbers, for the experiments' tests that make up timings from a known runtime."""

from __future__ import annotations

from vitshrink.compressor.core.latency_table import Fit, LatencyTable, TableKey

DEPTH, HEADS, HIDDEN = 4, 4, 64


def toy_table(points: tuple = (), round_to: int = 1) -> LatencyTable:
    """4 blocks of 4 heads and 64 MLP neurons: an attention sub-block costs 0.5 ms + 0.5 ms a head, an MLP one
    0.5 ms per 16 neurons, the rest 2 ms; `points`: the fit's whole models."""
    key = TableKey(architecture={"depth": DEPTH, "num_heads": HEADS, "mlp_hidden": HIDDEN}, target="ort-cpu",
                   precision="fp32", runtime_version="onnxruntime 1", threads=1, batch=1, device="cpu")
    return LatencyTable(key, attention=(0.0, 1.0, 1.5, 2.0, 2.5), mlp_widths=(0, 16, 32, 48, 64),
                        mlp_ms=(0.0, 0.5, 1.0, 1.5, 2.0), fixed=2.0, fit=Fit(points=points), round_to=round_to)
