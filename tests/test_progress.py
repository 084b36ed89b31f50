"""Progress output: a live bar on a terminal, one line per bar (e.g. per epoch) in logs, nothing when off."""

from __future__ import annotations

import io
import re

from click.testing import CliRunner
from tqdm import tqdm

from tests.conftest import TINY_ARGS, TINY_CFG
from vitshrink.cli import main
from vitshrink.compressor.core.artifact import save_artifact
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.progress import LineProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_one_line_per_bar_with_its_last_postfix():
    log = io.StringIO()
    for epoch in (1, 2):
        bar = progress_bar(range(5), desc=f"train {epoch}/2", stream=log, dynamic_ncols=True)
        assert isinstance(bar, LineProgress)
        for i in bar:
            bar.set_postfix(loss=f"{1 / (i + epoch):.3f}", img_s="100")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2
    assert re.fullmatch(r"train 1/2: 5/5 in \d+\.\d s \(loss=0\.200, img_s=100\)", lines[0]), lines
    assert lines[1].startswith("train 2/2: 5/5 in ")


def test_manual_updates_and_a_growing_total():
    log = io.StringIO()
    with progress_bar(total=2, desc="bench", stream=log, leave=False) as bar:
        bar.total += 2
        for _ in range(4):
            bar.update()
        bar.set_postfix_str("ort-cpu batch 32")
    assert re.fullmatch(r"bench: 4/4 in \d+\.\d s \(ort-cpu batch 32\)\n", log.getvalue())


def test_a_terminal_gets_tqdm_and_off_means_silent():
    terminal = _Terminal()
    bar = progress_bar(range(3), desc="eval", stream=terminal)
    assert isinstance(bar, tqdm)
    list(bar)
    assert "\r" in terminal.getvalue()  # the live bar redraws in place, as before
    quiet = io.StringIO()
    list(progress_bar(range(3), desc="eval", stream=quiet, enabled=False))
    assert quiet.getvalue() == ""


def test_interrupted_loop_prints_no_summary():
    log = io.StringIO()
    for i in progress_bar(range(5), desc="train", stream=log):
        if i == 2:
            break
    assert log.getvalue() == ""


def test_compress_into_a_log_writes_one_line_per_epoch_and_no_carriage_returns(tmp_path):
    loaded = load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "pretrained_cfg_overlay": TINY_CFG})
    teacher = save_artifact(tmp_path / "teacher", loaded, {"method": "test"})
    # CliRunner's streams are not terminals, like a CI log or `> log.txt 2>&1`; progress stays on
    result = CliRunner().invoke(main, ["compress", "--model", str(teacher), "--reduce", "flops=0.45", "--stages", "width,depth",
                                       "--epochs", "2",
                                       "--max-steps-per-epoch", "3", "--batch-size", "32", "--calib-batches", "1",
                                       "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    epochs = [line for line in result.output.splitlines() if line.startswith("distill (")]
    assert [line.split(":")[0] for line in epochs] == [
        "distill (width) 1/2", "distill (width) 2/2", "distill (depth) 1/2", "distill (depth) 2/2"
    ], result.output
    assert all(re.search(r": 3/3 in \d+\.\d s \(loss=\d\.\d+, lr=\S+, img_s=\d+\)$", line) for line in epochs), epochs
