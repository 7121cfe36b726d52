"""A hand-fused AdamW step for CPU, behind ``jax.ffi``, with a pure-JAX fallback.

XLA:CPU compiles Adam's update into three loops (the two moments, then the
parameters), which move 40 bytes per float32 parameter; the minimum is 28
(read p, g, m, v; write p, m, v). :func:`adamw_step` does the whole step —
global-norm clipping factor, moments, bias correction, decoupled weight decay,
learning rate and the parameter update — in one pass, in place.

Because it writes the parameters itself, it is a *step*, not a gradient
transformation::

    opt = jol.kernels.adamw_step(1e-3, weight_decay=1e-4, max_grad_norm=1.0)
    state = opt.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 2))
    def train_step(params, batch, state):
        grads = jax.grad(loss)(params, batch)
        return opt.step(params, grads, state)      # -> (params, state)

It computes what ``chain(clip_by_global_norm(max_grad_norm), adamw(...))``
followed by ``apply_updates`` computes, to float rounding (tested), with the
same state (``ScaleByAdamState``). Use it with the fused layout
(:func:`jaxopt_lite.fuse`) so that the whole model is one kernel call.

The kernel runs on CPU for float32 leaves; it is compiled on first use with
the system C++ compiler (``$CXX`` or ``c++``, ``-O3 -march=native``) into ``~/.cache/jaxopt_lite``
(``$JAXOPT_LITE_CACHE``). Everywhere else — other platforms, other dtypes, no
compiler, ``use_kernel=False``, or ``JAXOPT_LITE_NO_KERNELS=1`` — the same step
runs through the library's own transforms. The kernel is not differentiable
(use ``use_kernel=False`` to differentiate through a step) and runs a ``vmap``
sequentially.
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib

from jaxopt_lite import _checks, numerics
from jaxopt_lite import tree as _tree
from jaxopt_lite.base import ScalarOrSchedule, apply_updates
from jaxopt_lite.transforms.adaptive import ScaleByAdamState, scale_by_adam
from jaxopt_lite.transforms.clipping import clip_scales

_SOURCE = Path(__file__).parent / "_csrc" / "adam_step.cc"
_TARGET = "jaxopt_lite_adamw_step"


def _cpu_id() -> bytes:
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return b"".join(line for line in f if line.startswith((b"model name", b"flags")))[:4096]
    except OSError:
        return (platform.machine() + platform.processor()).encode()


@functools.cache
def kernel_available() -> bool:
    """Builds (once, cached on disk) and registers the CPU kernel; False if that is not possible."""
    if os.environ.get("JAXOPT_LITE_NO_KERNELS"):
        return False
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None or not _SOURCE.exists():
        return False
    source = _SOURCE.read_bytes()
    flags = ["-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}"]
    # -march=native: the library is built for this CPU, so the CPU is part of the cache key.
    key = hashlib.sha256(b"\0".join([source, jaxlib.__version__.encode(), " ".join([compiler, *flags]).encode(),
                                      _cpu_id()])).hexdigest()[:16]
    cache = Path(os.environ.get("JAXOPT_LITE_CACHE", Path.home() / ".cache" / "jaxopt_lite"))
    library = cache / f"adam_step-{key}.so"
    try:
        if not library.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                built = Path(tmp) / library.name
                subprocess.run([compiler, *flags, str(_SOURCE), "-o", str(built), "-lpthread"],
                               check=True, capture_output=True, timeout=300)
                os.replace(built, library)  # atomic: concurrent builders never see a partial file
        handle = ctypes.cdll.LoadLibrary(str(library))
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(handle.JaxoptLiteAdamwStep), platform="cpu")
    except (OSError, subprocess.SubprocessError, AttributeError):
        return False
    return True


def _kernel_call(p, g, m, v, hyper):
    """The kernel on one leaf (any shape: it reads every buffer as a flat array), updated in place."""
    like = jax.ShapeDtypeStruct(p.shape, jnp.float32)
    call = jax.ffi.ffi_call(
        _TARGET, (like, like, like), input_output_aliases={0: 0, 2: 1, 3: 2}, vmap_method="sequential"
    )
    return call(p, g, m, v, hyper)


@functools.cache
def _partitioned_step(ndim: int):
    """:func:`_kernel_call` for leaves of rank ``ndim``, partitioned elementwise.

    Each device runs the kernel on its own shard of the parameter, with the
    gradient and both moments laid out as the parameter and the 9 scalars
    replicated: a sharded model is never gathered (without this rule the SPMD
    partitioner replicates every operand of a custom call).
    """
    from jax.experimental.custom_partitioning import custom_partitioning
    from jax.sharding import NamedSharding, PartitionSpec

    def shardings(mesh, arg_shapes):
        like_param = arg_shapes[0].sharding
        return like_param, NamedSharding(mesh, PartitionSpec())

    def infer(mesh, arg_shapes, result_shape):
        like_param, _ = shardings(mesh, arg_shapes)
        return (like_param,) * 3

    def partition(mesh, arg_shapes, result_shape):
        like_param, replicated = shardings(mesh, arg_shapes)
        return mesh, _kernel_call, (like_param,) * 3, (like_param,) * 4 + (replicated,)

    partitioned = custom_partitioning(_kernel_call)
    dims = " ".join(f"d{i}" for i in range(ndim))
    partitioned.def_partition(
        partition=partition,
        infer_sharding_from_operands=infer,
        sharding_rule=f"{dims}, {dims}, {dims}, {dims}, h -> {dims}, {dims}, {dims}",
    )

    # custom_partitioning has no batching rule: under vmap (a sweep), the plain call, one member at a time.
    step = jax.custom_batching.custom_vmap(partitioned)

    @step.def_vmap
    def _batched(axis_size, in_batched, *args):
        args = [x if batched else jnp.broadcast_to(x, (axis_size, *x.shape)) for x, batched in zip(args, in_batched)]
        return jax.vmap(_kernel_call)(*args), (True, True, True)

    return step


class FusedStep(NamedTuple):
    """``init(params) -> state`` and ``step(params, grads, state) -> (params, state)``."""

    init: Callable[[Any], Any]
    step: Callable[[Any, Any, Any], tuple[Any, Any]]


def adamw_step(
    learning_rate: ScalarOrSchedule,
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    weight_decay: float | jax.Array = 0.0,
    max_grad_norm: float | jax.Array | None = None,
    *,
    use_kernel: bool = True,
) -> FusedStep:
    """One AdamW step with optional global-norm clipping, applied to the params in one pass.

    Equals ``chain(clip_by_global_norm(max_grad_norm), adamw(learning_rate, b1, b2,
    eps, eps_root, weight_decay=weight_decay))`` followed by ``apply_updates``:
    ``g' = g * min(1, max_grad_norm / ||g||)``, Adam's moments of ``g'``, and
    ``p <- p - lr * (m_hat / (sqrt(v_hat + eps_root) + eps) + weight_decay * p)``.
    ``learning_rate`` may be a schedule of the step count. The state is
    :class:`~jaxopt_lite.ScaleByAdamState`.
    """
    _checks.check_nonnegative("adamw_step", "weight_decay", weight_decay)
    if max_grad_norm is not None:
        _checks.check_nonnegative("adamw_step", "max_grad_norm", max_grad_norm)
    if not callable(learning_rate):
        _checks.check_learning_rate("adamw_step", learning_rate)
    adam = scale_by_adam(b1, b2, eps, eps_root)

    def step(params, grads, state):
        _checks.check_state_type("adamw_step", state, ScaleByAdamState)
        _tree.check_same_shapes(grads, params, "grads", "params")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        if max_grad_norm is None:
            prescale = gscale = 1.0
        else:  # overflow-safe, as clip_by_global_norm: g' = (g * prescale) * gscale
            prescale, gscale = clip_scales(*numerics.scaled_global_norm(jax.tree.leaves(grads)), max_grad_norm)

        def composed():  # the library's transforms: the reference semantics, and the fallback
            clipped = jax.tree.map(lambda g: ((g * prescale) * gscale).astype(g.dtype), grads)
            updates, new_state = adam.update(clipped, state)
            updates = _tree.add_scale(updates, weight_decay, params)
            return apply_updates(params, _tree.scale(-lr, updates)), new_state

        leaves = jax.tree.leaves(params)
        if not (use_kernel and leaves and all(x.dtype == jnp.float32 for x in leaves) and kernel_available()):
            return composed()

        def kernel():
            count = _tree.safe_increment(state.count)
            t = count.astype(jnp.float32)
            hyper = jnp.stack([jnp.asarray(x, jnp.float32) for x in (
                lr, b1, b2, eps, eps_root, weight_decay, 1.0 / (1.0 - b1**t), 1.0 / (1.0 - b2**t), prescale, gscale)])

            def leaf(p, g, m, v):
                shaped = (p, g, m, v) if p.ndim else tuple(x.reshape(1) for x in (p, g, m, v))
                out = _partitioned_step(shaped[0].ndim)(*shaped, hyper)
                return tuple(x.reshape(p.shape) for x in out)

            out = [leaf(*xs) for xs in zip(leaves, *(jax.tree.leaves(t) for t in (grads, state.mu, state.nu)))]
            new_params, mu, nu = _tree.unzip_leaves(jax.tree.structure(params), out, 3)
            return new_params, ScaleByAdamState(count=count, mu=mu, nu=nu)

        return jax.lax.platform_dependent(cpu=kernel, default=composed)

    return FusedStep(adam.init, step)
