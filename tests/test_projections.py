"""``jaxopt_lite.projections``: optimality conditions, agreement with Optax, jit / vmap / grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jaxopt_lite as jol
from jaxopt_lite import projections as P

RNG = np.random.default_rng(0)
N = 5  # total size of the test trees: leaves of shapes (2,) and (3,)


def _tree(v):
    v = jnp.asarray(v)
    return {"a": v[:2], "b": v[2:]}


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def _dirichlet(n):
    return RNG.dirichlet(np.ones(n))


A = np.array([1.0, -2.0, 0.5, 3.0, -1.0])
B = 0.7
# name -> (project(x_tree, s), feasible point sampler(s), is_feasible(p, s), convex)
SETS = {
    "non_negative": (lambda x, s: P.projection_non_negative(x), lambda s: np.abs(RNG.normal(size=N)),
                     lambda p, s: np.all(p >= 0), True),
    "box": (lambda x, s: P.projection_box(x, _tree(-s * np.arange(1, N + 1) / N), s),
            lambda s: RNG.uniform(-s * np.arange(1, N + 1) / N, s),
            lambda p, s: np.all(p >= -s * np.arange(1, N + 1) / N - 1e-12) and np.all(p <= s + 1e-12), True),
    "hypercube": (P.projection_hypercube, lambda s: RNG.uniform(0, s, N),
                  lambda p, s: np.all(p >= 0) and np.all(p <= s), True),
    "simplex": (P.projection_simplex, lambda s: s * _dirichlet(N),
                lambda p, s: np.all(p >= 0) and np.isclose(p.sum(), s), True),
    "l1_ball": (P.projection_l1_ball, lambda s: RNG.choice([-1, 1], N) * s * _dirichlet(N + 1)[:N],
                lambda p, s: np.abs(p).sum() <= s + 1e-12, True),
    "l1_sphere": (P.projection_l1_sphere, lambda s: RNG.choice([-1, 1], N) * s * _dirichlet(N),
                  lambda p, s: np.isclose(np.abs(p).sum(), s), False),
    "l2_ball": (P.projection_l2_ball, lambda s: s * RNG.uniform() * _unit(RNG.normal(size=N)),
                lambda p, s: np.linalg.norm(p) <= s + 1e-12, True),
    "l2_sphere": (P.projection_l2_sphere, lambda s: s * _unit(RNG.normal(size=N)),
                  lambda p, s: np.isclose(np.linalg.norm(p), s), False),
    "linf_ball": (P.projection_linf_ball, lambda s: RNG.uniform(-s, s, N),
                  lambda p, s: np.all(np.abs(p) <= s), True),
    "hyperplane": (lambda x, s: P.projection_hyperplane(x, _tree(A), s), lambda s: _onto_plane(RNG.normal(size=N), s),
                   lambda p, s: np.isclose(p @ A, s), True),
    "halfspace": (lambda x, s: P.projection_halfspace(x, _tree(A), s),
                  lambda s: _onto_plane(RNG.normal(size=N), s) - RNG.uniform() * A,
                  lambda p, s: p @ A <= s + 1e-12, True),
    "vector": (lambda x, s: P.projection_vector(x, _tree(A)), lambda s: RNG.normal() * A,
               lambda p, s: np.allclose(p - (p @ A) / (A @ A) * A, 0), True),
}


def _unit(v):
    return v / np.linalg.norm(v)


def _onto_plane(z, b):
    return z + (b - z @ A) / (A @ A) * A


POINTS = [RNG.normal(size=N) * 2, np.array([0.1, -0.05, 0.2, 0.0, 0.1]), np.array([3.0, 3.0, -3.0, 0.5, 0.0])]


@pytest.mark.parametrize("name", sorted(SETS))
def test_projection_is_nearest_feasible_point(name):
    project, sample, feasible, convex = SETS[name]
    for x in POINTS:
        for s in (0.5, 2.0):
            p = _flat(project(_tree(x), s))
            assert feasible(p, s), (x, s, p)
            for _ in range(200):
                y = sample(s)
                assert feasible(y, s)
                if convex:  # variational inequality: <x - p, y - p> <= 0 for every feasible y
                    assert (x - p) @ (y - p) <= 1e-10 * (1 + np.abs(x - p).sum() * np.abs(y - p).sum())
                assert np.linalg.norm(x - p) <= np.linalg.norm(x - y) + 1e-12


OPTAX = {
    "non_negative": lambda x, s: optax.projections.projection_non_negative(x),
    "box": lambda x, s: optax.projections.projection_box(x, _tree(-s * np.arange(1, N + 1) / N), _tree(np.full(N, s))),
    # Optax 0.2.8's projection_hypercube fails on any tree of more than one leaf (it passes the number 0 as
    # the lower bound to tree.map); its projection_box with tree bounds is the same set.
    "hypercube": lambda x, s: optax.projections.projection_box(x, _tree(np.zeros(N)), _tree(np.full(N, s))),
    "simplex": optax.projections.projection_simplex,
    "l1_ball": optax.projections.projection_l1_ball,
    "l1_sphere": optax.projections.projection_l1_sphere,
    "l2_ball": optax.projections.projection_l2_ball,
    "l2_sphere": optax.projections.projection_l2_sphere,
    "linf_ball": optax.projections.projection_linf_ball,
    "hyperplane": lambda x, s: optax.projections.projection_hyperplane(x, _tree(A), s),
    "halfspace": lambda x, s: optax.projections.projection_halfspace(x, _tree(A), s),
    "vector": lambda x, s: optax.projections.projection_vector(x, _tree(A)),
}


@pytest.mark.parametrize("name", sorted(SETS))
def test_matches_optax_and_traces(name):
    project = SETS[name][0]
    xs = np.stack(POINTS)
    scales = np.array([0.5, 1.0, 2.0])
    for x, s in zip(xs, scales):
        ours, theirs = _flat(project(_tree(x), s)), _flat(OPTAX[name](_tree(x), s))
        if name == "l1_sphere":  # Optax keeps sign(0) = 0, losing that coordinate's share (not on the sphere)
            assert np.all(theirs[x == 0] == 0) and np.all(ours[x == 0] >= 0)
            ours, theirs = ours[x != 0], theirs[x != 0]
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    batched = jax.jit(jax.vmap(lambda x, s: project(_tree(x), s)))(xs, scales)  # vmap over points and scales
    for i, (x, s) in enumerate(zip(xs, scales)):
        np.testing.assert_allclose(_flat(jax.tree.map(lambda leaf: leaf[i], batched)), _flat(project(_tree(x), s)),
                                   rtol=1e-12, atol=1e-14)


def test_namespace_and_scalar_bounds():
    assert sorted(P.__all__) == sorted(n for n in dir(optax.projections) if not n.startswith("_"))
    assert jol.projections is P
    tree = {"a": jnp.array([-1.0, 0.5, 2.0]), "b": jnp.array(3.0)}
    out = P.projection_box(tree, -0.5, 1.0)
    np.testing.assert_array_equal(out["a"], [-0.5, 0.5, 1.0]) and np.testing.assert_array_equal(out["b"], 1.0)
    with pytest.raises(ValueError, match="tree and bound must have the same tree structure"):
        P.projection_box(tree, {"a": 0.0}, 1.0)
    with pytest.raises(ValueError, match="x and a must have the same tree structure"):
        P.projection_hyperplane(tree, {"a": jnp.ones(3)}, 1.0)


def test_simplex_derivatives_match_optax_and_finite_differences():
    x = jnp.array([0.3, -0.2, 0.9, 0.1, 0.45])
    w = jnp.array([1.0, 2.0, -1.0, 0.5, 3.0])

    def ours(x, s):
        return jnp.dot(w, P.projection_simplex(x, s))

    def theirs(x, s):
        return jnp.dot(w, optax.projections.projection_simplex(x, s))

    for s in (1.0, 0.6):
        gx, gs = jax.grad(ours, argnums=(0, 1))(x, s)
        hx, hs = jax.grad(theirs, argnums=(0, 1))(x, s)
        np.testing.assert_allclose(gx, hx, atol=1e-12)
        np.testing.assert_allclose(gs, hs, atol=1e-12)
        eps = 1e-6
        fd = [(ours(x + eps * e, s) - ours(x - eps * e, s)) / (2 * eps) for e in np.eye(N)]
        np.testing.assert_allclose(gx, fd, atol=1e-7)
        np.testing.assert_allclose(gs, (ours(x, s + eps) - ours(x, s - eps)) / (2 * eps), atol=1e-7)
