"""SPEC §4 VAE: the maths against torch.distributions, closed forms and autograd; the stacked
models against nn.Linear and torch.func; a smoke run, resume, sample and eval through the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from conftest import genlab_here
from genlab.data import load_binarised, load_pixels
from genlab.experiments import vae
from genlab.experiments.vae import VAE, StackedLinear, kl_normal, log_normal, sample_gaussian
from genlab.record import Record


def _reference_nelbo(model: VAE, x: torch.Tensor, eps: torch.Tensor, i: int = 0):
    """Model i's negative ELBO written with plain nn.Linear layers and torch.distributions."""
    def mlp(stack):
        layers = []
        for fc in (stack.fc1, stack.fc2, stack.fc3):
            lin = nn.Linear(fc.weight.shape[1], fc.weight.shape[2])
            lin.weight.data, lin.bias.data = fc.weight[i].T.clone(), fc.bias[i, 0].clone()
            layers += [lin, nn.ELU()]
        return nn.Sequential(*layers[:-1])

    m, h = mlp(model.encoder)(x).chunk(2, dim=-1)
    v = torch.nn.functional.softplus(h) + vae.VARIANCE_FLOOR
    q = Independent(Normal(m, v.sqrt()), 1)
    prior = Independent(Normal(torch.zeros_like(m), torch.ones_like(v)), 1)
    kl = kl_divergence(q, prior)
    rec = -Independent(Bernoulli(logits=mlp(model.decoder)(m + v.sqrt() * eps)), 1).log_prob(x)
    return (kl + rec).mean(), kl.mean(), rec.mean()


def test_kl_normal_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    qm, pm = torch.randn(7, 10, generator=g), torch.randn(7, 10, generator=g)
    qv, pv = torch.rand(7, 10, generator=g) + 0.1, torch.rand(7, 10, generator=g) + 0.1
    expected = kl_divergence(Independent(Normal(qm, qv.sqrt()), 1), Independent(Normal(pm, pv.sqrt()), 1))
    torch.testing.assert_close(kl_normal(qm, qv, pm, pv), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_normal(qm, pm, pv), Independent(Normal(pm, pv.sqrt()), 1).log_prob(qm))


