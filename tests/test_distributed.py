"""torch.distributed on CPU (gloo, 2 processes): same importance as one process, DDP training that cannot
hang (uneven shards, a stop seen by one rank) and resumes exactly, the default teacher, a DDP compress run.

Starting a process costs more than most scenarios here (imports), so one pair of processes runs every
scenario in turn (`two_ranks`), each recording its outcome; the tests read those records. The pair runs
under `_spawn`, which kills it and fails after a timeout: a collective that never completes fails the
tests instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from tests.conftest import tiny_vit
from vitshrink.compressor.core.artifact import save_artifact
from vitshrink.compressor.scoring.importance import calibration_batches, score
from vitshrink.compressor.training.train import TrainConfig, TrainingInterrupted, train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, *args, nprocs: int = 2, timeout: float = 300.0) -> None:
    """Run `worker(rank, nprocs, port, *args)` in `nprocs` processes; kill them and fail if they hang."""
    context = mp.spawn(worker, args=(nprocs, _free_port(), *args), nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):  # raises if a process failed
        if time.monotonic() >= deadline:
            for p in context.processes:
                p.kill()
                p.join()
            pytest.fail(f"{worker.__name__}: {nprocs} processes did not finish within {timeout:.0f} s (hung)")


class _Images(Dataset):
    """Fixed random 16x16 images, "augmented" with noise after a data-dependent number of draws."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        torch.rand(1 + i % 3)  # like timm's random-resized-crop retries: each sample draws a different amount
        return self.x[i] + 0.1 * torch.randn(3, 16, 16), int(self.y[i])


def _batches() -> list:
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(6)]
    return data


# ---- scenarios: each runs on every rank with its own output folder ----


def _score(rank: int, world: int, out: Path) -> None:
    share = calibration_batches(_batches(), num_batches=6, rank=rank, world_size=world)
    scores = score(tiny_vit(), share, "taylor")
    if rank == 0:
        np.savez(out / "ddp.npz", heads=np.concatenate(scores.heads), neurons=np.concatenate(scores.neurons),
                 blocks=scores.blocks)


def _uneven(rank: int, world: int, out: Path) -> None:
    model = tiny_vit()
    # 17 images, 2 processes, batch 4: unpadded, rank 0 would take 9 images (3 steps), rank 1 8 (2 steps)
    result = train(model, _Images(17), None, TrainConfig(epochs=2, batch_size=4, lr=1e-3, warmup_epochs=0),
                   out / "work", progress=False)
    save_file(model.state_dict(), str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(result.history))


def _one_rank_stops(rank: int, world: int, out: Path) -> None:
    try:  # only rank 0 is asked to stop (as when Ctrl-C reaches one process): both must stop at that step
        train(tiny_vit(), _Images(32), None, TrainConfig(epochs=1, batch_size=4), out / "work", progress=False,
              should_stop=lambda epoch, step: rank == 0 and step == 2)
        message = "finished"
    except TrainingInterrupted as e:
        message = str(e)
    (out / f"rank{rank}.txt").write_text(message)


def _resume(rank: int, world: int, out: Path) -> None:
    data, config = _Images(32), TrainConfig(epochs=2, batch_size=4, lr=1e-3, warmup_epochs=0, seed=2)
    drop = {"proj_drop_rate": 0.2, "drop_path_rate": 0.2}  # training draws from each rank's own RNG
    straight = tiny_vit(**drop)
    train(straight, data, None, config, out / "a", progress=False)
    try:
        train(tiny_vit(**drop), data, None, config, out / "b", progress=False,
              should_stop=lambda epoch, step: epoch == 0 and step == 2)
    except TrainingInterrupted:
        pass
    resumed = tiny_vit(**drop)  # a new process would start from the initial model again
    train(resumed, data, None, config, out / "b", progress=False, resume=True)
    differ = [k for k, v in straight.state_dict().items() if not torch.equal(v, resumed.state_dict()[k])]
    (out / f"rank{rank}.json").write_text(json.dumps(differ))


def _default_teacher(rank: int, world: int, out: Path) -> None:
    from vitshrink.compressor.jobs import compress_job as compressor_api

    compressor_api.DEFAULT_TEACHER_DIR = out / "digits-teacher"
    compressor_api.DEFAULT_TEACHER_ARGS = {**compressor_api.DEFAULT_TEACHER_ARGS, "embed_dim": 32, "depth": 2, "num_heads": 2}
    compressor_api.DEFAULT_TEACHER_TRAIN = TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=2)
    save = compressor_api.save_artifact

    def slow_save(*args, **kwargs):  # rank 0 writes late: a rank that does not wait for it finds no teacher
        time.sleep(3)
        return save(*args, **kwargs)

    compressor_api.save_artifact = slow_save
    teacher = compressor_api.default_teacher(log=lambda *a, **k: None, progress=False)
    (out / f"rank{rank}.json").write_text(json.dumps(teacher.spec.to_dict()))


SCENARIOS = {"score": _score, "uneven": _uneven, "one_rank_stops": _one_rank_stops, "resume": _resume,
             "default_teacher": _default_teacher}


def _scenarios_worker(rank: int, world: int, port: int, folder: str) -> None:
    # the environment torchrun would give (vitshrink.compressor.core.distributed reads it)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for name, scenario in SCENARIOS.items():
            out = Path(folder) / name
            out.mkdir(exist_ok=True)
            try:
                scenario(rank, world, out)
            except Exception:  # recorded for the test that reads this scenario; the next one still runs
                (out / f"rank{rank}.error").write_text(traceback.format_exc())
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two-ranks")
    _spawn(_scenarios_worker, str(folder), timeout=400)
    return folder


def _outcome(folder: Path, name: str) -> Path:
    """The scenario's output folder, after failing the test with any rank's traceback."""
    for rank in range(2):
        error = folder / name / f"rank{rank}.error"
        if error.is_file():
            pytest.fail(f"rank {rank} failed in scenario {name}:\n{error.read_text()}")
    return folder / name


def test_two_processes_score_like_one(two_ranks):
    ddp = np.load(_outcome(two_ranks, "score") / "ddp.npz")
    single = score(tiny_vit(), _batches(), "taylor")
    np.testing.assert_allclose(ddp["heads"], np.concatenate(single.heads), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ddp["neurons"], np.concatenate(single.neurons), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ddp["blocks"], single.blocks, rtol=1e-5, atol=1e-9)


def test_every_rank_takes_the_same_steps_when_the_data_does_not_divide(two_ranks):
    out = _outcome(two_ranks, "uneven")
    weights = [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]
    for name, a in weights[0].items():
        assert torch.equal(a, weights[1][name]), name  # DDP kept the replicas identical through both epochs
    assert [row["epoch"] for row in json.loads((out / "rank0.json").read_text())] == [1, 2]


def test_a_stop_seen_by_one_rank_stops_every_rank_at_the_same_step(two_ranks):
    out = _outcome(two_ranks, "one_rank_stops")
    for r in range(2):
        assert "stopped at epoch 1, step 2" in (out / f"rank{r}.txt").read_text()


def test_two_process_mid_epoch_resume_equals_uninterrupted(two_ranks):
    out = _outcome(two_ranks, "resume")
    for r in range(2):
        assert json.loads((out / f"rank{r}.json").read_text()) == [], f"rank {r}: weights differ after resume"


def test_default_teacher_under_two_processes_waits_for_rank_0(two_ranks):
    out = _outcome(two_ranks, "default_teacher")
    specs = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert specs[0] == specs[1] and len(specs[0]["blocks"]) == 2


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
