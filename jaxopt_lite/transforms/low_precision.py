r"""Low-precision parameters: stochastic rounding and Kahan-compensated updates.

A bfloat16 parameter keeps 8 significant bits, so an update below half its
spacing (``ulp``) is lost to round-to-nearest: ``bf16(1.0 + 1e-3) == 1.0``, and
SGD with small steps does not move at all. Two remedies, both for
``bfloat16`` and ``float16`` leaves (``float32``, ``float64`` and complex
leaves take the plain sum ``p + u``):

- **Stochastic rounding** (Gupta et al., 2015, "Deep Learning with Limited
  Numerical Precision"): the new value :math:`x = p + u` (in float32) is
  rounded to one of its two neighbours :math:`x_\downarrow \le x \le x_\uparrow`
  at random, up with probability equal to its fractional distance,

  .. math:: \mathrm{SR}(x) = \begin{cases} x_\uparrow & \text{with probability }
            (x - x_\downarrow) / (x_\uparrow - x_\downarrow) \\ x_\downarrow & \text{otherwise}
            \end{cases}
            \qquad\Longrightarrow\qquad \mathbb{E}[\mathrm{SR}(x)] = x,

  so small steps move the parameter in expectation. No state beyond a PRNG
  key. Either the pure function :func:`apply_updates_stochastic` (a stand-in
  for :func:`~jaxopt_lite.apply_updates`), or :func:`stochastic_rounding`, the
  same rounding as a transform to chain last, whose float32 updates
  ``apply_updates`` turns into exactly the rounded values.

- **Kahan summation** (Kahan, 1965; as ``kahan_sum`` in torch-optimi,
  Warner, 2023): :func:`kahan_summation` keeps, per low-precision parameter, a
  compensation buffer in the parameter's dtype holding the part of past
  updates that rounding dropped, and adds it back to the next update.
  Deterministic; memory one buffer in the parameter's dtype.

Every rounding whose result feeds further arithmetic is computed on float32
bit patterns with integer operations, never as a ``float32 -> bfloat16 ->
float32`` convert pair: XLA may delete such a pair under ``jit`` (it may
compute with excess precision; openxla/xla#41605), which would silently turn
both methods off. Casts to the parameter's dtype happen only when storing.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxopt_lite import _checks
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import GradientTransformation, pytree_factory
from jaxopt_lite.numerics import hashed_bits
from jaxopt_lite.wrappers.masking import MaskedNode

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))

_SIGN = np.uint32(0x80000000)
_ABS = np.uint32(0x7FFFFFFF)
_BF16_MAX = np.uint32(0x7F7F0000)  # float32 bits of bfloat16's largest finite value
_F16_MAX = np.uint32(0x477FE000)  # float32 bits of 65504, float16's largest finite value
_F16_TINY = np.uint32(0x33800000)  # float32 bits of 2**-24, float16's smallest subnormal
_F16_HALF_TINY = np.uint32(0x33000000)  # float32 bits of 2**-25
_INF = np.uint32(0x7F800000)


class StochasticRoundingState(NamedTuple):
    """The PRNG key of the next step (split at every step)."""

    rng_key: jax.Array


class KahanSummationState(NamedTuple):
    """Per bfloat16/float16 parameter, the compensation (what rounding dropped so far), in the parameter's
    dtype; a :class:`~jaxopt_lite.MaskedNode` (no buffer) for the other parameters."""

    compensation: Any


# ----------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------


@functools.cache
def _raw_key_shape(impl: str) -> tuple[int, ...]:
    del impl  # the cache key: the default implementation fixes the raw key's shape
    return jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape


def _describe(value: Any) -> str:
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is not None and shape is not None:
        return f"an array of dtype {dtype} and shape {tuple(shape)}"
    return repr(value)


def _as_key(owner: str, key: Any, *, allow_seed: bool) -> jax.Array:
    """``key`` as given if it is one PRNG key (typed, or a raw ``uint32`` key); an int seed if allowed."""
    if allow_seed and isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return jax.random.key(int(key))
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if tuple(shape) != ():
            raise TypeError(
                f"{owner}: key must be a single PRNG key, got a batch of keys of shape {tuple(shape)} "
                "(vmap over the keys instead)"
            )
        return key
    if dtype == jnp.uint32 and tuple(shape) == _raw_key_shape(str(jax.config.jax_default_prng_impl)):
        return jnp.asarray(key)
    seed = " or an int seed" if allow_seed else ""
    raise TypeError(
        f"{owner}: key must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)){seed}, "
        f"got {_describe(key)}"
    )


def _rounding_kind(owner: str, where: str, dtype: Any) -> bool:
    """Whether a parameter of ``dtype`` is rounded here (bfloat16, float16); ``False`` for a plain sum."""
    dtype = jnp.dtype(dtype)
    if dtype in _LOW_PRECISION:
        return True
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{owner}: cannot update parameter {where} of dtype {dtype}; optimizers need floating-point "
            "parameters: cast it, or keep it out of the optimizer (e.g. masked(tx, mask) with False for it)"
        )
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        raise TypeError(
            f"{owner}: parameter {where} has dtype {dtype}; only bfloat16 and float16 parameters are rounded "
            "here (float32, float64 and complex ones take the plain sum)"
        )
    return False


def _check_params(owner: str, params: Any) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        _rounding_kind(owner, jax.tree_util.keystr(path) or "<root>", jnp.result_type(leaf))


# ----------------------------------------------------------------------------
# Rounding float32 values to bfloat16/float16, on bit patterns.
# ----------------------------------------------------------------------------


def _bits(x: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(x, jnp.uint32)


def _float(bits: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(bits, jnp.float32)


def _f16_dropped_bits(a: jax.Array) -> jax.Array:
    """How many low bits of the float32 pattern ``a`` (of ``|x| >= 2**-24``) lie below float16's spacing at ``x``:
    13 in float16's normal range, ``126 - E`` (14 to 23) among its subnormals (spacing ``2**-24``)."""
    exponent = (a >> 23).astype(jnp.int32)
    return jnp.clip(jnp.where(exponent >= 113, 13, 126 - exponent), 13, 23).astype(jnp.uint32)


