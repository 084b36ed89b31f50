"""The paper's method as stages: width (score -> plan -> cut -> distill), then depth (same, on blocks).

Each finished stage is saved as an artifact in the work folder, so `--resume` skips finished stages
and continues an interrupted distillation from its last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from vitshrink.compressor.core import distributed as ddp
from vitshrink.compressor.core.artifact import is_artifact, load_artifact, save_artifact
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.flops import count_macs, count_params
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.reading import read_json
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan
from vitshrink.compressor.planning.plan_file import check_plan, read_plan, write_plan
from vitshrink.compressor.planning.planner import (
    Budget,
    ModelCosts,
)
from vitshrink.compressor.planning.stages import (
    PlanSettings,
    StagePlan,
    budget_split,
    plan_depth_stage,
    plan_width_stage,
)
from vitshrink.compressor.scoring.importance import (
    ScoringLoss,
    calibration_batches,
)
from vitshrink.compressor.training.evaluate import evaluate
from vitshrink.compressor.training.precision import resolve_amp
from vitshrink.compressor.training.resume import check_same
from vitshrink.compressor.training.train import TrainConfig, feature_sources_for, train

STAGES = ("width", "depth", "joint")
PLAN_FILE = "plan.json"  # in each stage's work folder
PLAN_CONFIG_FILE = "plan-config.json"  # beside it: the settings the plan was made with (a resume reuses it only for them)
PLAN_CHECKS_FILE = "plan-checks.json"  # and how it was chosen (latency checks, plan choices), for the resumed record
DISTILL_LR = 1e-4  # peak learning rate of the distillation after a cut: `compress --lr` default (docs/compress.md: Defaults)


def default_stages(budget: Budget, width_steps: int = 1) -> tuple[str, ...]:
    """The stages when none are named: joint for a latency budget in one step (on the reference CIFAR-10 ViT at a
    latency budget it was never worse than width-only, and 0.84 point better at -50%: docs/compress.md, Defaults),
    width otherwise (at equal FLOPs it was more accurate than width,depth, and the same as joint)."""
    return ("joint",) if budget.metric == "latency" and width_steps == 1 else ("width",)


@dataclass(frozen=True)
class CompressConfig:
    budget: Budget
    # None: ("joint",) for a latency budget cut in one step, ("width",) otherwise (`default_stages`, docs/compress.md,
    # Defaults); ("width", "depth") is the paper's order; ("depth",) alone. Each at most once; joint alone.
    stages: tuple[str, ...] | None = None
    width_steps: int = 1  # the width stage as N prune+distill steps (iterative pruning); > 1 needs a width stage
    depth_share: float = 0.5  # share of the target reduction that depth pruning should deliver
    depth_blocks: int | None = None  # explicit number of blocks to remove (overrides depth_share)
    criterion: str = "taylor"  # head/neuron importance (see vitshrink.compressor.scoring.importance.CRITERIA)
    block_criterion: str = "ablation"  # block importance: exact loss change of skipping each block
    scoring_loss: str = "ce"  # "ce" on labels or "kl" to the teacher
    calib_batches: int = 16  # calibration batches for scoring
    calib_batch_size: int = 64
    min_heads: int = 1
    round_to: int = 8
    train: TrainConfig = field(default_factory=TrainConfig)  # distillation after every cut
    seed: int = 0
    plan: dict | None = None  # a given plan (`PrunePlan.to_dict` form): one stage, cut as given, no scoring or budget
    plan_model: dict | None = None  # the shape of the model that plan was made for (plan.json's "model")
    latency_table: dict | None = None  # `LatencyTable.to_dict()`: what a latency budget is planned on
    # a latency plan that makes the whole cut from the teacher is timed on the target (when it runs here) and
    # re-aimed by its miss (compressor/latency_check.py)
    latency_check: bool = True
    # the largest loss of validation top-1 (points) the delivered student may have: the level is searched
    # (jobs/max_drop.py) up to budget.reduction instead of cut at it
    max_drop: float | None = None

    def __post_init__(self):
        if self.stages is None:
            object.__setattr__(self, "stages", default_stages(self.budget, self.width_steps))
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise BudgetError(f"unknown stages {bad or self.stages}; use width and/or depth (e.g. width,depth), "
                              "or joint")
        if "joint" in self.stages and (len(self.stages) > 1 or self.width_steps > 1):
            raise BudgetError(f"stages {','.join(self.stages)}: joint plans blocks and widths in one cut; give it "
                              "alone (--stages joint, one width step)")
        if self.stages.count("width") > 1:
            raise BudgetError(f"stages {','.join(self.stages)}: width may appear once; for iterative width pruning "
                              "give the number of steps instead (width_steps, --width-steps N)")
        if self.stages.count("depth") > 1 or ("depth" in self.stages and self.stages[-1] != "depth"):
            raise BudgetError("depth may appear once, as the last stage (the paper's order: width, then depth)")
        if not isinstance(self.width_steps, int) or self.width_steps < 1:
            raise BudgetError(f"width_steps (--width-steps) must be a whole number >= 1, got {self.width_steps!r}")
        if self.width_steps > 1 and "width" not in self.stages:
            raise BudgetError(f"--width-steps {self.width_steps} splits the width stage, but --stages "
                              f"{','.join(self.stages)} has none; add width (e.g. --stages width,depth) or drop it")
        if not 0.0 <= self.depth_share <= 1.0:
            raise BudgetError(f"--depth-share must be in [0, 1], got {self.depth_share}")
        if self.plan is not None:
            PrunePlan.from_dict(self.plan)  # malformed: one message now, before any work
        if self.max_drop is not None and not (isinstance(self.max_drop, int | float) and self.max_drop >= 0):
            raise BudgetError(f"--max-drop {self.max_drop!r}: give the points of validation top-1 the student may "
                              "lose, a number >= 0 such as 0.5")
        if self.max_drop is not None and self.plan is not None:
            raise BudgetError("--max-drop searches the reduction and --plan gives one: use one or the other")
        if self.latency_table is not None and self.budget.metric != "latency":
            raise BudgetError(f"a latency table is only used by a latency budget (--reduce latency=...), not {self.budget}")

    @cached_property
    def planning(self) -> PlanSettings:
        """What the planner reads of these settings (the latency table read once)."""
        return PlanSettings(budget=self.budget, stages=self.stages, width_steps=self.width_steps,
                            depth_share=self.depth_share, depth_blocks=self.depth_blocks, criterion=self.criterion,
                            block_criterion=self.block_criterion, min_heads=self.min_heads, round_to=self.round_to,
                            seed=self.seed, latency_table=self.latency_table)

    @property
    def table(self) -> LatencyTable | None:
        return self.planning.table

    def costs(self, model) -> ModelCosts:
        """What each block, head and neuron of `model` costs in the budget's metric."""
        return self.planning.costs(model)

    def cost(self, model) -> float:
        """`model`'s total in the budget's metric (MACs, parameters or predicted ms)."""
        return self.planning.cost(model)

    @property
    def stage_sequence(self) -> tuple[str, ...]:
        """Every prune+distill stage in order: one "width" per width step, then "depth" if asked."""
        if self.stages == ("joint",):
            return self.stages
        widths = ("width",) * self.width_steps if "width" in self.stages else ()
        return widths + (("depth",) if "depth" in self.stages else ())

    @property
    def run_stages(self) -> tuple[str, ...]:
        """The stages this config runs: the given plan's single stage, or `stage_sequence`."""
        return ("plan",) if self.plan is not None else self.stage_sequence

    def to_dict(self) -> dict:
        """The settings as compression.json records them and `--resume` compares them.

        `stages` is recorded as `stage_sequence` (one "width" per width step) and `width_steps` not at
        all: the format every earlier run wrote, so their records read the same and their work folders resume.
        """
        d = dataclasses.asdict(self)
        d["budget"] = str(self.budget)
        d["stages"] = self.stage_sequence
        del d["width_steps"]
        for optional in ("plan_model", "max_drop"):  # recorded only when given
            if d[optional] is None:
                del d[optional]
        if self.budget.metric != "latency":
            del d["latency_check"]
        return d


