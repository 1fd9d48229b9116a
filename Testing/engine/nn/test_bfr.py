"""The Bayesian frequency re-parameterization must be right; each test fails if it is not."""

from __future__ import annotations

import math

import pytest
import torch

from repux.nn import BFRDepthwiseConv3d, RepUXNet, bayesian_frequency_matrix
from repux.nn import bfr as bfr_module


def test_bfm_values():
    m = bayesian_frequency_matrix(21, 1.0, dtype=torch.float64)
    assert m.shape == (21, 21, 21)
    assert m[10, 10, 10] == 1.0
    for idx in [(9, 10, 10), (11, 10, 10), (10, 9, 10), (10, 11, 10), (10, 10, 9), (10, 10, 11)]:
        assert m[idx] == pytest.approx(0.5, abs=1e-15)
    corner = 1.0 / (1.0 + math.sqrt(300.0))  # d = sqrt(3 * 10^2)
    for idx in [(0, 0, 0), (20, 20, 20), (0, 20, 0)]:
        assert m[idx] == pytest.approx(corner, rel=1e-12)
    assert float(m.min()) > 0  # un-folding W = W_eff / BFM is always defined
    assert float(m.sum()) == pytest.approx(922.1, abs=0.1)


def test_bfm_alpha_and_validation():
    m = bayesian_frequency_matrix(5, 2.0, dtype=torch.float64)
    assert m[2, 2, 3] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="odd"):
        bayesian_frequency_matrix(4)
    with pytest.raises(ValueError, match="bfm_alpha"):
        bayesian_frequency_matrix(5, 0.0)


def _conv(ks=7, channels=3, seed=0):
    torch.manual_seed(seed)
    conv = BFRDepthwiseConv3d(channels, ks).double()
    return conv


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_stored_weights_never_change_during_forward(mode):
    conv = _conv(21, 2)
    w0 = conv.weight.detach().clone()
    x = torch.randn(1, 2, 6, 7, 8, dtype=torch.float64)
    getattr(conv, mode)()
    param = conv.weight
    for _ in range(200):  # the official code would have underflowed the kernel to its centre by now
        y = conv(x)
    assert conv.weight is param, "the Parameter object must stay the one the optimizer holds"
    assert torch.equal(conv.weight.detach(), w0)
    ref = torch.nn.functional.conv3d(x, w0 * conv.bfm.double(), conv.bias, padding=10, groups=2)
    assert torch.allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_bfm_is_a_buffer_built_once(monkeypatch):
    conv = _conv(7, 2)
    assert "bfm" not in conv.state_dict(), "BFM must not be saved: official state dicts do not have it"
    assert "bfm" in dict(conv.named_buffers())

    def boom(*a, **k):
        raise AssertionError("BFM rebuilt during forward")

    monkeypatch.setattr(bfr_module, "bayesian_frequency_matrix", boom)
    monkeypatch.setattr(bfr_module, "_bfm_float64", boom)
    conv(torch.randn(1, 2, 8, 8, 8, dtype=torch.float64)).sum().backward()
    conv.double().to("cpu")  # buffer follows .to()
    assert conv.bfm.dtype == torch.float64


@pytest.mark.parametrize("algorithm", ["native", "direct", "fft"])
def test_gradient_reaches_raw_weight_scaled_by_bfm(algorithm):
    conv = _conv(7, 3)
    conv.algorithm = algorithm
    x = torch.randn(2, 3, 9, 10, 11, dtype=torch.float64)
    g = torch.randn(2, 3, 9, 10, 11, dtype=torch.float64)
    (conv(x) * g).sum().backward()
    # gradient w.r.t. the effective kernel, computed independently with a plain conv
    w_eff = (conv.weight.detach() * conv.bfm).requires_grad_(True)
    (torch.nn.functional.conv3d(x, w_eff, conv.bias.detach(), padding=3, groups=3) * g).sum().backward()
    assert torch.allclose(conv.weight.grad, conv.bfm * w_eff.grad, rtol=1e-10, atol=1e-12)


