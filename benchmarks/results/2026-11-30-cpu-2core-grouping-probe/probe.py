"""Does grouping same-dtype leaves pay on the tree path? A standalone probe (issue 15, goal 2).

python probe.py LEAVES MODE, MODE one of:
  tree          jaxopt_lite.adam on the tree (one fusion chain per leaf)
  concat        each step concatenates grads, mu and nu, runs Adam on one flat buffer,
                and slices updates, mu and nu back into trees (state stays a tree)
  concat_apply  as concat, and also params: the new params are sliced from one flat buffer
  flatstate     mu and nu kept as flat buffers across steps; each step concatenates the
                grads only and slices the updates, applied per leaf
  flatstate_dus as flatstate, the grads gathered by dynamic_update_slice instead of concatenate
10M float32 params split evenly; prints trace+lower and compile seconds and the median step.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_lite as jol

L, MODE = int(sys.argv[1]), sys.argv[2]
N = 10_000_000
rng = np.random.default_rng(0)
params = {f"p{i}": jnp.asarray(rng.standard_normal(N // L).astype(np.float32)) for i in range(L)}
grads = jax.tree.map(lambda p: p * 0.01, params)
b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-3
leaves, treedef = jax.tree.flatten(params)
offsets = np.cumsum([0] + [x.size for x in leaves])


def adam_flat(g, m, v, c):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    c = c + 1
    return -lr * (m / (1 - b1**c)) / (jnp.sqrt(v / (1 - b2**c)) + eps), m, v


def gather(tree):
    if MODE == "flatstate_dus":
        buf = jnp.zeros(N, jnp.float32)
        for x, o in zip(jax.tree.leaves(tree), offsets):
            buf = jax.lax.dynamic_update_slice(buf, x.ravel(), (int(o),))
        return buf
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def split(flat):
    return jax.tree.unflatten(treedef, [flat[offsets[i] : offsets[i + 1]].reshape(x.shape) for i, x in enumerate(leaves)])


count = jnp.zeros((), jnp.int32)
if MODE == "tree":
    opt = jol.adam(lr)
    state = opt.init(params)

    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return jol.apply_updates(p, u), s

elif MODE.startswith("flatstate"):
    state = (jnp.zeros(N, jnp.float32), jnp.zeros(N, jnp.float32), count)

    def step(p, s, g):
        m, v, c = s
        u, m, v = adam_flat(gather(g), m, v, c)
        return jax.tree.map(jnp.add, p, split(u)), (m, v, c + 1)

else:
    state = (jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params), count)

    def step(p, s, g):
        m, v, c = s
        u, m, v = adam_flat(gather(g), gather(m), gather(v), c)
        new_p = split(gather(p) + u) if MODE == "concat_apply" else jax.tree.map(jnp.add, p, split(u))
        return new_p, (split(m), split(v), c + 1)


t0 = time.perf_counter()
lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads)
t1 = time.perf_counter()
compiled = lowered.compile()
t2 = time.perf_counter()
p, s = jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state)
for _ in range(3):
    p, s = compiled(p, s, grads)
jax.block_until_ready(p)
times = []
for _ in range(10):
    t = time.perf_counter()
    p, s = compiled(p, s, grads)
    jax.block_until_ready(p)
    times.append(time.perf_counter() - t)
print(f"{MODE} leaves={L}: trace+lower {t1 - t0:.2f} s, compile {t2 - t1:.2f} s, step {np.median(times) * 1e3:.1f} ms")
