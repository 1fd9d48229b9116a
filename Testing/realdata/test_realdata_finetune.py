"""Fine-tuning on the real CT (FLARE layout) improves the model on that case."""

from __future__ import annotations

import json

import pytest
from helpers import shared_file

from repux.cli.main import main
from repux.data.datasets import Case, load_dataset, write_manifest
from repux.labels import FLARE
from repux.models.store import ModelStore
from repux.training.evaluate import evaluate

pytestmark = [pytest.mark.realdata]


def test_short_finetune_on_real_ct_raises_dice(tmp_path, capsys):
    ct = shared_file("ct-abdomen", "example_ct.nii.gz")
    labels = shared_file("ct-abdomen", "labels", "example_ct_flare4.nii.gz")
    write_manifest(tmp_path / "ds", FLARE, [Case("example_ct", ct, labels, "train")], name="ct-abdomen")
    ds = load_dataset(tmp_path / "ds")
    before = evaluate("repux-tiny-phantom", ds, device="cpu")["mean"]
    rc = main(
        ["finetune", "--base", "repux-tiny-phantom", "--dataset", str(tmp_path / "ds"), "--output", "ct-finetuned", "--max-iterations", "30",
         "--lr", "1e-3", "--warmup", "5", "--seed", "0", "--device", "cpu", "--channels-last", "--progress", "none"]
    )  # fmt: skip
    assert rc == 0
    after = evaluate("ct-finetuned", ds, device="cpu")["mean"]
    with capsys.disabled():
        print("\nreal-CT fine-tune, Dice on example_ct before -> after 30 iterations:")
        for organ in FLARE.names + ["mean"]:
            print(f"  {organ:<9} {before[f'{organ}/dice']:.3f} -> {after[f'{organ}/dice']:.3f}")
    assert after["mean/dice"] > before["mean/dice"] + 0.05
    card = json.loads((ModelStore().path("ct-finetuned") / "model.json").read_text())
    assert card["provenance"]["base_model"]["id"] == "repux-tiny-phantom" and card["provenance"]["iterations"] == 30