@dataclass(frozen=True)
class CompressData:
    train_set: Dataset  # augmented, for distillation
    calib_loader: DataLoader  # un-augmented training images, for scoring
    eval_loader: DataLoader  # the evaluation (test) split: only for the reported numbers
    val_loader: DataLoader | None = None  # held out of the training split: per-epoch evaluation, choices
    info: dict = field(default_factory=dict)  # what the data is (options, split sizes, augmentation), recorded


@dataclass
class StageRecord:
    name: str
    params: int
    macs: int
    reduction_params: float
    reduction_flops: float
    after_cut: dict
    after_distill: dict | None
    epochs: int
    seconds: float  # wall time of this stage in the run that finished it
    distill_seconds: float  # distillation wall time, interrupted runs included
    spec: dict
    plan: dict
    scores: dict | None = None
    history: list = field(default_factory=list)
    val_after_cut: dict | None = None  # after_cut/after_distill are on the test split; these on validation
    val_after_distill: dict | None = None  # (None without a validation split)
    images_per_s: float | None = None  # distillation throughput (training steps, teacher included)
    kept_epoch: int | None = None  # which weights the stage kept: 0 = the cut, k = after epoch k
    latency_checks: list | None = None  # the plans timed on the target (`LatencyCheck.to_dict`), when checked
    plan_choices: list | None = None  # knapsack vs FLOPs plan on validation, per aim (`PlanChoice.to_dict`)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CompressReport:
    teacher: dict  # params, macs, top1, top5
    stages: list[StageRecord]
    artifact: Path | None
    budget: Budget

    @property
    def final(self) -> StageRecord:
        return self.stages[-1]


