"""RepUXTrainer fine-tuning: options -> engine command, the live plot's table/series/chart nodes, and a REAL
short ``repux finetune`` in a child process (tiny base model, 32^3 crops, 4 mm grid, 4 iterations) that is
stopped after its first iteration line, resumed to the last iteration, listed by RepUXSegment's model
listing and used to segment a volume."""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest
import trainer_fixtures
from trainer_fixtures import addCaseNodes

pytestmark = pytest.mark.slicer
trainer = trainer_fixtures.trainer  # pytest fixture (plain modules are not scanned for fixtures)


# ----------------------------------------------------------------------------- options


def test_options_validate_and_build_the_engine_command(tmp_path, _isolated_store):
    from RepUXTrainerLib.finetune import FinetuneOptions, suggestModelId

    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "repux-dataset.json").write_text("{}")
    options = FinetuneOptions(
        "repux-amos",
        str(tmp_path / "set"),
        "liver-ft",
        name="Liver v2",
        maxIterations=200,
        timeBudgetMinutes=1.5,
        learningRate=1e-4,
        freezeEncoderIterations=20,
        valFraction=0.25,
        valInterval=25,
        checkpointInterval=10,
        device="cuda:1",
        roiSize=64,
        threads=4,
    )
    options.validate()
    args = options.commandArguments()
    assert args[:9] == [
        "finetune",
        "--base",
        "repux-amos",
        "--dataset",
        str(tmp_path / "set"),
        "--output",
        "liver-ft",
        "--run-dir",
        str(_isolated_store / "runs" / "liver-ft"),
    ]

    def value(flag, arguments=args):
        return arguments[arguments.index(flag) + 1]

    assert [value(f) for f in ("--max-iterations", "--lr", "--freeze-encoder", "--val-fraction", "--val-interval", "--checkpoint-interval")] == [
        "200",
        "0.0001",
        "20",
        "0.25",
        "25",
        "10",
    ]
    assert [value(f) for f in ("--device", "--progress", "--name", "--time-budget", "--roi-size", "--threads")] == [
        "cuda:1",
        "json",
        "Liver v2",
        "90",
        "64",
        "4",
    ]
    assert "--resume" not in args and options.commandArguments(resume=True)[-1] == "--resume"
    assert options.outputPath() == _isolated_store / "models" / "liver-ft" and options.modelId == "liver-ft"
    assert FinetuneOptions.fromDict(json.loads(json.dumps(options.toDict()))) == options
    folder = FinetuneOptions("m", str(tmp_path / "set"), str(tmp_path / "out" / "my-model"))
    assert not folder.inModelStore and folder.modelId == "my-model" and folder.resolvedRunDirectory() == _isolated_store / "runs" / "my-model"

    for change, message in [
        ({"baseModel": " "}, "base model"),
        ({"dataset": str(tmp_path)}, "not a training set"),
        ({"outModel": "my model"}, "is not allowed: use 1-64 characters"),
        ({"outModel": "x" * 65}, "is not allowed: use 1-64 characters"),
        ({"outModel": "con"}, "not a Windows device name"),
        ({"maxIterations": 0}, "maxIterations must be an integer >= 1"),
        ({"timeBudgetMinutes": -5}, "time budget"),
        ({"learningRate": float("nan")}, "learning rate"),
        ({"valFraction": 1.0}, "validation fraction"),
        ({"device": "tpu"}, "device must be"),
        ({"roiSize": 40}, "multiple of 16"),
        ({"threads": 0}, "threads"),
    ]:
        bad = FinetuneOptions.fromDict({**options.toDict(), **change})
        with pytest.raises(ValueError, match=message):
            bad.validate()

    import datetime

    now = datetime.datetime(2026, 3, 4, 5, 6)
    assert suggestModelId("repux-amos", now) == "repux-amos-ft-20260304-0506"
    (_isolated_store / "models" / "repux-amos-ft-20260304-0506").mkdir(parents=True)
    (_isolated_store / "runs" / "repux-amos-ft-20260304-0506-2").mkdir(parents=True)
    assert suggestModelId("repux-amos", now) == "repux-amos-ft-20260304-0506-3"
    assert suggestModelId("/models/My Model (v2)", now) == "my-model-v2-ft-20260304-0506"


