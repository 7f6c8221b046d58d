"""SPEC §5: gradient descent-ascent dynamics on min_x max_y f(x, y).

Five first-order methods for the saddle-point problem min_x max_y f(x, y), written with the
GDA vector field F(z) = (∂f/∂x, -∂f/∂y) and a diagonal step D = diag(eta_x, eta_y):

- simultaneous GDA:  z_{k+1} = z_k - D F(z_k)
- alternating GDA:   x_{k+1} = x_k - eta_x ∂f/∂x(x_k, y_k);  y_{k+1} = y_k + eta_y ∂f/∂y(x_{k+1}, y_k)
- descent on both:   z_{k+1} = z_k - D ∇f(z_k)          (what plain gradient descent would do)
- extragradient:     z_{k+1/2} = z_k - D F(z_k);  z_{k+1} = z_k - D F(z_{k+1/2})   (Korpelevich 1976)
- optimistic GDA:    z_{k+1} = z_k - D (2 F(z_k) - F(z_{k-1}))  (Popov 1980; Daskalakis et al. 2018)

Near a stationary point z* every method is a linear map of the error (z_k - z*, z_{k-1} - z*)
up to higher-order terms; its Jacobian M (by autograd, :func:`linearised_rate`) has spectral
radius rho, and the distance to z* behaves like rho^k. For the two quadratics of the
assignment the rates are known in closed form (:func:`closed_form_rate`):

- f1(x, y) = 4x² - 4y², saddle (0, 0): GDA gives x ← (1 - 8 eta_x) x, y ← (1 - 8 eta_y) y and
  converges iff 0 < eta_x, eta_y < 1/4; descent on both gives y ← (1 + 8 eta_y) y.
- f2(x, y) = (x - 1)(y - 1), saddle (1, 1), Hessian eigenvalues ±1: with g = sqrt(eta_x eta_y)
  simultaneous GDA grows the distance to (1, 1) by sqrt(1 + g²) per step (exactly, when
  eta_x = eta_y), alternating GDA has |eigenvalues| = 1 (bounded orbits, g < 2) and
  extragradient contracts by sqrt((1 - g²)² + g²).

Any other smooth f can be given as a Python expression in x and y (``--functions
"x**3 - 3*x + y**2"``); it is parsed and evaluated with torch functions only, see
:func:`parse_function`. It reads no data and has no epochs; ``--max-steps`` caps
``--iterations`` and ``--sweep-iterations``.

    genlab run minimax                                   # f1 and f2, all five methods
    genlab run minimax --functions f1 --eta-x 0.1 --eta-y 0.2
    genlab run minimax --functions "x**3 - 3*x + y**2" --x0 -0.5 --y0 0.5
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import grad, hessian, jacrev, vmap

from genlab.engine import RunConfig
from genlab.errors import ConfigError
from genlab.experiments import one_shot
from genlab.record import Record
from genlab.reports import minimax as report
from genlab.tables import write_csv

FUNCTIONS = {"f1": "4*x**2 - 4*y**2", "f2": "(x - 1)*(y - 1)"}
"""The assignment's two functions (SPEC §5), by name."""
DEFAULT_ETA = {"f1": 0.05, "f2": 0.2}
"""Step sizes used when --eta-x/--eta-y are not given (0.05 for an expression)."""
METHODS = ("simultaneous", "alternating", "descent", "extragradient", "optimistic")
BEHAVIOURS = ("converges", "marginal", "diverges")

# The names an expression may use: torch functions only, no builtins, no attributes.
SAFE_NAMESPACE: dict[str, object] = {
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "exp": torch.exp, "log": torch.log,
    "sqrt": torch.sqrt, "tanh": torch.tanh, "sinh": torch.sinh, "cosh": torch.cosh, "atan": torch.atan,
    "arctan": torch.atan, "abs": torch.abs, "sigmoid": torch.sigmoid, "log1p": torch.log1p,
    "expm1": torch.expm1, "softplus": torch.nn.functional.softplus, "square": torch.square,
    "pi": math.pi, "e": math.e,
}
_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Constant, ast.Load,
                  ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd)