def test_sgd_step_changes_effective_kernel_by_lr_bfm_squared_g():
    conv = _conv(7, 3)
    lr = 0.1
    opt = torch.optim.SGD([conv.weight], lr=lr)
    x = torch.randn(1, 3, 8, 8, 8, dtype=torch.float64)
    w_eff0 = conv.effective_weight().detach().clone()
    w_eff = w_eff0.clone().requires_grad_(True)
    (torch.nn.functional.conv3d(x, w_eff, conv.bias.detach(), padding=3, groups=3) ** 2).sum().backward()
    g = w_eff.grad
    opt.zero_grad()
    (conv(x) ** 2).sum().backward()
    opt.step()
    delta = conv.effective_weight().detach() - w_eff0
    expected = -lr * conv.bfm**2 * g
    assert torch.allclose(delta, expected, rtol=1e-9, atol=1e-13)
    # and the centre tap moves 4x more than a face neighbour, relative to its gradient
    c = 3
    assert delta[0, 0, c, c, c] / g[0, 0, c, c, c] == pytest.approx(-lr)
    assert delta[0, 0, c, c, c + 1] / g[0, 0, c, c, c + 1] == pytest.approx(-lr / 4)


def test_reparameterize_is_exact_and_idempotent_and_invertible():
    conv = _conv(21, 2)
    x = torch.randn(1, 2, 14, 13, 12, dtype=torch.float64)
    w_raw = conv.weight.detach().clone()
    y0 = conv(x)
    conv.reparameterize()
    assert conv.deploy
    assert torch.allclose(conv(x), y0, rtol=1e-12, atol=1e-12)
    w_folded = conv.weight.detach().clone()
    conv.reparameterize()  # idempotent
    assert torch.equal(conv.weight.detach(), w_folded)
    conv.unreparameterize()
    assert not conv.deploy
    assert torch.allclose(conv.weight.detach(), w_raw, rtol=1e-13, atol=0)
    conv.unreparameterize()  # idempotent
    assert torch.allclose(conv.weight.detach(), w_raw, rtol=1e-13, atol=0)


def _small_net(deploy=False, seed=0, ks=7):
    torch.manual_seed(seed)
    return RepUXNet(1, 3, feature_sizes=(4, 8, 8, 16), depths=(1, 2, 1, 1), kernel_size=ks, hidden_size=16, deploy=deploy)


def _randomize_batchnorm(net):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)


@pytest.mark.parametrize("ks", [7, 21])
def test_model_reparameterize_matches_training_form(ks):
    net = _small_net(ks=ks).double()
    x = torch.randn(2, 1, 32, 32, 48, dtype=torch.float64)
    net.train()
    net(x)  # training forward updates BN statistics (train -> eval below)
    _randomize_batchnorm(net)
    net.eval()
    with torch.no_grad():
        y_train_form = net(x)
        net.reparameterize()
        y_deploy = net(x)
        net.reparameterize(fold_batchnorm=True)
        y_folded_bn = net(x)
    assert net.deploy and net.batchnorm_folded
    rel = (y_deploy - y_train_form).abs().max() / y_train_form.abs().max()
    assert rel < 1e-5
    rel_bn = (y_folded_bn - y_train_form).abs().max() / y_train_form.abs().max()
    assert rel_bn < 1e-5


def test_float32_reparameterize_within_1e5_relative():
    net = _small_net(ks=21)
    x = torch.randn(1, 1, 32, 32, 32)
    net(x)
    _randomize_batchnorm(net)
    net.eval()
    with torch.no_grad():
        a = net(x)
        b = net.reparameterize()(x)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-5


def test_training_state_dict_loads_into_deploy_model_after_reparameterize():
    train_net = _small_net(seed=1)
    x = torch.randn(1, 1, 32, 32, 32)
    train_net(x)
    _randomize_batchnorm(train_net)
    train_net.eval()
    with torch.no_grad():
        expected = train_net(x)
    train_net.reparameterize()
    deploy_net = _small_net(deploy=True, seed=99)
    deploy_net.load_state_dict(train_net.state_dict(), strict=True)
    deploy_net.eval()
    with torch.no_grad():
        got = deploy_net(x)
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


def test_unreparameterize_then_train_updates_large_kernels():
    net = _small_net(deploy=True, seed=2)
    net.unreparameterize()
    assert not net.deploy
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.0)
    # stage 0 runs at 16^3, so every tap of its 7^3 kernels meets real data
    kernels = [m.dwconv.weight for m in net.repuxnet_3d.stages[0]]
    before = [k.detach().clone() for k in kernels]
    x = torch.randn(1, 1, 32, 32, 32)
    y = torch.randint(0, 3, (1, 32, 32, 32))
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, b in zip(kernels, before):
        assert k.grad is not None
        changed = (k.detach() - b).abs() > 0
        # the whole kernel trains, not only its centre tap (the official bug)
        assert changed[:, :, 0, 0, 0].any() and changed[:, :, 3, 3, 3].any()