def test_negative_elbo_bound_hand_computed_case():
    # All weights zero: q(z|x) = N(0.5, 2) and logits = 1 for every image, whatever x and z.
    model = VAE(1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.encoder.fc3.bias[0, 0, :10] = 0.5
        model.encoder.fc3.bias[0, 0, 10:] = math.log(math.expm1(2.0))  # softplus^-1(2)
        model.decoder.fc3.bias.fill_(1.0)
    x = torch.zeros(2, 784)
    x[0, :100] = 1  # 100 ones, 684 zeros
    x[1, :300] = 1  # 300 ones, 484 zeros
    nelbo, kl, rec = model.negative_elbo_bound(x, torch.randn(1, 2, 10))
    kl_hand = 10 * 0.5 * (2.0 + 0.25 - 1 - math.log(2.0))  # 10 dims of (v + m^2 - 1 - log v) / 2
    log1pexp = lambda a: math.log1p(math.exp(a))  # noqa: E731
    rec_hand = ((100 + 300) * log1pexp(-1.0) + (684 + 484) * log1pexp(1.0)) / 2  # -log sigmoid(+-1), batch mean
    assert kl.item() == pytest.approx(kl_hand, rel=1e-6)
    assert rec.item() == pytest.approx(rec_hand, rel=1e-6)
    assert nelbo.item() == pytest.approx(kl_hand + rec_hand, rel=1e-6)
    assert nelbo.shape == kl.shape == rec.shape == (1,)


def test_negative_elbo_bound_matches_torch_distributions_and_its_gradients():
    torch.manual_seed(0)
    model = VAE(2)
    x = torch.bernoulli(torch.rand(2, 5, 784))
    eps = torch.randn(2, 5, 10)
    nelbo, kl, rec = model.negative_elbo_bound(x, eps)
    for i in range(2):
        ref = _reference_nelbo(model, x[i], eps[i], i)
        torch.testing.assert_close(torch.stack([nelbo[i], kl[i], rec[i]]), torch.stack(ref), rtol=1e-5, atol=1e-4)
    # the summed loss gives each model exactly the gradient of its own loss
    nelbo.sum().backward()
    grad_both = model.encoder.fc1.weight.grad[1].clone()
    model.zero_grad()
    model.negative_elbo_bound(x, eps)[0][1].backward()
    torch.testing.assert_close(model.encoder.fc1.weight.grad[1], grad_both)
    assert model.encoder.fc1.weight.grad[0].abs().max() == 0


@pytest.mark.parity
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_written_out_gradients_equal_autograd(dtype, tolerance):
    """negative_elbo_and_gradients (the training step's fast path) against autograd of
    negative_elbo_bound in float64: exact in float64 and float32, to bf16's rounding in bf16."""
    torch.manual_seed(0)
    model = VAE(n_models=2).double()
    with torch.no_grad():  # a model away from its initialisation: larger weights, varied signs
        for p in model.parameters():
            p.mul_(3.0)
    x = torch.bernoulli(torch.full((2, 16, 784), 0.3, dtype=torch.float64))
    eps = torch.randn(2, 16, 10, dtype=torch.float64)
    nelbo, kl, rec = model.negative_elbo_bound(x, eps)
    expected = torch.autograd.grad(nelbo.sum(), list(model.parameters()))

    loss_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    model = model.to(loss_dtype)
    terms, grads = vae.negative_elbo_and_gradients(model, x.to(loss_dtype), eps.to(loss_dtype), dtype)
    torch.testing.assert_close(terms.double(), torch.stack([nelbo, kl, rec]).detach(), rtol=tolerance, atol=0)
    for (name, _), got, want in zip(model.named_parameters(), grads, expected):
        assert got.dtype == loss_dtype and got.shape == want.shape, name
        error = (got.double() - want).norm() / want.norm()
        assert error < tolerance, f"{name}: relative error {error:.2e}"


@pytest.mark.parity
def test_written_out_gradients_equal_autograd_with_the_log_variance_parameterisation():
    """--variance exp: v = exp(h), so d v / d h = v (softplus's is sigmoid(h)); float64, exact."""
    torch.manual_seed(1)
    model = VAE(n_models=2, variance="exp").double()
    x = torch.bernoulli(torch.full((2, 16, 784), 0.3, dtype=torch.float64))
    eps = torch.randn(2, 16, 10, dtype=torch.float64)
    nelbo, kl, rec = model.negative_elbo_bound(x, eps)
    expected = torch.autograd.grad(nelbo.sum(), list(model.parameters()))
    m, v = model.encode(x)
    h = model.encoder(x).chunk(2, dim=-1)[1]
    torch.testing.assert_close(v, h.exp())
    terms, grads = vae.negative_elbo_and_gradients(model, x, eps, torch.float64)
    torch.testing.assert_close(terms, torch.stack([nelbo, kl, rec]).detach(), rtol=1e-12, atol=0)
    for (name, _), got, want in zip(model.named_parameters(), grads, expected):
        assert (got - want).norm() / want.norm() < 1e-10, name


def test_sample_gaussian_mean_variance_and_gradients():
    torch.manual_seed(0)
    m = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    v = torch.tensor([0.25, 4.0, 1.0], requires_grad=True)
    eps = torch.randn(200_000, 3)
    z = sample_gaussian(m, v, eps)  # (200000, 3)
    se_mean = (v.detach() / len(z)).sqrt()
    assert ((z.mean(0) - m).abs() < 4 * se_mean).all()
    assert ((z.var(0) / v - 1).abs() < 4 * math.sqrt(2 / len(z))).all()
    z.sum().backward()  # dz/dm = 1, dz/dv = eps / (2 sqrt v)
    torch.testing.assert_close(m.grad, torch.full((3,), float(len(z))))
    torch.testing.assert_close(v.grad, eps.sum(0) / (2 * v.detach().sqrt()), rtol=1e-4, atol=1e-2)


@pytest.mark.parity
def test_stacked_linear_matches_nn_linear_and_torch_func():
    torch.manual_seed(3)
    reference = nn.Linear(784, 300)
    stacked = StackedLinear(1, 784, 300, [torch.Generator().manual_seed(3)])
    torch.testing.assert_close(stacked.weight[0], reference.weight.T)  # the nn.Linear initialisation
    torch.testing.assert_close(stacked.bias[0, 0], reference.bias)
    layers = [nn.Linear(20, 30) for _ in range(3)]
    params, _ = torch.func.stack_module_state(layers)
    x = torch.randn(3, 8, 20)
    expected = torch.func.vmap(lambda p, xi: torch.func.functional_call(layers[0], p, (xi,)))(params, x)
    stacked = StackedLinear(3, 20, 30)
    with torch.no_grad():
        stacked.weight.copy_(params["weight"].transpose(1, 2))
        stacked.bias.copy_(params["bias"].unsqueeze(1))
    torch.testing.assert_close(stacked(x), expected, rtol=1e-5, atol=1e-5)


def _alone_and_stacked(dtype: torch.dtype, model_dtype: torch.dtype = torch.float32):
    """Seed 43 built alone and stacked second beside seed 42, on the same 500 random images."""
    images = torch.randint(0, 256, (500, 784), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    out = []
    for seed, seeds in ((43, 1), (42, 2)):
        config = vae.VAEConfig(seed=seed, seeds=seeds, batch_size=50)
        model, optimizer, gens = vae.build(config, cpu)
        model.to(model_dtype)  # in place: the optimiser keeps the same parameters
        out.append((model, optimizer, vae.BatchStream(images, config.batch_size, gens), gens))
    return out


@pytest.mark.parity
def test_a_seed_trains_the_same_alone_and_stacked_with_others_in_float64():
    """Five Adam steps, alone vs stacked. In float64 the kernels' summation orders differ by
    ~1e-16 relative, far below anything Adam can amplify (its update is ±lr only where a gradient
    is within rounding of zero), so the trajectories agree to 1e-10 on any CPU."""
    trained = []
    for model, optimizer, stream, gens in _alone_and_stacked(torch.float64, torch.float64):
        for _ in range(5):
            eps = vae.draw_noise(gens, 50, 10, torch.device("cpu")).double()
            vae.train_step(model, optimizer, stream.next().double(), eps, torch.float64)
        trained.append(model)
    alone, stacked = trained
    for (name, p), q in zip(stacked.named_parameters(), alone.parameters()):
        torch.testing.assert_close(p[1], q[0], rtol=1e-10, atol=1e-12, msg=name)
    assert not torch.allclose(stacked.decoder.fc3.bias[0], stacked.decoder.fc3.bias[1])


@pytest.mark.parity
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_seed_has_the_same_loss_and_gradients_alone_and_stacked(dtype):
    """One step's loss and gradients, alone vs stacked, in the training precisions. Alone and
    stacked run different matrix-product kernels (chosen per shape and per ISA), so they agree
    only up to summation order: each gradient entry is a sum of at most K = 784 products,
    whose float32 rounding differs by at most ~K u |terms| (u = 2^-24). With bf16 operands one
    product's input may round to the neighbouring bf16 value (2^-8 relative) on one path and
    not the other. The tolerances are those bounds relative to each tensor's largest entry;
    a real defect (a wrong slice, the other seed's noise) is off by O(1)."""
    grads, terms = [], []
    for model, _, stream, gens in _alone_and_stacked(dtype):
        eps = vae.draw_noise(gens, 50, 10, torch.device("cpu"))
        t, g = vae.negative_elbo_and_gradients(model, stream.next(), eps, dtype)
        terms.append(t)
        grads.append(g)
    u = 2.0**-24 if dtype == torch.float32 else 2.0**-8
    bound = (784 * u) if dtype == torch.float32 else 4 * u
    torch.testing.assert_close(terms[1][:, 1], terms[0][:, 0], rtol=bound, atol=0)
    for i, (gs, ga) in enumerate(zip(grads[1], grads[0])):
        scale = ga[0].abs().max().item()
        torch.testing.assert_close(gs[1], ga[0], rtol=0, atol=bound * scale, msg=f"gradient {i}")


def test_batch_stream_binarises_each_pixel_with_probability_intensity_over_255():
    levels = torch.tensor([0, 51, 128, 255], dtype=torch.uint8)
    images = levels[:, None].expand(4, 784).contiguous()  # one constant image per level
    stream = vae.BatchStream(images, 4, [torch.Generator().manual_seed(0)])
    ones = torch.zeros(4)
    for _ in range(50):  # 50 x 784 draws per level; each batch is the four images in a fresh order
        x = stream.next()[0]  # (4, 784)
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        ones[stream.orders[0]] += x.sum(1)
    freq = ones / (50 * 784)  # standard error <= 0.0026
    assert freq[0] == 0 and freq[3] == 1
    torch.testing.assert_close(freq, levels.float() / 255, atol=0.01, rtol=0)


def _trained_tiny_model():
    """A VAE fitted for 100 steps to 1,000 MNIST digits: far enough from its prior that the bounds differ."""
    config = vae.VAEConfig(seed=0, batch_size=100)
    model, optimizer, gens = vae.build(config, torch.device("cpu"))
    stream = vae.BatchStream(load_pixels("mnist", "train", limit=1000), 100, gens)
    for _ in range(100):
        vae.train_step(model, optimizer, stream.next(), vae.draw_noise(gens, 100, 10, torch.device("cpu")))
    return model


@pytest.fixture(scope="module")
def tiny_model_and_test():
    torch.manual_seed(0)
    return _trained_tiny_model(), load_binarised("mnist", "test", vae.TEST_BINARIZATION_SEED, limit=8)


def test_iwae_with_one_sample_is_the_elbo_in_expectation(tiny_model_and_test):
    model, x = tiny_model_and_test
    x, n = x[:5], 2000
    g = torch.Generator().manual_seed(1)
    draws = model.negative_iwae_bound(x.repeat(n, 1), 1, g)[0].view(n, 5)  # n single-sample bounds per image
    with torch.no_grad():  # the ELBO: analytic KL + reconstruction averaged over n samples
        m, v = model.encode(x)
        kl = kl_normal(m, v, torch.zeros_like(m), torch.ones_like(v))[0]  # (5,)
        z = sample_gaussian(m, v, torch.randn(n, 1, 5, 10, generator=g)).squeeze(1)  # (n, 5, 10)
        rec = -vae.log_bernoulli_with_logits(x, model.decode(z.view(1, -1, 10)).view(n, 5, 784))  # (n, 5)
    se = (draws.var(0) / n + rec.var(0) / n).sqrt()
    assert ((draws.mean(0) - (kl + rec.mean(0))).abs() < 4 * se).all()
    assert (draws.std(0) > 0.5).all()  # the single-sample bound is a noisy estimate, not a constant


def test_iwae_bound_tightens_with_k(tiny_model_and_test):
    model, x = tiny_model_and_test
    g = torch.Generator().manual_seed(2)
    # the same 8,000 decoder passes for each k: 1000 / k repeats of the 8 images keep each estimate's noise
    # below the gaps between consecutive k (at k = 500 a single repeat is noisier than the 100 -> 500 gap)
    bounds = [model.negative_iwae_bound(x.repeat(1000 // k, 1), k, g).mean().item() for k in (1, 10, 100)]
    assert bounds[0] > bounds[1] > bounds[2]
    assert bounds[0] - bounds[2] > 1.0  # nats: a real gap, not noise
    elbo = vae.evaluate_terms(model, x, [0])[0, 0].item()
    assert elbo == pytest.approx(bounds[0], abs=5.0)


def test_config_validation():
    with pytest.raises(ValueError, match="--seeds"):
        vae.VAEConfig(seeds=0)
    with pytest.raises(ValueError, match="--iw-samples"):
        vae.VAEConfig(iw_samples=-1)
    with pytest.raises(ValueError, match="--precision"):
        vae.VAEConfig(precision="fp16")
    with pytest.raises(ValueError, match="--iw-batch"):
        vae.VAEConfig(iw_batch=0)


@pytest.mark.parity
@pytest.mark.slow
def test_smoke_resume_sample_and_eval_through_the_cli(tmp_path):
    small = ["--seeds", "2", "--iterations", "20", "--batch-size", "50", "--subset", "1000", "--test-subset", "100",
             "--iw-samples", "5", "--eval-every", "10", "--log-every", "5", "--checkpoint-every", "10"]
    straight = tmp_path / "straight"
    genlab_here("run", "vae", *small, "--out", str(straight))
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "metrics/steps.jsonl", "metrics/eval.jsonl",
                 "checkpoints/last.pt", "figures/samples_seed42.png", "figures/samples_seed43.png",
                 "figures/reconstructions.png", "figures/training_curves.png", "figures/test_curves.png"):
        assert (straight / name).is_file(), name
    record = Record.read(straight)
    metrics = record.extra
    assert record.metric("negative_elbo").value == metrics["test"]["nelbo"]["mean"]
    assert record.metric("negative_elbo").n_seeds == 2 and record.metric("negative_elbo").reference.value == 98.12
    assert set(metrics["per_seed"]) == {"42", "43"}
    assert metrics["test"]["nelbo"]["mean"] == pytest.approx(
        np.mean([metrics["per_seed"][s]["kl"] + metrics["per_seed"][s]["rec"] for s in ("42", "43")]), rel=1e-6)

    resumed = tmp_path / "resumed"
    genlab_here("run", "vae", *small, "--max-steps", "10", "--out", str(resumed))
    genlab_here("run", "vae", *small, "--resume", "--out", str(resumed))
    assert (resumed / "metrics/steps.jsonl").read_text() == (straight / "metrics/steps.jsonl").read_text()
    assert Record.read(resumed).extra["per_seed"] == metrics["per_seed"]

    genlab_here("sample", str(straight), "--n", "7", "--out", str(tmp_path / "s.npy"))
    images = np.load(tmp_path / "s.npy")
    assert images.dtype == np.uint8 and images.shape == (7, 28, 28) and images.max() > 0
    out = genlab_here("eval", str(straight)).stdout
    assert json.loads(out)["per_seed"]["42"]["nelbo"] == pytest.approx(metrics["per_seed"]["42"]["nelbo"], rel=1e-6)
