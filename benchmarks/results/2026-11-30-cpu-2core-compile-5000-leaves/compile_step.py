"""Trace+lower and XLA compile time of one jitted tree-path step (update + apply_updates), this library vs Optax,
10M float32 params split into N leaves. Usage: python compile5000.py N case lib"""
import sys, time
import jax, jax.numpy as jnp, numpy as np

n_leaves, case, libname = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if libname == "optax":
    import optax as lib
else:
    import jaxopt_lite as lib
total = 10_000_000
sizes = [total // n_leaves + (i < total % n_leaves) for i in range(n_leaves)]
params = {f"p{i:05d}": jax.ShapeDtypeStruct((s,), jnp.float32) for i, s in enumerate(sizes)}
if case == "adam":
    tx = lib.adam(1e-3)
else:
    sched = lib.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000, 1e-5)
    tx = lib.chain(lib.clip_by_global_norm(1.0), lib.adamw(sched, weight_decay=1e-4))
state = jax.eval_shape(tx.init, params)

def step(p, s, g):
    u, s = tx.update(g, s, p)
    return lib.apply_updates(p, u), s

t0 = time.perf_counter()
lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
t1 = time.perf_counter()
compiled = lowered.compile()
t2 = time.perf_counter()
print(f"RESULT {libname} {case} leaves={n_leaves} trace+lower={t1 - t0:.2f}s compile={t2 - t1:.2f}s", flush=True)
