"""Trace+lower and XLA compile time of the jitted Adam step (update + apply_updates, donated), 10M float32 params in N
leaves: this library, Optax, and a minimal hand-written jnp Adam (the floor). Usage: python compile_floor.py N lib
with lib in ours, optax, minimal."""
import sys, time, re
import jax, jax.numpy as jnp
n, lib = int(sys.argv[1]), sys.argv[2]
total = 10_000_000
sizes = [total // n + (i < total % n) for i in range(n)]
params = {f"p{i:05d}": jax.ShapeDtypeStruct((s,), jnp.float32) for i, s in enumerate(sizes)}
if lib == "minimal":
    def init(p):
        z = jax.tree.map(jnp.zeros_like, p)
        return jnp.zeros([], jnp.int32), z, z
    def update(g, s, p):
        t, m, v = s
        t = t + 1
        c1 = 1 - 0.9 ** t.astype(jnp.float32); c2 = 1 - 0.999 ** t.astype(jnp.float32)
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        u = jax.tree.map(lambda m, v: -1e-3 * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), m, v)
        return u, (t, m, v)
    apply = lambda p, u: jax.tree.map(jnp.add, p, u)
else:
    mod = __import__("optax" if lib == "optax" else "jaxopt_lite")
    tx = mod.adam(1e-3)
    init, update, apply = tx.init, tx.update, mod.apply_updates
state = jax.eval_shape(init, params)
def step(p, s, g):
    u, s = update(g, s, p)
    return apply(p, u), s
t0 = time.perf_counter()
lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
t1 = time.perf_counter()
compiled = lowered.compile()
t2 = time.perf_counter()
txt = compiled.as_text()
fus = len(re.findall(r"^\s*%?\S*fusion\S* = ", txt, re.M))
print(f"RESULT {lib} n={n} trace+lower={t1-t0:.2f}s compile={t2-t1:.2f}s fusions~{fus}", flush=True)
