"""Every argument list a Lib builds for the engine parses with the engine's real CLI parser (and means what the Lib
meant): a renamed or removed option fails here, not in a user's Slicer."""

from __future__ import annotations

import argparse

import pytest
from RepUXSegmentLib import models
from RepUXSegmentLib.dicomexport import dicomSegArguments
from RepUXSegmentLib.segmentation import SegmentationOptions
from RepUXTrainerLib.finetune import FinetuneOptions

from repux.cli.main import build_parser
from repux.config import DEVICE_KINDS, QUALITIES


def parse(arguments: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(arguments)
    except SystemExit as err:  # argparse's usage error
        pytest.fail(f"the engine's CLI refuses {arguments}: exit {err.code}")


@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("device", [*DEVICE_KINDS, "cuda:1"])
def test_segmentation_arguments(tmp_path, quality, device):
    options = SegmentationOptions(
        model="repux-tiny-phantom", device=device, quality=quality, roiRAS=(-10.5, -20, -30, 40, 50, 60), largestComponent=True, organs=("liver", "spleen")
    )
    options.validate()
    args = parse(options.commandArguments(tmp_path / "ct.nrrd", tmp_path / "labels.nrrd"))
    assert (args.command, args.model, args.device, args.quality) == ("segment", "repux-tiny-phantom", device, quality)
    assert args.input == [str(tmp_path / "ct.nrrd")] and args.output == str(tmp_path / "labels.nrrd")
    assert args.progress == "json" and args.control == "stdin" and args.largest_component and args.organs == "liver,spleen"
    assert list(args.roi_ras) == [-10.5, -20, -30, 40, 50, 60]


@pytest.mark.parametrize("resume", [False, True])
def test_finetune_arguments(tmp_path, resume):
    options = FinetuneOptions(
        baseModel="repux-tiny-phantom", dataset=str(tmp_path / "set"), outModel="my-model", name="Mine", timeBudgetMinutes=30, freezeEncoderIterations=10, roiSize=64
    )
    args = parse(options.commandArguments(resume=resume))
    assert args.command == "finetune" and args.base == "repux-tiny-phantom" and args.control == "stdin" and args.progress == "json"
    assert bool(getattr(args, "resume", False)) == resume


def test_model_and_tool_arguments(tmp_path):
    install = parse(models.installArguments("repux-tiny-phantom", replace=True))
    assert (install.models_command, install.model_id, install.overwrite, install.progress) == ("install", "repux-tiny-phantom", True, "json")
    imported = parse(models.importArguments(tmp_path / "m.zip", modelId="m", replace=True))
    assert (imported.models_command, imported.overwrite) == ("import", True)
    assert parse(models.convertOfficialArguments(tmp_path / "c.pth", "flare", tmp_path / "out", "official")).command == "convert-official"
    assert parse(models.deviceInfoArguments()).command == "info"
    assert parse(models.doctorArguments("cpu")).device == "cpu"
    dicom = parse(dicomSegArguments("l.nrrd", "labels.json", "sources.txt", "out.dcm", "RepUX", "RepUX-Net"))
    assert dicom.command == "dicom-seg" and dicom.output == "out.dcm" and dicom.series_description == "RepUX"
