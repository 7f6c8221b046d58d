"""SPEC §6 optimisers: step-for-step parity with torch.optim, AMSGrad against NumPy,
hyperparameter validation, state_dict round trips, convergence on a quadratic and Rosenbrock."""

import io

import numpy as np
import pytest
import torch

from genlab import optim
from genlab.optim import OPTIMIZERS, SGD, AdaGrad, Adam, AMSGrad, Momentum, RMSProp

# ---------------------------------------------------------------------------------------
# Parity with torch.optim where the rule is the same
# ---------------------------------------------------------------------------------------

PARITY = {
    "sgd": (lambda p: SGD(p, lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    "momentum": (lambda p: Momentum(p, lr=0.02, momentum=0.9),
                 lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, dampening=0)),
    "rmsprop": (lambda p: RMSProp(p, lr=0.01, decay=0.9, eps=1e-6),
                lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-6)),
    "adam": (lambda p: Adam(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6),
             lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6)),
    "adagrad": (lambda p: AdaGrad(p, lr=0.1, eps=1e-10), lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-10)),
}


def _problem(seed: int = 0):
    """A small non-convex regression in float64: parameters (W (4, 3), b (3,)) and a loss."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randn(16, generator=g, dtype=torch.float64)
    w0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    b0 = torch.randn(3, generator=g, dtype=torch.float64)

    def loss(w, b):
        return ((torch.tanh(x @ w + b).sum(1) - y) ** 2).mean() + 0.1 * (w ** 4).sum()

    return w0, b0, loss


def _trajectory(make_optimizer, steps: int = 30) -> list[torch.Tensor]:
    """Parameters after each step, in two groups (the bias at 3x the learning rate)."""
    w0, b0, loss = _problem()
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    groups = [{"params": [w]}, {"params": [b]}]
    opt = make_optimizer(groups)
    opt.param_groups[1]["lr"] *= 3
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss(w, b).backward()
        opt.step()
        out.append(torch.cat([w.detach().flatten(), b.detach()]))
    return out


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(PARITY))
def test_trajectory_equals_torch_optim_step_for_step(name):
    ours, theirs = PARITY[name]
    a, b = _trajectory(ours), _trajectory(theirs)
    assert not torch.equal(a[0], a[-1])  # the parameters move
    for t, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12, msg=f"{name}: differs at step {t + 1}")


# ---------------------------------------------------------------------------------------
# AMSGrad: the SPEC rule, and how it differs from torch's amsgrad=True
# ---------------------------------------------------------------------------------------

def _amsgrad_numpy(theta0, grads, lr, beta1, beta2, eps):
    """SPEC §6 AMSGrad written independently in NumPy; returns (thetas, steps where the max held)."""
    theta = theta0.copy()
    m1, m2, m2max = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta)
    thetas, max_active = [], 0
    for t, g in enumerate(grads, start=1):
        m1 = beta1 * m1 + (1 - beta1) * g
        m2 = beta2 * m2 + (1 - beta2) * g * g
        m1_hat = m1 / (1 - beta1 ** t)
        m2_hat = m2 / (1 - beta2 ** t)
        max_active += int(np.any(m2max > m2_hat))
        m2max = np.maximum(m2max, m2_hat)
        theta = theta - lr * m1_hat / (eps + np.sqrt(m2max))
        thetas.append(theta.copy())
    return thetas, max_active


def _feed(opt_cls, theta0, grads, **kwargs) -> list[np.ndarray]:
    p = torch.tensor(theta0, requires_grad=True)
    opt = opt_cls([p], **kwargs)
    out = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        out.append(p.detach().numpy().copy())
    return out


def _shrinking_gradients(n=40, shape=(7,), seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) * 5 * 0.85 ** t for t in range(n)]  # m̂2 falls: the max matters


def test_amsgrad_matches_independent_numpy_rule():
    theta0, grads = np.linspace(-1, 1, 7), _shrinking_gradients()
    kwargs = {"lr": 0.05, "betas": (0.9, 0.99), "eps": 1e-8}
    expected, max_active = _amsgrad_numpy(theta0, grads, kwargs["lr"], *kwargs["betas"], kwargs["eps"])
    assert max_active > 10  # the test exercises the maximum, not just Adam
    for t, (x, y) in enumerate(zip(_feed(AMSGrad, theta0, grads, **kwargs), expected)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14, err_msg=f"step {t + 1}")


def test_amsgrad_differs_from_torch_amsgrad_where_the_maximum_matters():
    theta0, grads = np.linspace(-1, 1, 7), _shrinking_gradients()
    ours = _feed(AMSGrad, theta0, grads, lr=0.05, betas=(0.9, 0.99))
    torchs = _feed(torch.optim.Adam, theta0, grads, lr=0.05, betas=(0.9, 0.99), amsgrad=True)
    assert np.abs(ours[-1] - torchs[-1]).max() > 1e-2


def test_amsgrad_second_step_closed_form_against_torch():
    # g = 1 then g = 0: m̂1 = β1/(1+β1) at t = 2. SPEC: m2max = max(1, β2/(1+β2)) = 1.
    # torch: max of the uncorrected m2 is 1 − β2, divided by 1 − β2² -> 1/(1+β2).
    lr, b1, b2 = 0.1, 0.9, 0.999
    ours = _feed(AMSGrad, np.zeros(1), [np.ones(1), np.zeros(1)], lr=lr, betas=(b1, b2), eps=0.0)
    torchs = _feed(torch.optim.Adam, np.zeros(1), [np.ones(1), np.zeros(1)], lr=lr, betas=(b1, b2), eps=0.0,
                   amsgrad=True)
    np.testing.assert_allclose(ours[0], [-lr])  # first step of every Adam variant: −γ sign(g)
    np.testing.assert_allclose(ours[1] - ours[0], [-lr * b1 / (1 + b1)], rtol=1e-12)
    np.testing.assert_allclose(torchs[1] - torchs[0], [-lr * b1 / (1 + b1) * np.sqrt(1 + b2)], rtol=1e-12)


def test_amsgrad_equals_adam_and_torch_amsgrad_when_second_moment_grows():
    theta0 = np.linspace(-1, 1, 5)
    grads = [np.full(5, 0.1 * (t + 1)) * np.array([1, -1, 1, -1, 1]) for t in range(25)]  # |g| increasing
    ours = _feed(AMSGrad, theta0, grads, lr=0.01)
    adam = _feed(Adam, theta0, grads, lr=0.01)
    torchs = _feed(torch.optim.Adam, theta0, grads, lr=0.01, amsgrad=True)
    np.testing.assert_allclose(ours[-1], adam[-1], rtol=1e-12)
    np.testing.assert_allclose(ours[-1], torchs[-1], rtol=1e-10)


# ---------------------------------------------------------------------------------------
# Validation and state
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda p: SGD(p, lr=-0.1), "learning rate"),
    (lambda p: SGD(p, lr=float("nan")), "learning rate"),
    (lambda p: Momentum(p, lr=0.1, momentum=1.0), "momentum"),
    (lambda p: Momentum(p, lr=0.1, momentum=-0.5), "momentum"),
    (lambda p: RMSProp(p, decay=1.5), "decay"),
    (lambda p: RMSProp(p, eps=-1e-8), "eps"),
    (lambda p: Adam(p, betas=(0.9, 1.0)), "beta2"),
    (lambda p: AMSGrad(p, betas=(-0.1, 0.999)), "beta1"),
    (lambda p: Adam(p, betas=(0.9,)), "pair"),
    (lambda p: AdaGrad(p, lr=float("inf")), "learning rate"),
])
def test_hyperparameters_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.zeros(2, requires_grad=True)])


def test_sparse_gradients_are_refused():
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,), check_invariants=True)
    with pytest.raises(RuntimeError, match="sparse"):
        Adam([p]).step()


@pytest.mark.parity
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip_continues_identically(name):
    cls = OPTIMIZERS[name]
    w0, b0, loss = _problem(seed=2)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = cls([w, b], lr=0.01)

    def step(opt, w, b):
        opt.zero_grad()
        loss(w, b).backward()
        opt.step()

    for _ in range(5):
        step(opt, w, b)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    w2, b2 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    opt2 = cls([w2, b2], lr=0.5)  # the loaded state restores lr 0.01 as well
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.state[w2]["step"] == 5
    assert set(opt2.state[w2]) == set(opt.state[w])
    for _ in range(5):
        step(opt, w, b)
        step(opt2, w2, b2)
    assert torch.equal(w, w2) and torch.equal(b, b2)


@pytest.mark.parity
def test_stacked_parameter_updates_like_separate_ones():
    """Elementwise rules: a (3, 4) parameter stepped once equals three (4,) parameters."""
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(3, 4, generator=g) for _ in range(6)]
    for cls in OPTIMIZERS.values():
        stacked = torch.zeros(3, 4, requires_grad=True)
        rows = [torch.zeros(4, requires_grad=True) for _ in range(3)]
        opt_s, opt_r = cls([stacked], lr=0.1), cls(rows, lr=0.1)
        for grad in grads:
            stacked.grad = grad.clone()
            for i, row in enumerate(rows):
                row.grad = grad[i].clone()
            opt_s.step()
            opt_r.step()
        assert torch.equal(stacked.detach(), torch.stack([r.detach() for r in rows])), cls.__name__


# ---------------------------------------------------------------------------------------
# Convergence (float64, analytic gradients)
# ---------------------------------------------------------------------------------------

_A = torch.tensor([1.0, 10.0], dtype=torch.float64)


def _quadratic_grad(p):  # f = ½ Σ a_i p_i², minimum 0 at the origin, condition number 10
    return _A * p


def _rosenbrock_grad(p):  # f = (1 − x)² + 100 (y − x²)², minimum 0 at (1, 1)
    x, y = p[0], p[1]
    return torch.stack([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


def _steps_to_reach(opt, p, grad_fn, target, tol, budget):
    for i in range(budget):
        p.grad = grad_fn(p.detach())
        opt.step()
        if (p.detach() - target).norm() < tol:
            return i + 1
    return None


# name: (quadratic lr, Rosenbrock lr, Rosenbrock step budget); measured needs are about 2/3 of the budget.
CONVERGENCE = {
    "sgd": (0.1, 1e-3, 15000),
    "momentum": (0.02, 1e-3, 1500),
    "rmsprop": (1e-2, 1e-3, 9000),
    "amsgrad": (0.1, 0.3, 7000),
    "adam": (0.1, 0.1, 1500),
    "adagrad": (0.5, 0.3, 10000),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_converges_on_quadratic_and_rosenbrock(name):
    cls = OPTIMIZERS[name]
    lr_q, lr_r, budget = CONVERGENCE[name]
    p = torch.tensor([1.5, -2.0], dtype=torch.float64, requires_grad=True)
    assert _steps_to_reach(cls([p], lr=lr_q), p, _quadratic_grad, torch.zeros(2, dtype=torch.float64),
                           1e-3, 1000) is not None, f"{name}: quadratic"
    p = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)  # the classic start
    steps = _steps_to_reach(cls([p], lr=lr_r), p, _rosenbrock_grad, torch.ones(2, dtype=torch.float64),
                            1e-2, budget)
    assert steps is not None, f"{name}: Rosenbrock not within 1e-2 of (1, 1) after {budget} steps: {p.tolist()}"


def test_module_exports():
    assert set(optim.__all__) >= {"SGD", "Momentum", "RMSProp", "AMSGrad", "Adam", "AdaGrad"}
    assert list(OPTIMIZERS) == ["sgd", "momentum", "rmsprop", "amsgrad", "adam", "adagrad"]
