r"""L-BFGS: a limited-memory quasi-Newton direction, chained with a line search.

:func:`scale_by_lbfgs` turns the gradient into the L-BFGS direction; :func:`lbfgs` chains it with a
sign flip (or a learning rate) and, by default, the strong-Wolfe zoom line search of
:mod:`jaxopt_lite.linesearch`. A full-batch loop, compiled once, runs entirely on device::

    opt = lbfgs()
    value_and_grad = value_and_grad_from_state(f)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
        return apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count, grad = tree.get(state, "count"), tree.get(state, "grad")
        return (count == 0) | ((count < max_iter) & (tree.norm(grad) >= tol))

    params, state = jax.jit(lambda p: jax.lax.while_loop(keep_going, step, (p, opt.init(p))))(params)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_lite import numerics as _numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    alias,
    chain,
    identity,
    pytree_factory,
)
from jaxopt_lite.linesearch import scale_by_zoom_linesearch
from jaxopt_lite.transforms.scaling import scale, scale_by_learning_rate


class ScaleByLBFGSState(NamedTuple):
    """The L-BFGS memory.

    ``count``: iterations so far (int32, saturating); ``params`` and ``updates``: the parameters and
    incoming updates (gradients) of the previous call; ``diff_params_memory`` and
    ``diff_updates_memory``: the last ``memory_size`` differences :math:`s_i = w_{i+1} - w_i` and
    :math:`y_i = g_{i+1} - g_i`, each leaf stacked along a new leading axis of length ``memory_size``
    and written as a ring buffer (slot ``i % memory_size``); ``weights_memory``: the matching
    :math:`\\rho_i = 1 / \\langle s_i, y_i\\rangle` (0 for an empty slot or a degenerate pair).
    """

    count: jax.Array
    params: Any
    updates: Any
    diff_params_memory: Any
    diff_updates_memory: Any
    weights_memory: jax.Array


def _real_vdot(a: Any, b: Any) -> jax.Array:
    return jnp.real(_tree.vdot(a, b))


def _inverse_hessian_product(
    updates: Any, diff_params: Any, diff_updates: Any, weights: jax.Array, gamma: jax.Array, oldest: jax.Array
) -> Any:
    """``H g`` by the two-loop recursion over the ring buffers, oldest slot first (see :func:`scale_by_lbfgs`)."""
    memory_size = weights.shape[0]
    newest_last = (oldest + jnp.arange(memory_size)) % memory_size

    def pair(i):
        return jax.tree.map(lambda memory: memory[i], (diff_params, diff_updates))

    def newest_to_oldest(q, i):
        s, y = pair(i)
        alpha = weights[i] * _real_vdot(s, q)
        return _tree.add_scale(q, -alpha, y), alpha

    q, alphas = jax.lax.scan(newest_to_oldest, updates, newest_last, reverse=True)

    def oldest_to_newest(r, i_alpha):
        i, alpha = i_alpha
        s, y = pair(i)
        beta = weights[i] * _real_vdot(y, r)
        return _tree.add_scale(r, alpha - beta, s), None

    r, _ = jax.lax.scan(oldest_to_newest, _tree.scale(gamma, q), (newest_last, alphas))
    return r


@pytree_factory
def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True) -> GradientTransformation:
    r"""The L-BFGS direction: the updates multiplied by a limited-memory inverse-Hessian estimate.

    At call :math:`k` with parameters :math:`w_k` and incoming updates (gradients) :math:`g_k`, the
    newest pair :math:`s_{k-1} = w_k - w_{k-1}`, :math:`y_{k-1} = g_k - g_{k-1}`,
    :math:`\rho_{k-1} = 1/\langle s_{k-1}, y_{k-1}\rangle` (0 if that is 0) enters the memory of the last
    :math:`m` pairs, and the output is :math:`H_k g_k`, where

    .. math::
        H_k = V_{k-1}^\top \cdots V_{k-m}^\top\, \gamma_k I\, V_{k-m} \cdots V_{k-1}
              + \sum_{j=k-m}^{k-1} \rho_j\, V_{k-1}^\top \cdots V_{j+1}^\top s_j s_j^\top V_{j+1} \cdots V_{k-1},
        \qquad V_j = I - \rho_j y_j s_j^\top,

    the BFGS update of :math:`\gamma_k I` by the stored pairs. It is computed by the two-loop recursion
    (Nocedal & Wright, Algorithm 7.4), :math:`O(m)` inner products:

    .. math::
        &q \leftarrow g_k;\quad \text{for } i = k-1, \ldots, k-m:\quad
            \alpha_i = \rho_i \langle s_i, q\rangle,\quad q \leftarrow q - \alpha_i y_i; \\
        &r \leftarrow \gamma_k q;\quad \text{for } i = k-m, \ldots, k-1:\quad
            \beta_i = \rho_i \langle y_i, r\rangle,\quad r \leftarrow r + (\alpha_i - \beta_i) s_i; \\
        &H_k g_k = r.

    With ``scale_init_precond``, :math:`\gamma_k = \langle s_{k-1}, y_{k-1}\rangle / \|y_{k-1}\|^2`
    (1 if :math:`y_{k-1} = 0`) and :math:`\gamma_0 = 1/\max(1, \|g_0\|)`, so that the first step, with no
    curvature known yet, has length at most 1; without it :math:`\gamma_k = 1`. Before :math:`m` pairs
    are known the empty slots have :math:`\rho = 0` and drop out.

    The output is a descent direction's negative (a preconditioned gradient): chain it with
    ``scale(-1.0)`` or a learning rate and a line search, as :func:`lbfgs` does. The pair is formed from
    the parameters and updates of consecutive calls, so the memory follows the steps actually taken.

    Args:
        memory_size: the number :math:`m` of pairs kept (a Python int >= 1).
        scale_init_precond: scale the initial estimate :math:`\gamma_k I` as above.

    State: :class:`ScaleByLBFGSState`, :math:`2m + 2` copies of the parameters (memory per parameter)
    plus :math:`m` scalars. ``update`` needs ``params``.

    References: Nocedal, *Updating quasi-Newton matrices with limited storage*, 1980; Liu & Nocedal,
    *On the limited memory BFGS method for large scale optimization*, 1989; Nocedal & Wright,
    *Numerical Optimization*, 2006, Algorithms 7.4 and 7.5.
    """
    owner = "scale_by_lbfgs"
    if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
        raise ValueError(
            f"{owner}: memory_size must be a Python int >= 1 (it sets the state's shape), got {memory_size!r}"
        )

    def init(params):
        _tree.check_floating(params, owner)
        memory = jax.tree.map(lambda p: jnp.zeros((memory_size, *jnp.shape(p)), jnp.result_type(p)), params)
        leaves = jax.tree.leaves(params)
        dtype = jnp.promote_types(jnp.result_type(*leaves), jnp.float32) if leaves else jnp.float32
        real_dtype = jnp.finfo(dtype).dtype  # inner products accumulate in at least float32
        return ScaleByLBFGSState(
            count=_tree.zero_count(),
            params=_tree.zeros_like(params),
            updates=_tree.zeros_like(params),
            diff_params_memory=memory,
            diff_updates_memory=memory,
            weights_memory=jnp.zeros([memory_size], real_dtype),
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params (the pairs s = w_k - w_(k-1) are built from them)")
        _tree.check_same_shapes(updates, params, "updates", "params")
        first = state.count == 0
        newest = (state.count - 1) % memory_size  # the slot of the pair made by the last step
        oldest = state.count % memory_size

        # 1. Store the newest pair (zeros on the first call, when there is no previous point).
        s = jax.tree.map(lambda w, w_prev: jnp.where(first, 0, w - w_prev).astype(w.dtype), params, state.params)
        y = jax.tree.map(lambda g, g_prev: jnp.where(first, 0, g - g_prev).astype(g.dtype), updates, state.updates)
        sy = _real_vdot(s, y)
        weight = _numerics.safe_div(1.0, sy).astype(state.weights_memory.dtype)
        memories = (state.diff_params_memory, state.diff_updates_memory)
        diff_params, diff_updates = jax.tree.map(lambda memory, new: memory.at[newest].set(new), memories, (s, y))
        weights = state.weights_memory.at[newest].set(weight)

        # 2. The scale gamma of the initial estimate gamma * I.
        if scale_init_precond:
            yy = _real_vdot(y, y)
            gamma = jnp.where(yy > 0, _numerics.safe_div(sy, yy), 1.0)
            update_norm = jnp.sqrt(_real_vdot(updates, updates))
            gamma = jnp.where(first, 1.0 / jnp.maximum(1.0, jax.lax.stop_gradient(update_norm)), gamma)
        else:
            gamma = jnp.ones([], weights.dtype)

        # 3. H g by the two-loop recursion.
        direction = _inverse_hessian_product(updates, diff_params, diff_updates, weights, gamma, oldest)
        new_state = ScaleByLBFGSState(
            count=_tree.safe_increment(state.count),
            params=params,
            updates=updates,
            diff_params_memory=diff_params,
            diff_updates_memory=diff_updates,
            weights_memory=weights,
        )
        return direction, new_state

    return GradientTransformation(init, update)


@alias
def lbfgs(
    learning_rate: ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: GradientTransformation | None = scale_by_zoom_linesearch(
        max_linesearch_steps=20, initial_guess_strategy="one"
    ),
) -> GradientTransformationExtraArgs:
    r"""L-BFGS (Liu & Nocedal, 1989): :math:`w_{k+1} = w_k - \eta_k H_k \nabla f(w_k)`.

    ``chain(scale_by_lbfgs(memory_size, scale_init_precond), scale(-1) or scale_by_learning_rate(lr),
    linesearch)``. :math:`H_k` is the limited-memory inverse-Hessian estimate of
    :func:`scale_by_lbfgs`; the step size :math:`\eta_k` comes from the line search, by default the
    strong-Wolfe zoom search (:func:`~jaxopt_lite.scale_by_zoom_linesearch` with 20 trials, first trial
    1), and ``learning_rate`` (default none: 1) scales the direction before the search.

    ``update`` takes ``value=f(w)``, ``grad=grad f(w)`` and ``value_fn=f`` (and ``f``'s extra keyword
    arguments); :func:`~jaxopt_lite.value_and_grad_from_state` reuses the line search's last
    evaluation, so each iteration costs only the search's evaluations (see the module docstring for a
    complete ``lax.while_loop`` loop). With ``linesearch=None`` the step is ``-lr * H g``.

    Memory per parameter: :math:`2m + 2` copies for the L-BFGS memory plus one (the stored gradient) for
    the line search. Best for small and medium deterministic problems.

    References: Liu & Nocedal, *On the limited memory BFGS method for large scale optimization*, 1989;
    Nocedal & Wright, *Numerical Optimization*, 2006, Algorithms 3.5, 3.6, 7.4 and 7.5.
    """
    scaling = scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate)
    return chain(
        scale_by_lbfgs(memory_size, scale_init_precond), scaling, identity() if linesearch is None else linesearch
    )
