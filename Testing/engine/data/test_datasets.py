"""Dataset layouts (RepUX manifest, MSD, nnU-Net v2) and `repux dataset check`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from repux.cli.main import main
from repux.data.check import check_dataset
from repux.data.datasets import load_dataset, split_cases
from repux.errors import DatasetError


def _img(arr, spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0)):
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    return im


def _write_pair(root, name, label_values, ending=".nii.gz", image_suffix="", label_spacing=(2.0, 2.0, 3.0)):
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(0).normal(0, 100, (10, 12, 14)).astype(np.int16)
    lab = np.zeros((10, 12, 14), np.uint8)
    for i, v in enumerate(label_values):
        lab[2 + 2 * i : 4 + 2 * i, 3:9, 3:9] = v
    sitk.WriteImage(_img(img), str(root / "imagesTr" / f"{name}{image_suffix}{ending}"))
    sitk.WriteImage(_img(lab, label_spacing), str(root / "labelsTr" / f"{name}{ending}"))


def test_msd_layout(tmp_path):
    root = tmp_path / "Task09_Spleen"
    _write_pair(root, "spleen_1", [1])
    _write_pair(root, "spleen_2", [1])
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Spleen",
                "labels": {"0": "background", "1": "spleen"},
                "training": [{"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"} for i in (1, 2)],
            }
        )
    )
    ds = load_dataset(root)
    assert ds.layout == "msd" and ds.labels.names == ["spleen"] and [c.id for c in ds.cases] == ["spleen_1", "spleen_2"]
    assert ds.labels.by_value(1).type.value == "78961009"
    assert all(c.image.exists() and c.label.exists() for c in ds.cases)


def test_nnunet_layout_with_non_contiguous_values(tmp_path):
    root = tmp_path / "Dataset042_Abdomen"
    _write_pair(root, "case_000", [1, 3], image_suffix="_0000")
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 3}, "numTraining": 1, "file_ending": ".nii.gz"})
    )
    ds = load_dataset(root)
    assert ds.layout == "nnunet" and ds.labels.names == ["liver", "spleen"]
    assert ds.label_values == {"liver": 1, "spleen": 3}  # file values kept; training values are 1..N
    assert ds.cases[0].image.name == "case_000_0000.nii.gz"
    assert not any(r.errors for r in check_dataset(ds))


def test_check_reports_and_fixes_problems(tmp_path, capsys):
    from repux.data.datasets import Case, write_manifest
    from repux.labels import LabelSet

    root = tmp_path / "ds"
    _write_pair(root, "good", [1, 2])
    _write_pair(root, "shifted", [1], label_spacing=(2.0, 2.0, 2.5))  # label on another grid
    _write_pair(root, "stray", [1, 7])  # value 7 not in the label set
    _write_pair(root, "empty", [])
    labels = LabelSet.from_names(["liver", "spleen"])
    cases = [Case(n, root / "imagesTr" / f"{n}.nii.gz", root / "labelsTr" / f"{n}.nii.gz") for n in ("good", "shifted", "stray", "empty")]
    cases.append(Case("missing", root / "imagesTr" / "nope.nii.gz", root / "labelsTr" / "nope.nii.gz"))
    write_manifest(root, labels, cases)
    reports = {r.id: r for r in check_dataset(load_dataset(root))}
    assert not reports["good"].errors and not reports["good"].warnings
    assert "label grid differs" in reports["shifted"].errors[0] and "spacing" in reports["shifted"].errors[0]
    assert "[7]" in reports["stray"].errors[0]
    assert reports["empty"].warnings == ["label map is empty (background only)"]
    assert "missing" in reports["missing"].errors[0]
    assert main(["dataset", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "5 cases" in out and "error(s)" in out
    # --fix resamples the shifted label onto the image grid (atomically)
    reports = {r.id: r for r in check_dataset(load_dataset(root), fix=True)}
    assert reports["shifted"].fixed and not reports["shifted"].errors
    fixed = sitk.ReadImage(str(root / "labelsTr" / "shifted.nii.gz"))
    assert fixed.GetSpacing() == (2.0, 2.0, 3.0)
    assert not any(r.errors for r in check_dataset(load_dataset(root)) if r.id == "shifted")


def test_split_and_errors(tmp_path):
    from repux.data.datasets import Case

    cases = [Case(f"c{i}", tmp_path / "i", tmp_path / "l") for i in range(10)]
    tr, va = split_cases(cases, 0.2, seed=1)
    assert len(va) == 2 and len(tr) == 8 and not {c.id for c in tr} & {c.id for c in va}
    assert split_cases(cases, 0.2, seed=1)[1] == va  # seeded
    cases[0].split = "val"
    tr, va = split_cases(cases, 0.2)
    assert [c.id for c in va] == ["c0"]
    with pytest.raises(DatasetError, match="no repux-dataset.json or dataset.json"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(DatasetError, match="neither an MSD"):
        load_dataset(tmp_path)


def test_phantoms_cli_writes_a_ready_dataset(tmp_path):
    assert main(["phantoms", "--n", "3", "--output", str(tmp_path / "ph"), "--organs", "liver,kidney,spleen,pancreas,vertebral column", "--progress", "none"]) == 0
    ds = load_dataset(tmp_path / "ph")
    assert ds.labels.names == ["liver", "kidney", "spleen", "pancreas", "vertebral column"] and len(ds.cases) == 3
    assert {c.split for c in ds.cases} == {"train", "val"}
    reports = check_dataset(ds)
    assert not any(r.errors for r in reports)
    assert all(set(r.voxels) == set(ds.labels.names) for r in reports)
    with pytest.raises(SystemExit) as exit_info:  # argparse: one-line usage error, exit code 2
        main(["phantoms", "--n", "0", "--output", str(tmp_path / "x")])
    assert exit_info.value.code == 2