# ----------------------------------------------------------------------------- plot


def test_plot_has_one_row_per_loss_line_and_dice_where_validated(mrml):
    from RepUXTrainerLib.monitor import TrainingPlot

    plot = TrainingPlot(mrml.scene, "run-1", organs=["liver", "kidney"], organColors={"liver": (0.9, 0.5, 0.4)})
    lines = [
        {"stage": "prepare", "fraction": 0.0, "message": "caching"},
        {"stage": "train", "fraction": 0.3, "iteration": 1, "max_iterations": 3, "loss": 1.5, "lr": 2e-4, "eta_s": 12.0},
        {"stage": "train", "fraction": 0.6, "iteration": 2, "max_iterations": 3, "loss": 1.25, "lr": 1e-4},
        {
            "stage": "train",
            "fraction": 0.6,
            "iteration": 2,
            "val_dice": {"liver": 0.5, "kidney": None, "Lesion": 0.25},
            "val_mean_dice": 0.375,
            "best_mean_dice": 0.375,
        },
        {"stage": "train", "fraction": 0.9, "iteration": 3, "max_iterations": 3, "loss": 1.0, "lr": 1e-5},
        {"stage": "done", "fraction": 1.0, "model": "/store/models/run-1", "best_mean_dice": 0.375},
    ]
    kinds = [plot.add(line) for line in lines]
    assert kinds == ["other", "loss", "loss", "validation", "loss", "done"]
    assert plot.numberOfRows == 3
    assert plot.columnNames == ["iteration", "loss", "lr", "dice_liver", "dice_kidney", "dice_Lesion"]  # Lesion appeared with the validation line
    assert plot.column("iteration") == [1.0, 2.0, 3.0] and plot.column("loss") == [1.5, 1.25, 1.0]
    assert plot.column("lr") == pytest.approx([2e-4, 1e-4, 1e-5])
    liver, kidney, lesion = plot.column("dice_liver"), plot.column("dice_kidney"), plot.column("dice_Lesion")
    assert math.isnan(liver[0]) and liver[1] == 0.5 and math.isnan(liver[2])
    assert all(math.isnan(v) for v in kidney)  # reported as null: no kidney in the validation case
    assert math.isnan(lesion[0]) and lesion[1] == 0.25
    progress = plot.progress
    assert (progress.iteration, progress.maxIterations, progress.bestMeanDice, progress.modelPath, progress.lastLoss) == (
        3,
        3,
        0.375,
        "/store/models/run-1",
        1.0,
    )

    # one plot series per column (y) against the iteration (x), in the chart; lr in its own chart
    assert set(plot.seriesNodes) == {"loss", "lr", "dice_liver", "dice_kidney", "dice_Lesion"}
    for column, series in plot.seriesNodes.items():
        assert series.GetTableNodeID() == plot.tableNode.GetID() and series.GetXColumnName() == "iteration" and series.GetYColumnName() == column
        chart = plot.learningRateChartNode if column == "lr" else plot.chartNode
        assert chart.HasPlotSeriesNodeID(series.GetID())
    assert plot.seriesNodes["dice_liver"].GetColor() == pytest.approx((0.9, 0.5, 0.4))
    assert plot.chartNode.GetNumberOfPlotSeriesNodes() == 4

    # a plot continuing the same table (Resume in the same scene) keeps the history and adds rows
    again = TrainingPlot(mrml.scene, "run-1", tableNode=plot.tableNode)
    assert [r.iteration for r in again.progress.rows] == [1, 2, 3] and again.progress.rows[1].dice["liver"] == 0.5
    again.add({"stage": "train", "fraction": 0.95, "iteration": 4, "max_iterations": 4, "loss": 0.9, "lr": 1e-6})
    assert plot.numberOfRows == 4 and plot.column("loss")[-1] == 0.9
    plot.clear()
    assert plot.numberOfRows == 0 and plot.columnNames[:3] == ["iteration", "loss", "lr"]
    plot.removeNodes()
    assert not mrml.scene.IsNodePresent(plot.tableNode) and not mrml.scene.IsNodePresent(plot.chartNode)


# ----------------------------------------------------------------------------- real run


def pumpUntil(job, condition, timeout=300.0):
    deadline = time.monotonic() + timeout
    while job.processEvents() and not condition():
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        time.sleep(0.02)
    return condition()


