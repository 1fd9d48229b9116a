"""``repux doctor``: one installation report (versions, devices, a timed forward pass, the model store)."""

from __future__ import annotations

import json
import logging

import pytest

from repux.cli.main import main
from repux.tools.doctor import diagnose, format_report


@pytest.fixture(autouse=True)
def _restore_repux_logger():
    """main() points the 'repux' logger at this test's (captured) stderr: put it back for the next tests."""
    log = logging.getLogger("repux")
    saved = (log.handlers[:], log.level, log.propagate)
    yield
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]


def test_report_has_versions_device_forward_pass_and_store(_isolated_store):
    report = diagnose(device="cpu", roi_size=(32, 32, 32))
    assert report["packages"]["torch"] and report["packages"]["monai"] and report["problems"] == []
    assert report["device"]["device"] == "cpu" and (report["device"]["total_gb"] is None or report["device"]["total_gb"] > 0)
    forward = report["forward"]
    assert forward["ok"] and forward["model"] == "repux-tiny-abdomen-ct" and forward["roi_size"] == [32, 32, 32] and forward["output_classes"] == 14  # the default model
    assert 0 < forward["seconds"] < 60
    assert report["store"]["path"] == str(_isolated_store) and report["store"]["models"] == ["repux-tiny-abdomen-ct", "repux-tiny-phantom"]
    text = format_report(report)
    assert "forward pass: repux-tiny-abdomen-ct, one 32x32x32 window" in text and "OK" in text and "problems:    none" in text


def test_problems_are_reported_not_raised(_isolated_store, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = diagnose(device="cuda", forward=True)
    assert any("CUDA is not available" in p for p in report["problems"]) and "forward" not in report
    report = diagnose(device="cpu", model="no-such-model")
    assert report["forward"]["ok"] is False and any("forward pass" in p for p in report["problems"])
    assert "FAILED" in format_report(report)


def test_cli_json_and_exit_code(_isolated_store, capsys):
    assert main(["doctor", "--json", "--no-forward"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"]["requested"] == "auto" and "forward" not in report
    assert main(["doctor", "--device", "cpu", "--model", "no-such-model", "--roi-size", "32"]) == 1
    assert "forward pass: FAILED" in capsys.readouterr().out


def test_models_list_says_plainly_that_nothing_is_downloadable(_isolated_store, capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "No model can be downloaded from the catalog" in out
    assert "get it from https://github.com/MASILab/RepUX-Net; import: repux convert-official CHECKPOINT.pth --labels flare" in out
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    assert {r["id"]: r["status"] for r in rows if r["status"] == "official"} == {"repuxnet-flare-official": "official", "repuxnet-amos-official": "official"}