@dataclass
class MinimaxConfig(RunConfig):
    """SPEC §5 defaults: f1 and f2, all five methods, 200 iterations from (2, 1.5)."""

    functions: tuple[str, ...] = ("f1", "f2")
    """f1 (4x²-4y²), f2 ((x-1)(y-1)) or any smooth f(x, y) as a Python expression in x and y
    using + - * / ** and sin cos tan exp log sqrt tanh sinh cosh atan abs sigmoid log1p expm1
    softplus square pi e (quote it; start it with a space or a parenthesis if it begins with -)."""
    methods: tuple[str, ...] = METHODS
    """Methods to run: simultaneous, alternating, descent, extragradient, optimistic."""
    eta_x: float | None = None
    """Step size of the descent variable x (default: 0.05 for f1 and expressions, 0.2 for f2)."""
    eta_y: float | None = None
    """Step size of the ascent variable y (default: as eta_x)."""
    x0: float = 2.0
    """Starting x."""
    y0: float = 1.5
    """Starting y."""
    iterations: int = 200
    """Iterations per method (capped by --max-steps)."""
    sweep_method: str = "simultaneous"
    """Method of the step-size sweep."""
    sweep_max: float = 0.35
    """The sweep grid is eta_x, eta_y in sweep_max * (1..sweep_points) / sweep_points."""
    sweep_points: int = 35
    """Grid points per axis of the step-size sweep (0 skips the sweep)."""
    sweep_iterations: int = 1000
    """Iterations per sweep point (long, so that slowly rotating iterates show their trend)."""
    box: float = 4.0
    """Stationary points are searched for by Newton's method in [-box, box]²."""
    marginal: float = 1e-3
    """Rates within this of 1 are 'marginal' (bounded or too slow to call either way in the run)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.functions:
            raise ConfigError("--functions needs at least one function")
        for name in self.functions:
            parse_function(name)  # a bad expression fails here, with its reason
        for method in (*self.methods, self.sweep_method):
            if method not in METHODS:
                raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        self.require(2, "iterations", "sweep_iterations")
        self.require(0, "sweep_points")
        self.require(0, "sweep_max", "box", above=True)
        if not 0 <= self.marginal < 1:
            raise ConfigError(f"--marginal must be in [0, 1), got {self.marginal}")


class _FloatConstants(ast.NodeTransformer):
    """Integer literals become floats, so that 9**9**9 overflows at once instead of building
    a huge Python integer."""

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"the constant {node.value!r} is not a number")
        return ast.copy_location(ast.Constant(float(node.value)), node)


def parse_function(text: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """f(x, y) from ``"f1"``, ``"f2"`` or a Python expression in x and y.

    The expression is parsed with :mod:`ast` and accepted only if every node is a number, the
    names x and y, a name of :data:`SAFE_NAMESPACE` (torch functions, pi, e), a call of one of
    those functions, or + - * / ** (unary + -). Attributes, subscripts, keywords, lambdas,
    comprehensions and every other name are refused; it is evaluated with no builtins. It is
    then tried at (0.3, 0.7) and must give a finite scalar tensor that depends on x or y.

    Returns: f taking two float tensors of the same shape, returning that shape (elementwise).
    Raises:
        ConfigError (a GenlabError and a ValueError): naming the expression and what is wrong with it.
    """
    source = FUNCTIONS.get(text, text)
    where = f"--functions {text!r}"
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"{where} is not a Python expression: {err.msg}") from None
    names = ", ".join(sorted(SAFE_NAMESPACE))
    nodes = list(ast.walk(tree))
    for node in nodes:  # (1) only arithmetic, names and calls
        if not isinstance(node, _ALLOWED_NODES):
            raise ConfigError(f"{where}: {type(node).__name__} is not allowed; use x, y, numbers, + - * / ** "
                              f"and {names}")
    for node in nodes:  # (2) only known names
        if isinstance(node, ast.Name) and node.id not in {"x", "y", *SAFE_NAMESPACE}:
            raise ConfigError(f"{where}: unknown name {node.id!r}; allowed: x, y, {names}")
    for node in nodes:  # (3) calls of a safe function by name, one positional argument
        if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name) or node.keywords or len(node.args) != 1
                                           or not callable(SAFE_NAMESPACE.get(node.func.id))):
            raise ConfigError(f"{where}: only one-argument calls of "
                              f"{', '.join(k for k, v in SAFE_NAMESPACE.items() if callable(v))} are allowed")
    try:
        tree = ast.fix_missing_locations(_FloatConstants().visit(tree))
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    code = compile(tree, "<genlab minimax function>", "eval")

    def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return eval(code, {"__builtins__": {}}, {**SAFE_NAMESPACE, "x": x, "y": y})  # noqa: S307 (checked above)

    try:
        value = f(torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))
    except (ArithmeticError, TypeError, RuntimeError) as err:
        raise ConfigError(f"{where} cannot be evaluated: {type(err).__name__}: {err}") from None
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{where} does not depend on x or y")
    if value.shape != () or not torch.isfinite(value):
        raise ConfigError(f"{where} is not a finite scalar at (0.3, 0.7): {value}")
    return f


def scalar_field(f: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    """f as a function of one point z (2,) -> scalar, for torch.func."""
    return lambda z: f(z[0], z[1])


def classify(eigenvalues: torch.Tensor, tol: float = 1e-8) -> str:
    """The type of a stationary point from its Hessian's eigenvalues (2,)."""
    lo, hi = sorted(eigenvalues.tolist())
    if lo > tol:
        return "local minimum"
    if hi < -tol:
        return "local maximum"
    if lo < -tol and hi > tol:
        return "saddle"
    return "degenerate"