def test_real_finetune_stop_resume_plot_and_the_new_model_segments(mrml, trainer, tiny_model_dir, tmp_path, _isolated_store):
    from RepUXSegmentLib.models import findModel, listModels
    from RepUXSegmentLib.testing import syntheticIJKToRAS

    from repux.models.folder import read_model_card
    from repux.training.checkpoint import load_checkpoint

    trainer.openTrainingSet(tmp_path / "set", model=str(tiny_model_dir))
    for name, seed, spacing in (("A", 1, (3.0, 3.0, 3.5)), ("B", 2, (3.5, 3.0, 3.0))):
        case = addCaseNodes(mrml, f"patient {name}", seed, syntheticIJKToRAS(spacing=spacing))
        trainer.addCase(case.volume, case.segmentation, addNewClasses=True)  # "Lesion" becomes a new class
    assert trainer.trainingSet.labels.names == ["liver", "kidney", "spleen", "pancreas", "Lesion"]

    updates, logs, finished = [], [], []
    settings = {"maxIterations": 4, "valInterval": 2, "checkpointInterval": 10, "device": "cpu", "roiSize": 32, "threads": 1, "learningRate": 1e-3}
    job = trainer.startFinetune(
        str(tiny_model_dir),
        "tiny-ft",
        onProgress=updates.append,
        onLog=lambda level, text: logs.append((level, text)),
        onFinished=finished.append,
        extraArguments=("--augmentation", "none", "--warmup", "1"),
        **settings,
    )
    assert job.running and job.options.name.startswith(f"{tiny_model_dir} fine-tuned on set (2 cases)")
    assert pumpUntil(job, lambda: any("loss" in u.extra for u in updates)), "no iteration line"
    job.stop()  # stop line on stdin after the first iteration line: the engine checkpoints and exits 0
    outcome = job.wait(timeout=300)

    assert outcome.status == "stopped" and outcome.resumable and outcome.returncode == 0, (outcome, logs[-5:])  # stopped on request (control channel)
    assert job.runner.process.poll() is not None and finished == [outcome]
    checkpoint = load_checkpoint(job.checkpointPath)
    stoppedAt = int(checkpoint["iteration"])
    assert 1 <= stoppedAt < 4 and not job.options.outputPath().exists()
    assert findModel("tiny-ft", listModels()) is None
    lossLines = [u.to_dict() for u in updates if "loss" in u.extra]
    plot = trainer.plot
    assert plot.numberOfRows == len(lossLines) >= 1
    assert plot.column("loss") == [line["loss"] for line in lossLines] and plot.column("iteration") == [line["iteration"] for line in lossLines]

    linesBeforeResume = len(lossLines)
    assert lossLines[-1]["iteration"] <= stoppedAt  # the engine may finish an iteration it no longer reports

    job = trainer.resumeFinetune(onProgress=updates.append, onFinished=finished.append)
    assert job.starts == 2 and "--resume" in job.runner.command
    outcome = job.wait(timeout=300)

    assert outcome.succeeded, (outcome.errorMessage, logs[-10:])
    assert outcome.modelId == "tiny-ft" and outcome.iterations == 4 and finished[-1] is outcome and trainer.lastModelId == "tiny-ft"
    lossLines = [u.to_dict() for u in updates if "loss" in u.extra]
    iterations = [line["iteration"] for line in lossLines]
    assert iterations == sorted(set(iterations)) and iterations[0] == 1 and iterations[-1] == 4
    assert iterations[linesBeforeResume] == stoppedAt + 1  # resumed exactly after the checkpoint
    # the chart's table: one row per progress line with a loss, with the reported values; Dice where validated
    assert plot.numberOfRows == len(lossLines)
    assert plot.column("iteration") == iterations and plot.column("loss") == [line["loss"] for line in lossLines]
    assert plot.column("lr") == pytest.approx([line["lr"] for line in lossLines])
    assert plot.columnNames == ["iteration", "loss", "lr"] + [f"dice_{o}" for o in ["liver", "kidney", "spleen", "pancreas", "Lesion"]]
    validations = {u.extra["iteration"]: u.extra["val_dice"] for u in updates if "val_dice" in u.extra and u.stage == "train"}
    assert 4 in validations and set(validations[4]) == {"liver", "kidney", "spleen", "pancreas", "Lesion"}
    for row, iteration in enumerate(iterations):
        value = plot.column("dice_liver")[row]
        if iteration in validations:
            assert value == pytest.approx(validations[iteration]["liver"])
        else:
            assert math.isnan(value)
    assert len(plot.seriesNodes) == len(plot.columnNames) - 1
    # the run folder remembers settings and every progress line (resume after a restart)
    logged = [json.loads(line) for line in job.progressLogPath.read_text().splitlines()]
    assert [d for d in logged if "loss" in d] == lossLines and json.loads((job.runDirectory / "repux-trainer-job.json").read_text())["options"][
        "outModel"
    ] == "tiny-ft"

    # the new model is in the store, with provenance, listed by RepUXSegment's model listing
    info = findModel("tiny-ft", listModels())
    assert info is not None and info.status == "installed" and info.labels == ("liver", "kidney", "spleen", "pancreas", "Lesion")
    card = read_model_card(info.path)
    assert card.provenance["base_model"]["id"] == "tiny-test" and card.provenance["iterations"] == 4
    assert card.provenance["dataset"]["name"] == "set" and card.provenance["dataset"]["train_cases"] == 1
    assert trainer.resumableRuns() == []

    # ... and segments a volume (RepUXSegmentLib's job, as RepUXSegment's logic runs it)
    other = addCaseNodes(mrml, "patient C", 3, syntheticIJKToRAS(spacing=(3.2, 3.0, 3.3)))
    segmentation = trainer.resegment(other.volume, device="cpu", quality="fast")
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == ["liver", "kidney", "spleen", "pancreas", "Lesion"]
    assert segmentation.GetName() == "patient C segmentation (tiny-ft)" and segmentation.GetAttribute("RepUX.Model") == "tiny-ft"
    assert segmentation.GetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole()) == other.volume.GetID()


