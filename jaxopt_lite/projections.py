"""Euclidean projections onto convex sets, on pytrees (Optax's ``optax.projections``).

Each function returns ``argmin_p ||x - p||_2^2`` over its set, with the whole tree ``x`` taken as one vector
(the box and orthant projections act elementwise, so per leaf and per vector agree). All are exact, jittable and
vmappable, and every scalar argument (``scale``, ``b``, ...) may be a traced array.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxopt_lite import tree as _tree

Tree = Any


def _like(tree: Tree, value: Tree) -> Tree:
    """``value`` as a tree shaped like ``tree``: a tree of the same structure, or one scalar for every leaf."""
    if jax.tree.structure(value) == jax.tree.structure(tree):
        return value
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(value)) and jnp.ndim(value) == 0:
        return jax.tree.map(lambda _: value, tree)
    _tree.check_same_structure(tree, value, "tree", "bound")
    return value


def projection_non_negative(tree: Tree) -> Tree:
    r"""Projection onto the non-negative orthant: :math:`p = \max(x, 0)` elementwise."""
    return jax.tree.map(jax.nn.relu, tree)


def projection_box(tree: Tree, lower: Any, upper: Any) -> Tree:
    r"""Projection onto the box :math:`\text{lower} \le p \le \text{upper}`: :math:`p = \text{clip}(x, l, u)`.

    ``lower`` and ``upper`` are scalars or trees of ``tree``'s structure (leaves broadcast against its leaves).
    """
    return jax.tree.map(jnp.clip, tree, _like(tree, lower), _like(tree, upper))


def projection_hypercube(tree: Tree, scale: Any = 1) -> Tree:
    r"""Projection onto the hypercube :math:`0 \le p \le \text{scale}` (the unit cube by default)."""
    return projection_box(tree, lower=0, upper=scale)


def _simplex_threshold(values: jax.Array, scale: jax.Array) -> jax.Array:
    """The ``tau`` with ``sum(max(values - tau, 0)) = scale`` (Held et al. 1974; Condat 2016, sort-based).

    With ``u`` sorted decreasingly and ``c_k = u_1 + ... + u_k``, the support size is
    ``rho = #{k : u_k > (c_k - scale) / k}`` and ``tau = (c_rho - scale) / rho``.
    """
    u = jnp.sort(values)[::-1]
    cumsum = jnp.cumsum(u)
    k = jnp.arange(1, values.size + 1, dtype=values.dtype)
    rho = jnp.count_nonzero(u * k > cumsum - scale)
    return (cumsum[rho - 1] - scale) / rho


@jax.custom_jvp
def _project_simplex_vector(values: jax.Array, scale: jax.Array) -> jax.Array:
    return jax.nn.relu(values - _simplex_threshold(values, scale))


@_project_simplex_vector.defjvp
def _project_simplex_vector_jvp(primals, tangents):
    # On the support S of p: p_S = x_S - tau with tau = (sum x_S - scale) / |S|, so
    # dp = 1_S * (dx - (<1_S, dx> - dscale) / |S|); off the support dp = 0.
    values, scale = primals
    dvalues, dscale = tangents
    p = _project_simplex_vector(values, scale)
    support = (p > 0).astype(values.dtype)
    card = jnp.sum(support)
    dtau = (jnp.dot(support, dvalues) - dscale) / card
    return p, support * (dvalues - dtau)


def projection_simplex(tree: Tree, scale: Any = 1) -> Tree:
    r"""Projection onto the simplex :math:`\{p \ge 0, \sum_i p_i = \text{scale}\}` (the probability simplex by
    default), over all leaves together.

    :math:`p = \max(x - \tau, 0)` with :math:`\tau` such that the sum is ``scale`` (sort-based, :math:`O(n \log n)`).
    Differentiable: the JVP is that of the active-set formula (Martins & Astudillo, 2016). ``scale > 0``.
    """
    values, unravel = ravel_pytree(tree)
    scale = jnp.asarray(scale, values.dtype)
    return unravel(_project_simplex_vector(values, scale))


def projection_l1_sphere(tree: Tree, scale: Any = 1) -> Tree:
    r"""Projection onto the l1 sphere :math:`\|p\|_1 = \text{scale}`: :math:`p = \text{sign}(x) \cdot
    \Pi_{\text{simplex}}(|x|)`, with sign +1 at :math:`x_i = 0` (either sign is nearest there; Optax's 0
    loses that coordinate's share and leaves :math:`\|p\|_1 < \text{scale}` when :math:`\|x\|_1 < \text{scale}`)."""
    magnitudes = projection_simplex(jax.tree.map(jnp.abs, tree), scale)

    def signed(x, m):
        direction = jnp.sign(x)
        return jnp.where(direction == 0, jnp.ones_like(direction), direction) * m

    return jax.tree.map(signed, tree, magnitudes)


def projection_l1_ball(tree: Tree, scale: Any = 1) -> Tree:
    r"""Projection onto the l1 ball :math:`\|p\|_1 \le \text{scale}`: ``tree`` itself if inside, else its
    projection on the sphere (Duchi et al., 2008)."""
    inside = _tree.norm(tree, ord=1) <= scale
    return jax.lax.cond(inside, lambda t: t, lambda t: projection_l1_sphere(t, scale), tree)


def projection_l2_sphere(tree: Tree, scale: Any = 1) -> Tree:
    r"""Projection onto the l2 sphere :math:`\|p\|_2 = \text{scale}`: :math:`p = \text{scale} \cdot x / \|x\|_2`
    (undefined at :math:`x = 0`, where every point of the sphere is nearest)."""
    return _tree.scale(scale / _tree.norm(tree), tree)


def projection_l2_ball(tree: Tree, scale: Any = 1) -> Tree:
    r"""Projection onto the l2 ball :math:`\|p\|_2 \le \text{scale}`: :math:`p = x \cdot \text{scale} /
    \max(\|x\|_2, \text{scale})`."""
    squared_norm = _tree.norm(tree, squared=True)
    return _tree.scale(scale / jnp.sqrt(jnp.maximum(squared_norm, jnp.square(scale))), tree)


def projection_linf_ball(tree: Tree, scale: Any = 1) -> Tree:
    r"""Projection onto the l-infinity ball :math:`\|p\|_\infty \le \text{scale}`: :math:`p = \text{clip}(x,
    -\text{scale}, \text{scale})`."""
    return projection_box(tree, lower=jnp.negative(scale), upper=scale)


def projection_vector(x: Tree, a: Tree) -> Tree:
    r"""Projection onto the line spanned by ``a``: :math:`p = \frac{\langle x, a \rangle}{\langle a, a \rangle} a`."""
    _tree.check_same_structure(x, a, "x", "a")
    return _tree.scale(_tree.vdot(x, a) / _tree.vdot(a, a), a)


def projection_hyperplane(x: Tree, a: Tree, b: Any) -> Tree:
    r"""Projection onto the hyperplane :math:`\langle a, p \rangle = b`:
    :math:`p = x + \frac{b - \langle a, x \rangle}{\langle a, a \rangle} a`."""
    _tree.check_same_structure(x, a, "x", "a")
    return _tree.add_scale(x, (b - _tree.vdot(x, a)) / _tree.vdot(a, a), a)


def projection_halfspace(x: Tree, a: Tree, b: Any) -> Tree:
    r"""Projection onto the halfspace :math:`\langle a, p \rangle \le b`:
    :math:`p = x + \min\left(0, \frac{b - \langle a, x \rangle}{\langle a, a \rangle}\right) a`."""
    _tree.check_same_structure(x, a, "x", "a")
    return _tree.add_scale(x, jnp.minimum((b - _tree.vdot(x, a)) / _tree.vdot(a, a), 0), a)


__all__ = [
    "projection_box",
    "projection_halfspace",
    "projection_hypercube",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l1_sphere",
    "projection_l2_ball",
    "projection_l2_sphere",
    "projection_linf_ball",
    "projection_non_negative",
    "projection_simplex",
    "projection_vector",
]
