"""Model folders: atomic save, sha256 verification, strict loading, official import."""

from __future__ import annotations

import json

import pytest
import torch

from repux.config import InferenceSettings, Preprocessing
from repux.errors import CheckpointError, ModelFileError
from repux.labels import AMOS, FLARE, LabelSet
from repux.models.folder import load_model, read_model_card, save_model, verify_model
from repux.models.official import model_from_official_state_dict, read_official_checkpoint, unwrap_state_dict
from repux.nn import RepUXNet


def _net(seed=0, out=5):
    torch.manual_seed(seed)
    return RepUXNet(1, out, feature_sizes=(4, 8, 8, 16), depths=(1, 1, 1, 1), kernel_size=7, hidden_size=16)


def test_save_load_roundtrip_folds_bfm(tmp_path):
    net = _net()
    x = torch.randn(1, 1, 32, 32, 32)
    net.eval()
    with torch.no_grad():
        y = net(x)
    card = save_model(net, tmp_path / "m", labels=FLARE, preprocessing=Preprocessing(spacing=(2, 2, 3)), inference=InferenceSettings(roi_size=(64, 64, 32)))
    assert not net.deploy, "saving must not modify the model"
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["model.json", "model.safetensors"]
    data = json.loads((tmp_path / "m" / "model.json").read_text())
    assert data["deploy"] is True and data["architecture"] == "RepUXNet" and data["format_version"] == 1
    assert data["roi_size"] == [64, 64, 32] and data["preprocessing"]["spacing"] == [2.0, 2.0, 3.0]
    assert [lab["name"] for lab in data["labels"]] == ["liver", "kidney", "spleen", "pancreas"]
    assert data["labels"][0]["type"] == {"value": "10200004", "scheme": "SCT", "meaning": "Liver"}
    assert len(data["sha256"]) == 64 and data["sha256"] == card.sha256
    loaded, card2 = load_model(tmp_path / "m")
    assert loaded.deploy and not loaded.training
    with torch.no_grad():
        y2 = loaded(x)
    assert float((y2 - y).abs().max() / y.abs().max()) < 1e-5
    assert card2.labels == FLARE and card2.roi_size == (64, 64, 32)
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")  # safetensors: 8-byte length + JSON header + raw tensors (no pickle)
    assert raw[8:9] == b"{" and json.loads(raw[8 : 8 + header_len])["__metadata__"]["format"] == "repux-model"


def test_tampered_and_truncated_weights_are_refused(tmp_path):
    save_model(_net(), tmp_path / "m", labels=FLARE)
    w = tmp_path / "m" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(tmp_path / "m")
    w.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelFileError, match="truncated"):
        verify_model(tmp_path / "m")


def test_save_refuses_existing_folder_and_wrong_label_count(tmp_path):
    save_model(_net(), tmp_path / "m", labels=FLARE)
    with pytest.raises(ModelFileError, match="already exists"):
        save_model(_net(), tmp_path / "m", labels=FLARE)
    with pytest.raises(ModelFileError, match="labels"):
        save_model(_net(out=3), tmp_path / "m2", labels=FLARE)
    assert not (tmp_path / "m2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left behind"


def test_newer_format_version_is_refused(tmp_path):
    save_model(_net(), tmp_path / "m", labels=FLARE)
    card = tmp_path / "m" / "model.json"
    d = json.loads(card.read_text())
    d["format_version"] = 99
    card.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="format_version 99"):
        read_model_card(tmp_path / "m")


def _official_state_dict(out_channels=5, seed=0):
    """A synthetic official-style state dict: the documented keys and shapes, random values."""
    from helpers import official_keys

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, (shape, dtype) in official_keys().items():
        if k.startswith("out.conv.conv."):
            shape = (out_channels,) + shape[1:]
        if dtype == "int64":
            sd[k] = torch.tensor(7, dtype=torch.int64)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.02
    return sd


def test_official_state_dict_loads_strictly_in_all_wrappings(tmp_path):
    sd = _official_state_dict()
    model = model_from_official_state_dict(sd, FLARE)
    assert model.deploy and sum(p.numel() for p in model.parameters()) == 65_827_829
    assert torch.equal(model.state_dict()["repuxnet_3d.stages.2.1.dwconv.weight"], sd["repuxnet_3d.stages.2.1.dwconv.weight"])
    for wrapped in ({"state_dict": sd}, {"model": {f"module.{k}": v for k, v in sd.items()}}, {f"_orig_mod.{k}": v for k, v in sd.items()}):
        assert set(unwrap_state_dict(wrapped)) == set(sd)
    assert unwrap_state_dict(unwrap_state_dict(sd)).keys() == sd.keys()  # idempotent


def test_official_errors_name_keys_and_label_counts(tmp_path):
    sd = _official_state_dict()
    with pytest.raises(CheckpointError, match=r"has 5 output channels \(4 organs \+ background\).*15 organs"):
        model_from_official_state_dict(sd, AMOS)
    bad = dict(sd)
    bad.pop("decoder3.conv_block.conv2.conv.weight")
    bad["extra.weight"] = torch.zeros(1)
    bad["encoder2.layer.conv1.conv.weight"] = torch.zeros(96, 48, 3, 3, 1)
    with pytest.raises(CheckpointError) as err:
        model_from_official_state_dict(bad, FLARE)
    msg = str(err.value)
    assert "missing keys (1): decoder3.conv_block.conv2.conv.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "encoder2.layer.conv1.conv.weight: checkpoint (96, 48, 3, 3, 1) vs model (96, 48, 3, 3, 3)" in msg


def test_convert_official_cli_safe_load(tmp_path):
    from repux.cli.main import main

    sd = _official_state_dict(out_channels=16)
    ckpt = tmp_path / "best_metric_model.pth"
    torch.save({"state_dict": sd}, ckpt)
    rc = main(["convert-official", str(ckpt), "--labels", "amos", "--output", str(tmp_path / "amos-model")])
    assert rc == 0
    model, card = load_model(tmp_path / "amos-model")
    assert len(card.labels) == 15 and card.labels.by_value(6).name == "liver"
    assert card.preprocessing.spacing == (1.5, 1.5, 2.0)
    assert card.provenance["source"] == "official-checkpoint"
    assert torch.equal(model.state_dict()["out.conv.conv.bias"], sd["out.conv.conv.bias"])
    # a pickle with arbitrary objects is refused, not executed
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": sd, "note": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        read_official_checkpoint(evil)
    assert main(["convert-official", str(evil), "--labels", "amos", "--output", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()
    # wrong label count: exit 1, no folder
    assert main(["convert-official", str(ckpt), "--labels", "flare", "--output", str(tmp_path / "y")]) == 1
    assert not (tmp_path / "y").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_custom_label_file(tmp_path):
    from repux.labels import get_label_set

    f = tmp_path / "labels.json"
    f.write_text(json.dumps({"0": "background", "1": "Liver", "2": "tumor"}))
    ls = get_label_set(f)
    assert isinstance(ls, LabelSet) and ls.names == ["Liver", "tumor"]
    assert ls.by_value(1).type.value == "10200004"  # known organ gets its SNOMED code
    assert ls.by_value(2).type is None
