r"""The linear assignment problem (Optax's ``optax.assignment``), jittable.

Given an :math:`n \times m` cost matrix :math:`C`, find :math:`\min(n, m)` pairs :math:`(i_k, j_k)`, each row and
each column used at most once, minimizing :math:`\sum_k C_{i_k j_k}`. Solved by the Hungarian algorithm in its
shortest-augmenting-path form with row and column potentials (Kuhn 1955; Munkres 1957; Jonker & Volgenant 1987):
rows are added one at a time, each by a Dijkstra-like search over reduced costs :math:`C_{ij} - u_i - v_j \ge 0`,
in :math:`O(n^2 m)` time, all inside ``lax`` loops (so ``jit`` and ``vmap`` apply).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _solve_wide(cost: jax.Array) -> jax.Array:
    """For ``cost`` of shape ``(n, m)`` with ``n <= m``: ``row_of[j]``, the row (1-based, 0 = none) of column j.

    Index 0 of the columns is a virtual column holding the row being inserted.
    """
    n, m = cost.shape
    # the padded matrix: row 0 and column 0 are virtual (never read as costs)
    padded = jnp.zeros((n + 1, m + 1), cost.dtype).at[1:, 1:].set(cost)

    def insert_row(row, carry):
        u, v, row_of = carry
        row_of = row_of.at[0].set(row)

        def search_step(state):  # grow the shortest-path tree by the column at least reduced distance
            u, v, row_of, min_dist, way, used, col = state
            used = used.at[col].set(True)
            r = row_of[col]
            reduced = padded[r] - u[r] - v
            better = (~used) & (reduced < min_dist)
            way = jnp.where(better, col, way)
            min_dist = jnp.where(better, reduced, min_dist)
            free_dist = jnp.where(used, jnp.inf, min_dist)
            next_col = jnp.argmin(free_dist).astype(jnp.int32)
            delta = free_dist[next_col]
            u = u.at[jnp.where(used, row_of, n + 1)].add(delta, mode="drop")
            v = jnp.where(used, v - delta, v)
            min_dist = jnp.where(used, min_dist, min_dist - delta)
            return u, v, row_of, min_dist, way, used, next_col

        start = (u, v, row_of, jnp.full(m + 1, jnp.inf, cost.dtype), jnp.zeros(m + 1, jnp.int32),
                 jnp.zeros(m + 1, bool), jnp.asarray(0, jnp.int32))
        u, v, row_of, _, way, _, col = jax.lax.while_loop(lambda s: s[2][s[6]] != 0, search_step, start)

        def flip(state):  # augment: shift the rows along the path back to the virtual column
            row_of, col = state
            previous = way[col]
            return row_of.at[col].set(row_of[previous]), previous

        row_of, _ = jax.lax.while_loop(lambda s: s[1] != 0, flip, (row_of, col))
        return u, v, row_of

    init = (jnp.zeros(n + 2, cost.dtype), jnp.zeros(m + 1, cost.dtype), jnp.zeros(m + 1, jnp.int32))
    _, _, row_of = jax.lax.fori_loop(1, n + 1, insert_row, init)
    return row_of[1:]


def _prepare(cost_matrix) -> tuple[jax.Array, bool]:
    cost = jnp.asarray(cost_matrix)
    if cost.ndim != 2:
        raise ValueError(f"hungarian_algorithm: cost_matrix must be a matrix, got shape {cost.shape}")
    transpose = cost.shape[0] > cost.shape[1]
    cost = cost.T if transpose else cost
    return cost.astype(jnp.promote_types(cost.dtype, jnp.float32)), transpose


def _empty():
    return jnp.zeros(0, int), jnp.zeros(0, int)


def hungarian_algorithm(cost_matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The same assignment as :func:`base_hungarian_algorithm`, in Optax's ``hungarian_algorithm`` order: for a
    square matrix ``j = arange(n)``; otherwise the pairs by decreasing index of the shorter side's match."""
    if 0 in jnp.shape(cost_matrix):
        return _empty()
    cost, transpose = _prepare(cost_matrix)
    row_of = _solve_wide(cost) - 1
    rows, cols = cost.shape
    if rows == cols:
        matched_rows, matched_cols = row_of, jnp.arange(cols)
    else:
        matched_rows, matched_cols = jax.lax.top_k(row_of, rows)
    return (matched_cols, matched_rows) if transpose else (matched_rows, matched_cols)


def base_hungarian_algorithm(cost_matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """An optimal assignment for ``cost_matrix`` (``n x m``): ``(i, j)`` with ``cost_matrix[i, j].sum()`` minimal.

    ``i`` is sorted increasingly (``arange(n)`` when ``n <= m``), as ``scipy.optimize.linear_sum_assignment`` and
    Optax's ``base_hungarian_algorithm``.
    Jittable and vmappable (static shapes). Example::

        i, j = base_hungarian_algorithm(jnp.array([[8, 4, 7], [5, 2, 3], [9, 6, 7], [9, 4, 8]]))  # cost 15
    """
    if 0 in jnp.shape(cost_matrix):
        return _empty()
    cost, transpose = _prepare(cost_matrix)
    row_of = _solve_wide(cost) - 1  # for each column of ``cost``, its row (-1: none)
    if transpose:  # the rows of ``cost`` are the original columns, all matched; list the matched original rows
        matched_rows = jnp.nonzero(row_of >= 0, size=cost.shape[0])[0]
        return matched_rows, row_of[matched_rows]
    col_of = jnp.zeros(cost.shape[0], int).at[jnp.where(row_of >= 0, row_of, cost.shape[0])].set(
        jnp.arange(cost.shape[1]), mode="drop")
    return jnp.arange(cost.shape[0]), col_of
