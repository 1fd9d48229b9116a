"""Network structure, presets, input validation and the official key layout."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import official_keys

from repux.errors import ConfigError
from repux.nn import PRESETS, RepUXNet, create_model


def test_base_parameter_count_is_the_papers():
    net = create_model("base", out_channels=5)
    assert sum(p.numel() for p in net.parameters()) == 65_827_829


def test_base_deploy_state_dict_maps_one_to_one_onto_official_keys():
    documented = official_keys()
    assert len(documented) == 115
    net = create_model("base", out_channels=5, deploy=True)
    sd = net.state_dict()
    assert set(sd) == set(documented)
    for k, (shape, dtype) in documented.items():
        assert tuple(sd[k].shape) == shape, k
        assert str(sd[k].dtype).replace("torch.", "") == dtype, k


def test_training_and_deploy_forms_share_keys():
    a = create_model("tiny", deploy=False).state_dict()
    b = create_model("tiny", deploy=True).state_dict()
    assert list(a) == list(b)


def test_output_shape_and_config_roundtrip():
    net = RepUXNet(1, 3, feature_sizes=(4, 8, 8, 16), depths=(1, 1, 1, 1), kernel_size=5, hidden_size=16)
    y = net(torch.zeros(1, 1, 32, 48, 64))
    assert y.shape == (1, 3, 32, 48, 64)
    again = RepUXNet(**net.config())
    assert again.config() == net.config()


@pytest.mark.parametrize("shape", [(1, 1, 40, 32, 32), (1, 1, 32, 32, 16), (1, 1, 33, 32, 32)])
def test_spatial_size_error_names_shape_and_rule(shape):
    net = create_model("tiny")
    with pytest.raises(ValueError) as err:
        net(torch.zeros(shape))
    msg = str(err.value)
    assert str(tuple(shape[2:])) in msg and "multiple of 16" in msg and "at least 32" in msg


def test_channel_count_error():
    net = create_model("tiny", in_channels=1)
    with pytest.raises(ValueError, match="in_channels=1 but the input has 2 channels"):
        net(torch.zeros(1, 2, 32, 32, 32))


def test_unknown_preset_suggests_closest():
    with pytest.raises(ConfigError, match="Did you mean 'small'"):
        create_model("smal")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel_size": 20}, "kernel_size"),
        ({"feature_sizes": (8, 16, 32)}, "feature_sizes"),
        ({"depths": (1, 0, 1, 1)}, "depths"),
        ({"algorithm": "winograd"}, "algorithm"),
        ({"out_channels": 0}, "out_channels"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("tiny", **kwargs)


def test_presets_documented_sizes():
    assert PRESETS["base"]["feature_sizes"] == (48, 96, 192, 384)
    assert PRESETS["base"]["kernel_size"] == 21 and PRESETS["base"]["hidden_size"] == 768
    small = sum(p.numel() for p in create_model("small").parameters())
    tiny = sum(p.numel() for p in create_model("tiny").parameters())
    assert tiny < small < 65_827_829


def test_import_repux_pulls_in_no_slicer_qt_vtk():
    code = (
        "import sys, repux, repux.nn, repux.inference.segmenter, repux.models.folder, repux.models.store, repux.cli.main\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('slicer', 'qt', 'ctk', 'vtk', 'vtkmodules', 'PythonQt'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    net = RepUXNet(1, 2, feature_sizes=(4, 8, 8, 16), depths=(1, 1, 1, 1), kernel_size=5, hidden_size=16).double()
    x = torch.randn(1, 1, 32, 32, 32, dtype=torch.float64)
    net(x).sum().backward()
    g1 = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.set_gradient_checkpointing(True)
    net(x).sum().backward()
    for a, p in zip(g1, net.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-9, atol=1e-12)