def _metrics(model, loader: DataLoader | None, device: str) -> dict | None:
    """top1, top5 and loss on `loader`, rounded for the record (None without a loader)."""
    return _rounded(evaluate(model, loader, device=device)) if loader is not None else None


def _rounded(metrics: dict | None) -> dict | None:
    return {k: round(metrics[k], 5) for k in ("top1", "top5", "loss")} if metrics else None


def _top1_of(metrics: dict | None) -> float | None:
    return metrics["top1"] if metrics else None


def _top1(metrics: dict | None) -> str:
    return f"{metrics['top1']:.2%}" if metrics else "–"


def run_compress(
    teacher: LoadedModel,
    data: CompressData,
    config: CompressConfig,
    out_dir: Path,
    work_dir: Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    log=print,
    teacher_metrics: dict | None = None,
) -> CompressReport:
    """Compress `teacher` to `config.budget` and write the artifact to `out_dir`: for each stage, score, plan,
    cut, distill. `teacher_metrics` (top1, top5, loss on `data.eval_loader`) skips re-evaluating the teacher."""
    run = _Run(teacher, data, config, Path(work_dir), resume, device, progress, log)
    run.start(teacher_metrics)
    current, records = copy.deepcopy(teacher), []
    for index, stage in enumerate(config.run_stages):
        stage_dir = run.work_dir / f"stage{index + 1}-{stage}"
        if run.split is not None and not run.split.runs(stage):  # nothing for it to remove (the split said why)
            continue
        if resume and is_artifact(stage_dir / "artifact"):
            current = run.finished_stage(index, stage, stage_dir)
            records.append(StageRecord(**current.compression["stage"]))
            continue
        started = time.perf_counter()
        model = current.model.to(device)
        planned = run.plan(index, stage, stage_dir, model)  # score + plan (+ timed and chosen)
        run.write_plan(index, stage, stage_dir, model, planned)
        spec = apply_plan(model, current.spec, planned.plan)  # cut
        cut = run.evaluate_cut(index, stage, model)
        result = run.distill(stage, stage_dir, model, teacher.spec, spec, cut)  # distill
        record = run.stage_record(stage, model, spec, planned, cut, result, started)
        records.append(record)
        current = dataclasses.replace(current, model=model, spec=spec, compression=None)
        run.save_stage(index, stage, stage_dir, current, record, result)
    report = CompressReport(teacher=run.teacher_row, stages=records, artifact=Path(out_dir) if ddp.is_main() else None,
                            budget=config.budget)
    if ddp.is_main():
        save_artifact(Path(out_dir), current, run.final_record(current, report))
    ddp.barrier()
    return report


@dataclass
class _CutMetrics:
    test: dict  # rounded, as recorded
    val: dict | None
    val_exact: dict | None  # unrounded: keep-best compares the cut with every epoch on the same footing


