"""RepUXSegmentLib.models: the model store as the module shows it, and the real ``repux models ...`` child
processes the module starts (download with progress and sha256 check, import, delete).

Each test has its own empty store (``REPUX_HOME``, Testing/conftest.py) and catalog (``REPUX_CATALOG``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from RepUXSegmentLib.models import (
    convertOfficialArguments,
    findModel,
    importArguments,
    installArguments,
    listModels,
    parseDeviceInfo,
    removeModel,
    storeFolder,
    suggestModelId,
)
from RepUXSegmentLib.process import ProcessRunner, childEnvironment, repuxCommand


def runRepux(arguments, **callbacks) -> ProcessRunner:
    runner = ProcessRunner(repuxCommand(arguments, sys.executable), env=childEnvironment(), **callbacks)
    runner.start()
    runner.wait(timeout=300)
    return runner


@pytest.fixture
def catalog(tmp_path, monkeypatch, tiny_model_dir):
    """A catalog with the tiny model as a file:// download (zip + sha256), and a corrupted twin."""
    archive = Path(shutil.make_archive(str(tmp_path / "tiny-download"), "zip", root_dir=tiny_model_dir.parent, base_dir=tiny_model_dir.name))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    entries = [
        {
            "id": "tiny-download",
            "version": "1.2.0",
            "name": "Tiny (download)",
            "url": archive.as_uri(),
            "size_bytes": archive.stat().st_size,
            "sha256": digest,
            "labels": ["liver", "kidney", "spleen", "pancreas"],
        },
        {"id": "tiny-corrupt", "version": "1.0.0", "url": archive.as_uri(), "size_bytes": archive.stat().st_size, "sha256": "0" * 64, "labels": ["liver"]},
    ]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"format": "repux-catalog", "format_version": 1, "models": entries}))
    monkeypatch.setenv("REPUX_CATALOG", str(path))
    return entries


def test_download_reports_progress_verifies_and_installs(catalog, _isolated_store):
    rows = listModels()
    row = findModel("tiny-download", rows)
    assert row is not None and row.status == "downloadable" and not row.installed
    assert row.labels == ("liver", "kidney", "spleen", "pancreas") and row.sizeMB == pytest.approx(catalog[0]["size_bytes"] / 1e6, abs=0.1)

    progress = []
    runner = runRepux(installArguments("tiny-download"), onProgress=progress.append)

    assert runner.succeeded, runner.errorMessage
    downloads = [p for p in progress if p.stage == "download"]
    assert downloads and downloads[-1].extra["bytes"] == catalog[0]["size_bytes"]
    assert [p.fraction for p in downloads] == sorted(p.fraction for p in downloads)
    row = findModel("tiny-download", listModels())
    assert row.status == "installed" and row.version == "1.0.0" and Path(row.path).parent == _isolated_store / "models"
    assert row.labels == ("liver", "kidney", "spleen", "pancreas") and row.sizeMB > 0


def test_corrupted_download_is_refused(catalog):
    runner = runRepux(installArguments("tiny-corrupt"))
    assert runner.returncode == 1
    assert "sha256" in runner.errorMessage and "corrupted" in runner.errorMessage
    assert findModel("tiny-corrupt", listModels()).status == "downloadable"


def test_import_folder_then_delete(tiny_model_dir, _isolated_store):
    runner = runRepux(importArguments(tiny_model_dir / "model.json", modelId="my-model"))
    assert runner.succeeded, runner.errorMessage
    row = findModel("my-model", listModels())
    assert row is not None and row.status == "installed"
    assert findModel(row.path, listModels()) == row  # a folder path finds the row too
    assert storeFolder() == _isolated_store

    removed = removeModel("my-model")
    assert not removed.exists() and findModel("my-model", listModels()) is None
    from repux.errors import ModelFileError

    with pytest.raises(ModelFileError, match="unknown model"):
        removeModel("my-model")


def test_import_refuses_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    runner = runRepux(importArguments(tmp_path))
    assert runner.returncode == 1 and "model.json" in runner.errorMessage


def test_command_builders():
    assert installArguments("repux-amos") == ["models", "install", "repux-amos", "--progress", "json"]
    assert importArguments("/m/x/model.json") == ["models", "import", str(Path("/m/x"))]
    assert importArguments("/m/x.zip", modelId="y", replace=True) == ["models", "import", str(Path("/m/x.zip")), "--id", "y", "--overwrite"]
    args = convertOfficialArguments("/c/best_metric_model.pth", "flare", "/tmp/out/id", "repuxnet-flare")
    assert args == ["convert-official", "/c/best_metric_model.pth", "--labels", "flare", "--output", "/tmp/out/id", "--id", "repuxnet-flare", "--install"]
    with pytest.raises(ValueError, match="model id"):
        convertOfficialArguments("/c/x.pth", "flare", "/tmp/out", " ")
    assert suggestModelId("/c/best_metric_model.pth", "flare") == "repuxnet-flare-best-metric-model"
    assert suggestModelId("C:/x/My Net (v2).pt", "/labels/organs_13.json") == "repuxnet-organs-13-my-net-v2"


def test_devices_from_repux_info():
    sample = json.dumps(
        {
            "repux": "0.1.0",
            "devices": [
                {"device": "cpu", "name": "AMD EPYC", "threads": 2},
                {"device": "cuda:0", "name": "NVIDIA H100", "memory_gb": 79.1},
                {"device": "mps", "name": "Apple GPU"},
            ],
        },
        indent=2,
    ).splitlines()
    devices = parseDeviceInfo(sample)
    assert [(d.device, d.name, d.isGpu) for d in devices] == [("cpu", "AMD EPYC", False), ("cuda:0", "NVIDIA H100", True), ("mps", "Apple GPU", True)]
    assert devices[1].memoryGB == pytest.approx(79.1)
    with pytest.raises(ValueError, match="JSON"):
        parseDeviceInfo(["not json"])

    runner = runRepux(["info", "--json"])  # the real command the module runs to name the GPU
    assert runner.succeeded, runner.errorMessage
    real = parseDeviceInfo(runner.stdoutLines)
    assert real[0].device == "cpu" and real[0].name