def _round_nearest(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` (float32) rounded to nearest, ties to even, onto ``dtype``'s values, still as float32.

    Equals ``x.astype(dtype).astype(jnp.float32)`` (subnormals, overflow to ``inf`` and ``nan`` included),
    computed on bit patterns so that no compiler elides the rounding.
    """
    bits = _bits(x)
    a = bits & _ABS
    sign = bits & _SIGN
    if jnp.dtype(dtype) == jnp.bfloat16:
        r = (a + np.uint32(0x7FFF) + ((a >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    else:
        k = _f16_dropped_bits(a)
        mask = (np.uint32(1) << k) - np.uint32(1)
        r = (a + (mask >> 1) + ((a >> k) & np.uint32(1))) & ~mask
        r = jnp.where(a >= np.uint32(103 << 23), r, jnp.where(a > _F16_HALF_TINY, _F16_TINY, np.uint32(0)))
        r = jnp.where(r > _F16_MAX, _INF, r)
    r = jnp.where(a >= _INF, a, r)  # inf and nan stay
    return _float(r | sign)


def _random_bits(seed: jax.Array, like: jax.Array, dtype: Any) -> jax.Array:
    """Random ``uint16`` or ``uint32`` bits shaped and sharded like ``like`` from a ``uint32`` ``seed``: a
    counter-based hash per entry (:func:`~jaxopt_lite.numerics.hashed_bits`; ``jax.random.bits`` per entry costs
    ten times an Adam step on CPU)."""
    bits = hashed_bits(seed, like)
    return (bits >> 16).astype(jnp.uint16) if jnp.dtype(dtype) == jnp.uint16 else bits


def _leaf_seeds(key: jax.Array, n: int) -> jax.Array:
    """One ``uint32`` seed per leaf from one ``jax.random`` draw (not ``n`` key splits: cheaper to compile)."""
    return jax.random.bits(key, (max(n, 1),), jnp.uint32)


def _round_stochastic_f32(x: jax.Array, dtype: Any, seed: jax.Array) -> jax.Array:
    """``x`` (float32) stochastically rounded onto ``dtype`` (bfloat16 or float16), still as float32.

    Random bits below ``dtype``'s spacing are added to the magnitude's bit pattern, which is then truncated:
    a carry out of the dropped bits happens with probability (dropped bits) / (spacing), the fractional
    distance. Values beyond ``dtype``'s largest finite one, ``inf`` and ``nan`` round to nearest instead.
    """
    bits = _bits(x)
    a = bits & _ABS
    sign = bits & _SIGN
    if jnp.dtype(dtype) == jnp.bfloat16:
        noise = _random_bits(seed, x, jnp.uint16).astype(jnp.uint32)
        r = (a + noise) & np.uint32(0xFFFF0000)  # no carry into the sign: a <= bfloat16's max where kept
        in_range = a <= _BF16_MAX
    else:
        noise = _random_bits(seed, x, jnp.uint32)
        k = _f16_dropped_bits(a)
        mask = (np.uint32(1) << k) - np.uint32(1)
        r = (a + (noise & mask)) & ~mask
        # |x| < 2**-24: neighbours 0 and 2**-24, up with probability |x| / 2**-24 = m / 2**s for the significand
        # m (24 bits) and s = 126 - E >= 24; compared on 32 random bits (exact while s <= 32, |x| >= 2**-33).
        exponent = (a >> 23).astype(jnp.int32)
        significand = jnp.where(exponent > 0, (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000), a)
        s = 126 - jnp.maximum(exponent, 1)
        up = (noise >> jnp.clip(32 - s, 0, 8).astype(jnp.uint32)) < (
            significand >> jnp.clip(s - 32, 0, 31).astype(jnp.uint32)
        )
        r = jnp.where(exponent >= 103, r, jnp.where(up, _F16_TINY, np.uint32(0)))
        in_range = a <= _F16_MAX
    return jnp.where(in_range, _float(r | sign), _round_nearest(x, dtype))


def round_stochastic(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
    r"""``x`` stochastically rounded to ``dtype`` (``bfloat16`` or ``float16``): unbiased, :math:`\mathbb{E}[r] = x`.

    .. math:: r = x_\uparrow \text{ with probability } \frac{x - x_\downarrow}{x_\uparrow - x_\downarrow},
              \text{ else } x_\downarrow,

    for the two neighbours :math:`x_\downarrow \le x \le x_\uparrow` of ``x`` in ``dtype``; a value of
    ``dtype`` comes back unchanged, and the result is always one of the two neighbours. ``x`` is taken in
    float32 (a float64 ``x`` is first rounded to nearest float32). The probability is exact (the rounding
    adds random bits below ``dtype``'s spacing to the float32 bit pattern and truncates), except for float16
    below ``2**-33`` in magnitude, where it is rounded down to a multiple of ``2**-32`` (a bias below
    ``2**-56`` in absolute value). ``inf`` and ``nan`` stay as they are; a finite ``x`` beyond ``dtype``'s
    largest finite value rounds to nearest (to that value or to ``inf``, as a plain cast), so stochastic
    rounding never overflows where round-to-nearest would not. For ``float32``, ``float64`` or a complex
    ``dtype`` it is a plain cast. ``key`` is a PRNG key (typed or raw); each element draws its own bits.
    """
    owner = "round_stochastic"
    key = _as_key(owner, key, allow_seed=False)
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{owner}: x must be real, got dtype {x.dtype}")
    dtype = jnp.dtype(dtype)
    if dtype in _LOW_PRECISION:
        seed = jax.random.bits(key, (), jnp.uint32)
        return _round_stochastic_f32(x.astype(jnp.float32), dtype, seed).astype(dtype)
    if jnp.issubdtype(dtype, jnp.inexact) and dtype.itemsize >= 4:
        return x.astype(dtype)
    raise TypeError(
        f"{owner}: dtype must be bfloat16 or float16 (or float32, float64, complex: a plain cast), got {dtype}"
    )


# ----------------------------------------------------------------------------
# Stochastic rounding of parameter updates.
# ----------------------------------------------------------------------------


def _is_none(x: Any) -> bool:
    return x is None


def apply_updates_stochastic(params: Any, updates: Any, key: jax.Array) -> Any:
    r"""``params + updates`` with stochastic rounding: :func:`~jaxopt_lite.apply_updates` for low-precision params.

    Each ``bfloat16``/``float16`` parameter becomes

    .. math:: p \leftarrow \mathrm{SR}\big(\mathrm{f32}(p) + \mathrm{f32}(u)\big),
              \qquad \mathbb{E}[p_{\text{new}}] = \mathrm{f32}(p) + \mathrm{f32}(u),

    (:func:`round_stochastic`), so steps far below the parameter's spacing still move it in expectation,
    where :func:`~jaxopt_lite.apply_updates` rounds them away. ``float32``, ``float64`` and complex
    parameters get exactly what :func:`~jaxopt_lite.apply_updates` gives (``(p + u)`` in the parameter's
    dtype); ``None`` updates leave their parameter, ``None`` parameters stay ``None``.

    ``key`` is a PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``): split it and pass a fresh one
    at every step (reusing a key correlates the roundings of successive steps). Leaf ``i`` of the
    flattened tree takes seed ``jax.random.bits(key, (n_leaves,), jnp.uint32)[i]``, and each element a
    hash of its index and that seed (:func:`~jaxopt_lite.numerics.hashed_bits`). Pure: works under ``jit``,
    ``vmap`` and ``scan``. Memory: no state; one random word per element, transient.

    :func:`stochastic_rounding` is the same rounding as a transform to chain last.
    """
    owner = "apply_updates_stochastic"
    key = _as_key(owner, key, allow_seed=False)
    if jax.tree.structure(updates, is_leaf=_is_none) != jax.tree.structure(params, is_leaf=_is_none):
        try:
            _tree.check_same_structure(updates, params, "updates", "params")
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from None
    flat_params, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)
    flat_updates = treedef.flatten_up_to(updates)
    seeds = _leaf_seeds(key, len(flat_params))
    out = []
    for i, ((path, p), u) in enumerate(zip(flat_params, flat_updates)):
        if p is None or u is None:
            out.append(p)
            continue
        p = jnp.asarray(p)
        where = jax.tree_util.keystr(path) or "<root>"
        low = _rounding_kind(owner, where, p.dtype)
        if jnp.shape(u) != p.shape:
            raise ValueError(f"{owner}: the update of {where} has shape {jnp.shape(u)}, the parameter {p.shape}")
        if low:
            x = p.astype(jnp.float32) + jnp.asarray(u).astype(jnp.float32)
            out.append(_round_stochastic_f32(x, p.dtype, seeds[i]).astype(p.dtype))
        else:
            out.append((p + u).astype(p.dtype))
    return treedef.unflatten(out)


def _landing_update(target: jax.Array, p32: jax.Array) -> jax.Array:
    """The float32 update ``target - p`` (0 where they are equal, ``inf`` included)."""
    return jnp.where(target == p32, jnp.zeros_like(p32), target - p32)


@pytree_factory
def stochastic_rounding(key: jax.Array | int) -> GradientTransformation:
    r"""Stochastic rounding as the last transform of a chain: ``chain(lion(1e-4), stochastic_rounding(key))``.

    For each ``bfloat16``/``float16`` parameter the update becomes

    .. math:: u' = \mathrm{SR}\big(\mathrm{f32}(p) + \mathrm{f32}(u)\big) - \mathrm{f32}(p)
              \quad\text{(in float32)},

    so that :func:`~jaxopt_lite.apply_updates` lands on the stochastically rounded value (see
    :func:`round_stochastic`; :math:`\mathbb{E}` of the new parameter is :math:`p + u`); other
    parameters' updates pass unchanged. The state is a PRNG key, split at every step, so ``jit`` and
    ``scan`` draw fresh bits each step; step ``t`` rounds exactly as
    ``apply_updates_stochastic(params, updates, k_t)`` with ``_, k_t = jax.random.split(key_t)``.
    ``key`` is a PRNG key (typed or raw) or an int seed. Memory: none per parameter (a key).

    Exactness: :func:`~jaxopt_lite.apply_updates` computes ``bf16(f32(p) + u')`` and lands exactly on
    the rounded value ``r`` (up to the sign of a zero: ``p + (-p)`` is ``+0``). Where ``|p + u| <= |p| / 2``
    the sum cancels: it is exact in float32 (Sterbenz), and ``r - p`` is then a float32 number too;
    elsewhere ``|r| >~ |p| / 2`` and the float32 rounding of ``r - p`` is far below half a spacing of ``r``.
    Two exceptions, reachable by bfloat16 only: ``r - p`` overflowing float32 (``|r - p| > 3.4e38``), and
    a step below float32's smallest normal (``1.2e-38``) where XLA flushes subnormals to zero (as it does
    on CPU). :func:`apply_updates_stochastic` needs no such argument. Chain this transform last, after
    the learning rate; it needs ``params``.
    """
    owner = "stochastic_rounding"
    key = _as_key(owner, key, allow_seed=True)

    def init(params):
        _check_params(owner, params)
        return StochasticRoundingState(rng_key=key)

    def update(updates, state, params=None):
        _checks.check_state_type(owner, state, StochasticRoundingState)
        _tree.require_params(owner, updates, params, "the rounding depends on them")
        next_key, step_key = jax.random.split(state.rng_key)
        flat_params, treedef = jax.tree_util.tree_flatten_with_path(params)
        flat_updates = treedef.flatten_up_to(updates)
        out, seeds = [], _leaf_seeds(step_key, len(flat_params))
        for i, ((path, p), u) in enumerate(zip(flat_params, flat_updates)):
            p = jnp.asarray(p)
            if not _rounding_kind(owner, jax.tree_util.keystr(path) or "<root>", p.dtype):
                out.append(u)
                continue
            p32 = p.astype(jnp.float32)
            r = _round_stochastic_f32(p32 + jnp.asarray(u).astype(jnp.float32), p.dtype, seeds[i])
            out.append(_landing_update(r, p32))
        return treedef.unflatten(out), StochasticRoundingState(rng_key=next_key)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# Kahan summation.
# ----------------------------------------------------------------------------


@pytree_factory
def kahan_summation() -> GradientTransformation:
    r"""Kahan-compensated updates for ``bfloat16``/``float16`` parameters: ``chain(adamw(1e-4), kahan_summation())``.

    With the compensation :math:`c` (initially 0, kept in the parameter's dtype) and
    :math:`\mathrm{rd}` round-to-nearest onto the parameter's dtype, each step computes, in float32,

    .. math:: y = u + c, \qquad t = \mathrm{rd}(p + y), \qquad u' = t - p, \qquad
              c \leftarrow \mathrm{rd}\big(y - (t - p)\big),

    and returns :math:`u'` (float32), on which :func:`~jaxopt_lite.apply_updates` lands at :math:`t`
    (see below). What rounding drops from a step is carried to the next, so the parameter tracks the
    exact sum of the updates to within about one spacing, however small each step is (plain bfloat16
    steps below half a spacing are lost entirely). Deterministic. As torch-optimi's ``kahan_sum``;
    here :math:`y` is kept in float32 rather than rounded to the parameter's dtype.

    Only bfloat16 and float16 parameters are compensated; others (float32, float64, complex) pass
    unchanged and keep no buffer (a :class:`~jaxopt_lite.MaskedNode`). Chain it last, after the
    learning rate; it needs ``params``. Memory: one buffer per low-precision parameter, in its dtype
    (2 bytes per element). A float32 buffer is accepted too (what :func:`~jaxopt_lite.low_precision_state`
    hands over, which rounds the result back).

    Exactness: ``apply_updates`` computes ``rd(f32(p) + u')``, which is :math:`t` (the argument of
    :func:`stochastic_rounding`: :math:`t` is a neighbour of the float32 sum), except where ``t - p``
    overflows float32 or is a float32 subnormal flushed to zero. The compensation is computed from the
    value ``apply_updates`` lands on, so it stays exact even then. A non-finite step leaves the compensation
    at 0 (and the parameter as the plain sum would).
    """
    owner = "kahan_summation"

    def init(params):
        _check_params(owner, params)
        return KahanSummationState(
            compensation=jax.tree.map(
                lambda p: _tree.zeros_like(p) if jnp.result_type(p) in _LOW_PRECISION else MaskedNode(), params
            )
        )

    def update(updates, state, params=None):
        _checks.check_state_type(owner, state, KahanSummationState)
        _tree.require_params(owner, updates, params, "the rounding depends on them")
        treedef = jax.tree.structure(params)
        try:
            flat_comp = treedef.flatten_up_to(state.compensation)
        except (ValueError, TypeError):
            raise ValueError(
                f"{owner}: the state's compensation does not have the structure of params "
                "(a state made by init for other parameters?)"
            ) from None
        new_updates, new_comp = [], []
        for p, u, c in zip(treedef.flatten_up_to(params), treedef.flatten_up_to(updates), flat_comp):
            p = jnp.asarray(p)
            if p.dtype not in _LOW_PRECISION:
                new_updates.append(u)
                new_comp.append(c)
                continue
            # float32: the compensation as low_precision_state hands it over (widened, rounded back after).
            if isinstance(c, MaskedNode) or jnp.shape(c) != p.shape or jnp.result_type(c) not in (p.dtype, jnp.float32):
                raise ValueError(
                    f"{owner}: the state's compensation for a {p.dtype} parameter of shape {p.shape} is "
                    f"{_tree.describe_node(c)} (a state made by init for other parameters?)"
                )
            p32 = p.astype(jnp.float32)
            y = jnp.asarray(u).astype(jnp.float32) + c.astype(jnp.float32)
            step = _landing_update(_round_nearest(p32 + y, p.dtype), p32)
            landed = _round_nearest(p32 + step, p.dtype)  # what apply_updates computes
            carry = y - _landing_update(landed, p32)
            carry = jnp.where(jnp.isfinite(carry), carry, jnp.zeros_like(carry))
            new_updates.append(step)
            new_comp.append(carry.astype(p.dtype))
        return treedef.unflatten(new_updates), KahanSummationState(compensation=treedef.unflatten(new_comp))

    return GradientTransformation(init, update)
