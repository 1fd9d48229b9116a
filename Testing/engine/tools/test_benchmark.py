"""`repux benchmark` runs and its fast paths compute what the reference computes (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from repux.cli.main import main


def test_benchmark_smoke_fast_path_matches_reference(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        [
            "benchmark",
            "--presets",
            "tiny",
            "--sections",
            "window,train",
            "--roi-size",
            "32",
            "--train-roi-size",
            "32",
            "--repeats",
            "1",
            "--train-repeats",
            "1",
            "--output",
            str(out),
            "--progress",
            "none",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    windows = {r["path"]: r for r in report["window"]}
    assert windows["reference"]["batch"] == 4 and windows["fast"]["batch"] == 1
    assert windows["fast"]["rel_max_error"] <= 1e-4 and windows["fast"]["argmax_agreement"] > 0.999
    assert "seconds" in windows["bf16"] or "skipped" in windows["bf16"]
    train = {r["path"]: r for r in report["train"]}
    assert set(train) == {"reference", "fast", "fast+cl", "fast+ckpt"} and all("seconds" in r and r["peak_mb"] > 0 for r in train.values())
    text = capsys.readouterr().out
    assert "Inference, seconds per 32^3 window" in text and "Training step at 32^3" in text


@pytest.mark.realdata
def test_benchmark_volume_section_compares_with_the_reference(tmp_path):
    from helpers import shared_file

    ct = shared_file("ct-abdomen/example_ct_sm.nii.gz")
    out = tmp_path / "bench.json"
    rc = main(["benchmark", "--sections", "volume", "--input", str(ct), "--json", str(out), "--progress", "none"])
    assert rc == 0
    vol = {r["path"]: r for r in json.loads(out.read_text())["volume"]}
    assert list(vol) == ["reference", "fast@0.7", "fast"]
    assert vol["reference"]["settings"]["overlap"] == 0.7 and vol["fast"]["settings"]["overlap"] == 0.5
    # at the reference overlap only the body crop changes anything (kernels and BatchNorm folding are exact)
    assert vol["fast@0.7"]["dice_vs_reference"]["voxel_agreement"] >= 0.99
    assert vol["fast"]["windows"] <= vol["reference"]["windows"]
