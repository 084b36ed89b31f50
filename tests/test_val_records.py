"""Stage records and the report carry validation (for choosing) and test (reported) accuracy, and img/s."""

from __future__ import annotations

import json

import pytest

from vitshrink.compressor.jobs.compress_job import DataOptions, build_compress_data
from vitshrink.compressor.jobs.compress_report import format_table, markdown_report, report_rows
from vitshrink.compressor.jobs.pipeline import CompressConfig, run_compress
from vitshrink.compressor.planning.planner import Budget
from vitshrink.compressor.training.evaluate import evaluate
from vitshrink.compressor.training.train import TrainConfig


def _compress(teacher, tmp_path, val_split):
    opts = DataOptions(dataset="digits", val_split=val_split, train_limit=128, eval_limit=100)
    config = CompressConfig(budget=Budget("flops", 0.3), stages=("width",), calib_batches=2, calib_batch_size=32,
                            train=TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=2, amp=False))
    data = build_compress_data(teacher, opts, config)
    return data, run_compress(teacher, data, config, tmp_path / "out", tmp_path / "work", progress=False,
                              log=lambda *a: None)


def test_records_carry_val_and_test(digits_teacher, tmp_path):
    data, report = _compress(digits_teacher, tmp_path, 100)
    assert len(data.val_loader.dataset) == 100
    stage = report.final
    model = digits_teacher.model
    teacher_val = evaluate(model, data.val_loader)["top1"]
    assert report.teacher["val"]["top1"] == pytest.approx(teacher_val, abs=1e-5)
    assert report.teacher["top1"] == pytest.approx(evaluate(model, data.eval_loader)["top1"], abs=1e-5)
    for metrics in (stage.after_cut, stage.val_after_cut, stage.after_distill, stage.val_after_distill):
        assert 0.0 <= metrics["top1"] <= 1.0
    # the per-epoch evaluation during distillation is the validation split, not the test split
    # (the stage keeps the best of the cut and each epoch on validation: `kept_epoch` says which)
    kept = stage.val_after_cut if stage.kept_epoch == 0 else stage.history[stage.kept_epoch - 1]
    assert kept.get("top1", kept.get("eval_top1")) == pytest.approx(stage.val_after_distill["top1"], abs=1e-5)
    assert stage.val_after_distill["top1"] == pytest.approx(
        max(stage.val_after_cut["top1"], stage.history[-1]["eval_top1"]), abs=1e-5)
    assert stage.images_per_s and stage.images_per_s > 0
    record = json.loads((tmp_path / "out" / "compression.json").read_text())
    saved = record["stages"][0]
    assert saved["val_after_cut"] == stage.val_after_cut and saved["images_per_s"] == stage.images_per_s
    assert record["teacher"]["val"] == report.teacher["val"] and record["result"]["val_top1"] is not None
    assert record["data"]["val_images"] == 100 and record["data"]["augment"] == "affine"
    header, *_ = format_table(report_rows(report)).splitlines()
    assert "val top-1" in header and "test top-1" in header and "img/s" in header
    teacher_row = report_rows(report)[0]
    assert teacher_row[5] == f"{report.teacher['val']['top1']:.2%}" and teacher_row[6] == f"{report.teacher['top1']:.2%}"


def test_no_val_split_says_so(digits_teacher, tmp_path):
    data, report = _compress(digits_teacher, tmp_path, 0)
    assert data.val_loader is None and report.teacher["val"] is None
    stage = report.final
    assert stage.val_after_cut is None and stage.val_after_distill is None
    assert stage.after_distill is not None and "eval_top1" not in stage.history[-1]  # no per-epoch evaluation
    rows = report_rows(report)
    assert all(r[5] == "–" for r in rows)
    assert "val: –" in markdown_report(report)


def test_keep_best_compares_the_cut_unrounded(digits_teacher, tmp_path, monkeypatch):
    """The cut is offered to keep-best with the same unrounded metrics every epoch is compared with."""
    from vitshrink.compressor.jobs import pipeline

    seen = {}
    real_train = pipeline.train

    def spy(model, train_set, val_loader, *args, start_metrics=None, **kw):
        seen["start"], seen["exact"] = start_metrics, evaluate(model, val_loader)
        return real_train(model, train_set, val_loader, *args, start_metrics=start_metrics, **kw)

    monkeypatch.setattr(pipeline, "train", spy)
    _compress(digits_teacher, tmp_path, 100)
    assert seen["start"]["loss"] == seen["exact"]["loss"] and seen["start"]["top1"] == seen["exact"]["top1"]
    assert seen["start"]["loss"] != round(seen["exact"]["loss"], 5)  # the exact value has more than 5 decimals