class _Run:
    """One compress run's state and steps; `run_compress` reads as the method, these do the work."""

    def __init__(self, teacher: LoadedModel, data: CompressData, config: CompressConfig, work_dir: Path,
                 resume: bool, device: str, progress: bool, log):
        self.teacher, self.data, self.config, self.work_dir = teacher, data, config, work_dir
        self.resume, self.device, self.progress, self.log = resume, device, progress, log
        self.t_model = teacher.model.to(device).eval()
        self.reference = config.cost(self.t_model)
        self.split = None if config.plan is not None else budget_split(self.t_model, config.planning)

    def start(self, teacher_metrics: dict | None) -> None:
        t, data, log = self.t_model, self.data, self.log
        self.teacher_row = {"params": count_params(t), "macs": count_macs(t),
                            **(teacher_metrics or _metrics(t, data.eval_loader, self.device))}
        self.teacher_row.setdefault("val", _metrics(t, data.val_loader, self.device))
        log(f"teacher: {self.teacher_row['params'] / 1e6:.3f} M params, {self.teacher_row['macs'] / 1e6:.1f} M MACs, "
            f"test top-1 {self.teacher_row['top1']:.2%} (val {_top1(self.teacher_row['val'])})")
        log(self.split.describe() if self.split else "a given plan (--plan): no scoring, no budget; cut as the plan says")
        self.calib = calibration_batches(data.calib_loader, self.config.calib_batches, ddp.rank(), ddp.world_size())

    def finished_stage(self, index: int, stage: str, stage_dir: Path) -> LoadedModel:
        current = load_artifact(stage_dir / "artifact")
        # teacher and data were checked against the work folder's run.json (compress_job); here the settings
        check_same(f"the stage artifact {stage_dir / 'artifact'}", current.compression.get("config") or {},
                   self.config.to_dict())
        current.model.to(self.device)
        self.log(f"stage {index + 1} ({stage}): finished earlier, loaded from {stage_dir / 'artifact'}")
        return current

    def plan(self, index: int, stage: str, stage_dir: Path, model) -> StagePlan:
        """Score and plan the stage; a width plan making the whole cut from the teacher is chosen on validation
        and timed on the target (what they measure is handed to the planner)."""
        config, settings = self.config, self.config.planning
        cut_before = self.reference - config.cost(model)
        loss = ScoringLoss(config.scoring_loss, teacher=self.t_model if cut_before > 0 else None)
        if stage == "plan":
            plan = PrunePlan.from_dict(config.plan)
            check_plan(plan, model, "--plan", made_for=config.plan_model)
            return StagePlan(plan, None, "")
        if stage == "depth":
            planned = plan_depth_stage(model, self.calib, settings, loss, self.split, self.reference)
            self.log(planned.description)
            return planned
        step = index + 1  # the width steps come first: stage k is width step k of config.width_steps
        final = self.split.is_last_cut("width", step, config.width_steps)
        # an interrupted stage resumes with the plan it wrote (a checked plan was timed: another run of the
        # check may choose another one, which the checkpoint would not fit)
        written = _written_plan(stage_dir, config) if self.resume else None
        whole_cut = final and cut_before == 0
        measure = None if written else _latency_measure(config, self.t_model, whole_cut, self.log)
        val_metrics = None if written else _choice_metrics(config, self.t_model, self.data.val_loader, whole_cut,
                                                           self.device, self.log, joint=stage == "joint")
        planned = plan_width_stage(model, self.calib, settings, loss,
                                   target_removed=self.split.width_target(step, config.width_steps) - cut_before,
                                   reference=self.reference, already=cut_before, final=final, measure=measure,
                                   val_metrics=val_metrics, joint=stage == "joint", log=self.log)
        if written:
            checks, choices = _written_checks(stage_dir)
            planned = dataclasses.replace(planned, plan=read_plan(written), checks=checks, choices=choices,
                                          description=f"resuming with the plan in {written}")
        self.log(planned.description)
        return planned

    def write_plan(self, index: int, stage: str, stage_dir: Path, model, planned: StagePlan) -> None:
        """The plan as a document, before anything is cut (`--plan` takes it back), with how it was made."""
        if ddp.is_main():
            write_plan(stage_dir / PLAN_FILE, planned.plan, model,
                       note=f"stage {index + 1} ({stage}) of {self.teacher.name}")
            write_json_atomic(stage_dir / PLAN_CONFIG_FILE, self.config.to_dict())
            write_json_atomic(stage_dir / PLAN_CHECKS_FILE, {"latency_checks": planned.checks,
                                                             "plan_choices": planned.choices})

    def evaluate_cut(self, index: int, stage: str, model) -> _CutMetrics:
        data, device = self.data, self.device
        val_exact = evaluate(model, data.val_loader, device=device) if data.val_loader is not None else None
        cut = _CutMetrics(_metrics(model, data.eval_loader, device), _rounded(val_exact), val_exact)
        self.log(f"stage {index + 1} ({stage}) cut: {self.config.budget.metric} "
                 f"-{1 - self.config.cost(model) / self.reference:.1%}, test top-1 {cut.test['top1']:.2%} "
                 f"(val {_top1(cut.val)}) before distillation")
        return cut

    def distill(self, stage: str, stage_dir: Path, model, teacher_spec, spec, cut: _CutMetrics):
        """Distill the cut student from the teacher (None with 0 epochs)."""
        config = self.config
        if config.train.epochs == 0:
            return None
        fp32 = not resolve_amp(config.train.amp, self.device)  # the cut's validation metrics are fp32
        return train(model, self.data.train_set, self.data.val_loader, config.train, stage_dir,
                     teacher=self.t_model, feature_sources=feature_sources_for(teacher_spec, spec),
                     resume=self.resume, device=self.device, progress=self.progress, desc=f"distill ({stage})",
                     start_metrics=cut.val_exact if fp32 else None)

    def stage_record(self, stage: str, model, spec, planned: StagePlan, cut: _CutMetrics, result,
                     started: float) -> StageRecord:
        after = val_after = None
        if result and result.kept_epoch == 0:  # distillation never beat the cut on validation: the cut stays
            after, val_after = cut.test, cut.val
        elif result:  # train() evaluated the kept student on the validation split: reuse it when in fp32
            row = next((r for r in result.history if r["epoch"] == result.kept_epoch), {})
            after = _metrics(model, self.data.eval_loader, self.device)
            val_after = ({"top1": round(row["eval_top1"], 5), "top5": round(row["eval_top5"], 5),
                          "loss": round(row["eval_loss"], 5)} if "eval_top1" in row and row.get("amp") is False
                         else _metrics(model, self.data.val_loader, self.device))
        params, macs = count_params(model), count_macs(model)
        return StageRecord(
            name=stage, params=params, macs=macs,
            reduction_params=round(1 - params / self.teacher_row["params"], 5),
            reduction_flops=round(1 - macs / self.teacher_row["macs"], 5),
            after_cut=cut.test, after_distill=after, epochs=self.config.train.epochs,
            seconds=round(time.perf_counter() - started, 1),
            distill_seconds=round(result.seconds, 1) if result else 0.0,
            spec=spec.to_dict(), plan=planned.plan.to_dict(),
            scores=planned.scores.to_dict() if planned.scores else None,
            history=result.history if result else [], val_after_cut=cut.val, val_after_distill=val_after,
            images_per_s=result.images_per_s if result else None,
            kept_epoch=result.kept_epoch if result else None,
            latency_checks=planned.checks or None, plan_choices=planned.choices or None,
        )

    def save_stage(self, index: int, stage: str, stage_dir: Path, current: LoadedModel, record: StageRecord,
                   result) -> None:
        if ddp.is_main():
            save_artifact(stage_dir / "artifact", current, {"stage": record.to_dict(), "config": self.config.to_dict()})
        ddp.barrier()
        if result and result.kept_epoch == 0:
            self.log(f"stage {index + 1} ({stage}): no epoch of distillation beat the cut on the validation split; "
                     "keeping the cut")
        if result:
            self.log(f"stage {index + 1} ({stage}) distilled: test top-1 {record.after_distill['top1']:.2%} "
                     f"(val {_top1(record.val_after_distill)}), kept epoch {result.kept_epoch} of "
                     f"{self.config.train.epochs}, {result.images_per_s or 0:.0f} images/s")

    def final_record(self, current: LoadedModel, report: CompressReport) -> dict:
        """compression.json: the run's settings, every stage, the result, and what a latency plan predicts."""
        config, records = self.config, report.stages
        # repeatable: the same command and --seed on this machine write the same student
        record = {**_compression_record(self.teacher, config, report), "data": self.data.info, "repeatable": True}
        table = config.table
        if table is None:
            return record
        record["latency"] = {"target": table.key.target, "precision": table.key.precision,
                             "batch": table.key.batch, "threads": table.key.threads,
                             "predicted_ms": {"teacher": self.reference, "student": config.cost(current.model)}}
        kept = [c for r in records for c in r.latency_checks or () if c["kept"]]
        if any(r.latency_checks for r in records):  # chosen by measured time: a rerun may keep another plan
            record["repeatable"] = False
            record["repeatable_note"] = ("the plan was chosen by timing on the target; rerun with --plan "
                                         "<work>/stage1-width/plan.json (or --no-latency-check on the same "
                                         "table) to repeat it exactly")
        if kept:  # the plan was timed against the teacher here (the latency check): what that measured
            record["latency"]["checked_reduction"] = kept[-1]["measured"]
        return record


