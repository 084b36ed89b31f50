"""The same-MACs comparison reads the FLOPs plan nearest the latency plan's MACs, not the nearest latency."""

from __future__ import annotations

import pytest

from research.same_macs import same_macs


def test_the_twin_is_the_flops_plan_with_the_nearest_macs():
    rows = [{"plan": "latency", "flops_reduction": 0.40, "top1": 0.640, "realised_reduction": 0.27},
            {"plan": "flops0.380", "flops_reduction": 0.38, "top1": 0.652, "realised_reduction": 0.27},
            {"plan": "flops0.401", "flops_reduction": 0.401, "top1": 0.645, "realised_reduction": 0.29},
            {"plan": "flops0.420", "flops_reduction": 0.42, "top1": 0.641, "realised_reduction": 0.31}]
    result = same_macs({"rows": rows, "difference_pt": -1.2})
    assert result["macs_gap_pt"] == pytest.approx(-0.1) and result["top1_pt"] == pytest.approx(-0.5)
    assert result["realised_pt"] == pytest.approx(-2.0) and result["interpolated_pt"] == -1.2
