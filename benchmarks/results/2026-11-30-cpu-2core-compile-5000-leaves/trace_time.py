import sys, time, cProfile, pstats
import jax, jax.numpy as jnp
libname, case, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if libname == "optax":
    import optax as lib
else:
    import jaxopt_lite as lib
total = 1_000_000
sizes = [total // n] * n
params = {f"p{i:05d}": jax.ShapeDtypeStruct((s,), jnp.float32) for i, s in enumerate(sizes)}
if case == "adam":
    tx = lib.adam(1e-3)
else:
    sched = lib.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000, 1e-5)
    tx = lib.chain(lib.clip_by_global_norm(1.0), lib.adamw(sched, weight_decay=1e-4))
state = jax.eval_shape(tx.init, params)
def make_step():
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return lib.apply_updates(p, u), s
    return step
# warm JAX's own caches once with a different tree size
best_trace, best_lower = 1e9, 1e9
for _ in range(3):
    t0 = time.perf_counter(); traced = jax.jit(make_step()).trace(params, state, params); t1 = time.perf_counter()
    traced.lower(); t2 = time.perf_counter()
    best_trace, best_lower = min(best_trace, t1 - t0), min(best_lower, t2 - t1)
print(f"RESULT {libname} {case} n={n} trace={best_trace:.3f}s lower={best_lower:.3f}s")
if len(sys.argv) > 4:
    pr = cProfile.Profile(); pr.enable(); jax.jit(make_step()).trace(params, state, params); pr.disable()
    st = pstats.Stats(pr); st.sort_stats("cumulative").print_stats(45)
