"""Click-guidance channels: zero-initialised extra inputs leave the automatic network's output exactly unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from repux.config import Guidance
from repux.errors import ConfigError, ModelFileError
from repux.nn import create_model
from repux.nn.guidance import add_guidance_channels, input_convolutions


def test_zero_guidance_is_the_automatic_network():
    torch.manual_seed(0)
    net = create_model("tiny", out_channels=5).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        auto = net(x)
    add_guidance_channels(net, 5)
    assert net.in_channels == 6 and net.config()["in_channels"] == 6
    assert all(c.in_channels == 6 and c.weight.shape[1] == 6 for c in input_convolutions(net))
    heat = torch.zeros(1, 5, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(torch.cat([x, heat], 1)), auto)  # bit for bit
    # the new weights are trainable and, once non-zero, make the clicks count
    stem = input_convolutions(net)[0]
    assert stem.weight.requires_grad and float(stem.weight.detach()[:, 1:].abs().sum()) == 0.0
    with torch.no_grad():
        stem.weight[:, 1:] = 0.1
        heat[:, 2, 10:14, 10:14, 10:14] = 1.0
        assert not torch.allclose(net(torch.cat([x, heat], 1)), auto)
    with pytest.raises(ValueError, match="in_channels=6 but the input has 1 channels"):
        net(x)


def test_training_form_and_folding_keep_the_guidance():
    torch.manual_seed(1)
    net = create_model("tiny", out_channels=3)
    add_guidance_channels(net, 3)
    net.eval()
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        before = net(x)
        net.reparameterize()
        after = net(x)
    assert torch.allclose(before, after, atol=1e-4)


def test_guidance_card_round_trip_and_checks(tmp_path):
    from repux.labels import FLARE
    from repux.models.folder import ModelCard, load_model, save_model

    torch.manual_seed(2)
    net = add_guidance_channels(create_model("tiny", out_channels=FLARE.num_classes), FLARE.num_classes)
    g = Guidance.for_labels(FLARE.names)
    card = save_model(net, tmp_path / "m", labels=FLARE, guidance=g)
    d = json.loads((tmp_path / "m" / "model.json").read_text())
    assert d["guidance"] == {"channels": 5, "labels": ["background", "liver", "kidney", "spleen", "pancreas"], "sigma_mm": 4.5}
    assert d["model_args"]["in_channels"] == 6 and card.image_channels == 1
    loaded, card2 = load_model(tmp_path / "m")
    assert card2.guidance == g and loaded.in_channels == 6
    bad = dict(d, guidance={"labels": ["background", "kidney", "liver", "spleen", "pancreas"]})
    with pytest.raises(ModelFileError, match="must be 'background' and the model's labels in order"):
        ModelCard.from_dict(bad)
    with pytest.raises(ModelFileError, match="guidance.channels is 4"):
        ModelCard.from_dict(dict(d, guidance=dict(d["guidance"], channels=4)))
    with pytest.raises(ModelFileError, match="leaves no image channel"):
        ModelCard.from_dict(dict(d, model_args=dict(d["model_args"], in_channels=5)))
    with pytest.raises(ConfigError, match="sigma_mm must be a number from 0.1 to 100"):
        Guidance.for_labels(["liver"], sigma_mm=float("nan"))
    with pytest.raises(ConfigError, match="positive integer"):
        add_guidance_channels(create_model("tiny", out_channels=3), 0)
