"""Compile time of clip_by_global_norm + adamw(warmup-cosine) at N leaves with variants of the overflow branch."""
import builtins, sys, time
import jax, jax.numpy as jnp
import jaxopt_lite as jol
from jaxopt_lite import numerics

n_leaves, variant = int(sys.argv[1]), sys.argv[2]
orig = numerics.scaled_global_norm

def variant_norm(leaves, dtype=None):
    leaves = [jnp.asarray(x) for x in leaves]
    dtype = numerics.accumulation_dtype(leaves) if dtype is None else dtype
    zero = jnp.zeros([], dtype)
    wide = [x.astype(jnp.promote_types(x.dtype, dtype)) for x in leaves]
    plain = builtins.sum((jnp.sum(numerics.abs_sq(x)).astype(dtype) for x in wide), zero)
    if variant == "none":
        return jnp.ones([], dtype), numerics.safe_sqrt(plain)
    def rescaled(_):
        big, small = numerics._overflow_scale(dtype)
        if variant == "perleaf":
            tot = builtins.sum((jnp.sum(numerics.abs_sq(x * small.astype(x.dtype))).astype(dtype) for x in wide), zero)
        else:  # chunked concatenation
            k = int(variant.removeprefix("chunk"))
            tot = zero
            for i in range(0, len(wide), k):
                flat = jnp.concatenate([jnp.ravel(x) for x in wide[i:i + k]])
                tot = tot + jnp.sum(numerics.abs_sq(flat * small.astype(flat.dtype))).astype(dtype)
        return big, tot
    s, q = jax.lax.cond(jnp.isfinite(plain), lambda _: (jnp.ones([], dtype), plain), rescaled, None)
    return s, numerics.safe_sqrt(q)

if variant != "current":
    numerics.scaled_global_norm = variant_norm
    import jaxopt_lite.transforms.clipping as clipping
    clipping.numerics.scaled_global_norm = variant_norm

total = 10_000_000
sizes = [total // n_leaves + (i < total % n_leaves) for i in range(n_leaves)]
params = {f"p{i:05d}": jax.ShapeDtypeStruct((s,), jnp.float32) for i, s in enumerate(sizes)}
sched = jol.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000, 1e-5)
tx = jol.chain(jol.clip_by_global_norm(1.0), jol.adamw(sched, weight_decay=1e-4))
state = jax.eval_shape(tx.init, params)
def step(p, s, g):
    u, s = tx.update(g, s, p)
    return jol.apply_updates(p, u), s
t0 = time.perf_counter()
lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
t1 = time.perf_counter()
lowered.compile()
t2 = time.perf_counter()
print(f"RESULT {variant} leaves={n_leaves} trace+lower={t1 - t0:.2f}s compile={t2 - t1:.2f}s", flush=True)
