"""SPEC §1 architecture, losses and the fast dropout, against torch and closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from genlab.dcgan_nets import Discriminator, Generator, discriminator_loss, generator_loss
from genlab.layers import FastDropout, fast_dropout


def _count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_generator_layer_shapes_and_parameters():
    g = Generator()
    z = torch.randn(5, 100)
    shapes = {}
    for name in ("project", "bn0", "deconv1", "bn1", "deconv2", "bn2", "deconv3"):
        getattr(g, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
    out = g(z)
    assert shapes == {"project": (5, 12544), "bn0": (5, 12544), "deconv1": (5, 128, 7, 7), "bn1": (5, 128, 7, 7),
                      "deconv2": (5, 64, 14, 14), "bn2": (5, 64, 14, 14), "deconv3": (5, 1, 28, 28)}
    assert out.shape == (5, 1, 28, 28) and out.abs().max() <= 1
    # 100*12544 (no bias) + 2*12544 + 256*128*25 + 2*128 + 128*64*25 + 2*64 + 64*25: the TF tutorial's count
    assert _count(g) == 1_254_400 + 25_088 + 819_200 + 256 + 204_800 + 128 + 1_600 == 2_305_472
    assert all(m.bias is None for m in (g.project, g.deconv1, g.deconv2, g.deconv3))


def test_discriminator_layer_shapes_and_parameters():
    d = Discriminator()
    x = torch.randn(3, 1, 28, 28)
    shapes = [tuple(x.shape)]
    for layer in d.net:
        x = layer(x)
        shapes.append(tuple(x.shape))
    assert shapes[1] == (3, 64, 14, 14) and shapes[4] == (3, 128, 7, 7) and shapes[-1] == (3, 1)
    assert _count(d) == (64 * 25 + 64) + (128 * 64 * 25 + 128) + (6272 + 1) == 212_865
    assert [m.negative_slope for m in d.net if isinstance(m, torch.nn.LeakyReLU)] == [0.3, 0.3]


def test_losses_match_the_formulas():
    real, fake = torch.randn(64, 1), torch.randn(64, 1)
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    expected_d = -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean())
    torch.testing.assert_close(discriminator_loss(real, fake), expected_d, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generator_loss(fake), -torch.log(d_fake).mean(), rtol=1e-5, atol=1e-6)
    zero = torch.zeros(8, 1)  # D = 1/2 everywhere: the equilibrium values 2 log 2 and log 2
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert generator_loss(zero).item() == pytest.approx(math.log(2))


def test_fast_dropout_rate_scale_and_lanes():
    torch.manual_seed(0)
    x = torch.ones(1000, 4, 250)  # 1e6 elements
    y = fast_dropout(x, 0.3)
    kept = y != 0
    p_drop = round(0.3 * 65536) / 65536
    n = x.numel()
    sd = math.sqrt(p_drop * (1 - p_drop) / n)
    assert abs((1 - kept.float().mean().item()) - p_drop) < 5 * sd
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    # each of the four 16-bit lanes of a 64-bit draw is unbiased
    lanes = kept.flatten().view(-1, 4).float().mean(0)
    assert (lanes - (1 - p_drop)).abs().max() < 5 * sd * 2
    assert abs(y.mean().item() - 1.0) < 0.01  # E[dropout(x)] = x


def test_fast_dropout_gradient_and_modes():
    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(1)
    y = fast_dropout(x, 0.5)
    y.sum().backward()
    mask = (y != 0).float()
    torch.testing.assert_close(x.grad, mask * 2.0)
    layer = FastDropout(0.3).eval()
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_keeps_x_scaled_once_in_its_dtype(dtype):
    """A kept element is x times float32(1 / (1 - p)), computed in float32 (torch's opmath for a
    bf16 tensor times a Python scalar) and rounded to x's dtype; a dropped one is a zero of x's
    sign. These are the values of ``x * mask.to(dtype) * scale`` and ``x * scale * mask`` alike."""
    torch.manual_seed(3)
    x = torch.randn(64, 64, 14, 14).to(dtype)
    y = fast_dropout(x, 0.3)
    assert y.dtype == dtype
    kept = y != 0
    assert torch.equal(y[kept], (x[kept].float() * torch.tensor(1 / 0.7)).to(dtype))
    assert torch.equal(torch.signbit(y[~kept]), torch.signbit(x[~kept]))


@pytest.mark.parity
def test_fast_dropout_matches_torch_distribution_on_bf16():
    torch.manual_seed(0)
    x = torch.ones(200_000, dtype=torch.bfloat16)
    ours = (fast_dropout(x, 0.3) != 0).float().mean().item()
    theirs = (F.dropout(x, 0.3) != 0).float().mean().item()
    assert abs(ours - theirs) < 0.005


@pytest.mark.parity
@pytest.mark.parametrize("channels_last", [("conv2",), ("conv1", "conv2")])
def test_discriminator_layout_changes_kernels_not_the_maths(channels_last):
    """Channels-last convolutions compute the same logits and gradients. The kernels sum the
    1,600 products of a conv2 output (64 channels x 25 taps) in another order, so they agree to
    about 1,600 float32 roundings of the largest term, not bit for bit."""
    torch.manual_seed(0)
    plain = Discriminator(dropout=0.0)
    laid_out = Discriminator(dropout=0.0, channels_last=channels_last)
    laid_out.load_state_dict(plain.state_dict())
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    out_plain, out_laid = plain(x), laid_out(x)
    out_plain.sum().backward()
    out_laid.sum().backward()
    tol = 1600 * 2.0**-24
    torch.testing.assert_close(out_laid, out_plain, rtol=0, atol=tol * out_plain.abs().max().item())
    for (name, a), b in zip(plain.named_parameters(), laid_out.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=tol * a.grad.abs().max().item(), msg=name)
    with pytest.raises(ValueError, match="unknown discriminator layers"):
        Discriminator(channels_last=("conv3",))
