"""Adversarial inputs over every optimizer of the property table and random pytrees.

Each case either raises an error that names the optimizer and the problem, or
returns finite values equal to a reference:

- gradients from subnormal (flushed to zero on XLA:CPU) to 1e15 give finite updates and states
  (1e8 for Mechanic);
- behind ``clip_by_global_norm``, gradients near the float32 maximum give the update of
  the gradients clipped in float64;
- NaN/inf gradients through ``apply_if_finite`` are skipped: zero updates, the inner
  state untouched, and the next finite step equals a fresh optimizer's;
- the state of another optimizer is reported as such, naming the optimizer called;
- complex parameters are optimised (finite, complex updates) or refused by name.

A new row in ``test_properties.OPTIMIZERS`` is covered here without new code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_errors import _owner
from test_properties import NAMES, build, cached_opt, make_tree, tree_specs

import jaxopt_lite as jol

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STEPS = 3


def _finite(tree) -> bool:
    return all(
        bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    )


def _run(opt, params, grads, steps=STEPS):
    state, p = opt.init(params), params
    for _ in range(steps):
        updates, state = opt.update(grads, state, p)
        p = jol.apply_updates(p, updates)
    return updates, state, p


def _signed_magnitudes(params, exponent, seed):
    """Gradients shaped like ``params`` with entries ``+-10**exponent`` (random signs, a few exact zeros)."""
    rng = np.random.default_rng(seed)

    def leaf(x):
        signs = rng.choice([-1.0, 0.0, 1.0], size=x.shape, p=[0.45, 0.1, 0.45])
        return jnp.asarray(signs * 10.0**exponent, x.dtype)

    return jax.tree.map(leaf, params)


# Mechanic squares an inner product of gradients and past steps (~|g|**2 * lr * n): above ~1e9 it
# overflows float32 and its state saturates to inf (README, "Errors and numerics").
SQUARES_INNER_PRODUCTS = {"mechanize_sgd"}
# SOAP's second call is Adam's sign-like first step in the eigenbasis of G_1 G_1^T: an ulp of the gradient turns
# its eigenvectors by ulp / (relative eigengap), and in the factor's null space the rotated gradient is rounding
# noise that eps = 1e-8 does not mask. Gradients clipped in float32 and in float64 then take steps that differ
# far beyond 2e-4 (a property of the algorithm: tests/test_soap.py compares it in float64).
BASIS_SENSITIVE = {"soap"}


@SETTINGS
@given(name=st.sampled_from(NAMES), spec=tree_specs, seed=st.integers(0, 2**31 - 1),
       exponent=st.sampled_from([-40, -30, -8, 0, 8, 15]))
def test_gradients_from_subnormal_to_huge_give_finite_updates(name, spec, seed, exponent):
    assume(exponent < 9 or name not in SQUARES_INNER_PRODUCTS)
    params = make_tree(spec, np.random.default_rng(seed))
    grads = _signed_magnitudes(params, exponent, seed)
    updates, state, p = _run(cached_opt(name), params, grads)
    assert _finite(updates), f"{name}: non-finite updates for gradients of magnitude 1e{exponent}"
    assert _finite(state), f"{name}: non-finite state for gradients of magnitude 1e{exponent}"
    assert _finite(p)


@SETTINGS
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 2**31 - 1), magnitude=st.sampled_from([1e30, 1e37, 3e38]))
def test_gradients_near_the_float32_maximum_are_clipped_along_their_direction(name, seed, magnitude):
    """``clip_by_global_norm`` first: the norm overflows float32, the clipped direction must not."""
    assume(name not in BASIS_SENSITIVE)
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32), "b": jnp.asarray(rng.standard_normal(2),
                                                                                              jnp.float32)}
    raw = {k: np.clip(rng.standard_normal(v.shape), -1, 1) * magnitude for k, v in params.items()}
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in raw.values()))
    grads = {k: jnp.asarray(g, jnp.float32) for k, g in raw.items()}
    clipped = {k: jnp.asarray(g / norm, jnp.float32) for k, g in raw.items()}
    got, _, _ = _run(jol.chain(jol.clip_by_global_norm(1.0), cached_opt(name)), params, grads, steps=2)
    want, _, _ = _run(cached_opt(name), params, clipped, steps=2)
    assert _finite(got), f"{name}: non-finite updates behind clip_by_global_norm at |g| ~ {magnitude:g}"
    for key in params:
        np.testing.assert_allclose(got[key], want[key], rtol=2e-4, atol=1e-6, err_msg=f"{name}: {key}")


@SETTINGS
@given(name=st.sampled_from(NAMES), spec=tree_specs, seed=st.integers(0, 2**31 - 1),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), data=st.data())
def test_non_finite_gradients_are_skipped_by_apply_if_finite(name, spec, seed, bad, data):
    params = make_tree(spec, np.random.default_rng(seed))
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    sized = [i for i, (_, x) in enumerate(paths_and_leaves) if x.size]
    assume(sized)
    i = data.draw(st.sampled_from(sized), label="leaf")
    j = data.draw(st.integers(0, paths_and_leaves[i][1].size - 1), label="entry")
    grads = [jnp.full_like(x, 0.5) for _, x in paths_and_leaves]
    poisoned = list(grads)
    poisoned[i] = grads[i].reshape(-1).at[j].set(bad).reshape(grads[i].shape)
    grads, poisoned = treedef.unflatten(grads), treedef.unflatten(poisoned)

    opt = jol.apply_if_finite(cached_opt(name), max_consecutive_errors=3)
    state = opt.init(params)
    updates, skipped = opt.update(poisoned, state, params)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates)), f"{name}: a non-finite step was applied"
    assert int(skipped.notfinite_count) == 1 and not bool(skipped.last_finite)
    for a, b in zip(jax.tree.leaves(skipped.inner_state), jax.tree.leaves(state.inner_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{name}: inner state changed")
    # The next finite step is the first step of an optimizer that never saw the bad one.
    after, _ = opt.update(grads, skipped, params)
    fresh, _ = cached_opt(name).update(grads, cached_opt(name).init(params), params)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


_PARAMS = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.ones(2, jnp.float32)}


def _abstract(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(called=st.sampled_from(NAMES), other=st.sampled_from(NAMES))
def test_the_state_of_another_optimizer_is_named(called, other):
    opt, foreign = cached_opt(called), cached_opt(other)
    # Optimizers whose states are indistinguishable (same types, same leaves) may take each other's.
    assume(_abstract(jax.eval_shape(opt.init, _PARAMS)) != _abstract(jax.eval_shape(foreign.init, _PARAMS)))
    grads = jax.tree.map(lambda x: 0.1 * x, _PARAMS)
    with pytest.raises((ValueError, TypeError)) as info:
        opt.update(grads, foreign.init(_PARAMS), _PARAMS)
    message, owner = str(info.value), _owner(called)
    assert "state" in message, message
    assert owner is None or message.startswith(f"{owner}: "), message


@pytest.mark.parametrize("name", NAMES)
def test_complex_parameters_are_optimised_or_refused_by_name(name):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((3, 2)) + 1j * rng.standard_normal((3, 2)), jnp.complex64)}
    grads = {"w": jnp.asarray(rng.standard_normal((3, 2)) - 0.5j, jnp.complex64)}
    try:
        updates, state, _ = _run(build(name), params, grads)
    except ValueError as error:
        owner = _owner(name)
        assert "complex parameters are not supported" in str(error), str(error)
        assert owner is None or str(error).startswith(f"{owner}: "), str(error)
        return
    assert updates["w"].dtype == jnp.complex64, f"{name}: the update lost its complex dtype"
    assert _finite(updates) and _finite(state), f"{name}: non-finite values for complex parameters"
    # The gradients' imaginary parts reach the update (a real-typed state buffer would drop them).
    assert np.all(np.imag(np.asarray(updates["w"])) != 0), f"{name}: the imaginary part was lost"
    for x in jax.tree.leaves(state):
        assert not (jnp.issubdtype(x.dtype, jnp.floating) and x.shape == (3, 2)), f"{name}: a real {x.dtype} buffer"