def check_config(teacher: LoadedModel, config: CompressConfig) -> None:
    """Refuse, before anything is written, a budget the stages cannot land on or a plan that does not fit."""
    if config.plan is not None:
        check_plan(PrunePlan.from_dict(config.plan), teacher.model, "--plan", made_for=config.plan_model)
    else:
        budget_split(teacher.model, config.planning)


def _written_plan(stage_dir: Path, config: CompressConfig) -> Path | None:
    """The plan.json an interrupted stage wrote, when it was made with these settings (else `--resume` stops,
    naming what differs); None when there is none, or none with its settings recorded (planned again)."""
    plan_file, config_file = stage_dir / PLAN_FILE, stage_dir / PLAN_CONFIG_FILE
    if not (plan_file.is_file() and config_file.is_file()):
        return None
    check_same(f"the plan {plan_file}", read_json(config_file), config.to_dict())
    return plan_file


def _written_checks(stage_dir: Path) -> tuple[list | None, list | None]:
    """The latency checks and plan choices recorded beside an interrupted stage's plan (None where none were)."""
    path = stage_dir / PLAN_CHECKS_FILE
    record = read_json(path) if path.is_file() else {}
    return record.get("latency_checks"), record.get("plan_choices")


def _not_one_cut(whole_cut: bool) -> str | None:
    """Why a plan cannot be timed or chosen by this process alone: one of several cuts, or of several processes."""
    if not whole_cut:
        return "the plan is one of several cuts (--stages width,depth or --width-steps)"
    if ddp.world_size() > 1:
        return "under torchrun every process must cut the same plan"
    return None


