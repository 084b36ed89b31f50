"""The vitshrink command line: one click group; each package's command.py holds its commands.

compress (prune + distill) -> export (ONNX / TensorRT) -> bench (against the teacher); profile makes the
latency table a latency budget is planned on.
"""

from __future__ import annotations

import click

from vitshrink.benchmarks.bench_command import bench_command, gate_command, profile_command
from vitshrink.compressor.jobs.compress_command import compress_command, finetune_command, info_command
from vitshrink.exporters.export_command import export_command

COMMANDS = (compress_command, finetune_command, info_command, export_command, bench_command, gate_command,
            profile_command)


@click.group()
@click.version_option(package_name="vitshrink")
def main() -> None:
    """vitshrink: make timm Vision Transformers small and fast for edge GPUs.

    compress (prune + distill) -> export (ONNX / TensorRT) -> bench (against the teacher);
    profile measures the latency table that `compress --reduce latency=...` plans on.
    """


for command in COMMANDS:
    main.add_command(command)

if __name__ == "__main__":
    main()