def test_resume_after_a_restart_uses_the_run_folder(mrml, trainer, tiny_model_dir, tmp_path, _isolated_store):
    """A run stopped in an earlier session: its folder has the job file, the progress log and a checkpoint."""
    from RepUXTrainerLib.finetune import FinetuneJob, FinetuneOptions
    from RepUXTrainerLib.logic import TrainerLogic

    trainingSet = trainer.openTrainingSet(tmp_path / "set", model=str(tiny_model_dir))
    options = FinetuneOptions(str(tiny_model_dir), str(trainingSet.root), "stopped-run", maxIterations=3)
    run = options.resolvedRunDirectory()
    run.mkdir(parents=True)
    (run / "repux-trainer-job.json").write_text(json.dumps({"options": options.toDict()}))
    (run / "repux-trainer-progress.jsonl").write_text(
        json.dumps({"stage": "train", "fraction": 0.3, "iteration": 1, "max_iterations": 3, "loss": 1.5, "lr": 1e-3}) + "\nnot json\n"
    )
    assert trainer.resumableRuns() == []  # no checkpoint yet
    (run / "checkpoint.pt").write_bytes(b"x")
    assert [o.outModel for o in trainer.resumableRuns()] == ["stopped-run"]

    job = FinetuneJob.fromRunDirectory(run, pythonExecutable=sys.executable)
    assert job.state == "stopped" and job.canResume and [r.loss for r in job.progress.rows] == [1.5]
    with pytest.raises(ValueError, match="holds a stopped run"):
        job.start()  # a fresh start would silently throw the checkpoint away
    # the engine refuses this run (the training set is still empty): the job reports the engine's message and stays resumable
    fresh = TrainerLogic(context=mrml.context(), pythonExecutable=sys.executable)
    job = fresh.resumeFinetune(runDirectory=run)
    assert fresh.trainingSet is not None and fresh.trainingSet.root == trainingSet.root and fresh.plot.numberOfRows == 1
    outcome = job.wait(timeout=120)
    assert outcome.status == "failed" and outcome.returncode == 1 and outcome.errorMessage == "the dataset has no training cases."
    assert job.canResume and np.isnan(fresh.plot.column("dice_liver")[0])
    with pytest.raises(ValueError, match="no repux-dataset.json"):
        FinetuneOptions("m", str(tmp_path), "x").validate()
