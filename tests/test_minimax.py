"""SPEC §5: GDA dynamics against their closed forms, autograd, and the real CLI."""

import math
import re

import pytest
import torch

from conftest import genlab_here
from genlab.record import Record
from genlab.experiments.minimax import (METHODS, behaviour, closed_form_rate, distance, iterate, linearised_rate,
                                        observed_rate, parse_function, stationary_points)

F64 = torch.float64


def _run(name, method, start, eta_x, eta_y, iterations):
    starts = torch.tensor([start], dtype=F64)
    etas = torch.tensor([[eta_x, eta_y]], dtype=F64)
    return iterate(parse_function(name), method, starts, etas, iterations)[:, 0]  # (K+1, 2)


# ---- f1 = 4x² - 4y² -------------------------------------------------------------------

@pytest.mark.parametrize("eta", [0.01, 0.05, 0.1, 0.125, 0.2, 0.24, 0.26, 0.3])
def test_f1_gda_contraction_factor_is_one_minus_8_eta(eta):
    path = _run("f1", "simultaneous", (2.0, -1.5), eta, eta, 30)
    d = distance(path, torch.zeros(2, dtype=F64))
    factor = abs(1 - 8 * eta)
    if factor == 0:
        assert d[1:].abs().max() == 0
        return
    torch.testing.assert_close(d[1:] / d[:-1], torch.full((30,), factor, dtype=F64), rtol=1e-12, atol=0)
    assert observed_rate(d).item() == pytest.approx(factor, rel=1e-10)