def stationary_points(f: Callable, box: float = 4.0, grid: int = 9, newton_steps: int = 60) -> list[dict]:
    """Stationary points of f in [-box, box]² by Newton's method from a grid of starts.

    Newton's iteration z ← z - H(z)⁺ ∇f(z) (pseudo-inverse of the Hessian, both by autograd,
    float64) runs from grid x grid starts; points with |∇f| < 1e-9 inside the box are kept,
    duplicates (within 1e-6) merged.

    Returns: dicts with x, y, gradient_norm, hessian (2x2 list), hessian_eigenvalues
    (ascending) and type (:func:`classify`), sorted by (x, y).
    """
    phi = scalar_field(f)
    g, h = vmap(grad(phi)), vmap(hessian(phi))
    axis = torch.linspace(-box, box, grid, dtype=torch.float64)
    z = torch.cartesian_prod(axis, axis)  # (grid², 2)
    with torch.no_grad():
        for _ in range(newton_steps):
            step = (torch.linalg.pinv(h(z)) @ g(z).unsqueeze(-1)).squeeze(-1)  # (grid², 2)
            z = torch.where(torch.isfinite(step), z - step, torch.full_like(z, float("nan")))
            gradient_norm = g(z).norm(dim=1)
            if not (gradient_norm > 1e-13).any():  # every start has converged or failed (nan)
                break
    keep = torch.isfinite(gradient_norm) & (gradient_norm < 1e-9) & (z.abs() <= box + 1e-9).all(dim=1)
    points: list[dict] = []
    for point in z[keep]:
        if any(abs(point[0] - p["x"]) < 1e-6 and abs(point[1] - p["y"]) < 1e-6 for p in points):
            continue
        hess = hessian(phi)(point)
        eig = torch.linalg.eigvalsh(hess)
        points.append({"x": point[0].item(), "y": point[1].item(), "gradient_norm": grad(phi)(point).norm().item(),
                       "hessian": hess.tolist(), "hessian_eigenvalues": eig.tolist(), "type": classify(eig)})
    return sorted(points, key=lambda p: (p["x"], p["y"]))


