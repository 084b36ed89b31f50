"""torch.distributed on CPU (gloo, 2 processes): same importance as one process, and a DDP compress run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from compressor.artifact import save_artifact
from compressor.importance import calibration_batches, score
from tests.conftest import tiny_vit

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches() -> list:
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(6)]
    return data


def _score_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        share = calibration_batches(_batches(), num_batches=6, rank=rank, world_size=world)
        scores = score(tiny_vit(), share, "taylor")
        if rank == 0:
            np.savez(out, heads=np.concatenate(scores.heads), neurons=np.concatenate(scores.neurons), blocks=scores.blocks)
    finally:
        dist.destroy_process_group()


def test_two_processes_score_like_one(tmp_path):
    out = str(tmp_path / "ddp.npz")
    mp.spawn(_score_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = np.load(out)
    single = score(tiny_vit(), _batches(), "taylor")
    np.testing.assert_allclose(ddp["heads"], np.concatenate(single.heads), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ddp["neurons"], np.concatenate(single.neurons), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ddp["blocks"], single.blocks, rtol=1e-5, atol=1e-9)


def test_torchrun_compress_with_two_gloo_processes(trained_digits, tmp_path):
    teacher = save_artifact(tmp_path / "teacher", trained_digits, {"method": "test teacher"})
    out = tmp_path / "student"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(ROOT / "cli.py"), "compress", "--model", str(teacher), "--reduce", "flops=0.2", "--stages", "width",
           "--epochs", "1", "--max-steps-per-epoch", "2", "--calib-batches", "2", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    assert result.stdout.count("artifact:") == 1  # only rank 0 reports and writes