def test_f1_gda_separate_steps_follow_x_and_y_maps():
    eta_x, eta_y, k = 0.07, 0.21, 25
    path = _run("f1", "simultaneous", (1.3, 0.7), eta_x, eta_y, k)
    steps = torch.arange(k + 1, dtype=F64)
    torch.testing.assert_close(path[:, 0], 1.3 * (1 - 8 * eta_x) ** steps, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(path[:, 1], 0.7 * (1 - 8 * eta_y) ** steps, rtol=1e-12, atol=1e-300)


def test_f1_convergence_region_is_exactly_open_quarter_square():
    etas = [-0.02, 0.0, 0.01, 0.1, 0.2, 0.249, 0.25, 0.251, 0.3]
    pairs = torch.tensor([(a, b) for a in etas for b in etas], dtype=F64)
    path = iterate(parse_function("f1"), "simultaneous", torch.tensor([[1.0, 1.0]], dtype=F64).expand(len(pairs), 2),
                   pairs, 400)  # (401, 81, 2)
    for axis in (0, 1):  # each coordinate contracts by exactly |1 - 8 eta|
        torch.testing.assert_close(observed_rate(path[..., axis].abs()), (1 - 8 * pairs[:, axis]).abs(),
                                   rtol=1e-9, atol=0)
    observed = behaviour(observed_rate(distance(path, torch.zeros(2, dtype=F64))), marginal=1e-3)
    inside = (pairs > 0).all(1) & (pairs < 0.25).all(1)
    assert torch.equal(observed == 0, inside)  # 0: converges
    assert torch.equal(observed == 2, (pairs < 0).any(1) | (pairs > 0.25).any(1))  # 2: diverges


def test_descent_on_both_diverges_in_y_unless_y0_is_zero():
    eta, k = 0.05, 40
    path = _run("f1", "descent", (1.0, 1e-3), eta, eta, k)
    torch.testing.assert_close(path[:, 1], 1e-3 * (1 + 8 * eta) ** torch.arange(k + 1, dtype=F64), rtol=1e-12, atol=0)
    assert path[-1, 1] > 1e2
    path0 = _run("f1", "descent", (1.0, 0.0), eta, eta, k)
    assert torch.all(path0[:, 1] == 0) and abs(path0[-1, 0]) < 1e-8


# ---- f2 = (x - 1)(y - 1) --------------------------------------------------------------

@pytest.mark.parametrize("gamma", [0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("start", [(2.0, 1.5), (-1.0, 3.0), (1.0, 0.9)])
def test_f2_gda_distance_grows_by_sqrt_one_plus_gamma_squared(gamma, start):
    k = 50
    d = distance(_run("f2", "simultaneous", start, gamma, gamma, k), torch.ones(2, dtype=F64))
    expected = d[0] * (1 + gamma**2) ** (torch.arange(k + 1, dtype=F64) / 2)
    torch.testing.assert_close(d, expected, rtol=1e-10, atol=0)


def test_f2_alternating_gda_stays_bounded():
    gamma = 0.5
    d = distance(_run("f2", "alternating", (2.0, 1.5), gamma, gamma, 5000), torch.ones(2, dtype=F64))
    assert d.max() < 2 * d[0] and d.min() > d[0] / 2  # neither escapes nor converges
    assert observed_rate(d).item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("gamma", [0.05, 0.2, 0.5])
def test_f2_extragradient_converges_at_its_closed_form_rate(gamma):
    k = 100  # x_k = 1 + u_k: keep u_k well above the float64 spacing near 1
    d = distance(_run("f2", "extragradient", (2.0, 1.5), gamma, gamma, k), torch.ones(2, dtype=F64))
    rate = math.sqrt((1 - gamma**2) ** 2 + gamma**2)
    assert rate < 1
    torch.testing.assert_close(d, d[0] * rate ** torch.arange(k + 1, dtype=F64), rtol=1e-9, atol=1e-13)


# ---- rates: autograd Jacobian vs closed forms ------------------------------------------

@pytest.mark.parametrize("name", ["f1", "f2"])
@pytest.mark.parametrize("method", METHODS)
def test_linearised_rate_matches_closed_form(name, method):
    point = torch.zeros(2, dtype=F64) if name == "f1" else torch.ones(2, dtype=F64)
    pairs = [(0.05, 0.05), (0.1, 0.3), (0.2, 0.02), (0.3, 0.3), (0.6, 0.9)]
    got = linearised_rate(parse_function(name), method, point, torch.tensor(pairs, dtype=F64))
    want = torch.tensor([closed_form_rate(name, method, a, b) for a, b in pairs], dtype=F64)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("method", ["simultaneous", "extragradient", "optimistic"])
def test_observed_rate_matches_closed_form(method):
    d = distance(_run("f2", method, (2.0, 1.5), 0.2, 0.2, 300), torch.ones(2, dtype=F64))
    assert observed_rate(d).item() == pytest.approx(closed_form_rate("f2", method, 0.2, 0.2), rel=1e-3)


# ---- stationary points ------------------------------------------------------------------

def test_stationary_points_of_f1_f2_and_an_expression():
    (p1,) = stationary_points(parse_function("f1"))
    assert (p1["x"], p1["y"], p1["type"]) == (0.0, 0.0, "saddle")
    assert p1["hessian_eigenvalues"] == pytest.approx([-8.0, 8.0])
    (p2,) = stationary_points(parse_function("f2"))
    assert (p2["x"], p2["y"], p2["type"]) == (pytest.approx(1.0), pytest.approx(1.0), "saddle")
    assert p2["hessian_eigenvalues"] == pytest.approx([-1.0, 1.0])
    # x³ - 3x + y²: (-1, 0) saddle with eigenvalues -6, 2; (1, 0) minimum with 2, 6
    left, right = stationary_points(parse_function("x**3 - 3*x + y**2"))
    assert (left["x"], left["y"], left["type"]) == (pytest.approx(-1), pytest.approx(0, abs=1e-12), "saddle")
    assert left["hessian_eigenvalues"] == pytest.approx([-6.0, 2.0])
    assert right["type"] == "local minimum" and right["hessian_eigenvalues"] == pytest.approx([2.0, 6.0])
    (top,) = stationary_points(parse_function("-(x**2) - y**2 + 1"))
    assert top["type"] == "local maximum"


# ---- safe expressions --------------------------------------------------------------------

def test_expression_is_evaluated_with_torch():
    f = parse_function("sin(x) * exp(-y**2) + sqrt(1 + x**2) / 2 + pi")
    x, y = torch.tensor([0.3, -1.2], dtype=F64), torch.tensor([0.7, 2.0], dtype=F64)
    torch.testing.assert_close(f(x, y), torch.sin(x) * torch.exp(-y**2) + torch.sqrt(1 + x**2) / 2 + math.pi)


@pytest.mark.parametrize("text, reason", [
    ("__import__('os').system('true')", "Attribute is not allowed"),
    ("__import__('os')", "unknown name '__import__'"),
    ("x.__class__", "Attribute is not allowed"),
    ("open('/etc/passwd')", "unknown name 'open'"),
    ("(lambda: 0)()", "Lambda is not allowed"),
    ("[c for c in ()]", "ListComp is not allowed"),
    ("exp(x, out=y)", "keyword is not allowed"),
    ("exp(x, y)", "only one-argument calls"),
    ("x +", "is not a Python expression"),
    ("'a' * 3", "is not a number"),
    ("9**9**9 + x", "cannot be evaluated"),
    ("3 + 4", "does not depend on x or y"),
    ("log(x - 5)", "not a finite scalar"),
    ("x if y else 0", "IfExp is not allowed"),
])
def test_bad_expressions_are_refused_with_a_reason(text, reason):
    with pytest.raises(ValueError, match=None) as err:
        parse_function(text)
    assert reason in str(err.value) and repr(text) in str(err.value)


# ---- the real CLI ------------------------------------------------------------------------

def test_cli_smoke(tmp_path):
    out = tmp_path / "run"
    genlab_here("run", "minimax", "--functions", "f1", "f2", "x**2 - y**2 + x*y", "--iterations", "30",
                "--sweep-points", "6", "--sweep-iterations", "40", "--out", str(out))
    for name in ("config.json", "env.json", "metrics.json", "summary.md", "metrics/trajectories.csv",
                 "metrics/sweep.csv"):
        assert (out / name).is_file(), name
    for label in ("f1", "f2", "custom3"):
        for kind in ("trajectories", "distance", "sweep"):
            assert (out / "figures" / f"{label}_{kind}.png").stat().st_size > 1000
    record = Record.read(out)
    metrics = record.extra["functions"]
    f2 = record.metric("rate_f2_simultaneous")  # the distance to (1, 1) grows by sqrt(1 + gamma^2) per step
    assert f2.headline and f2.reference.value == pytest.approx(math.sqrt(1.04)) and f2.verdict == "meets"
    assert metrics["f1"]["methods"]["simultaneous"]["observed_rate"] == pytest.approx(0.6)
    assert metrics["f2"]["methods"]["simultaneous"]["observed_rate"] == pytest.approx(math.sqrt(1.04), rel=1e-6)
    assert metrics["f1"]["sweep"]["agree_with_closed_form"] == 36
    assert metrics["custom3"]["target"]["type"] == "saddle"
    captions = {f.path: f.caption for f in record.figures}
    assert captions["figures/custom3_sweep.png"] == "custom3: step-size sweep: observed against predicted convergence"


def test_cli_refuses_a_bad_expression(tmp_path):
    proc = genlab_here("run", "minimax", "--functions", "open(x)", "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode != 0
    assert "unknownname'open'" in re.sub(r"[\s│╭╮╰╯─]", "", proc.stderr)  # tyro boxes and wraps the message


def test_cli_refuses_a_function_without_stationary_point(tmp_path):
    proc = genlab_here("run", "minimax", "--functions", "x + y", "--sweep-points", "0", "--out", str(tmp_path / "x"),
                       check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--functions 'x + y': no stationary point found in the search box; widen --box" in proc.stderr
