"""L-BFGS in jaxopt_lite, Optax and SciPy on Rosenbrock (2-D, 10-D) and a full-batch logistic regression.

Prints, for each solver, the iterations, objective (and gradient) evaluations and the final objective.
jaxopt_lite and Optax run the whole solve as one jitted ``lax.while_loop`` (Optax's documented loop), to
``|grad| < 1e-9``; SciPy runs ``minimize(method="L-BFGS-B")`` with the same memory (10) and tight tolerances.

    python examples/lbfgs_vs_scipy.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_digits

import jaxopt_lite

jax.config.update("jax_enable_x64", True)

MAX_ITER, TOL = 500, 1e-9


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


digits = load_digits()
X = jnp.asarray((digits.data - digits.data.mean(0)) / (digits.data.std(0) + 1.0))
Y = jnp.asarray(np.eye(10)[digits.target])


def logistic(params):
    logits = X @ params["w"] + params["b"]
    return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(logits), axis=1)) + 0.5e-2 * jnp.sum(params["w"] ** 2)


PROBLEMS = {
    "rosenbrock 2-D": (rosenbrock, jnp.array([-1.2, 1.0])),
    "rosenbrock 10-D": (rosenbrock, jnp.array([-1.2, 1.0] * 5)),
    "logistic (digits, 650 params)": (logistic, {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}),
}


def run_lbfgs(lib, fun, params):
    """The L-BFGS loop, entirely on device: returns (params, iterations, evaluations, value)."""
    opt = lib.lbfgs()
    value_and_grad = lib.value_and_grad_from_state(fun)

    def step(carry):
        params, state, k, evaluations = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return lib.apply_updates(params, updates), state, k + 1, evaluations + state[-1].info.num_linesearch_steps

    def keep_going(carry):
        _, state, k, _ = carry
        return (k == 0) | ((k < MAX_ITER) & (optax.tree.norm(state[-1].grad) >= TOL))

    # One evaluation before the loop's first line search (value_and_grad_from_state finds no value yet).
    params, state, k, evaluations = jax.lax.while_loop(keep_going, step, (params, opt.init(params), 0, 1))
    return params, k, evaluations, state[-1].value


def run_scipy(fun, params):
    flat, unravel = ravel_pytree(params)
    value_and_grad = jax.jit(jax.value_and_grad(lambda v: fun(unravel(v))))

    def f(v):
        value, grad = value_and_grad(v)
        return float(value), np.asarray(grad)

    options = dict(maxcor=10, maxiter=MAX_ITER, ftol=1e-15, gtol=1e-11)
    result = scipy.optimize.minimize(f, np.asarray(flat), jac=True, method="L-BFGS-B", options=options)
    return result.nit, result.nfev, result.fun


def main():
    print(f"{'problem':32s} {'solver':12s} {'iterations':>10s} {'evaluations':>12s} {'final objective':>22s}")
    for name, (fun, params) in PROBLEMS.items():
        rows = []
        for lib_name, lib in (("jaxopt_lite", jaxopt_lite), ("optax", optax)):
            _, k, evaluations, value = jax.jit(lambda p, lib=lib: run_lbfgs(lib, fun, p))(params)
            rows.append((lib_name, int(k), int(evaluations), float(value)))
        rows.append(("scipy", *run_scipy(fun, params)))
        for solver, k, evaluations, value in rows:
            print(f"{name:32s} {solver:12s} {k:10d} {evaluations:12d} {value:22.15e}")


if __name__ == "__main__":
    main()