def _cut_copy(teacher, plan: PrunePlan):
    student = copy.deepcopy(teacher)
    apply_plan(student, ArchSpec.from_model(student), plan)
    return student


def _latency_measure(config: CompressConfig, teacher, whole_cut: bool, log):
    """plan -> its reduction measured against `teacher` on the latency table's target, when the plan can be
    checked: a latency plan making the whole cut from the teacher, a target that runs here, one process."""
    if config.latency_table is None or not config.latency_check:
        return None
    from vitshrink.exporters.runtime.latency_profile import check_unavailable, measure_reduction

    table = config.table
    reason = _not_one_cut(whole_cut) or check_unavailable(teacher, table)
    if reason:
        log(f"latency check: off: {reason}; `vitshrink bench` shows the realised latency")
        return None
    return lambda plan: measure_reduction(teacher, _cut_copy(teacher, plan), table)


def _choice_metrics(config: CompressConfig, teacher, val_loader: DataLoader | None, whole_cut: bool, device: str,
                    log, joint: bool = False):
    """plan -> the cut teacher's metrics on the validation split, when plans are chosen on it (a latency plan, or
    a joint plan against width-only): a plan making the whole cut from the teacher, a validation split, one
    process (`planning.choice`)."""
    if config.latency_table is None and not joint:
        return None
    reason = _not_one_cut(whole_cut) or (None if val_loader is not None else "no validation split (--val-split 0)")
    if reason:
        log(f"plan choice: off: {reason}; the {'joint' if joint else 'knapsack'}'s plan is cut")
        return None
    return lambda plan: _metrics(_cut_copy(teacher, plan), val_loader, device)


def _compression_record(teacher: LoadedModel, config: CompressConfig, report: CompressReport) -> dict:
    from vitshrink.compressor.training.resume import weights_sha256

    # an absolute folder and the weights' hash: `bench` finds this teacher from any folder and refuses another
    return {
        "method": "vitshrink: loss-change importance, budgeted width pruning, distillation, depth pruning, distillation",
        "teacher": {"name": teacher.name, "path": str(Path(teacher.path).resolve()) if teacher.path else None,
                    "weights_sha256": weights_sha256(teacher.model), **report.teacher},
        "budget": {"metric": config.budget.metric, "reduction": config.budget.reduction},
        "config": config.to_dict(),
        "stages": [r.to_dict() for r in report.stages],
        "result": {
            "params": report.final.params,
            "macs": report.final.macs,
            "reduction_params": report.final.reduction_params,
            "reduction_flops": report.final.reduction_flops,
            "top1": (report.final.after_distill or report.final.after_cut)["top1"],
            "val_top1": _top1_of(report.final.val_after_distill or report.final.val_after_cut),
        },
    }
