r"""Blockwise-quantized optimizer state: 8-bit or 4-bit moments for any optimizer.

:func:`quantize_state` wraps any gradient transformation and stores the floating-point leaves of its state that
are shaped like a parameter (Adam's ``mu`` and ``nu``, Lion's and SGD's momentum, ``MultiSteps``' accumulator,
...) as one small integer code per entry and one scale per block of entries. The state is dequantized before
each inner update and quantized again after it; the inner transformation never sees codes.

Scheme (Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR 2022,
arXiv:2110.02861)
----------------------------------------------------------------------------------------------------------------
A leaf is cut into blocks of ``B = block_size`` consecutive entries (layout below). A block
:math:`x_1, \dots, x_B` is stored as its absolute maximum and one code per entry,

.. math::

    s = \max_i |x_i|, \qquad q_i = \operatorname*{arg\,min}_k \left| \frac{x_i}{s} - c_k \right|, \qquad
    \hat x_i = c_{q_i} \, s,

the nearest value of a fixed codebook :math:`c_0 < c_1 < \dots < c_{2^n - 1}` in :math:`[-1, 1]` (``n = bits``;
a tie goes to the larger magnitude). Both codebooks are *dynamic* (non-linear): they hold about as many values
per decade of magnitude, so the small entries of a block keep a relative precision that a linear map would lose.

- **Signed map** (dynamic tree quantization), for first moments, momenta, accumulated gradients: after the
  sign bit, the number ``e`` of zero bits before the first one bit gives the decade :math:`10^{-e}`
  (``e = 0 .. n - 2``), and the ``n - 2 - e`` bits after that one bit index a split of :math:`[0.1, 1]` into
  :math:`2^{n-2-e}` equal bins, each represented by its centre:

  .. math:: c = \pm 10^{-e} \left(0.1 + 0.9 \, \frac{k + 1/2}{2^{\,n-2-e}}\right), \qquad
            0 \le k < 2^{\,n-2-e}, \; 0 \le e \le n - 2,

  plus :math:`0` (no one bit) and :math:`+1` (in place of the redundant negative zero, so that a block's
  largest positive entry is exact): :math:`2^n` values in all. A negative entry beyond the most negative value
  takes that value.
- **Unsigned map** (the paper's *dynamic quantization*), for second moments, which are never negative: the sign
  bit becomes one more fraction bit at every decade, :math:`c = 10^{-e} (0.1 + 0.9 (k + 1/2) / 2^{n-1-e})`,
  :math:`0 \le k < 2^{n-1-e}`, plus :math:`0` and :math:`1`. A negative entry is stored as 0, and a positive
  entry is never rounded to 0 (it takes the smallest positive value instead): a second moment rounded to zero
  would turn :math:`m / (\sqrt{v} + \epsilon)` into a step of size :math:`m / \epsilon`.

For ``bits=8`` these are the published maps (``bitsandbytes.functional.create_dynamic_map(signed)``: signed
values from :math:`\pm 5.5 \cdot 10^{-7}` to :math:`\pm 0.99297`, and :math:`1`; unsigned from
:math:`3.25 \cdot 10^{-7}` to :math:`0.99648`, and :math:`1`); ``bits=4`` is the same construction with four
bits (signed: :math:`\pm\{0.0055, 0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875\}`, 0, 1; unsigned: three
decades, 0.00325 to 0.94375, and 1). The error of an entry is at most half the largest gap of the map (the gaps
to :math:`\pm 1` counted whole) times its block's scale (:func:`max_rounding_error`; the unsigned map's bound is
for non-negative entries):

========  ====================  ====================
bits      signed map            unsigned map
========  ====================  ====================
8         0.0070313 s           0.0035157 s
4         0.1125 s              0.05625 s
========  ====================  ====================

Measured on 1024 x 1024 standard normal entries (signed) and their squares (unsigned), blocks of 256, the root
mean square error is 0.0035 s and 0.0012 s in 8 bits, 0.051 s and 0.017 s in 4 bits; the maximum reaches the bound.

Stochastic rounding (``key``): instead of the nearest value, the value just below or just above :math:`|x_i| / s`
among the map's magnitudes, up with probability (distance to the one below) / (their gap): unbiased,
:math:`\mathbb{E}[\hat x_i] = x_i` (but at the clamps above), at most twice the nearest rounding's error. An EMA
whose per-step change is below half a gap (Adam's ``nu`` with ``b2 = 0.999``) then still moves on average instead
of sticking to its code. The uniform numbers come from a counter-based hash of each entry's index and a 32-bit
seed per leaf and step (MurmurHash3's finalizer, 24 bits), drawn from the key with ``jax.random``: a few integer
operations per entry (``jax.random.bits`` per entry would cost several Adam steps on CPU).

Exact zeros stay zero, an all-zero block has scale 0, signs are kept (signed map), and a finite input never
gives NaN: infinite entries saturate at the scale dtype's largest finite value, a NaN entry makes its block NaN
(as a NaN in the unquantized state would spread), and a block whose absolute maximum is below the compute dtype's
smallest normal number is stored as zeros (XLA flushes subnormal numbers to zero on CPU). The arithmetic runs in
float32 (float64 for float64 leaves); ``x / s`` is computed as ``(x c) (1 / (s c))`` with ``c`` a power of two
(1 unless ``s`` is within a square root of the dtype's largest value), exact IEEE steps that give the same codes
under ``jit``, eagerly and in NumPy.

Which map a leaf takes. By default the unsigned map goes to the second-moment fields of this library's states
(:data:`SECOND_MOMENT_FIELDS`: ``nu`` of Adam's, AMSGrad's, NAdam's, RMSProp's, AdaBelief's and AdEMAMix's
states, ``nu_max``, AdaGrad's ``sum_of_squares``, AdaDelta's ``e_g``/``e_x``, Adafactor's ``v``, Adan's ``n``,
``exp_avg_sq`` of Prodigy, D-Adaptation and MoMo-Adam, MADGRAD's ``grad_sum_sq``), found by the type of the state
node that holds the field (SM3's and Sophia's ``nu`` are signed: a momentum and a Hessian estimate). Every other
leaf takes the signed map, which is safe for any sign. ``unsigned=fn`` replaces the rule: ``fn(path)`` with the
key path of the leaf in the inner state returns ``True`` for the unsigned map.

Which leaves are quantized. Real floating-point leaves of the inner state with the shape of some parameter leaf,
at least one axis and at least ``min_size`` entries. Smaller leaves, step counts, scalars, PRNG keys, integer and complex leaves,
and statistics of other shapes (Adafactor's factors, L-BFGS's history) stay as they are.

Layout (shardings follow the parameters). Blocks run along the last axis of the leaf; when the last axis has
fewer than ``B`` entries, along the smallest group of trailing axes that has ``B`` (the block axis ``j`` is the
first axis of that group; a block never mixes two entries of the leading axes ``0 .. j-1``). With ``M`` the
number of entries of the trailing group and :math:`n_b = \lceil M / B \rceil`:

- 8-bit codes: ``int8``, the leaf's own shape; the code of a signed entry is its sign times the rank of its
  magnitude among the map's (``-128`` stores :math:`+1`), of an unsigned entry the rank of its value, so 0 stores 0;
- 4-bit codes: ``uint8``, shape ``leaf.shape[:j] + (ceil(M / 2),)``, entries ``2i`` and ``2i + 1`` of a row in the
  low and high half of byte ``i`` (the same codes in 4-bit two's complement);
- scales: shape ``leaf.shape[:j] + (n_b,)``, ``float32`` (``float64`` for ``float64`` leaves).

The last block of a row may be shorter: nothing is padded in memory. Codes and scales keep the leaf's leading
axes, so :func:`jaxopt_lite.sharding.state_shardings` gives them the parameter's sharding on those axes (8-bit
codes exactly the parameter's), and on the block axis when each device's part holds whole blocks (scales) or
whole bytes (4-bit codes).

Memory per quantized entry: 8-bit :math:`1 + 4/B` bytes (1.0156 for ``B = 256``), 4-bit :math:`1/2 + 4/B` (0.5156),
against 4 for ``float32``. 8-bit Adam's state takes 2.03 bytes per parameter, 4-bit Adam's 1.03 (float32's 8;
measured with ``jax.eval_shape(init)`` on 512 x 512, 1024 x 4096 and 50257 x 768 matrices). A last axis shorter
than ``B`` costs nothing extra (blocks merge trailing axes); a leaf whose entries do not fill whole blocks pays one
scale per partial block. Time (2-core CPU): an 8-bit Adam step takes about 4 times a float32 one on a
1024 x 1024 leaf and 8 times on 4M entries, a 4-bit step 7 and 9 times, stochastic rounding a third more (dequantizing
is one lookup in the map per entry; rounding to the nearest value two lookups in a table of at most 2900 entries
indexed by the bits of ``|x| / s``); the update section of ``benchmarks/`` measures every mode in one run.

Accuracy (``tests/test_quantize_state.py``): 200 Adam steps on a noisy quadratic (float64, blocks of 64) end at
1.09 times full precision's loss in 8 bits, 2.55 times in 4 bits, 1.43 times in 4 bits with stochastic rounding;
an MLP on scikit-learn's digits (64-256-10, Adam 3e-3, 30 epochs, ``min_size=0``) reaches the same 98.7% test
accuracy in float32 and 8 bits, 98.2% in 4 bits, 98.5% in 4 bits with stochastic rounding.

Defaults: ``bits=8``, ``block_size=256``, ``min_size=4096`` (smaller leaves, biases and norms, are not worth the
rounding), round to nearest. Works under ``jit``, ``vmap``, ``lax.scan``, ``jax.eval_shape(init)``, with the fused
layout (a fused buffer is one 1-D leaf; its blocks may span neighbouring parameters) and with any inner
transformation (a ``chain``, ``MultiSteps``, ``inject_hyperparams``, ...).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_lite.base import GradientTransformation, GradientTransformationExtraArgs, alias, with_extra_args_support
from jaxopt_lite.numerics import hashed_bits

__all__ = [
    "SECOND_MOMENT_FIELDS",
    "QuantizedArray",
    "QuantizedState",
    "dequantize_blockwise",
    "dynamic_codebook",
    "max_rounding_error",
    "quantize_blockwise",
    "quantize_state",
]

KeyPath = tuple

SECOND_MOMENT_FIELDS: dict[str, tuple[str, ...]] = {
    "ScaleByAdamState": ("nu",),  # adam, adamw, adamax, yogi, adopt, acprop: all non-negative
    "ScaleByAmsgradState": ("nu", "nu_max"),
    "ScaleByNadamState": ("nu",),
    "ScaleByRmsState": ("nu",),
    "ScaleByRmsWithCountState": ("nu",),
    "ScaleByRStdDevState": ("nu",),
    "ScaleByRStdDevWithCountState": ("nu",),
    "ScaleByBeliefState": ("nu",),
    "ScaleByRssState": ("sum_of_squares",),
    "ScaleByAdaDeltaState": ("e_g", "e_x"),
    "FactoredState": ("v_row", "v_col", "v"),
    "ScaleByAdanState": ("n",),
    "ScaleByAdemamixState": ("nu",),
    "ScaleBySimplifiedAdEMAMixState": ("n",),
    "ProdigyState": ("exp_avg_sq",),
    "DAdaptAdamWState": ("exp_avg_sq",),
    "MomoAdamState": ("exp_avg_sq",),
    "MadgradState": ("grad_sum_sq",),
}
"""State type name -> its fields that hold second moments (never negative): the leaves under them take the
unsigned map by default."""


# ----------------------------------------------------------------------------
# Codebooks.
# ----------------------------------------------------------------------------


def _check_bits(owner: str, bits: Any) -> int:
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) or int(bits) not in (4, 8):
        raise ValueError(f"{owner}: bits must be 4 or 8, got {bits!r}")
    return int(bits)


@functools.cache
def _codebook(bits: int, signed: bool) -> np.ndarray:
    """The sorted dynamic map (float32, read-only); see the module docstring."""
    values = [0.0, 1.0]
    for e in range(bits - 1):  # e zero bits before the indicator bit: decade 10**-e
        fraction_bits = bits - 2 - e + (0 if signed else 1)
        edges = np.linspace(0.1, 1.0, 2**fraction_bits + 1)
        centres = 10.0**-e * (edges[:-1] + edges[1:]) / 2
        values.extend(centres)
        if signed:
            values.extend(-centres)
    out = np.sort(np.asarray(values, np.float64)).astype(np.float32)
    assert out.size == 2**bits and np.all(np.diff(out) > 0)
    out.flags.writeable = False
    return out


def _magnitudes(bits: int, signed: bool) -> np.ndarray:
    """The codes' magnitudes a rounding chooses among, sorted, from 0 to 1 (the signed map's: 0, its positive
    values below 1, and 1; the unsigned map: all of it)."""
    c = _codebook(bits, signed)
    return c[c >= 0]


class _CountTable(NamedTuple):
    """How many of some sorted points in ``(0, 1)`` are ``<= v``, for values ``v >= 0`` of one float dtype, looked up
    on their bit patterns ``k`` (monotonic in ``v``): bucket ``b = clip((k >> shift) - base, 0, n - 1)`` holds at most
    one point, ``point[b]`` (or the largest integer), and ``below[b]`` points lie under it, so the count is
    ``below[b] + (k >= point[b])``: exactly ``searchsorted(points, v, side="right")``, in two small gathers."""

    shift: int
    base: int
    below: np.ndarray
    point: np.ndarray


@functools.cache
def _count_table(bits: int, signed: bool, dtype: np.dtype, of: str) -> _CountTable:
    """``of="midpoints"``: the midpoints between consecutive magnitudes (the count is the nearest one's rank, ties
    up); ``of="magnitudes"``: the magnitudes above 0 (the count is the rank of the largest magnitude ``<= v``)."""
    int_dtype = np.dtype(f"int{8 * dtype.itemsize}")
    mags = _magnitudes(bits, signed).astype(np.float64)
    points = (mags[:-1] + mags[1:]) / 2 if of == "midpoints" else mags[1:]
    keys = points.astype(dtype).view(int_dtype).astype(np.int64)
    one = int(np.array(1.0, dtype).view(int_dtype))
    for kept_bits in range(4, np.finfo(dtype).nmant):  # mantissa bits a bucket keeps: the fewest that suffice
        shift = int(np.finfo(dtype).nmant) - kept_bits
        base = int(keys[0] >> shift)
        starts = np.arange(base, (one >> shift) + 2, dtype=np.int64) << shift  # up to just above 1
        below = np.searchsorted(keys, starts, side="left")
        inside = np.searchsorted(keys, starts + (1 << shift), side="left") - below
        if inside.max() <= 1:
            break
    point = np.where(inside == 1, keys[np.minimum(below, keys.size - 1)], np.iinfo(int_dtype).max)
    below, point = below.astype(int_dtype), point.astype(int_dtype)
    below.flags.writeable = point.flags.writeable = False
    return _CountTable(shift, base, below, point)


def _count(v: jax.Array, bits: int, signed: bool, of: str) -> tuple[jax.Array, jax.Array]:
    """``(count, v > 0)`` for ``v >= 0`` (see :class:`_CountTable`; ``v > 0`` read on the bits, never flushed)."""
    table = _count_table(bits, signed, np.dtype(v.dtype), of)
    keys = jax.lax.bitcast_convert_type(v, table.below.dtype)
    bucket = jnp.clip((keys >> table.shift) - table.base, 0, table.below.size - 1)
    count = jnp.asarray(table.below)[bucket] + (keys >= jnp.asarray(table.point)[bucket])
    return count.astype(jnp.int32), keys > 0


@functools.cache
def _decode_table(bits: int, signed: bool) -> np.ndarray:
    """The value of each stored code (byte or nibble ``b``, ``0 .. 2**bits - 1``), float32.

    Signed map: ``b`` read as a two's-complement integer ``i`` is the sign times the rank of the magnitude
    (``-2**(bits-1)`` encodes +1); unsigned: ``b`` is the rank. Either way the code 0 is the value 0.
    """
    mags = _magnitudes(bits, signed)
    if not signed:
        out = mags.copy()
    else:
        half = 2 ** (bits - 1)
        ranks = np.arange(2**bits)
        ranks = np.where(ranks >= half, ranks - 2**bits, ranks)
        out = np.where(ranks >= 0, mags[np.abs(ranks)], -mags[np.minimum(np.abs(ranks), half - 1)])
        out[half] = 1.0
    out = out.astype(np.float32)
    out.flags.writeable = False
    return out


def dynamic_codebook(bits: int = 8, signed: bool = True) -> np.ndarray:
    r"""The ``2**bits`` values of the dynamic map, sorted, as a ``float32`` NumPy array (a copy).

    ``signed=True``: dynamic tree quantization (sign, decade, linear fraction), for values of either sign;
    ``signed=False``: the unsigned dynamic map, for non-negative values. Both lie in :math:`[-1, 1]`, hold 0 and
    1; see the module docstring for the formula. ``bits`` is 4 or 8.
    """
    return _codebook(_check_bits("dynamic_codebook", bits), bool(signed)).copy()


def max_rounding_error(bits: int = 8, signed: bool = True) -> float:
    """The largest ``|x - dequantize(quantize(x))| / s`` for a block of scale ``s``: half the largest gap of the map,
    counting the gaps between its extreme values and ``-1`` (signed) or ``1`` whole (for the unsigned map, whose
    positive entries never round to 0, also the gap above 0; non-negative entries)."""
    c = _codebook(_check_bits("max_rounding_error", bits), bool(signed)).astype(np.float64)
    gaps = np.diff(np.concatenate([[-1.0 if signed else 0.0], c, [1.0]]))
    gaps[0] *= 2  # no code below c_0: everything in [-1, c_0] rounds to c_0
    gaps[-1] *= 2
    if not signed:
        gaps[1] *= 2  # unsigned: (0, c_1] rounds to c_1, never to 0
    return float(np.max(gaps) / 2)


# ----------------------------------------------------------------------------
# The quantized array.
# ----------------------------------------------------------------------------


def _block_geometry(shape: tuple[int, ...], block_size: int) -> tuple[int, int, int]:
    """``(j, M, n_blocks)``: the block axis, the entries of the trailing axes ``j:`` and the blocks per row."""
    j = max(len(shape) - 1, 0)
    while j > 0 and math.prod(shape[j:]) < block_size:
        j -= 1
    m = math.prod(shape[j:])
    return j, m, -(-m // block_size)


@jax.tree_util.register_pytree_with_keys_class
class QuantizedArray:
    """An array stored as blockwise codes and scales (:func:`quantize_blockwise`); a pytree of two leaves.

    Children: ``codes`` (``int8`` of the array's shape for 8 bits; ``uint8``, two codes a byte, for 4 bits) and
    ``scales`` (one per block, at least ``float32``). Static: the array's ``shape`` and ``dtype``, ``bits``,
    ``block_size``, and ``signed`` (which map). :meth:`dequantize` gives the array back. The module docstring
    describes the layout; ``block_axis``, ``codes_shape`` and ``scales_shape`` give it for this array.
    """

    __slots__ = ("bits", "block_size", "codes", "dtype", "scales", "shape", "signed")

    def __init__(
        self, codes: Any, scales: Any, shape: tuple[int, ...], dtype: Any, bits: int, block_size: int, signed: bool
    ):
        self.codes = codes
        self.scales = scales
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.bits = int(bits)
        self.block_size = int(block_size)
        self.signed = bool(signed)

    def tree_flatten_with_keys(self):
        keys = (jax.tree_util.GetAttrKey("codes"), jax.tree_util.GetAttrKey("scales"))
        return tuple(zip(keys, (self.codes, self.scales))), (
            self.shape,
            self.dtype,
            self.bits,
            self.block_size,
            self.signed,
        )

    @classmethod
    def tree_unflatten(cls, aux: tuple, children: Any) -> QuantizedArray:
        out = object.__new__(cls)  # children may be anything a pytree holds (tracers, shape structs, None)
        out.codes, out.scales = children
        out.shape, out.dtype, out.bits, out.block_size, out.signed = aux
        return out

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def block_axis(self) -> int:
        """The first axis of the trailing group the blocks run along (the last axis unless it is short)."""
        return _block_geometry(self.shape, self.block_size)[0]

    @property
    def codes_shape(self) -> tuple[int, ...]:
        if self.bits == 8:
            return self.shape
        j, m, _ = _block_geometry(self.shape, self.block_size)
        return self.shape[:j] + (-(-m // 2),)

    @property
    def scales_shape(self) -> tuple[int, ...]:
        j, _, n_blocks = _block_geometry(self.shape, self.block_size)
        return self.shape[:j] + (n_blocks,)

    def dequantize(self) -> jax.Array:
        """The array, ``codebook[code] * scale`` per entry, in :attr:`dtype` (see :func:`dequantize_blockwise`)."""
        return dequantize_blockwise(self)

    def __repr__(self) -> str:
        kind = "signed" if self.signed else "unsigned"
        return (
            f"QuantizedArray(shape={self.shape}, dtype={self.dtype.name}, bits={self.bits}, "
            f"block_size={self.block_size}, {kind})"
        )


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """Scales and the arithmetic: at least float32 (float64 for float64 leaves)."""
    return np.dtype(jnp.promote_types(dtype, jnp.float32))


def _uniform(seed: jax.Array, like: jax.Array) -> jax.Array:
    """Uniform numbers in ``[0, 1)`` (24 random bits) of ``like``'s shape and dtype (see :func:`hashed_bits`)."""
    return (hashed_bits(seed, like) >> 8).astype(like.dtype) * np.asarray(2.0**-24, like.dtype)


def _round(y: jax.Array, bits: int, signed: bool, seed: jax.Array | None) -> jax.Array:
    """The stored code (int32, ``0 .. 2**bits - 1``; see :func:`_decode_table`) of each normalized ``y``.

    ``seed`` ``None``: the nearest value of the map, ties to the larger magnitude. Else stochastic rounding: the
    magnitude just below or just above ``|y|``, up with probability equal to the distance from the one below over
    their gap (unbiased). Either way: the signed map has no -1, so negative entries stop at the largest other
    magnitude; the unsigned map stores negative entries as 0 and positive ones never as 0.
    """
    v = jnp.abs(y) if signed else jnp.maximum(y, np.zeros((), y.dtype))
    if seed is None:
        rank, positive = _count(v, bits, signed, "midpoints")
    else:
        low, positive = _count(v, bits, signed, "magnitudes")
        mags = _magnitudes(bits, signed).astype(y.dtype)
        low = jnp.minimum(low, mags.size - 2)  # v >= 1: between the two largest, always up
        inverse_gaps = (np.ones((), y.dtype) / (mags[1:] - mags[:-1])).astype(y.dtype)
        fraction = (v - jnp.asarray(mags)[low]) * jnp.asarray(inverse_gaps)[low]
        rank = low + (_uniform(seed, y) < fraction)
    if signed:
        code = jnp.where(y < 0, -jnp.minimum(rank, 2 ** (bits - 1) - 1), rank)
    else:
        code = jnp.where((rank == 0) & positive, 1, rank)
    return code & (2**bits - 1)


def _check_block_size(owner: str, bits: int, block_size: Any) -> int:
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)) or block_size <= 0:
        raise ValueError(f"{owner}: block_size must be a positive integer, got {block_size!r}")
    if bits == 4 and block_size % 2:
        raise ValueError(
            f"{owner}: block_size must be even for bits=4 (two codes per byte, a block in whole bytes), "
            f"got {block_size}"
        )
    return int(block_size)


