"""SPEC §4: a variational autoencoder (Kingma & Welling 2014) on binarised MNIST.

A Gaussian encoder q(z|x) = N(m(x), diag v(x)) and a Bernoulli decoder p(x|z) over the 784
pixels, both MLPs 784-300-300 with ELU, z in R^10 and the prior p(z) = N(0, I). Training
minimises the negative evidence lower bound (Kingma & Welling 2014, eq. 3)

    -ELBO(x) = KL(q(z|x) || p(z)) - E_q[log p(x|z)]   (nats per image)

with the KL in closed form (ibid., appendix B) and the reconstruction term estimated from
one reparameterised sample z = m + sqrt(v) * eps, eps ~ N(0, I) (ibid., §2.4). The test NLL
is also bounded more tightly by the importance-weighted bound of Burda et al. (2016, eq. 8).

Several seeds train together: ``--seeds N`` stacks N independent VAEs along a leading model
dimension (every weight is (N, fan_in, fan_out), every matrix product one batched GEMM).
Each model has its own initialisation, data order, binarisation and noise (its own
generators, derived from its seed), the loss is the sum of the N per-model losses, so
its gradients are the per-model gradients, and Adam is elementwise: model i follows the
trajectory it would follow alone with seed ``seed + i``.

    genlab run vae                                   # 10,000 iterations, seed 42
    genlab run vae --seeds 3 --iw-samples 1000       # the docs/results/vae.md run
    genlab run vae --iterations 20 --test-subset 200 --iw-samples 10 --out /tmp/smoke
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genlab.data import load_binarised, load_pixels
from genlab.engine import (DataConfig, GeneratorStates, Run, RunDir, compute_dtype, reopen, resolve_device,
                           seed_everything)
from genlab.errors import ConfigError
from genlab.experiments import Experiment
from genlab.record import Record
from genlab.reports import vae as report

DATASET = "mnist"
PIXELS = 28 * 28
TEST_BINARIZATION_SEED = 0
"""The test set is binarised once, with this seed, for every run and every model seed."""
VARIANCE_FLOOR = 1e-8
"""v = softplus(h) + VARIANCE_FLOOR keeps the encoder variance positive (as in the assignment)."""
IWAE_ROWS = 5000
"""Decoder rows (models x samples x images) per chunk of the IWAE bound, so that its (rows, 784)
float32 activations stay cache-sized (~16 MB; chunk sizes timed in docs/benchmarks.md, vae)."""


@dataclass
class VAEConfig(DataConfig):
    """SPEC §4 defaults."""

    iterations: int = 10000
    """Adam steps per model (one minibatch each)."""
    seeds: int = 1
    """Number of models trained together, with seeds seed, seed+1, ...; results are mean +/- standard error."""
    batch_size: int = 100
    """Training minibatch size."""
    lr: float = 1e-3
    """Adam learning rate."""
    adam_eps: float = 1e-8
    """Adam's epsilon (added to the square root of the second moment; torch's default)."""
    variance: str = "softplus"
    """Encoder variance parameterisation: softplus (v = softplus(h) + 1e-8, the assignment's) or exp
    (v = exp(h), h a log-variance, Kingma & Welling 2014)."""
    precision: str = "auto"
    """Training arithmetic: auto (the wide matrix products in bf16 where the hardware supports it), bf16 or
    fp32. The loss terms, the parameters and Adam stay float32; evaluation is always float32."""
    latent_dim: int = 10
    """Dimension of z; the prior is N(0, I)."""
    hidden_dim: int = 300
    """Width of the two hidden ELU layers of the encoder and of the decoder."""
    iw_samples: int = 1000
    """k of the importance-weighted test NLL bound (Burda et al. 2016); 0 skips it."""
    iw_test_subset: int | None = None
    """IWAE bound on the first N test images only (it costs k decoder passes per image and model)."""
    iw_batch: int | None = None
    """Test images per chunk of the IWAE bound; default: the most that keep seeds * iw_samples * images
    within IWAE_ROWS decoder rows (memory ~ 3 KB per row)."""
    eval_every: int = 1000
    """Iterations between test-set evaluations of the three terms (the test curves)."""
    log_every: int = 100
    """Iterations averaged into one training-curve point (and between NaN checks)."""
    checkpoint_every: int = 2000
    """Iterations between checkpoints (--resume continues from the last one)."""
    subset: int | None = None
    """Train on the first N training images only (quick looks and tests)."""
    test_subset: int | None = None
    """Evaluate on the first N test images only (quick looks and tests)."""

    CONTINUABLE: ClassVar[tuple[str, ...]] = DataConfig.CONTINUABLE + ("iterations", "iw_samples", "iw_batch")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(1, "iterations", "seeds", "batch_size", "latent_dim", "hidden_dim", "eval_every", "log_every",
                     "checkpoint_every", "test_subset", "iw_test_subset", "iw_batch")
        self.require(0, "iw_samples")
        self.require(0, "lr", "adam_eps", above=True)
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.variance not in ("softplus", "exp"):
            raise ConfigError(f"--variance must be softplus or exp, got {self.variance!r}")
        if self.subset is not None and self.subset < self.batch_size:
            raise ConfigError(f"--subset must be >= --batch-size ({self.batch_size}), got {self.subset}")

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


# ---------------------------------------------------------------------------------------
# Distributions (nats)
# ---------------------------------------------------------------------------------------

def sample_gaussian(m: torch.Tensor, v: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The reparameterisation trick (Kingma & Welling 2014, §2.4): z = m + sqrt(v) * eps ~ N(m, diag v).

    m, v > 0 and the standard normal noise eps broadcast to (..., D); z is differentiable in m and v.
    """
    return m + v.sqrt() * eps


def log_normal(x: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """log N(x; m, diag v), summed over the last dimension (nats); broadcasts, shape (...)."""
    return -0.5 * (math.log(2 * math.pi) + v.log() + (x - m).square() / v).sum(-1)


def kl_normal(qm: torch.Tensor, qv: torch.Tensor, pm: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
    """KL(N(qm, diag qv) || N(pm, diag pv)) in closed form, summed over the last dimension.

    KL = 1/2 sum_d [log(pv/qv) + (qv + (qm - pm)^2) / pv - 1] (Kingma & Welling 2014, app. B
    for pm = 0, pv = 1). Broadcasts; returns shape (...), nats.
    """
    return 0.5 * (pv.log() - qv.log() + (qv + (qm - pm).square()) / pv - 1).sum(-1)


def log_bernoulli_with_logits(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) = sum_j x_j log sigmoid(l_j) + (1 - x_j) log sigmoid(-l_j), over the last dim.

    x in {0, 1} (or [0, 1]) and logits broadcast to (..., 784); returns shape (...), nats.
    """
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------

class StackedLinear(nn.Module):
    """S independent ``nn.Linear(fan_in, fan_out)`` layers applied in one batched GEMM.

    weight (S, fan_in, fan_out), bias (S, 1, fan_out); input (S, B, fan_in) -> (S, B, fan_out).
    Each model's slice is initialised as ``nn.Linear`` does (U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for weight and bias) from that model's generator, so model i's values depend on its seed only.
    """

    def __init__(self, n_models: int, fan_in: int, fan_out: int, generators: list[torch.Generator] | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_models, fan_in, fan_out))
        self.bias = nn.Parameter(torch.empty(n_models, 1, fan_out))
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            for i in range(n_models):
                g = generators[i] if generators else None
                # nn.Linear draws its (fan_out, fan_in) weight, then its bias.
                self.weight[i].copy_(torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=g).T)
                self.bias[i].uniform_(-bound, bound, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class StackedMLP(nn.Module):
    """fan_in -> hidden -> ELU -> hidden -> ELU -> fan_out for S models: (S, B, fan_in) -> (S, B, fan_out)."""

    def __init__(self, n_models: int, fan_in: int, hidden: int, fan_out: int, generators=None):
        super().__init__()
        self.fc1 = StackedLinear(n_models, fan_in, hidden, generators)
        self.fc2 = StackedLinear(n_models, hidden, hidden, generators)
        self.fc3 = StackedLinear(n_models, hidden, fan_out, generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.elu(self.fc2(F.elu(self.fc1(x)))))


def variance_of(h: torch.Tensor, parameterisation: str) -> torch.Tensor:
    """The encoder variance from its raw output h (any shape): softplus(h) + VARIANCE_FLOOR or exp(h)."""
    return h.exp() if parameterisation == "exp" else F.softplus(h) + VARIANCE_FLOOR


class VAE(nn.Module):
    """S independent VAEs of SPEC §4 (S = 1 for one model): per model the encoder
    784-300-300-(10 means, 10 variances) (331,820 parameters) and the decoder 10-300-300-784
    Bernoulli logits (329,584), 661,404 in all.

    Args:
        n_models: S.
        latent_dim, hidden_dim: 10 and 300 in SPEC §4.
        generators: S CPU generators for the initialisation (None: the global RNG).
        variance: how the encoder's second output h becomes the variance v: ``"softplus"``,
            v = softplus(h) + 1e-8 (the assignment's), or ``"exp"``, v = exp(h) (h a log-variance).
    """

    def __init__(self, n_models: int = 1, latent_dim: int = 10, hidden_dim: int = 300,
                 generators: list[torch.Generator] | None = None, variance: str = "softplus"):
        super().__init__()
        self.n_models, self.latent_dim, self.variance = n_models, latent_dim, variance
        self.encoder = StackedMLP(n_models, PIXELS, hidden_dim, 2 * latent_dim, generators)
        self.decoder = StackedMLP(n_models, latent_dim, hidden_dim, PIXELS, generators)

    def _per_model(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) shared by all models -> (S, B, 784); (S, B, 784) passes through."""
        return x.expand(self.n_models, *x.shape) if x.dim() == 2 else x

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (S, B, 784) or (B, 784) in [0, 1] -> mean and variance of q(z|x), each (S, B, latent_dim)."""
        x = self._per_model(x)
        m, h = self.encoder(x).to(x.dtype).chunk(2, dim=-1)  # x's dtype (float32) under autocast too
        return m, variance_of(h, self.variance)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (S, B, latent_dim) -> Bernoulli logits of p(x|z), (S, B, 784), z's dtype under autocast too."""
        return self.decoder(z).to(z.dtype)

    def negative_elbo_bound(self, x: torch.Tensor, eps: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The negative ELBO and its two terms, each averaged over the batch (nats per image).

        nelbo = kl + rec with kl = KL(q(z|x) || N(0, I)) analytic and rec = -log p(x|z) at one
        reparameterised z ~ q(z|x) per image (Kingma & Welling 2014, eq. 10).

        Args:
            x: binary images (S, B, 784), one batch per model, or (B, 784) shared by all.
            eps: the N(0, I) noise of z, (S, B, latent_dim).

        Returns:
            (nelbo, kl, rec), float tensors of shape (S,), one value per model; the training loss is their sum.
        """
        x = self._per_model(x)
        m, v = self.encode(x)  # (S, B, z)
        z = sample_gaussian(m, v, eps)  # (S, B, z)
        logits = self.decode(z)  # (S, B, 784)
        kl = kl_normal(m, v, torch.zeros_like(m), torch.ones_like(v))  # (S, B)
        rec = -log_bernoulli_with_logits(x, logits)  # (S, B)
        kl, rec = kl.mean(-1), rec.mean(-1)
        return kl + rec, kl, rec

    @torch.no_grad()
    def negative_iwae_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The importance-weighted bound on -log p(x) (Burda et al. 2016, eq. 8), per image.

        -log p(x) <= -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x), computed with
        logsumexp. k = 1 is an unbiased estimate of the negative ELBO; the bound tightens as k grows.

        Args:
            x: binary images (B, 784), shared by all models (memory ~ 3 KB per (image, sample, model)).
            k: importance samples per image, >= 1 (ValueError otherwise).
            generator: for the noise (on x's device); None uses the global RNG.

        Returns:
            (S, B) float tensor, nats per image.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        s, b = self.n_models, x.shape[0]
        m, v = self.encode(x)  # (S, B, z)
        eps = torch.randn(s, k, b, self.latent_dim, generator=generator, device=x.device, dtype=m.dtype)
        z = sample_gaussian(m.unsqueeze(1), v.unsqueeze(1), eps)  # (S, k, B, z)
        logits = self.decode(z.view(s, k * b, -1)).view(s, k, b, PIXELS)  # (S, k, B, 784)
        log_px_z = log_bernoulli_with_logits(x, logits)  # (S, k, B)
        log_pz = log_normal(z, torch.zeros_like(z), torch.ones_like(z))  # (S, k, B)
        log_qz_x = log_normal(z, m.unsqueeze(1), v.unsqueeze(1))  # (S, k, B)
        log_w = log_px_z + log_pz - log_qz_x
        return -(torch.logsumexp(log_w, dim=1) - math.log(k))  # (S, B)


# ---------------------------------------------------------------------------------------
# The training step's loss and gradients, written out
# ---------------------------------------------------------------------------------------

def _mlp_forward(x: torch.Tensor, params: list[torch.Tensor], dtype: torch.dtype
                 ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """:class:`StackedMLP`'s forward pass with its matrix products in ``dtype``.

    x (S, B, fan_in); params (w1, b1, w2, b2, w3, b3) as in :class:`StackedLinear`.
    Returns the output (S, B, fan_out) in x's dtype and, per layer, its input and its weight
    in ``dtype`` (the backward pass needs both; each weight is cast once per step).
    """
    saved = []
    h = x
    for layer in range(3):
        w, b = params[2 * layer], params[2 * layer + 1]
        # A product with a dimension under 64 (the latent layers) stays in x's dtype (docs/benchmarks.md, vae).
        layer_dtype = dtype if min(w.shape[1:]) >= 64 else x.dtype
        h, w, b = h.to(layer_dtype), w.to(layer_dtype), b.to(layer_dtype)
        saved.append((h, w))
        h = torch.baddbmm(b, h, w)  # (S, B, fan_out)
        if layer < 2:
            h = F.elu(h)
    return h.to(x.dtype), saved


def _mlp_backward(grad_out: torch.Tensor, saved: list[tuple[torch.Tensor, torch.Tensor]], input_grad: bool
                  ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """The backward pass of :func:`_mlp_forward` for the upstream gradient grad_out (S, B, fan_out).

    For h = a W + b: dW = a^T dh, db = sum over the batch of dh, da = dh W^T; through a = ELU(h):
    dh = da * (1 if h > 0 else a + 1), computed from the saved ELU output (``elu_backward``).
    Returns the gradient of the input (None unless ``input_grad``) and the parameter gradients
    in the order (w1, b1, w2, b2, w3, b3), all in grad_out's dtype.
    """
    grads: list[torch.Tensor] = []
    out_dtype = grad_out.dtype
    g = grad_out
    for layer in (2, 1, 0):
        a, w = saved[layer]
        g = g.to(w.dtype)
        grads[:0] = [torch.bmm(a.transpose(1, 2), g).to(out_dtype), g.sum(1, keepdim=True, dtype=out_dtype)]
        if layer == 0 and not input_grad:
            return None, grads
        g = torch.bmm(g, w.transpose(1, 2))  # (S, B, fan_in)
        if layer > 0:
            g = torch.ops.aten.elu_backward(g, 1.0, 1.0, 1.0, True, a)  # a is this ELU's output
    return g.to(out_dtype), grads


@torch.no_grad()
def negative_elbo_and_gradients(model: VAE, x: torch.Tensor, eps: torch.Tensor, dtype: torch.dtype
                                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The training loss sum_i nelbo_i of the S stacked models and its gradients, with the
    backward pass written out (the training step's fast path; autograd is not involved).

    The same maths as :meth:`VAE.negative_elbo_bound` (the plain version, through autograd; tests
    check that the two agree): KL(q || N(0, I)) = 1/2 sum(v - log v + m^2 - 1) and -log p(x|z) at
    z = m + sqrt(v) eps, each averaged over the batch (Kingma & Welling 2014, eq. 10). The four wide
    matrix products run in ``dtype``; the two latent-width ones and everything else in x's dtype.
    Each weight is cast once and the cast reused in the backward pass.

    Args:
        model: the S stacked VAEs (their parameters are read, not changed).
        x: binary images (S, B, 784), float32 (or float64, with the model in float64).
        eps: the N(0, I) noise of z, (S, B, latent_dim), x's dtype.
        dtype: torch.bfloat16 or torch.float32, the wide matrix products' arithmetic.

    Returns:
        The (3, S) tensor of (nelbo, kl, rec) per model (nats per image), and the gradients of
        sum_i nelbo_i with respect to ``model.parameters()``, in that order; all in x's dtype.
    """
    params = list(model.parameters())
    batch = x.shape[1]
    out, enc_saved = _mlp_forward(x, params[:6], dtype)
    m, h = out.chunk(2, dim=-1)  # (S, B, z) each
    v = variance_of(h, model.variance)
    sd = v.sqrt()
    z = m + sd * eps  # (S, B, z)
    logits, dec_saved = _mlp_forward(z, params[6:], dtype)  # (S, B, 784)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1).mean(-1)  # (S,)
    kl = 0.5 * (v - v.log() + m.square() - 1).sum(-1).mean(-1)  # (S,)
    # Backward, for the loss sum_i mean_b (kl + rec):
    d_logits = (torch.sigmoid(logits) - x) / batch  # d rec / d logits: the Bernoulli likelihood's gradient
    dz, dec_grads = _mlp_backward(d_logits, dec_saved, input_grad=True)
    dm = dz + m / batch  # z = m + sd * eps, and d KL / d m = m
    dv = dz * eps / (2 * sd) + 0.5 * (1 - 1 / v) / batch  # d sd / d v = 1 / (2 sd), d KL / d v = (1 - 1/v) / 2
    dh = dv * (v if model.variance == "exp" else torch.sigmoid(h))  # d v / d h: exp(h), or sigmoid(h) for softplus
    _, enc_grads = _mlp_backward(torch.cat([dm, dh], dim=-1), enc_saved, input_grad=False)
    return torch.stack([kl + rec, kl, rec]), enc_grads + dec_grads


# ---------------------------------------------------------------------------------------
# Data: the training intensities, binarised per batch by BatchStream; the test set binarised once
# ---------------------------------------------------------------------------------------

def load_test(config: VAEConfig, device: torch.device) -> torch.Tensor:
    """The binarised MNIST test set (its first ``config.test_subset`` images), float32 (N, 784) in {0, 1}."""
    return load_binarised(DATASET, "test", TEST_BINARIZATION_SEED, config.data_dir, config.test_subset, device)


def model_seeds(seed: int) -> tuple[int, int, int]:
    """Three independent 63-bit seeds (initialisation, training noise, evaluation noise) of one model seed."""
    children = np.random.SeedSequence(seed).spawn(3)
    return tuple(int(c.generate_state(2, np.uint64)[0] >> np.uint64(1)) for c in children)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

def build(config: VAEConfig, device: torch.device) -> tuple[VAE, torch.optim.Optimizer, list[torch.Generator]]:
    """The stacked model, its Adam and one training-noise generator per model, from the seeds."""
    seeds = [model_seeds(s) for s in config.seed_list]
    init = [torch.Generator().manual_seed(s[0]) for s in seeds]
    model = VAE(config.seeds, config.latent_dim, config.hidden_dim, init, config.variance).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=config.adam_eps,
                                 fused=device.type in ("cpu", "cuda"))
    train_gens = [torch.Generator(device).manual_seed(s[1]) for s in seeds]
    return model, optimizer, train_gens


class BatchStream:
    """Per-model minibatches: model i reshuffles the training set each epoch with its generator
    and binarises each batch afresh: x ~ Bernoulli(i / 255) for intensity i, drawn as
    x = [u < i] with one u uniform on {0, ..., 254} per pixel from the model's generator.

    ``next()`` -> (S, B, 784) float32 in {0, 1}. Its state is the generators' (saved in the
    checkpoint) plus the position, so a resumed stream continues exactly.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, generators: list[torch.Generator]):
        self.images, self.batch_size, self.generators = images, batch_size, generators
        self.per_epoch = len(images) // batch_size  # the last partial batch is dropped
        self.orders: torch.Tensor | None = None  # (S, N) permutation of this epoch
        self.position = 0  # batches taken in this epoch

    def next(self) -> torch.Tensor:
        device = self.images.device
        if self.orders is None or self.position == self.per_epoch:
            self.orders = torch.stack([torch.randperm(len(self.images), generator=g, device=device)
                                       for g in self.generators])
            self.position = 0
        idx = self.orders[:, self.position * self.batch_size:(self.position + 1) * self.batch_size]  # (S, B)
        self.position += 1
        intensities = self.images.index_select(0, idx.reshape(-1)).view(*idx.shape, -1)  # (S, B, 784) uint8
        # u uniform on {0, ..., 254}: P(u < i) = i / 255 exactly, one uint8 comparison per pixel.
        u = torch.stack([torch.randint(0, 255, intensities.shape[1:], generator=g, device=device, dtype=torch.uint8)
                         for g in self.generators])
        return (u < intensities).float()

    def state_dict(self) -> dict:
        return {"orders": self.orders, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.orders, self.position = state["orders"], state["position"]


def draw_noise(generators: list[torch.Generator], batch_size: int, latent_dim: int,
               device: torch.device) -> torch.Tensor:
    """eps ~ N(0, I) of shape (S, B, latent_dim), model i's slice from generator i."""
    return torch.stack([torch.randn(batch_size, latent_dim, generator=g, device=device) for g in generators])


def train_step(model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One Adam step on every model: minimise sum_i nelbo_i on x (S, B, 784) with noise eps (S, B, z),
    gradients from :func:`negative_elbo_and_gradients` with the wide matrix products in ``dtype``.

    Returns the (3, S) float32 tensor of (nelbo, kl, rec) per model, nats per image.
    """
    terms, grads = negative_elbo_and_gradients(model, x, eps, dtype)
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    optimizer.step()
    return terms


@torch.no_grad()
def evaluate_terms(model: VAE, x: torch.Tensor, seeds: list[int], chunk: int = 2000) -> torch.Tensor:
    """Test (nelbo, kl, rec) per model over the images x (N, 784): (3, S) float64, nats per image.

    One reparameterised sample per image, drawn from each model's evaluation generator (so a
    model's numbers do not depend on which other models it was trained with).
    """
    gens = [torch.Generator(x.device).manual_seed(model_seeds(s)[2]) for s in seeds]
    sums = torch.zeros(3, model.n_models, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        eps = draw_noise(gens, len(xb), model.latent_dim, x.device)
        sums += torch.stack(model.negative_elbo_bound(xb, eps)).double() * len(xb)
    return sums / len(x)


@torch.no_grad()
def evaluate_iwae(model: VAE, x: torch.Tensor, k: int, seed: int, chunk: int | None = None) -> torch.Tensor:
    """Mean IWAE bound on the test NLL per model (S,) float64, nats per image, k samples per image.

    ``chunk`` images go through :meth:`VAE.negative_iwae_bound` at a time; by default as many as
    keep S * k * chunk within :data:`IWAE_ROWS` (the noise drawn depends on the chunking).
    """
    chunk = chunk or max(1, IWAE_ROWS // (model.n_models * k))
    g = torch.Generator(x.device).manual_seed(model_seeds(seed)[2] + 1)
    total = torch.zeros(model.n_models, dtype=torch.float64, device=x.device)
    with tqdm(total=len(x), unit="img", desc=f"IWAE k={k} x{model.n_models}", dynamic_ncols=True, disable=None) as bar:
        for i in range(0, len(x), chunk):
            total += model.negative_iwae_bound(x[i:i + chunk], k, g).double().sum(-1)
            bar.update(len(x[i:i + chunk]))
    return total / len(x)


def run(config: VAEConfig) -> Path:
    """Train ``config.seeds`` VAEs together, evaluate them, write the outputs; returns the run directory.

    The run's checkpoint (:class:`genlab.engine.Run`) is written every ``checkpoint_every``
    iterations, every few minutes and on Ctrl-C or SIGTERM (checked every ``log_every``
    iterations); it holds the models, Adam, the batch streams and the per-model generators.
    """
    device = resolve_device(config.device)
    with Run("vae", config, device) as run:
        seed_everything(config.seed)
        train = load_pixels(DATASET, "train", config.data_dir, config.subset, device)  # (60000, 784) uint8
        test = load_test(config, device)  # (10000, 784) {0, 1}
        model, optimizer, train_gens = build(config, device)
        stream = BatchStream(train, config.batch_size, train_gens)
        run.hold(model=model, optimizer=optimizer, stream=stream, train_generators=GeneratorStates(train_gens))
        resumed = run.resume() or {"step": 0, "train_seconds": 0.0}  # training seconds exclude the evaluations
        step, train_seconds = resumed["step"], resumed["train_seconds"]

        total = config.iterations if config.max_steps is None else min(config.iterations, config.max_steps)
        pending: list[torch.Tensor] = []

        def row(prefix: str, terms: torch.Tensor) -> dict:  # terms (3, S) -> {"step", f"{prefix}{term}_seed{s}"}
            return {"step": step, **{f"{prefix}{term}_seed{s}": v for t, term in enumerate(report.TERMS)
                                     for s, v in zip(config.seed_list, terms[t].tolist())}}

        dtype = compute_dtype(device, config.precision)
        bar = tqdm(total=total, initial=step, unit="it", desc=f"vae x{config.seeds}", dynamic_ncols=True,
                   disable=None)
        while step < total:
            start = time.perf_counter()
            chunk_end = min(total, (step // config.log_every + 1) * config.log_every)
            while step < chunk_end:
                x = stream.next()  # (S, B, 784)
                eps = draw_noise(train_gens, config.batch_size, config.latent_dim, device)  # (S, B, z)
                pending.append(train_step(model, optimizer, x, eps, dtype))
                step += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_seconds += time.perf_counter() - start
            logged = row("", torch.stack(pending).mean(0))  # means over the logged iterations
            pending.clear()
            run.log_steps([logged], check=tuple(logged))
            bar.update(chunk_end - bar.n)
            if step % config.eval_every == 0 or step == total:
                run.log_rows("eval.jsonl", [row("test_", evaluate_terms(model, test, config.seed_list))])
            if step % config.checkpoint_every == 0 or step == total:
                run.checkpoint(step, 0, {"train_seconds": train_seconds})
            run.step_done(step, 0, lambda: {"train_seconds": train_seconds})
        bar.close()
        measure_and_report(run.dir, config, model, test, device, train_seconds)
    return run.path


def measure_and_report(run_dir: RunDir, config: VAEConfig, model: VAE, test: torch.Tensor, device: torch.device,
                    train_seconds: float | None) -> dict:
    """Test metrics (three terms and the IWAE bound per seed), then the figures, metrics.json and
    summary.md of :func:`genlab.reports.vae.finish` (also used by ``genlab eval``); returns the metrics."""
    model.eval()
    terms = evaluate_terms(model, test, config.seed_list)  # (3, S)
    per_seed = {s: dict(zip(report.TERMS, terms[:, i].tolist())) for i, s in enumerate(config.seed_list)}
    iwae_seconds, n_iwae = None, 0
    if config.iw_samples > 0:
        start = time.perf_counter()
        iw_test = test[:config.iw_test_subset]
        nll = evaluate_iwae(model, iw_test, config.iw_samples, config.seed, config.iw_batch)
        iwae_seconds, n_iwae = time.perf_counter() - start, len(iw_test)
        for s, value in zip(config.seed_list, nll.tolist()):
            per_seed[s]["iwae_nll"] = value
    return report.finish(run_dir, config, model, test, device, train_seconds, per_seed, iwae_seconds, n_iwae,
                         TEST_BINARIZATION_SEED)


def _restore(run_path: Path, device: torch.device) -> tuple[VAEConfig, VAE]:
    ckpt, config = reopen(run_path, "vae", VAEConfig, device, device=str(device.type))
    model = VAE(config.seeds, config.latent_dim, config.hidden_dim, variance=config.variance).to(device)
    model.load_state_dict(ckpt["states"]["model"])
    return config, model


def evaluate(run_path: Path) -> dict:
    """``genlab eval RUN_DIR``: recompute the test metrics, figures, metrics.json and summary.md."""
    device = resolve_device("auto")
    config, model = _restore(run_path, device)
    train_seconds = Record.read(run_path).train_seconds if (Path(run_path) / "metrics.json").exists() else None
    run_dir = RunDir("vae", config, device)
    test = load_test(config, device)
    metrics = measure_and_report(run_dir, config, model, test, device, train_seconds)
    run_dir.close()
    return metrics


def sample(run_path: Path, n: int, seed: int = 0) -> np.ndarray:
    """``genlab sample``: ``n`` images from the first model of a run, z ~ N(0, I) drawn with
    ``seed``; the decoder's Bernoulli means scaled to 0..255, uint8 (n, 28, 28)."""
    device = resolve_device("auto")
    _, model = _restore(run_path, device)
    z = torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    return np.concatenate([report.bernoulli_means(model, zb) for zb in z.split(10000)])


EXPERIMENT = Experiment(
    name="vae",
    summary="SPEC §4: VAE on binarised MNIST (z in R^10, 10,000 Adam steps), test -ELBO/KL/rec and IWAE NLL",
    config=VAEConfig,
    run=run,
    evaluate=evaluate,
    sample=sample,
)
