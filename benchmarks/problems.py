"""The problems: two-dimensional test functions, logistic regression, a digits MLP.

Toy problems follow the seed articles: ``f(x) = x^2`` with learning rate 0.2
(gradient descent then gives ``x_{t+1} = 0.6 x_t``), ``f(x) = x1^2 + 2 x2^2``
with 0.4, the saddle ``x^2 - y^2`` started off its stable axis, and ``x^3``
(an inflection point where gradient descent stalls); plus Rosenbrock, Beale
and a rotated, ill-conditioned quadratic.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class ToyProblem:
    """A deterministic test function ``f: R^d -> R`` (``d`` = 1 or 2) and how to run it.

    Attributes:
      gd_lr: the gradient-descent learning rate (used by the optimizers whose
        table rate is ``GD``: plain, momentum, Nesterov SGD).
      lr_scale: multiplies the table rate of the other optimizers.
      target: the problem counts as solved at the first step with ``f(x) <= target``
        (for the saddle and ``x^3``: escaped below -1).
      f_star: the minimum value, or ``None`` when ``f`` is unbounded below.
      gd_closed_form: ``t -> x_t`` for gradient descent at ``gd_lr``, where
        known, to check the benchmark loop against the seed articles' algebra.
    """

    name: str
    formula: str
    fn: Callable[[jax.Array], jax.Array]
    x0: tuple[float, ...]
    gd_lr: float
    steps: int
    target: float
    f_star: float | None
    box: tuple[tuple[float, float], ...]
    lr_scale: float = 1.0
    x_star: tuple[float, ...] | None = None
    gd_closed_form: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def dim(self) -> int:
        return len(self.x0)

    def to_json(self) -> dict:
        return {
            "formula": self.formula,
            "x0": list(self.x0),
            "gd_lr": self.gd_lr,
            "lr_scale": self.lr_scale,
            "steps": self.steps,
            "target": self.target,
            "f_star": self.f_star,
            "x_star": None if self.x_star is None else list(self.x_star),
        }


def _linear_gd(x0, factors):
    """Closed form of gradient descent on a separable quadratic: ``x_t = factors**t * x0``."""
    x0, factors = np.asarray(x0, np.float64), np.asarray(factors, np.float64)
    return lambda t: factors[None, :] ** np.asarray(t, np.float64)[:, None] * x0[None, :]


def rosenbrock(x):
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def beale(x):
    a, b = x[0], x[1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


ILL_KAPPA = 100.0
_ILL_ANGLE = np.pi / 6
_ILL_R = np.array([[np.cos(_ILL_ANGLE), -np.sin(_ILL_ANGLE)], [np.sin(_ILL_ANGLE), np.cos(_ILL_ANGLE)]])
ILL_A = _ILL_R @ np.diag([1.0, ILL_KAPPA]) @ _ILL_R.T


def ill_conditioned(x):
    return 0.5 * x @ jnp.asarray(ILL_A, x.dtype) @ x


def _ill_gd(x0, lr):
    """``x_t = (I - lr A)^t x0`` in A's eigenbasis."""
    z0 = _ILL_R.T @ np.asarray(x0, np.float64)
    inner = _linear_gd(z0, 1.0 - lr * np.array([1.0, ILL_KAPPA]))
    return lambda t: inner(t) @ _ILL_R.T


