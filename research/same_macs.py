"""The latency plan against the FLOPs plan that removes the same MACs, in `latency_plan accuracy` results.

Each accuracy run times and evaluates the latency plan and FLOPs plans at its MACs reduction plus offsets
(0 among them); the issue's comparison interpolates the FLOPs plans at the latency plan's realised latency.
This one reads the FLOPs plan nearest the latency plan's MACs instead: if the two run equally fast there,
any top-1 difference is the plans' choice of units, not speed.

    python -m research.same_macs research/results/latency-plan/corner-fit/accuracy-run*.json
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np


def latency_and_twin(result: dict) -> tuple[dict, dict]:
    """The latency plan's row (the first) and the FLOPs row with the nearest MACs reduction."""
    latency, *flops = result["rows"]
    return latency, min(flops, key=lambda r: abs(r["flops_reduction"] - latency["flops_reduction"]))


def same_macs(result: dict) -> dict:
    """Latency plan against the FLOPs plan at its MACs (`latency_and_twin`), in points."""
    latency, twin = latency_and_twin(result)
    return {"macs_gap_pt": 100 * (latency["flops_reduction"] - twin["flops_reduction"]),
            "top1_pt": 100 * (latency["top1"] - twin["top1"]),
            "realised_pt": 100 * (latency["realised_reduction"] - twin["realised_reduction"]),
            "interpolated_pt": result["difference_pt"]}


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def main(results):
    """Top-1 and realised latency of the latency plan minus the FLOPs plan's at the same MACs."""
    rows = []
    for path in results:
        rows.append(same_macs(json.loads(path.read_text())))
        r = rows[-1]
        click.echo(f"{path}: MACs gap {r['macs_gap_pt']:+.1f} pt, top-1 {r['top1_pt']:+.2f} pt, realised latency "
                   f"{r['realised_pt']:+.1f} pt (at equal latency, interpolated: {r['interpolated_pt']:+.2f} pt)")
    top1 = np.array([r["top1_pt"] for r in rows])
    realised = np.array([r["realised_pt"] for r in rows])
    click.echo(f"{len(rows)} runs: top-1 mean {top1.mean():+.2f} pt, {int((top1 < 0).sum())} of {len(rows)} lower; "
               f"realised latency mean {realised.mean():+.1f} pt, {int((realised > 0).sum())} of {len(rows)} faster")


if __name__ == "__main__":
    main()
