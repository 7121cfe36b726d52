"""``jaxopt_lite.assignment`` against ``scipy.optimize.linear_sum_assignment`` and Optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import linear_sum_assignment

from jaxopt_lite import assignment

RNG = np.random.default_rng(4)


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)])
def test_matches_scipy_and_optax(shape):
    costs = RNG.normal(size=(3, *shape))  # continuous costs: the optimum is unique
    # base_hungarian_algorithm lists the pairs as scipy does; hungarian_algorithm in Optax's own order.
    solve_base = jax.jit(jax.vmap(assignment.base_hungarian_algorithm))
    solve = jax.jit(jax.vmap(assignment.hungarian_algorithm))
    base_rows, base_cols = solve_base(costs)
    rows, cols = solve(costs)
    for c, bi, bj, i, j in zip(costs, base_rows, base_cols, rows, cols):
        r, s = linear_sum_assignment(c)
        np.testing.assert_array_equal(bi, r)
        np.testing.assert_array_equal(bj, s)
        oi, oj = optax.assignment.base_hungarian_algorithm(jnp.asarray(c))
        np.testing.assert_array_equal(bi, oi)
        np.testing.assert_array_equal(bj, oj)
        assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(r.tolist(), s.tolist()))
        oi, oj = optax.assignment.hungarian_algorithm(jnp.asarray(c))
        np.testing.assert_array_equal(i, oi)
        np.testing.assert_array_equal(j, oj)


def test_integer_costs_ties_and_empty():
    cost = jnp.array([[8, 4, 7], [5, 2, 3], [9, 6, 7], [9, 4, 8]])
    i, j = assignment.base_hungarian_algorithm(cost)
    assert int(cost[i, j].sum()) == 15 and i.tolist() == [0, 1, 3]
    i, j = assignment.hungarian_algorithm(cost)
    assert int(cost[i, j].sum()) == 15 and sorted(i.tolist()) == [0, 1, 3]
    ties = jnp.ones((3, 3))
    i, j = assignment.hungarian_algorithm(ties)
    assert sorted(j.tolist()) == [0, 1, 2]
    for solver in (assignment.hungarian_algorithm, assignment.base_hungarian_algorithm):
        i, j = solver(jnp.zeros((0, 3)))
        assert i.shape == j.shape == (0,)
    with pytest.raises(ValueError, match="cost_matrix must be a matrix"):
        assignment.hungarian_algorithm(jnp.ones(3))