def target_point(points: list[dict], start: tuple[float, float], where: str) -> dict:
    """The saddle nearest to ``start`` (any stationary point if there is no saddle).

    Raises:
        ConfigError: no stationary point at all (distances need one).
    """
    if not points:
        raise ConfigError(f"{where}: no stationary point found in the search box; widen --box")
    saddles = [p for p in points if p["type"] == "saddle"] or points
    return min(saddles, key=lambda p: math.hypot(p["x"] - start[0], p["y"] - start[1]))


def make_step(f: Callable, method: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One iteration of ``method`` on f: (state (4,), eta (2,) = (eta_x, eta_y)) -> state (4,).

    The state carries the previous point for optimistic GDA; the other methods ignore it.
    Pure torch, so it composes with torch.func (vmap over starts or step sizes, jacrev).
    """
    gradient = grad(scalar_field(f))  # z (2,) -> ∇f (2,)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)  # F = sign * ∇f: descend x, ascend y

    def field(z: torch.Tensor) -> torch.Tensor:
        return sign * gradient(z)

    def step(state: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        z, z_prev = state[:2], state[2:]
        if method == "simultaneous":
            z_next = z - eta * field(z)
        elif method == "alternating":
            x_next = z[0] - eta[0] * gradient(z)[0]
            y_next = z[1] + eta[1] * gradient(torch.stack([x_next, z[1]]))[1]
            z_next = torch.stack([x_next, y_next])
        elif method == "descent":
            z_next = z - eta * gradient(z)
        elif method == "extragradient":
            z_half = z - eta * field(z)
            z_next = z - eta * field(z_half)
        elif method == "optimistic":
            z_next = z - eta * (2 * field(z) - field(z_prev))
        else:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        return torch.cat([z_next, z])

    return step


def iterate(f: Callable, method: str, starts: torch.Tensor, etas: torch.Tensor, iterations: int) -> torch.Tensor:
    """Run ``method`` from B starts with B step-size pairs.

    Args:
        starts: float64 (B, 2) starting points (z_{-1} = z_0 for optimistic GDA).
        etas: float64 (B, 2) step sizes (eta_x, eta_y).
    Returns:
        float64 (iterations + 1, B, 2): the iterates z_0 .. z_iterations.
    """
    step = vmap(make_step(f, method))
    state = torch.cat([starts, starts], dim=1)  # (B, 4)
    path = [starts]
    with torch.no_grad():
        for _ in range(iterations):
            state = step(state, etas)
            path.append(state[:, :2])
    return torch.stack(path)


def distance(path: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Euclidean distance (...,) of points (..., 2) to ``point`` (2,); hypot, so no underflow
    to 0 while the coordinates are still normal floats (1e-184² would be)."""
    error = path - point
    return torch.hypot(error[..., 0], error[..., 1])


def observed_rate(distances: torch.Tensor, floor: float = 1e-250, ceiling: float = 1e250) -> torch.Tensor:
    """Contraction (< 1) or growth (> 1) factor per step, observed over the second half of a run.

    exp of the least-squares slope of log d_k against k for k = K'//2 .. K', so that the
    oscillation of a rotating iterate averages out. K' is the last iteration before the
    distance left [floor, ceiling] (float64 underflow or overflow), K' = K if it never did.

    Args: distances (K + 1, ...) to the stationary point, K >= 2.
    Returns: float64 (...): the rate; 0 where the distance fell below ``floor`` within two steps.
    """
    inside = (distances >= floor) & (distances <= ceiling)  # nan is outside
    last = inside.long().cumprod(0).sum(0) - 1  # (...): K', -1 if d_0 is outside
    k = torch.arange(distances.shape[0], dtype=distances.dtype).reshape(-1, *[1] * (distances.dim() - 1))
    weight = ((k >= (last // 2)) & (k <= last)).to(distances.dtype)  # the window, per column
    n = weight.sum(0).clamp(min=1)
    log_d = torch.where(weight > 0, distances.clamp(min=floor, max=ceiling).log(), torch.zeros_like(distances))
    k_mean = (weight * k).sum(0) / n
    log_mean = (weight * log_d).sum(0) / n
    slope = (weight * (k - k_mean) * (log_d - log_mean)).sum(0) / (weight * (k - k_mean) ** 2).sum(0).clamp(min=1e-300)
    rate = slope.exp()
    return torch.where(last < 2, torch.zeros_like(rate), rate)


def behaviour(rate: torch.Tensor | float, marginal: float) -> torch.Tensor:
    """0 converges (rate < 1 - marginal), 1 marginal, 2 diverges (rate > 1 + marginal): an int64
    tensor indexing :data:`BEHAVIOURS`."""
    rate = torch.as_tensor(rate, dtype=torch.float64)
    return (rate >= 1 - marginal).long() + (rate > 1 + marginal).long()


def behaviour_name(rate: torch.Tensor | float, marginal: float) -> str:
    """The :data:`BEHAVIOURS` entry of a scalar ``rate``: converges, marginal or diverges (:func:`behaviour`)."""
    return BEHAVIOURS[behaviour(rate, marginal)]


def linearised_rate(f: Callable, method: str, point: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """Spectral radius of the Jacobian (autograd, 4x4) of one iteration at the fixed point.

    Args: point (2,) a stationary point; eta (..., 2) step sizes (batched by vmap).
    Returns: rho (...) float64: the asymptotic contraction (< 1) or growth (> 1) per step of
    the distance to ``point``; exact for quadratic f.
    """
    step = make_step(f, method)
    state = torch.cat([point, point])

    def rho(e: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(jacrev(step)(state, e)).abs().max()

    return vmap(rho)(eta.reshape(-1, 2)).reshape(eta.shape[:-1])


def closed_form_rate(name: str, method: str, eta_x: float, eta_y: float) -> float | None:
    """The analytic spectral radius per step for f1 and f2 (None for other functions).

    f1 = 4x² - 4y² decouples into x ← m(a) x and y ← m(-b) y with a = 8 eta_x, b = 8 eta_y;
    f2 = (x-1)(y-1) is a rotation in the error (u, v) = (x-1, y-1) with g = sqrt(eta_x eta_y).
    Optimistic GDA has two roots per mode: those of its characteristic polynomial.
    """
    a, b = 8 * eta_x, 8 * eta_y
    g2 = eta_x * eta_y
    g = math.sqrt(max(g2, 0.0))

    def roots_radius(coefficients: list[complex]) -> float:
        return float(np.abs(np.roots(coefficients)).max())

    if name == "f1":
        return {
            "simultaneous": max(abs(1 - a), abs(1 - b)),
            "alternating": max(abs(1 - a), abs(1 - b)),
            "descent": max(abs(1 - a), abs(1 + b)),
            "extragradient": max(abs(1 - a + a * a), abs(1 - b + b * b)),
            # x_{k+1} = (1 - 2c) x_k + c x_{k-1}: λ² - (1 - 2c) λ - c = 0
            "optimistic": max(roots_radius([1, -(1 - 2 * c), -c]) for c in (a, b)),
        }[method]
    if name == "f2" and eta_x >= 0 and eta_y >= 0:
        trace = 2 - g2  # alternating: M = [[1, -eta_x], [eta_y, 1 - eta_x eta_y]], det 1
        return {
            "simultaneous": math.sqrt(1 + g2),
            "alternating": 1.0 if abs(trace) <= 2 else (abs(trace) + math.sqrt(trace * trace - 4)) / 2,
            "descent": 1 + g,
            "extragradient": math.sqrt((1 - g2) ** 2 + g2),
            # w = u + i v (rescaled): w_{k+1} = (1 + 2ig) w_k - ig w_{k-1}
            "optimistic": roots_radius([1, -(1 + 2j * g), 1j * g]),
        }[method]
    return None


def sweep(f: Callable, method: str, point: torch.Tensor, start: torch.Tensor, etas: torch.Tensor,
          iterations: int) -> dict[str, torch.Tensor]:
    """Observed and linearised rates over the grid etas × etas (eta_x along columns).

    Returns float64 (n, n) tensors ``observed`` and ``predicted`` indexed [i_y, i_x] and the
    grid ``eta_x``, ``eta_y`` (n, n).
    """
    eta_y, eta_x = torch.meshgrid(etas, etas, indexing="ij")  # (n, n)
    pairs = torch.stack([eta_x, eta_y], dim=-1).reshape(-1, 2)  # (n², 2)
    path = iterate(f, method, start.expand(len(pairs), 2), pairs, iterations)  # (K+1, n², 2)
    observed = observed_rate(distance(path, point)).reshape(eta_x.shape)
    predicted = linearised_rate(f, method, point, pairs).reshape(eta_x.shape)
    return {"eta_x": eta_x, "eta_y": eta_y, "observed": observed, "predicted": predicted}


def run_methods(f: Callable, name: str, label: str, config: MinimaxConfig, out: Path, trajectory_rows: list
                ) -> dict:
    """Every method on one function (``label`` names its files and rows): the rates, the
    trajectory rows and the trajectory and distance figures; returns its metrics."""
    expression = FUNCTIONS.get(name, name)
    eta_x = config.eta_x if config.eta_x is not None else DEFAULT_ETA.get(name, 0.05)
    eta_y = config.eta_y if config.eta_y is not None else eta_x
    iterations = min(config.iterations, config.max_steps or config.iterations)
    points = stationary_points(f, config.box)
    target = target_point(points, (config.x0, config.y0), f"--functions {name!r}")
    point = torch.tensor([target["x"], target["y"]], dtype=torch.float64)
    start = torch.tensor([[config.x0, config.y0]], dtype=torch.float64)
    eta = torch.tensor([[eta_x, eta_y]], dtype=torch.float64)
    methods, paths, distances, rates = {}, {}, {}, {}
    for method in config.methods:
        path = iterate(f, method, start, eta, iterations)[:, 0]  # (K+1, 2)
        dist = distance(path, point)  # (K+1,)
        with torch.no_grad():
            values = f(path[:, 0], path[:, 1])
        linear = linearised_rate(f, method, point, eta)[0].item()
        closed = closed_form_rate(name, method, eta_x, eta_y)
        rates[method] = closed if closed is not None else linear
        observed = observed_rate(dist).item()
        methods[method] = {
            "observed_rate": observed, "linearised_rate": linear, "closed_form_rate": closed,
            "initial_distance": dist[0].item(), "final_distance": dist[-1].item(), "max_distance": dist.max().item(),
            "observed": behaviour_name(observed, config.marginal),
            "predicted": behaviour_name(rates[method], config.marginal),
        }
        paths[method], distances[method] = path.numpy(), dist.numpy()
        trajectory_rows += [{"function": label, "method": method, "k": k, "x": x, "y": y, "distance": d, "f": v}
                            for k, ((x, y), d, v) in enumerate(zip(path.tolist(), dist.tolist(), values.tolist()))]
    steps = f"eta_x = {eta_x:g}, eta_y = {eta_y:g}"
    report.plot_trajectories(f, f"{label}: f = {expression}; {steps}", paths, target, out / f"{label}_trajectories.png")
    report.plot_distances(f"{label}: distance to ({target['x']:.3g}, {target['y']:.3g}); dashed: "
                          + ("closed-form" if name in FUNCTIONS else "linearised") + " rate", distances, rates,
                          out / f"{label}_distance.png")
    return {"expression": expression, "eta_x": eta_x, "eta_y": eta_y, "start": [config.x0, config.y0],
            "marginal": config.marginal, "iterations": iterations, "stationary_points": points, "target": target,
            "methods": methods}


def run_sweep(f: Callable, name: str, label: str, config: MinimaxConfig, target: dict, out: Path, sweep_rows: list
              ) -> dict:
    """The step-size sweep of ``config.sweep_method`` on one function towards ``target``: its
    rows, its figure and its summary (behaviour counts, agreement, the diagonal)."""
    point = torch.tensor([target["x"], target["y"]], dtype=torch.float64)
    start = torch.tensor([config.x0, config.y0], dtype=torch.float64)
    etas = config.sweep_max * torch.arange(1, config.sweep_points + 1, dtype=torch.float64) / config.sweep_points
    iterations = min(config.sweep_iterations, config.max_steps or config.sweep_iterations)
    grid = sweep(f, config.sweep_method, point, start, etas, iterations)
    observed_class = behaviour(grid["observed"], config.marginal)
    predicted_class = behaviour(grid["predicted"], config.marginal)
    n = len(etas)
    eta_x, eta_y = grid["eta_x"].flatten().tolist(), grid["eta_y"].flatten().tolist()
    closed_class = None
    if name in FUNCTIONS:
        closed = torch.tensor([closed_form_rate(name, config.sweep_method, ex, ey) for ex, ey in zip(eta_x, eta_y)])
        closed_class = behaviour(closed.reshape(n, n), config.marginal)
    columns = zip(eta_x, eta_y, grid["observed"].flatten().tolist(), grid["predicted"].flatten().tolist(),
                  observed_class.flatten().tolist(), predicted_class.flatten().tolist())
    sweep_rows += [{"function": label, "method": config.sweep_method, "eta_x": ex, "eta_y": ey, "observed_rate": rate,
                    "linearised_rate": linear, "observed": BEHAVIOURS[seen], "predicted": BEHAVIOURS[predicted]}
                   for ex, ey, rate, linear, seen, predicted in columns]
    report.plot_sweep(f"{label}: {config.sweep_method}, {iterations} iterations from ({config.x0:g}, {config.y0:g})",
                      grid, name, observed_class != predicted_class, out / f"{label}_sweep.png")
    return {
        "method": config.sweep_method, "grid": [n, n], "eta_max": config.sweep_max, "iterations": iterations,
        "observed": {b: int((observed_class == i).sum()) for i, b in enumerate(BEHAVIOURS)},
        "predicted": {b: int((predicted_class == i).sum()) for i, b in enumerate(BEHAVIOURS)},
        "agree": int((observed_class == predicted_class).sum()), "points": n**2,
        "closed_form_region": ("0 < eta_x, eta_y < 1/4" if name == "f1" and config.sweep_method in
                               ("simultaneous", "alternating") else None),
        "agree_with_closed_form": int((observed_class == closed_class).sum()) if closed_class is not None else None,
        "diagonal": [{"eta": etas[i].item(), "observed_rate": grid["observed"][i, i].item(),
                      "linearised_rate": grid["predicted"][i, i].item()} for i in range(n)],
    }


def labels(config: MinimaxConfig) -> list[str]:
    """The label of each function in file names, rows and metrics: f1, f2 by name, customN for an
    expression in the N-th place of --functions."""
    return [name if name in FUNCTIONS else f"custom{i + 1}" for i, name in enumerate(config.functions)]


def compute(config: MinimaxConfig, out: Path) -> Record:
    """Every method, then the sweep, on every function, their tables under ``out / "metrics"``
    and figures under ``out / "figures"``; returns the record (see the module docstring)."""
    results, trajectory_rows, sweep_rows = {}, [], []
    for name, label in zip(config.functions, labels(config)):
        f = parse_function(name)
        results[label] = run_methods(f, name, label, config, out / "figures", trajectory_rows)
        if config.sweep_points > 0:
            results[label]["sweep"] = run_sweep(f, name, label, config, results[label]["target"], out / "figures",
                                                sweep_rows)
    write_csv(out / "metrics" / "trajectories.csv", trajectory_rows)
    if sweep_rows:
        write_csv(out / "metrics" / "sweep.csv", sweep_rows)
    return report.make_record(results, behaviour_name)


EXPERIMENT = one_shot("minimax", "SPEC §5: simultaneous/alternating GDA, descent, extragradient, optimistic GDA on "
                      "f1, f2 or any f(x, y)", MinimaxConfig, compute,
                      lambda config: report.captions(labels(config)))
