"""``power_iteration``, ``matrix_inverse_pth_root``, ``nnls`` and ``perturbations``: against NumPy /
SciPy references from the formulas and against Optax 0.2.8 (float64).

Each group's results come from one jitted program (this machine compiles slowly), cached and
shared by the tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from jaxopt_lite import perturbations
from jaxopt_lite.linear_algebra import matrix_inverse_pth_root, nnls, power_iteration

POWERS = (1, 2, 4, 8)


@functools.cache
def spd():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(5, 5))
    return b @ b.T + 0.5 * np.eye(5)


def eig_power(a, exponent):
    w, v = np.linalg.eigh(a)
    return (v * w**exponent) @ v.T


def block_mvp(a):
    """``a`` as a matrix-vector product on the pytree ``{"x": (2,), "y": (3,)}``."""

    def mvp(tree):
        v = jnp.concatenate([tree["x"], tree["y"]])
        out = a @ v
        return {"x": out[:2], "y": out[2:]}

    return mvp


def linear_algebra_results(module):
    a = jnp.asarray(spd())
    v0 = {"x": jnp.asarray([1.0, -0.5]), "y": jnp.asarray([0.3, 0.2, -1.0])}
    return {
        "roots": {p: module.matrix_inverse_pth_root(a, p) for p in POWERS},
        "root_1x1": module.matrix_inverse_pth_root(jnp.asarray([[4.0]]), 2),
        "root_tiny_ridge": module.matrix_inverse_pth_root(a, 2, ridge_epsilon=1e-12, error_tolerance=1e-12),
        "power": module.power_iteration(a),
        "power_key": module.power_iteration(a, key=jax.random.PRNGKey(5), num_iters=3),
        "power_tree": module.power_iteration(block_mvp(a), v0=v0),
    }


@functools.cache
def ours_la():
    import jaxopt_lite.linear_algebra as mod

    out = jax.jit(lambda: linear_algebra_results(mod))()
    # p traced (and batched): the general matrix power; p = 3 is beyond Optax's 1, 2, 4, 8.
    out["traced"] = jax.jit(jax.vmap(lambda p: matrix_inverse_pth_root(jnp.asarray(spd()), p)))(jnp.asarray([3, 4]))
    out["root_3"] = jax.jit(lambda: matrix_inverse_pth_root(jnp.asarray(spd()), 3))()
    return jax.tree.map(np.asarray, out)


@functools.cache
def optax_la():
    return jax.tree.map(np.asarray, jax.jit(lambda: linear_algebra_results(optax))())


# --------------------------------------------------------------------------- #
# power_iteration
# --------------------------------------------------------------------------- #


def test_power_iteration_matches_numpy_and_optax():
    a = spd()
    w, v = np.linalg.eigh(a)
    eig, vec = ours_la()["power"]
    np.testing.assert_allclose(eig, w[-1], rtol=1e-9)
    np.testing.assert_allclose(np.abs(vec @ v[:, -1]), 1.0, rtol=1e-5)  # the tolerance stops on the eigenvalue
    np.testing.assert_allclose(np.linalg.norm(vec), 1.0, rtol=1e-14)
    for name in ("power", "power_key", "power_tree"):
        for got, want in zip(jax.tree.leaves(ours_la()[name]), jax.tree.leaves(optax_la()[name])):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=name)


def test_power_iteration_on_a_pytree_operator():
    w = np.linalg.eigvalsh(spd())
    eig, vec = ours_la()["power_tree"]
    np.testing.assert_allclose(eig, w[-1], rtol=1e-9)
    full = np.concatenate([vec["x"], vec["y"]])
    np.testing.assert_allclose(spd() @ full, w[-1] * full, atol=1e-4)
    # Three iterations are not enough to converge: the key's start vector shows.
    assert abs(ours_la()["power_key"][0] - w[-1]) > 1e-10


def test_power_iteration_needs_v0_for_a_callable():
    with pytest.raises(ValueError, match="v0"):
        power_iteration(lambda v: v)


# --------------------------------------------------------------------------- #
# matrix_inverse_pth_root
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("p", POWERS)
def test_inverse_pth_root_matches_eigh_and_optax(p):
    a = spd()
    ridge = 1e-6 * np.linalg.eigvalsh(a)[-1]
    root, err = ours_la()["roots"][p]
    want = eig_power(a + ridge * np.eye(5), -1.0 / p)
    np.testing.assert_allclose(root, want, rtol=1e-6, atol=1e-7)
    assert root.dtype == np.float64 and err.shape == ()
    assert 0 <= err <= 1e-6
    oroot, oerr = optax_la()["roots"][p]
    np.testing.assert_allclose(root, oroot, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(err, oerr, rtol=1e-12, atol=1e-16)


def test_inverse_pth_root_small_ridge_and_1x1():
    a = spd()
    root, err = ours_la()["root_tiny_ridge"]
    np.testing.assert_allclose(root, eig_power(a, -0.5), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(root, optax_la()["root_tiny_ridge"][0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(err, optax_la()["root_tiny_ridge"][1], rtol=1e-12, atol=1e-16)
    root1, err1 = ours_la()["root_1x1"]
    np.testing.assert_allclose(root1, optax_la()["root_1x1"][0], rtol=1e-15)
    # 1/p = 1/2 is exact in float32; the ridge is 1e-6 times the eigenvalue 4.
    np.testing.assert_allclose(root1, [[(4.0 * (1 + 1e-6)) ** -0.5]], rtol=1e-12)
    assert err1 == 0


def test_inverse_pth_root_any_integer_p_and_traced_p():
    """p = 3 (Optax's matrix power handles only 1, 2, 4, 8); p traced under jit and vmap."""
    a = spd()
    ridge = 1e-6 * np.linalg.eigvalsh(a)[-1]
    want3 = eig_power(a + ridge * np.eye(5), -1.0 / 3)
    np.testing.assert_allclose(ours_la()["root_3"][0], want3, rtol=1e-6, atol=1e-7)
    roots, errs = ours_la()["traced"]
    np.testing.assert_allclose(roots[0], ours_la()["root_3"][0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(roots[1], optax_la()["roots"][4][0], rtol=1e-12, atol=1e-14)
    # err = max |M - I| ~ 1e-8 is a difference of numbers near 1: batched matmuls change its last bits.
    np.testing.assert_allclose(errs[1], optax_la()["roots"][4][1], atol=1e-15)


@pytest.mark.parametrize("p", [0, -2, 2.5])
def test_inverse_pth_root_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p must be a positive integer"):
        matrix_inverse_pth_root(jnp.eye(2), p)


# --------------------------------------------------------------------------- #
# nnls
# --------------------------------------------------------------------------- #


@functools.cache
def nnls_problem():
    rng = np.random.default_rng(1)
    return rng.normal(size=(8, 4)), rng.normal(size=8), rng.normal(size=(8, 3))


def nnls_results(fn):
    a, b, bb = map(jnp.asarray, nnls_problem())
    return {
        "vector": fn(a, b, 2000),
        "matrix": fn(a, bb, 2000, unroll=4),
        "given_L": fn(a, b, 50, L=jnp.linalg.eigvalsh(a.T @ a)[-1]),
        "few": fn(a, b, 7),
    }


@functools.cache
def nnls_ours_and_optax():
    return jax.tree.map(np.asarray, jax.jit(lambda: (nnls_results(nnls), nnls_results(optax.nnls)))())


def test_nnls_matches_scipy_and_optax():
    a, b, bb = nnls_problem()
    ours, theirs = nnls_ours_and_optax()
    np.testing.assert_allclose(ours["vector"], scipy.optimize.nnls(a, b)[0], atol=1e-9)
    for k in range(bb.shape[1]):
        np.testing.assert_allclose(ours["matrix"][:, k], scipy.optimize.nnls(a, bb[:, k])[0], atol=1e-9)
    assert ours["matrix"].shape == (4, 3) and np.all(ours["few"] >= 0)
    assert np.any(ours["vector"] == 0) and np.any(ours["vector"] > 0)  # the bound is active somewhere
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_nnls_few_iterations_follow_the_formula():
    """Seven FPG iterations in NumPy (Polyak, 2015) with L = min(||Q||_F, ||Q||_1)."""
    a, b, _ = nnls_problem()
    q, r = a.T @ a, a.T @ b
    lip = min(np.linalg.norm(q, "fro"), np.linalg.norm(q, 1))
    x = y = np.zeros(4)
    c = 0.0
    for _ in range(7):
        c_next = (1 + np.sqrt(1 + 4 * c**2)) / 2
        x_next = np.maximum(y - (q @ y - r) / lip, 0)
        y = x_next + (c - 1) / c_next * (x_next - x)
        x, c = x_next, c_next
    np.testing.assert_allclose(nnls_ours_and_optax()[0]["few"], x, rtol=1e-12, atol=1e-14)


def test_nnls_rejects_bad_shapes():
    with pytest.raises(ValueError, match="nnls"):
        nnls(jnp.ones((3, 2)), jnp.ones(4), 5)


# --------------------------------------------------------------------------- #
# perturbations
# --------------------------------------------------------------------------- #

SIGMA = 0.5
N = 64
X = np.asarray([0.1, -0.3, 0.25, 0.0])
WEIGHTS = np.asarray([1.0, -2.0, 0.5, 3.0])


def one_hot_argmax(x):
    return jax.nn.one_hot(jnp.argmax(x), x.shape[0], dtype=x.dtype)


def tree_fun(t):
    """A pytree-to-pytree function: a one-hot argmax over both leaves, and the sign of a sum."""
    v = jnp.concatenate([t["a"], t["b"]])
    h = one_hot_argmax(v)
    return {"h": h, "s": jnp.sign(jnp.sum(t["a"]))}


def perturbation_results(mod):
    key = jax.random.PRNGKey(42)
    x = jnp.asarray(X)
    out = {}
    for noise_name in ("Gumbel", "Normal"):
        for baseline in (True, False):
            fn = mod.make_perturbed_fun(one_hot_argmax, N, SIGMA, getattr(mod, noise_name)(), baseline)
            out[f"{noise_name}_{baseline}"] = (fn(key, x), jax.jacobian(fn, argnums=1)(key, x))
    scalar = mod.make_perturbed_fun(lambda v: jnp.dot(one_hot_argmax(v), jnp.asarray(WEIGHTS)), N, SIGMA,
                                    mod.Normal())
    out["hessian"] = jax.hessian(scalar, argnums=1)(key, x)
    tree_fn = mod.make_perturbed_fun(tree_fun, N, SIGMA)
    tree_x = {"a": x[:2], "b": x[2:]}
    out["tree"] = (tree_fn(key, tree_x), jax.jacobian(tree_fn, argnums=1)(key, tree_x))
    example = mod.make_perturbed_fun(lambda v: jnp.sum(jnp.maximum(v, 0.0)), 1000, 0.1)
    out["example"] = jax.grad(example, argnums=1)(jax.random.key(0), jnp.zeros(3))
    out["samples"] = (mod.Gumbel().sample(key, (3,)), mod.Normal().sample(key, (2, 2), jnp.float32))
    out["log_probs"] = (mod.Gumbel().log_prob(x), mod.Normal().log_prob(x))
    return out


@functools.cache
def perturbations_ours_and_optax():
    return jax.tree.map(
        np.asarray,
        jax.jit(lambda: (perturbation_results(perturbations), perturbation_results(optax.perturbations)))(),
    )


@functools.cache
def noise_draws(noise_name):
    """The ``N`` draws the estimator uses for key 42: one key per sample, split per leaf (one leaf here)."""
    sample = getattr(perturbations, noise_name)().sample
    keys = jax.random.split(jax.random.PRNGKey(42), N)
    return np.asarray(jax.vmap(lambda k: sample(jax.random.split(k, 1)[0], (4,), jnp.float64))(keys))


@pytest.mark.parametrize("noise_name", ["Gumbel", "Normal"])
@pytest.mark.parametrize("baseline", [True, False])
def test_perturbed_value_and_jacobian_match_the_score_estimator(noise_name, baseline):
    """Value ``mean f(x + s z)``; Jacobian ``mean (f(y) - f(x) [baseline]) grad_x log p((y - x) / s)``."""
    z = noise_draws(noise_name)
    y = X + SIGMA * z
    fy = np.eye(4)[np.argmax(y, axis=1)]
    fx = np.eye(4)[np.argmax(X)] if baseline else np.zeros(4)
    score = (1 - np.exp(-z)) / SIGMA if noise_name == "Gumbel" else z / SIGMA  # d/dx log p((y - x) / s)
    want_value = fy.mean(axis=0)
    want_jac = np.einsum("ni,nj->ij", fy - fx, score) / N
    ours, theirs = perturbations_ours_and_optax()
    value, jac = ours[f"{noise_name}_{baseline}"]
    np.testing.assert_allclose(value, want_value, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jac, want_jac, rtol=1e-9, atol=1e-10)
    assert np.max(np.abs(jac)) > 0.1  # the argmax is piecewise constant: all of this comes from the score
    for got, want in zip((value, jac), theirs[f"{noise_name}_{baseline}"]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_perturbed_second_order_trees_and_example_match_optax():
    ours, theirs = perturbations_ours_and_optax()
    for name in ("hessian", "tree", "example", "samples", "log_probs"):
        assert jax.tree.structure(ours[name]) == jax.tree.structure(theirs[name]), name
        for got, want in zip(jax.tree.leaves(ours[name]), jax.tree.leaves(theirs[name])):
            assert got.dtype == want.dtype, name
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=name)
    # Optax's docstring example ([0.69 0.72 0.58] there is float32's; float64 draws other samples):
    # a noisy estimate of the derivative of E[max(x + 0.1 z, 0)] at 0, P(z > 0) = 1 - 1/e for Gumbel z.
    assert np.all(np.abs(ours["example"] - (1 - np.exp(-1))) < 0.3)
    # Hessian: mean f(y) (grad s grad s^T + hess s); for Normal noise hess s = -I / s^2.
    z = noise_draws("Normal")
    fy = np.eye(4)[np.argmax(X + SIGMA * z, axis=1)] @ WEIGHTS
    fx = WEIGHTS[np.argmax(X)]
    want = np.einsum("n,ni,nj->ij", fy - fx, z / SIGMA, z / SIGMA) / N - np.mean(fy - fx) * np.eye(4) / SIGMA**2
    np.testing.assert_allclose(ours["hessian"], want, rtol=1e-9, atol=1e-10)


def test_noise_distributions():
    g, n = perturbations_ours_and_optax()[0]["log_probs"]
    np.testing.assert_allclose(g, -X - np.exp(-X), rtol=1e-15)
    np.testing.assert_allclose(n, -0.5 * X**2, rtol=1e-15)
    gumbel, normal = perturbations_ours_and_optax()[0]["samples"]
    assert gumbel.shape == (3,) and gumbel.dtype == np.float64 and normal.dtype == np.float32