def toy_problems() -> list[ToyProblem]:
    ill_lr = 1.0 / ILL_KAPPA
    return [
        ToyProblem("square", "x^2", lambda x: x[0] ** 2, (2.0,), 0.2, 60, 1e-6, 0.0, ((-2.5, 2.5),),
                   x_star=(0.0,), gd_closed_form=_linear_gd((2.0,), (0.6,))),
        ToyProblem("quadratic", "x1^2 + 2 x2^2", lambda x: x[0] ** 2 + 2.0 * x[1] ** 2, (2.0, 1.5), 0.4, 100,
                   1e-6, 0.0, ((-2.5, 2.5), (-2.0, 2.0)), x_star=(0.0, 0.0),
                   gd_closed_form=_linear_gd((2.0, 1.5), (0.2, -0.6))),
        ToyProblem("saddle", "x^2 - y^2", lambda x: x[0] ** 2 - x[1] ** 2, (1.5, 0.01), 0.1, 50, -1.0, None,
                   ((-2.0, 2.0), (-2.0, 2.0)), gd_closed_form=_linear_gd((1.5, 0.01), (0.8, 1.2))),
        ToyProblem("cubic", "x^3", lambda x: x[0] ** 3, (1.0,), 0.2, 100, -1.0, None, ((-2.0, 1.5),)),
        ToyProblem("rosenbrock", "(1-x)^2 + 100 (y-x^2)^2", rosenbrock, (-1.2, 1.0), 1e-3, 5000, 1e-4, 0.0,
                   ((-2.0, 2.0), (-1.0, 3.0)), lr_scale=0.1, x_star=(1.0, 1.0)),
        ToyProblem("beale", "Beale", beale, (1.0, 1.5), 3e-3, 3000, 1e-4, 0.0, ((-4.5, 4.5), (-4.5, 4.5)),
                   lr_scale=0.1, x_star=(3.0, 0.5)),
        ToyProblem("ill_conditioned", f"x^T A x / 2, cond(A) = {ILL_KAPPA:g}", ill_conditioned, (-2.0, 1.0),
                   ill_lr, 1500, 1e-6, 0.0, ((-2.5, 2.5), (-2.0, 2.0)), x_star=(0.0, 0.0),
                   gd_closed_form=_ill_gd((-2.0, 1.0), ill_lr)),
    ]


# --- logistic regression --------------------------------------------------------------------------

LOGISTIC_L2 = 1e-3


def logistic_data(n_train: int, n_test: int, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic binary classification: Gaussian features (with a bias column), logistic labels."""
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=dim + 1) * 1.5
    n = n_train + n_test
    x = np.concatenate([rng.normal(size=(n, dim)), np.ones((n, 1))], axis=1)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-x @ w_true))).astype(np.float32)
    x = x.astype(np.float32)
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:]}


def logistic_loss(w, batch):
    """Mean log-loss plus ``LOGISTIC_L2 / 2 * |w|^2`` (strongly convex: one minimum)."""
    x, y = batch
    z = x @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * LOGISTIC_L2 * jnp.sum(w * w)


def logistic_accuracy(w, x, y):
    return jnp.mean(((x @ w) > 0) == (y > 0.5))


def logistic_optimum(x: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[np.ndarray, float, float]:
    """``(w*, f*, L)``: the minimiser by Newton's method in float64, and the smoothness constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, d = x.shape
    w = np.zeros(d)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        grad = x.T @ (p - y) / n + LOGISTIC_L2 * w
        hess = (x.T * (p * (1 - p))) @ x / n + LOGISTIC_L2 * np.eye(d)
        w = w - np.linalg.solve(hess, grad)
    z = x @ w
    f_star = float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * LOGISTIC_L2 * w @ w)
    smoothness = float(0.25 * np.linalg.eigvalsh(x.T @ x / n)[-1] + LOGISTIC_L2)
    return w, f_star, smoothness


# --- MLP on scikit-learn's bundled digits ------------------------------------------------------------

@functools.cache
def digits_data(seed: int = 0) -> dict[str, np.ndarray]:
    """The 8x8 digits (1797 images, bundled with scikit-learn): 60% train, 20% validation, 20% test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest)
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "x_test": x_test, "y_test": y_test}


def mlp_init(key: jax.Array, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
    """He-initialised dense layers."""
    params = []
    for k, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1), itertools.pairwise(sizes)):
        params.append({"w": jax.random.normal(k, (fan_in, fan_out)) * np.sqrt(2.0 / fan_in), "b": jnp.zeros(fan_out)})
    return params


def mlp_logits(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def mlp_loss(params, batch):
    """Mean softmax cross-entropy."""
    x, y = batch
    logp = jax.nn.log_softmax(mlp_logits(params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def mlp_accuracy(params, x, y):
    return jnp.mean(jnp.argmax(mlp_logits(params, x), axis=1) == y)
