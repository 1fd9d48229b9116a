"""Training engine: progress, exact resume, SIGTERM/kill -9, truncated checkpoints, fine-tune label plans, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from repux.config import Preprocessing
from repux.data.datasets import load_dataset
from repux.errors import Cancelled, CheckpointError
from repux.labels import FLARE, LabelSet
from repux.models.folder import load_model
from repux.progress import CancelToken
from repux.training.checkpoint import CHECKPOINT, load_checkpoint
from repux.training.trainer import TrainConfig, adapt_output_head, plan_labels, train

SMALL = {"feature_sizes": (4, 8, 8, 16), "depths": (1, 1, 1, 1), "kernel_size": 7, "hidden_size": 16}


def _config(**kw):
    base = dict(
        preset="tiny",
        model_args=SMALL,
        roi_size=(32, 32, 32),
        batch_size=2,
        max_iterations=6,
        val_interval=3,
        checkpoint_interval=2,
        warmup_iterations=2,
        preprocessing=Preprocessing(spacing=(4.0, 4.0, 5.0)),
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_train_exports_deploy_model_with_provenance(blob_dataset, tmp_path):
    events = []
    res = train(load_dataset(blob_dataset), tmp_path / "model", _config(), run_dir=tmp_path / "run", device="cpu", progress=events.append)
    assert res.iterations == 6 and res.stopped_by == "max_iterations"
    model, card = load_model(tmp_path / "model")
    assert model.deploy and card.labels.names == ["liver", "spleen"]
    prov = card.provenance
    assert prov["iterations"] == 6 and prov["dataset"]["train_cases"] == 3 and prov["dataset"]["val_cases"] == 1
    assert set(prov["validation_dice"]) == {"liver", "spleen"} and len(prov["dataset"]["fingerprint"]) == 16
    train_events = [e for e in events if e.stage == "train" and "loss" in e.extra]
    assert [e.extra["iteration"] for e in train_events] == [1, 2, 3, 4, 5, 6]
    assert all(e.extra["max_iterations"] == 6 and e.extra["lr"] > 0 for e in train_events)
    val_events = [e for e in events if e.stage == "train" and "val_dice" in e.extra]
    assert [e.extra["iteration"] for e in val_events] == [3, 6]
    fr = [e.fraction for e in events]
    assert fr == sorted(fr) and fr[-1] == 1.0


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_resume_continues_exactly(blob_dataset, tmp_path):
    ds = load_dataset(blob_dataset)
    train(ds, tmp_path / "straight", _config(), run_dir=tmp_path / "run_a", device="cpu")
    token = CancelToken()

    def stop_after_3(event):
        if event.extra.get("iteration") == 3 and "loss" in event.extra:
            token.cancel("test stop")

    with pytest.raises(Cancelled, match="iteration 3"):
        train(ds, tmp_path / "resumed", _config(), run_dir=tmp_path / "run_b", device="cpu", progress=stop_after_3, cancel=token)
    assert load_checkpoint(tmp_path / "run_b" / CHECKPOINT)["iteration"] == 3
    assert not (tmp_path / "resumed").exists()
    res = train(ds, tmp_path / "resumed", _config(), run_dir=tmp_path / "run_b", device="cpu", resume=True)
    assert res.iterations == 6
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-5, atol=1e-6), k


def test_truncated_checkpoint_is_detected(blob_dataset, tmp_path):
    ds = load_dataset(blob_dataset)
    train(ds, None, _config(max_iterations=2), run_dir=tmp_path / "run", device="cpu")
    ck = tmp_path / "run" / CHECKPOINT
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        train(ds, None, _config(max_iterations=4), run_dir=tmp_path / "run", device="cpu", resume=True)
    from repux.cli.main import main

    rc = main(
        [
            "train",
            "--dataset",
            str(blob_dataset),
            "--output",
            str(tmp_path / "m"),
            "--run-dir",
            str(tmp_path / "run"),
            "--resume",
            "--roi-size",
            "32",
            "--spacing",
            "4,4,5",
        ]
    )
    assert rc == 1


def _cli_train(blob_dataset, tmp_path, extra=()):
    cmd = [
        sys.executable, "-m", "repux", "train", "--dataset", str(blob_dataset), "--output", str(tmp_path / "cli_model"),
        "--run-dir", str(tmp_path / "cli_run"), "--roi-size", "32", "--spacing", "4,4,5", "--max-iterations", "8",
        "--val-interval", "4", "--checkpoint-interval", "1", "--progress", "json", "--threads", "1", "--device", "cpu", *extra,
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_iteration(proc, n, timeout=240):
    t0 = time.time()
    lines = []
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        ev = json.loads(line)
        if ev.get("iteration", 0) >= n and "loss" in ev:
            return lines
    raise AssertionError(f"iteration {n} not reached: {lines[-3:]} {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_interrupted_cli_run_resumes_to_the_end(blob_dataset, tmp_path, sig):
    proc = _cli_train(blob_dataset, tmp_path)
    _wait_for_iteration(proc, 3)
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)
    proc.stdout.close()
    proc.stderr.close()
    assert rc != 0
    state = load_checkpoint(tmp_path / "cli_run" / CHECKPOINT)  # never torn, even after kill -9
    assert state["iteration"] >= 2 if sig == signal.SIGKILL else state["iteration"] >= 3
    assert not (tmp_path / "cli_model").exists()
    assert not [p for p in (tmp_path / "cli_run").iterdir() if p.name.endswith(".tmp")] or sig == signal.SIGKILL
    proc = _cli_train(blob_dataset, tmp_path, extra=["--resume"])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(x) for x in out.splitlines()]
    iters = [e["iteration"] for e in events if "loss" in e]
    assert iters[0] == state["iteration"] + 1 and iters[-1] == 8
    model, card = load_model(tmp_path / "cli_model")
    assert card.provenance["iterations"] == 8


def test_plan_labels_for_finetuning():
    base = FLARE  # liver, kidney, spleen, pancreas
    ds = LabelSet.from_names(["spleen", "Liver", "vertebral column"])
    labels, name_to_value, channel_map = plan_labels(base, ds)
    assert labels.names == ["liver", "spleen", "vertebral column"]  # shared keep base order, new appended, dropped removed
    assert name_to_value == {"liver": 1, "spleen": 2, "vertebral column": 3}
    assert channel_map == {0: 0, 1: 1, 2: 3}
    assert labels.by_value(3).type.value == "421060004"


def test_adapt_output_head_keeps_shared_channels():
    from repux.nn import RepUXNet

    torch.manual_seed(0)
    net = RepUXNet(1, 5, **SMALL)
    old_w = net.out.conv.conv.weight.detach().clone()
    old_b = net.out.conv.conv.bias.detach().clone()
    adapt_output_head(net, {0: 0, 1: 1, 2: 3}, 4)
    w, b = net.out.conv.conv.weight, net.out.conv.conv.bias
    assert w.shape[0] == 4 and net.out_channels == 4
    for new, old in {0: 0, 1: 1, 2: 3}.items():
        assert torch.equal(w[new], old_w[old]) and b[new] == old_b[old]
    assert net(torch.zeros(1, 1, 32, 32, 32)).shape[1] == 4


def test_head_lr_scale_is_validated():
    from repux.errors import ConfigError

    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="head_lr_scale"):
            TrainConfig(head_lr_scale=bad)
    assert TrainConfig(head_lr_scale=10).head_lr_scale == 10


def test_finetune_cli_adds_an_organ_and_never_overwrites_base(tmp_path):
    from helpers import make_blob_dataset

    from repux.cli.main import main
    from repux.models.store import ModelStore

    base_ds = make_blob_dataset(tmp_path / "base_ds", organs=("liver", "spleen"))
    new_ds = make_blob_dataset(tmp_path / "new_ds", organs=("liver", "spleen", "gallbladder"), seed=5)
    assert (
        main(
            [
                "train",
                "--dataset",
                str(base_ds),
                "--output",
                "blob-base",
                "--roi-size",
                "32",
                "--spacing",
                "4,4,5",
                "--max-iterations",
                "2",
                "--val-interval",
                "2",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    store = ModelStore()
    base_sha = json.loads((store.path("blob-base") / "model.json").read_text())["sha256"]
    rc = main(
        [
            "finetune",
            "--base",
            "blob-base",
            "--dataset",
            str(new_ds),
            "--output",
            "blob-ft",
            "--max-iterations",
            "2",
            "--val-interval",
            "2",
            "--freeze-encoder",
            "1",
            "--progress",
            "none",
        ]
    )
    assert rc == 0
    card = json.loads((store.path("blob-ft") / "model.json").read_text())
    assert [lab["name"] for lab in card["labels"]] == ["liver", "spleen", "gallbladder"]
    assert card["provenance"]["base_model"]["id"] == "blob-base" and card["provenance"]["base_model"]["sha256"] == base_sha
    assert card["preprocessing"]["spacing"] == [4.0, 4.0, 5.0]
    assert json.loads((store.path("blob-base") / "model.json").read_text())["sha256"] == base_sha
    assert main(["finetune", "--base", "blob-base", "--dataset", str(new_ds), "--output", str(store.path("blob-base")), "--max-iterations", "1"]) == 1
    assert main(["finetune", "--base", "blob-base", "--dataset", str(new_ds), "--output", "blob-ft", "--max-iterations", "1"]) == 1  # exists


def test_ddp_two_cpu_processes_agree(blob_dataset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "-m", "repux", "train",
        "--dataset", str(blob_dataset), "--output", str(tmp_path / "ddp_model"), "--run-dir", str(tmp_path / "ddp_run"), "--roi-size", "32",
        "--spacing", "4,4,5", "--max-iterations", "3", "--val-interval", "3", "--device", "cpu", "--threads", "1", "--progress", "none",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    prov = json.loads((tmp_path / "ddp_model" / "model.json").read_text())["provenance"]
    assert prov["world_size"] == 2 and prov["ranks_agree_on_weights"] is True
    assert "all 2 ranks agree on the final weights" in out.stderr


def test_interactive_training_learns_guidance_channels(blob_dataset, tmp_path, monkeypatch):
    """--interactive: zero-initialised click channels, simulated clicks from the current errors, the guidance in the card."""
    from repux.training import trainer as trainer_module

    calls = []
    original = trainer_module._Run._guidance_input

    def spy(self, x, y, rng, recorded=None):
        heat = original(self, x, y, rng, recorded)
        calls.append((tuple(heat.shape), float(heat.max())))
        return heat

    monkeypatch.setattr(trainer_module._Run, "_guidance_input", spy)
    res = train(
        load_dataset(blob_dataset),
        tmp_path / "model",
        _config(interactive=True, interactive_probability=1.0, max_clicks=3),
        run_dir=tmp_path / "run",
        device="cpu",
    )
    assert res.iterations == 6
    assert len(calls) == 6 and all(shape == (2, 3, 32, 32, 32) for shape, _ in calls)
    assert any(peak == 1.0 for _, peak in calls)  # clicks were placed (a heatmap peaks at 1 on its click)
    model, card = load_model(tmp_path / "model")
    assert card.guidance is not None and list(card.guidance.labels) == ["background", "liver", "spleen"]
    assert model.in_channels == 4 and card.provenance["train_config"]["interactive"] is True
    stem = model.repuxnet_3d.downsample_layers[0][0].weight
    assert float(stem.detach()[:, 1:].abs().sum()) > 0  # the click weights trained away from zero
    with pytest.raises(ValueError, match="max_clicks must be an integer from 1 to 100"):
        _config(max_clicks=0)


def test_interactive_training_places_the_recorded_clicks(blob_dataset, tmp_path, monkeypatch):
    """Clicks recorded with a curated case (meta "clicks", RAS) reach the training crops at their organ, before the simulated ones."""
    import numpy as np
    import SimpleITK as sitk

    from repux.training import trainer as trainer_module

    manifest = blob_dataset / "repux-dataset.json"
    data = json.loads(manifest.read_text())
    for case in data["cases"]:
        lab = sitk.ReadImage(str(blob_dataset / case["label"]))
        centre = np.argwhere(sitk.GetArrayFromImage(lab) == 1).mean(0)[::-1]  # the liver's centre (i, j, k)
        x, y, z = lab.TransformContinuousIndexToPhysicalPoint(centre.tolist())
        case["clicks"] = {"liver": [{"ras": [-x, -y, z], "positive": True, "organ": "liver"}]}
    manifest.write_text(json.dumps(data))
    seen = []
    original = trainer_module._Run._guidance_input

    def spy(self, x, y, rng, recorded=None):
        heat = original(self, x, y, rng, recorded)
        for b, points in enumerate(recorded or []):
            for p in points:
                seen.append((int(y[b, 0][p]), float(heat[b, 1][p])))  # the class at the click, its liver heatmap there
        return heat

    monkeypatch.setattr(trainer_module._Run, "_guidance_input", spy)
    train(
        load_dataset(blob_dataset),
        tmp_path / "model",
        _config(interactive=True, interactive_probability=1.0, max_clicks=2, augmentation="standard"),
        run_dir=tmp_path / "run",
        device="cpu",
    )
    assert seen, "no training crop held a recorded click"
    assert all(cls == 1 and peak == pytest.approx(1.0) for cls, peak in seen), seen