def _normalized(blocks: jax.Array, scales: jax.Array, cd: np.dtype) -> jax.Array:
    """``blocks / scales`` as ``(x * c) * (1 / (s * c))``, ``c`` a power of two that keeps the reciprocal normal (1 but
    for ``s >= 2**(maxexp // 2)``): each step an exact IEEE operation. XLA turns a division by a broadcast scale into a
    multiplication by its reciprocal, which on CPU flushes ``1 / s`` to 0 for ``s > 2**126`` (float32); written this
    way the result is the same under ``jit``, eagerly and in NumPy. 0 where ``s`` is 0, subnormal or NaN."""
    usable = scales >= np.finfo(cd).tiny
    big = np.asarray(2.0 ** (np.finfo(cd).maxexp // 2), cd)
    pre = jnp.where(scales >= big, np.asarray(1 / big, cd), np.ones((), cd))
    reciprocal = np.ones((), cd) / jnp.where(usable, scales * pre, np.ones((), cd))
    return jnp.where(usable[..., None], (blocks * pre[..., None]) * reciprocal[..., None], np.zeros((), cd))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))  # eagerly: one program, not one per operation
def _quantize(
    x: jax.Array, bits: int, block_size: int, signed: bool, dtype: np.dtype, seed: jax.Array | None = None
) -> QuantizedArray:
    shape = tuple(x.shape)
    j, m, n_blocks = _block_geometry(shape, block_size)
    lead = shape[:j]
    cd = _compute_dtype(dtype)
    rows = x.astype(cd).reshape(lead + (m,))
    pad = n_blocks * block_size - m
    if pad:
        rows = jnp.pad(rows, [(0, 0)] * len(lead) + [(0, pad)])
    blocks = rows.reshape(lead + (n_blocks, block_size))
    absmax = jnp.max(jnp.abs(blocks), axis=-1, initial=np.zeros((), cd)) if n_blocks else jnp.zeros(lead + (0,), cd)
    scales = jnp.minimum(absmax, np.finfo(cd).max)  # inf saturates; NaN stays NaN
    y = _normalized(blocks, scales, cd)
    flat = _round(y, bits, signed, seed).reshape(lead + (n_blocks * block_size,))
    if bits == 8:  # the byte as a two's-complement int8
        codes = (((flat[..., :m] + 128) & 0xFF) - 128).astype(jnp.int8).reshape(shape)
    else:
        pairs = flat[..., : 2 * (-(-m // 2))].reshape(lead + (-(-m // 2), 2))
        codes = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(jnp.uint8)
    return QuantizedArray(codes, scales, shape, dtype, bits, block_size, signed)


def quantize_blockwise(
    x: Any, bits: int = 8, block_size: int = 256, signed: bool = True, *, key: Any = None
) -> QuantizedArray:
    r"""``x`` (real floating point) as a :class:`QuantizedArray`: per block its absolute maximum ``s`` and per entry
    the code of the dynamic map nearest to ``x / s`` (module docstring: scheme, layout, error bound).

    Args:
      x: a real floating-point array (any shape; ``bfloat16``, ``float16``, ``float32``, ``float64``).
      bits: 8 (``int8`` codes) or 4 (two codes per ``uint8``).
      block_size: entries per block, along the last axis (or the trailing axes, when the last is shorter);
        even for ``bits=4``.
      signed: the signed map (default; any values) or the unsigned one (non-negative values: more precision;
        negative entries become 0).
      key: ``None`` (default) rounds to the nearest value; a PRNG key rounds stochastically, to one of the two
        values around ``x / s`` with the probability that makes the rounding unbiased (module docstring).

    :func:`dequantize_blockwise` (or ``q.dequantize()``) returns an array of ``x``'s shape and dtype within
    ``max_rounding_error(bits, signed) * s`` of ``x`` per entry (twice that with ``key``: the farther neighbour).
    Pure, jittable and vmappable.
    """
    owner = "quantize_blockwise"
    bits = _check_bits(owner, bits)
    block_size = _check_block_size(owner, bits, block_size)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{owner}: x must be a real floating-point array, got dtype {x.dtype}")
    seed = None if key is None else jax.random.bits(_as_key(owner, key), (), jnp.uint32)
    return _quantize(x, bits, block_size, bool(signed), np.dtype(x.dtype), seed)


def dequantize_blockwise(q: QuantizedArray) -> jax.Array:
    """The array ``q`` holds: ``codebook[code] * scale`` per entry, in ``q.dtype`` and ``q.shape``."""
    if not isinstance(q, QuantizedArray):
        raise TypeError(f"dequantize_blockwise: expected a QuantizedArray, got {type(q).__name__}")
    return _dequantize(q)


@jax.jit
def _dequantize(q: QuantizedArray) -> jax.Array:
    j, m, n_blocks = _block_geometry(q.shape, q.block_size)
    lead = q.shape[:j]
    cd = _compute_dtype(q.dtype)
    codes = jnp.asarray(q.codes).astype(jnp.int32)
    if q.bits == 8:
        idx = (codes & 0xFF).reshape(lead + (m,))
    else:
        idx = jnp.stack([codes & 0xF, codes >> 4], axis=-1).reshape(lead + (2 * codes.shape[-1],))
    values = jnp.asarray(_decode_table(q.bits, q.signed).astype(cd))[idx]
    width = values.shape[-1]
    if width < n_blocks * q.block_size:
        values = jnp.pad(values, [(0, 0)] * len(lead) + [(0, n_blocks * q.block_size - width)])
    elif width > n_blocks * q.block_size:
        values = values[..., : n_blocks * q.block_size]
    scales = jnp.asarray(q.scales).astype(cd)
    out = values.reshape(lead + (n_blocks, q.block_size)) * scales[..., None]
    out = out.reshape(lead + (n_blocks * q.block_size,))[..., :m]
    return out.reshape(q.shape).astype(q.dtype)


# ----------------------------------------------------------------------------
# The wrapper.
# ----------------------------------------------------------------------------


class QuantizedState(NamedTuple):
    """The state of :func:`quantize_state`: the inner state, its quantized leaves as :class:`QuantizedArray` s, and
    with stochastic rounding the PRNG key of the next step (``None`` with rounding to nearest)."""

    inner_state: Any
    rng_key: Any = None


def _as_key(owner: str, key: Any) -> jax.Array:
    """A PRNG key (typed, or a raw ``uint32`` key) as given; an int seed as ``jax.random.key(seed)``."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return jax.random.key(int(key))
    dtype, shape = getattr(key, "dtype", None), tuple(getattr(key, "shape", (None,)))
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return key
    if dtype == jnp.uint32 and shape == jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape:
        return jnp.asarray(key)
    raise TypeError(
        f"{owner}: key must be None, a single PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)) or an int "
        f"seed, got {key!r}"
    )


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def _second_moment_paths(state: Any) -> set[KeyPath]:
    """Key paths (in ``state``) of the leaves under a field of :data:`SECOND_MOMENT_FIELDS`."""
    found: set[KeyPath] = set()

    def walk(node: Any, path: KeyPath) -> None:
        fields = SECOND_MOMENT_FIELDS.get(type(node).__name__) if isinstance(node, tuple) else None
        pairs, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
        if len(pairs) == 1 and pairs[0][0] == () and pairs[0][1] is node:
            return  # a leaf
        for key, child in pairs:
            child_path = path + key
            if fields and isinstance(key[0], jax.tree_util.GetAttrKey) and key[0].name in fields:
                found.update(path + key + p for p, _ in jax.tree_util.tree_flatten_with_path(child)[0])
            else:
                walk(child, child_path)

    walk(state, ())
    return found


def check_inner(owner: str, inner: Any) -> GradientTransformationExtraArgs:
    """``inner`` (a transformation) with extra-args support, or a ``TypeError`` naming ``owner``."""
    if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
        raise TypeError(f"{owner}: inner must be a GradientTransformation (with init and update), got {inner!r}")
    return with_extra_args_support(inner)


def check_min_size(owner: str, min_size: Any) -> int:
    if isinstance(min_size, (bool, np.bool_)) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"{owner}: min_size must be a non-negative integer (entries), got {min_size!r}")
    return int(min_size)


def parameter_shaped(params: Any, min_size: int) -> Callable[[Any], bool]:
    """Whether a state leaf is stored compressed: real floating point, shaped like a parameter, >= ``min_size``
    entries, not a scalar (a scalar parameter would otherwise pull in every scalar of the state: step sizes,
    injected hyperparameters, estimates such as Prodigy's ``d``)."""
    shapes = {tuple(np.shape(p)) for p in jax.tree.leaves(params)}

    def stored(leaf: Any) -> bool:
        dtype = getattr(leaf, "dtype", None)
        return (
            dtype is not None
            and jnp.issubdtype(dtype, jnp.floating)
            and np.ndim(leaf) > 0
            and tuple(np.shape(leaf)) in shapes
            and math.prod(np.shape(leaf)) >= min_size
        )

    return stored


def check_state(owner: str, state: Any, state_type: type) -> None:
    if not isinstance(state, state_type):
        raise ValueError(  # noqa: TRY004 - a ValueError, as base.with_owner reports a foreign state
            f"{owner}: the state passed to update must be a {state_type.__name__} (what {owner}'s init makes), got "
            f"{type(state).__name__}: another optimizer's state, or state and params swapped?"
        )


def leaves_like(owner: str, treedef: Any, new_inner: Any) -> list:
    """The leaves of the inner transformation's new state, in the order of its old state's ``treedef``."""
    try:
        return treedef.flatten_up_to(new_inner)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{owner}: the inner transformation changed the structure of its state: {error}") from None


@alias
def quantize_state(
    inner: GradientTransformation,
    bits: int = 8,
    block_size: int = 256,
    min_size: int = 4096,
    *,
    unsigned: Callable[[KeyPath], bool] | None = None,
    key: Any = None,
) -> GradientTransformationExtraArgs:
    r"""``inner`` with its parameter-shaped floating-point state kept in 8 or 4 bits (Dettmers et al., 2022).

    ``quantize_state(adam(1e-3))`` is 8-bit Adam: its moments are stored as one ``int8`` code per entry and one
    ``float32`` scale (the absolute maximum) per block of 256 entries, 2.03 bytes per parameter instead of 8;
    ``bits=4`` halves the codes (1.03 bytes per parameter). Each :meth:`update` dequantizes the state, runs
    ``inner`` on it, and quantizes the new state to the nearest codes of the dynamic map (or stochastically, with
    ``key``): the signed map for first moments and momenta, the unsigned one for second moments. Scheme, error
    bound, layout and measured accuracy: see :mod:`jaxopt_lite.wrappers.quantize_state`.

    Args:
      inner: any gradient transformation (an alias such as ``adam``, ``lion``, ``sgd``; a ``chain``;
        ``MultiSteps(...)``).
      bits: 8 (``int8`` codes) or 4 (two codes per ``uint8``).
      block_size: entries per scale, along the last axis (the trailing axes when the last is shorter); even for
        4 bits. Smaller blocks: less error, more scales (``4 / block_size`` bytes per entry).
      min_size: leaves with fewer entries stay in full precision (biases, norms: negligible memory).
      unsigned: ``fn(path) -> bool`` for each quantized leaf, with ``path`` its key path in ``inner``'s state:
        ``True`` for the unsigned map (non-negative values only). Default: the fields of
        :data:`SECOND_MOMENT_FIELDS` (second moments of this library's optimizers), the signed map elsewhere.
      key: ``None`` (default): round each update's new state to the nearest codes. A PRNG key or an int seed:
        round stochastically (unbiased: a value between two codes goes to the upper one with probability equal to
        its distance from the lower one over their gap), so that changes smaller than a code's gap (an EMA with
        ``b2 = 0.999``) still move the state on average. The key lives in the state and is split at every step;
        ``init`` rounds to nearest. Recommended for ``bits=4``. Cost: a hash of each entry's index, no
        ``jax.random`` per entry.

    Quantized leaves: real floating-point leaves of ``inner``'s state with the shape of some parameter leaf and at
    least ``min_size`` entries; the others (counts, scalars, keys, small leaves, statistics of other shapes) stay
    as they are. The state is :class:`QuantizedState` holding ``inner``'s state with :class:`QuantizedArray` nodes
    in place of the quantized leaves (their dtype and shape kept; ``q.dequantize()`` reads one).

    Raises ``ValueError`` (at construction) for ``bits`` not in {4, 8}, a non-positive ``block_size`` (or an odd
    one with 4 bits), a negative ``min_size``; ``TypeError`` if ``inner`` is not a transformation, ``unsigned``
    not callable or ``key`` neither a PRNG key nor an int. Errors of ``inner`` reach you as ``quantize_state: <inner's message>``.
    """
    owner = "quantize_state"
    inner = check_inner(owner, inner)
    bits = _check_bits(owner, bits)
    block_size = _check_block_size(owner, bits, block_size)
    min_size = check_min_size(owner, min_size)
    if unsigned is not None and not callable(unsigned):
        raise TypeError(f"{owner}: unsigned must be None or a function of a key path, got {unsigned!r}")
    key = None if key is None else _as_key(owner, key)

    def init(params):
        inner_state = inner.init(params)
        stored = parameter_shaped(params, min_size)
        second = _second_moment_paths(inner_state) if unsigned is None else None

        def convert(path, leaf):
            if not stored(leaf):
                return leaf
            is_unsigned = path in second if unsigned is None else bool(unsigned(path))
            return _quantize(jnp.asarray(leaf), bits, block_size, not is_unsigned, np.dtype(leaf.dtype))

        return QuantizedState(inner_state=jax.tree_util.tree_map_with_path(convert, inner_state), rng_key=key)

    def update(updates, state, params=None, **extra_args):
        check_state(owner, state, QuantizedState)
        stored, treedef = jax.tree.flatten(state.inner_state, is_leaf=_is_quantized)
        plain = [dequantize_blockwise(x) if _is_quantized(x) else x for x in stored]
        updates, new_inner = inner.update(updates, treedef.unflatten(plain), params, **extra_args)
        new_leaves = leaves_like(owner, treedef, new_inner)
        next_key, seeds = state.rng_key, None
        if key is not None:  # one seed per quantized leaf
            next_key, step_key = jax.random.split(state.rng_key)
            seeds = jax.random.bits(step_key, (max(len(stored), 1),), jnp.uint32)
        out = []
        for old, new in zip(stored, new_leaves):
            if _is_quantized(old):
                if tuple(np.shape(new)) != old.shape:
                    raise ValueError(
                        f"{owner}: the inner transformation returned a state leaf of shape {np.shape(new)} where "
                        f"its init made one of shape {old.shape}"
                    )
                seed = None if seeds is None else seeds[len(out)]
                new = _quantize(jnp.asarray(new), old.bits, old.block_size, old.signed, old.dtype, seed)
            out.append(new)
        return updates, QuantizedState(inner_state=treedef.unflatten(out), rng_key=next_key)

    return GradientTransformationExtraArgs(init, update)
