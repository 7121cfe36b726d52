"""L-BFGS and the line searches: a NumPy two-loop reference, Optax 0.2.8 step by step, SciPy's L-BFGS-B
solutions, the Armijo and strong Wolfe conditions, and (locally) torch.optim.LBFGS.

Compiled programs are few and shared: one L-BFGS run (a ``lax.while_loop``; problem data and hyperparameters
traced) per library for every problem, one zoom and one backtracking search for every test function.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

import jaxopt_lite as jol

# --------------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------------


def rosenbrock(x, mask=None):
    """Rosenbrock's function; ``mask`` keeps some of its terms (2-D Rosenbrock embedded in 10-D: same iterates)."""
    terms = 100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2
    return jnp.sum(terms if mask is None else mask * terms)


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data - data.data.mean(0)) / (data.data.std(0) + 1.0)
    return jnp.asarray(x), jnp.asarray(np.eye(10)[data.target])


def logistic(params, x, y):
    """Full-batch multinomial logistic regression (scikit-learn's digits), L2-regularized."""
    logits = x @ params["w"] + params["b"]
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=1)) + 0.5e-2 * jnp.sum(params["w"] ** 2)


DIGITS_X, DIGITS_Y = _digits()


def objective(params, mask, x, y, is_rosenbrock):
    """Rosenbrock's function of ``params["b"]`` or the logistic regression: one compiled L-BFGS program per
    library serves every problem (the unused parameters have zero gradient and never move)."""
    return jnp.where(is_rosenbrock, rosenbrock(params["b"], mask), logistic(params, x, y))


def _problem(b, mask, is_rosenbrock):
    data = dict(mask=jnp.asarray(mask, jnp.float64), x=DIGITS_X, y=DIGITS_Y, is_rosenbrock=jnp.asarray(is_rosenbrock))
    return {"w": jnp.zeros((64, 10)), "b": jnp.asarray(b, jnp.float64)}, data


PROBLEMS = {  # name: (start, the objective's extra arguments)
    "rosenbrock2": _problem([-1.2, 1.0] + [0.0] * 8, np.arange(9) == 0, True),  # 2-D, embedded
    "rosenbrock10": _problem([-1.2, 1.0] * 5, np.ones(9), True),
    "logistic": _problem(np.zeros(10), np.ones(9), False),
}
MAX_ITER = 300
# Optax's defaults, as arrays: every run of a program passes arrays of the same dtypes and shares it.
DEFAULT_HP = dict(slope_rtol=1e-4, curv_rtol=0.9, increase_factor=2.0, stepsize_precision=1e-5, approx_dec_rtol=1e-6)
DEFAULT_HP = {k: jnp.asarray(v) for k, v in DEFAULT_HP.items()}


@functools.lru_cache(maxsize=None)
def runner(lib):
    """A jitted L-BFGS run to ``|grad| < tol`` (Optax's documented loop): one ``lax.while_loop``.

    Hyperparameters and the objective's data are traced arguments (the data reach the objective as
    ``update``'s extra arguments), so all runs share one compilation. Returns the final parameters,
    iterations, objective evaluations, the iterates and the final value.
    """
    mod = {"ours": jol, "optax": optax}[lib]
    runner.traces[lib] = 0

    def run(params, data, tol, hp):
        runner.traces[lib] += 1
        linesearch = mod.scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one", **hp)
        opt = mod.lbfgs(linesearch=linesearch)
        value_and_grad = mod.value_and_grad_from_state(objective)
        history = jax.tree.map(lambda p: jnp.full((MAX_ITER, *p.shape), jnp.nan, p.dtype), params)

        def step(carry):
            params, state, k, evaluations, history = carry
            value, grad = value_and_grad(params, state=state, **data)
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=objective, **data)
            params = mod.apply_updates(params, updates)
            history = jax.tree.map(lambda h, p: h.at[k].set(p), history, params)
            return params, state, k + 1, evaluations + state[-1].info.num_linesearch_steps, history

        def keep_going(carry):
            _, state, k, _, _ = carry
            return (k == 0) | ((k < MAX_ITER) & (optax.tree.norm(state[-1].grad) >= tol))

        carry = (params, opt.init(params), 0, 1, history)  # 1: the first value_and_grad evaluates
        params, state, k, evaluations, history = jax.lax.while_loop(keep_going, step, carry)
        return params, k, evaluations, history, state[-1].value

    return jax.jit(run)


runner.traces = {}


def run_problem(lib, problem, params=None, hp=DEFAULT_HP, tol=1e-9):
    x0, data = PROBLEMS[problem]
    return jax.tree.map(np.asarray, runner(lib)(x0 if params is None else params, data, tol, hp))


@functools.lru_cache(maxsize=None)
def solve(lib, problem):
    return run_problem(lib, problem)


def _flat(params, problem):
    """The parameters of the problem itself, as one vector."""
    return {"rosenbrock2": params["b"][:2], "rosenbrock10": params["b"]}.get(problem, ravel_pytree(params)[0])


@functools.lru_cache(maxsize=None)
def scipy_solution(problem):
    x0, data = PROBLEMS[problem]
    if problem == "logistic":
        flat0, unravel = ravel_pytree(x0)
        fun = lambda v: logistic(unravel(v), DIGITS_X, DIGITS_Y)  # noqa: E731
    else:
        flat0, fun = _flat(x0, problem), rosenbrock
    value_and_grad = jax.jit(jax.value_and_grad(fun))

    def f(v):
        value, grad = value_and_grad(v)
        return float(value), np.asarray(grad)

    options = dict(maxcor=10, maxiter=2000, ftol=1e-15, gtol=1e-11)
    return scipy.optimize.minimize(f, np.asarray(flat0), jac=True, method="L-BFGS-B", options=options)


# --------------------------------------------------------------------------------------------------
# (1) scale_by_lbfgs against a NumPy two-loop recursion
# --------------------------------------------------------------------------------------------------


def _two_loop_reference(g, pairs, gamma):
    """H g for the BFGS update of gamma * I by the pairs (s, y), oldest first (Nocedal & Wright, Alg. 7.4)."""
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        alpha = (s @ q) / (s @ y)
        q -= alpha * y
        alphas.append(alpha)
    r = gamma * q
    for (s, y), alpha in zip(pairs, reversed(alphas)):
        r += (alpha - (y @ r) / (s @ y)) * s
    return r


@pytest.mark.parametrize("memory_size, scale_init_precond", [(4, True), (3, False)])
def test_scale_by_lbfgs_equals_numpy_two_loop_recursion(memory_size, scale_init_precond):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(9, 9)))
    hessian = q @ np.diag(np.logspace(0, 2, 9)) @ q.T
    target = rng.normal(size=9)
    params0 = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(3)}
    flat0, unravel = ravel_pytree(params0)

    tx = jol.scale_by_lbfgs(memory_size, scale_init_precond)
    ref_tx = optax.scale_by_lbfgs(memory_size, scale_init_precond)
    update, ref_update = jax.jit(tx.update), jax.jit(ref_tx.update)
    state, ref_state = tx.init(params0), ref_tx.init(params0)
    x, x_prev, g_prev, pairs = rng.normal(size=9), None, None, []
    for k in range(200):
        g = hessian @ (x - target)
        if k > 0:
            pairs = (pairs + [(x - x_prev, g - g_prev)])[-memory_size:]
        s, y = pairs[-1] if pairs else (None, None)
        if not scale_init_precond:
            gamma = 1.0
        else:
            gamma = (s @ y) / (y @ y) if k > 0 else 1.0 / max(1.0, np.linalg.norm(g))
        expected = _two_loop_reference(g, pairs, gamma)

        direction, state = update(unravel(g), state, unravel(x))
        ref_direction, ref_state = ref_update(unravel(g), ref_state, unravel(x))
        np.testing.assert_allclose(ravel_pytree(direction)[0], expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
        np.testing.assert_allclose(ravel_pytree(direction)[0], ravel_pytree(ref_direction)[0], rtol=1e-12, atol=1e-14)
        # A noisy step: s'y = s'Hs > 0 always, and the ring buffer wraps many times.
        x_prev, g_prev = x, g
        x = x - 0.3 * expected / max(1.0, np.linalg.norm(expected)) + 0.05 * rng.normal(size=9)
    assert int(state.count) == 200
    assert state.diff_params_memory["w"].shape == (memory_size, 3, 2)
    assert jol.ScaleByLBFGSState._fields == optax.ScaleByLBFGSState._fields


# --------------------------------------------------------------------------------------------------
# (2) Optax step by step, (3) SciPy's solutions, compile-once and traced hyperparameters
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["rosenbrock2", "logistic"])
def test_lbfgs_iterates_equal_optax(problem):
    ours, ref = solve("ours", problem), solve("optax", problem)
    _, k, evaluations, history, value = ours
    assert (k, evaluations) == (ref[1], ref[2])
    # The same algorithm in another order of float64 operations: rounding differences grow over ~50
    # iterations of the logistic problem to ~2e-8 absolute, ~1.5e-7 relative.
    for h, h_ref in zip(jax.tree.leaves(history), jax.tree.leaves(ref[3])):
        np.testing.assert_allclose(h[:k], h_ref[:k], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(value, ref[4], rtol=1e-10)


@pytest.mark.parametrize("problem", ["rosenbrock2", "rosenbrock10", "logistic"])
def test_lbfgs_reaches_scipy_solution(problem, record_property):
    params, k, evaluations, _, value = solve("ours", problem)
    result = scipy_solution(problem)
    assert result.success, result.message
    np.testing.assert_allclose(_flat(params, problem), result.x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value, result.fun, rtol=1e-9, atol=1e-12)
    record_property("iterations", {"ours": int(k), "scipy": int(result.nit)})
    record_property("evaluations", {"ours": int(evaluations), "scipy": int(result.nfev)})
    assert k < MAX_ITER
    assert evaluations <= 2 * result.nfev + 10  # the same algorithm family: comparable cost


def test_lbfgs_compiles_once_and_hyperparameters_are_traced():
    for problem in ("rosenbrock2", "rosenbrock10"):
        solve("ours", problem)
    other = dict(slope_rtol=1e-3, curv_rtol=0.5, increase_factor=3.0, stepsize_precision=1e-6, approx_dec_rtol=1e-7)
    hp = {k: jnp.asarray(v) for k, v in other.items()}
    start = jax.tree.map(lambda p: p + 0.1, PROBLEMS["rosenbrock10"][0])
    params, k, evaluations, history, _ = run_problem("ours", "rosenbrock10", start, hp, tol=1e-8)
    # Two problems, a new start, tolerance and hyperparameters: one trace.
    assert runner.traces["ours"] == 1
    np.testing.assert_allclose(params["b"], np.ones(10), atol=1e-6)
    # Optax, also with traced hyperparameters (its program is shared with the equality test), agrees.
    ref = run_problem("optax", "rosenbrock10", start, hp, tol=1e-8)
    assert (int(k), int(evaluations)) == (int(ref[1]), int(ref[2]))
    np.testing.assert_allclose(history["b"][:k], ref[3]["b"][:k], rtol=1e-7, atol=1e-8)


def test_lbfgs_is_a_chain_with_optax_state_layout_and_dtypes():
    params = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    opt = jol.lbfgs()
    state = jax.eval_shape(opt.init, params)
    ref_state = jax.eval_shape(optax.lbfgs().init, params)
    # The same fields in the same places (PyTreeDefs of two libraries never compare equal: their classes differ).
    paths = lambda tree: [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]  # noqa: E731
    assert paths(state) == paths(ref_state)
    assert [type(s).__name__ for s in state] == [type(s).__name__ for s in ref_state]
    assert state[0].diff_params_memory["w"].shape == (10, 2, 3)

    def f(p):
        return jnp.sum(p["w"] ** 2) + jnp.sum(jnp.cos(p["b"]))

    def step(p, s):
        value, grad = jol.value_and_grad_from_state(f)(p, state=s)
        return opt.update(grad, s, p, value=value, grad=grad, value_fn=f)

    updates, new_state = jax.eval_shape(step, params, opt.init(params))
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), new_state) == jax.tree.map(
        lambda x: (x.shape, x.dtype), jax.eval_shape(opt.init, params)
    )


# --------------------------------------------------------------------------------------------------
# (4) The line searches' conditions, on a family of test functions
# --------------------------------------------------------------------------------------------------


def family(x, a, b, r, t):
    """0.5 x'Ax - b'x + r * (Rosenbrock's valley) + t * sum(exp(x)): quadratics, Rosenbrock, exponentials."""
    return 0.5 * x @ a @ x - b @ x + r * jnp.sum((x[1:] - x[:-1] ** 2) ** 2) + t * jnp.sum(jnp.exp(x))


_FAMILY_CASES = {  # name: (A, b, r, t, x0)
    "ill_conditioned_quadratic": lambda rng: (np.diag([1.0, 10.0, 100.0, 1000.0]), np.ones(4), 0.0, 0.0, [1.0] * 4),
    "rosenbrock": lambda rng: (2 * np.eye(4), 2 * np.ones(4), 100.0, 0.0, [-1.2, 1.0, -1.2, 1.0]),
    "exponential": lambda rng: (np.eye(4), np.zeros(4), 0.0, 1.0, [3.0, -1.0, 2.0, 0.0]),
    "mixed": lambda rng: (rng.normal(size=(4, 4)), rng.normal(size=4), 1.0, 0.1, rng.normal(size=4).tolist()),
}
CASE_IDS = [f"{name}-{direction}" for name in _FAMILY_CASES for direction in ("gradient", "short_gradient", "newton")]


@functools.lru_cache(maxsize=None)
def _case(case_id):
    """``(x0, u, data)``: a start, a descent direction and the function's data (built on first use, not at import)."""
    name, direction = case_id.split("-")
    a, b, r, t, x0 = _FAMILY_CASES[name](np.random.default_rng(3))
    if name == "mixed":
        a = a @ a.T + np.eye(4)
    data = dict(a=jnp.asarray(a), b=jnp.asarray(b), r=jnp.asarray(r), t=jnp.asarray(t))
    x0 = jnp.asarray(x0)
    grad = jax.grad(family)(x0, **data)
    if direction == "newton":
        newton = -jnp.linalg.solve(jax.hessian(family)(x0, **data) + 1e-3 * jnp.eye(4), grad)
        return x0, jnp.where(newton @ grad < 0, newton, -grad), data
    return x0, -grad if direction == "gradient" else -1e-4 * grad, data


@functools.partial(jax.jit, static_argnames=("kind", "lib"))
def _one_search(x0, u, data, hp, kind, lib="ours"):
    mod = {"ours": jol, "optax": optax}[lib]
    value, grad = jax.value_and_grad(family)(x0, **data)
    if kind == "zoom":
        ls = mod.scale_by_zoom_linesearch(max_linesearch_steps=30, initial_guess_strategy="one", **hp)
    else:
        ls = mod.scale_by_backtracking_linesearch(max_backtracking_steps=40, store_grad=True, **hp)
    updates, state = ls.update(u, ls.init(x0), x0, value=value, grad=grad, value_fn=family, **data)
    return updates, state


@pytest.mark.parametrize("case_id", CASE_IDS)
@pytest.mark.parametrize("c1, c2", [(1e-4, 0.9), (0.3, 0.4)])
def test_zoom_linesearch_satisfies_strong_wolfe(case_id, c1, c2):
    x0, u, data = _case(case_id)
    hp = dict(slope_rtol=jnp.asarray(c1), curv_rtol=jnp.asarray(c2), approx_dec_rtol=jnp.asarray(1e-6))
    updates, state = _one_search(x0, u, data, hp, "zoom")
    eta = float(state.learning_rate)
    f = lambda x: float(family(x, **data))  # noqa: E731
    slope0 = float(jax.grad(family)(x0, **data) @ u)
    x1 = x0 + eta * u
    grad1 = jax.grad(family)(x1, **data)
    assert eta > 0 and slope0 < 0
    assert float(state.info.decrease_error) == 0.0 and float(state.info.curvature_error) == 0.0
    slope1 = float(grad1 @ u)
    # Sufficient decrease: Armijo, or (as the docstring and Optax allow) Hager and Zhang's approximate form
    # where the value did not rise by more than approx_dec_rtol |f(x0)|.
    armijo = f(x1) <= f(x0) + c1 * eta * slope0 + 1e-12 * abs(f(x0))
    approximate = slope1 <= (2 * c1 - 1) * slope0 + 1e-9 * abs(slope0) and f(x1) <= f(x0) + 1e-6 * abs(f(x0))
    assert armijo or approximate, (f(x1), f(x0), eta, slope0, slope1)
    assert abs(slope1) <= c2 * abs(slope0) * (1 + 1e-9)  # strong curvature condition
    np.testing.assert_allclose(updates, eta * u, rtol=1e-14)
    np.testing.assert_allclose(state.value, f(x1), rtol=1e-12)
    np.testing.assert_allclose(state.grad, grad1, rtol=1e-10, atol=1e-12)
    ref_updates, ref_state = _one_search(x0, u, data, hp, "zoom", "optax")
    np.testing.assert_allclose(state.learning_rate, ref_state.learning_rate, rtol=1e-12)
    assert int(state.info.num_linesearch_steps) == int(ref_state.info.num_linesearch_steps)


@pytest.mark.parametrize("case_id", CASE_IDS)
@pytest.mark.parametrize("c1, decrease_factor", [(1e-4, 0.8), (0.5, 0.3)])
def test_backtracking_linesearch_satisfies_armijo(case_id, c1, decrease_factor):
    x0, u, data = _case(case_id)
    hp = dict(slope_rtol=jnp.asarray(c1), decrease_factor=jnp.asarray(decrease_factor))
    updates, state = _one_search(x0, u, data, hp, "backtracking")
    eta = float(state.learning_rate)
    f = lambda x: float(family(x, **data))  # noqa: E731
    slope0 = float(jax.grad(family)(x0, **data) @ u)
    x1 = x0 + eta * u
    assert 0 < eta <= 1.0 and float(state.info.decrease_error) == 0.0
    assert f(x1) <= f(x0) + c1 * eta * slope0
    # The step before (eta / decrease_factor) failed the criterion unless eta is the first trial (1.0).
    steps = int(state.info.num_linesearch_steps)
    assert eta == pytest.approx(decrease_factor ** (steps - 1))
    if steps > 1:
        longer = eta / decrease_factor
        assert f(x0 + longer * u) > f(x0) + c1 * longer * slope0
    np.testing.assert_allclose(state.grad, jax.grad(family)(x1, **data), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(updates, eta * u, rtol=1e-14)
    ref_updates, ref_state = _one_search(x0, u, data, hp, "backtracking", "optax")
    np.testing.assert_allclose(state.learning_rate, ref_state.learning_rate, rtol=1e-12)
    np.testing.assert_allclose(state.grad, ref_state.grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state.value, ref_state.value, rtol=1e-12)


def test_line_searches_step_back_from_non_finite_values():
    def barrier(x):  # finite only for x < 1, minimal at x = 0.5
        return -jnp.sum(jnp.log1p(-x)) - 2 * jnp.sum(x)

    x0 = jnp.array([0.0, 0.2])
    value, grad = jax.value_and_grad(barrier)(x0)
    u = -10.0 * grad  # the first trial, x0 + u, leaves the domain
    searches = (jol.scale_by_zoom_linesearch(20, initial_guess_strategy="one"), jol.scale_by_backtracking_linesearch(30))
    for ls in searches:
        updates, state = jax.jit(functools.partial(ls.update, value_fn=barrier))(
            u, ls.init(x0), x0, value=value, grad=grad
        )
        assert np.isfinite(barrier(x0 + updates)) and barrier(x0 + updates) < value
        assert 0 < state.learning_rate < 1


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="scale_by_lbfgs: memory_size must be a Python int >= 1"):
        jol.scale_by_lbfgs(memory_size=0)
    with pytest.raises(ValueError, match="initial_guess_strategy must be 'one' or 'keep'"):
        jol.scale_by_zoom_linesearch(10, initial_guess_strategy="two")
    with pytest.raises(ValueError, match="scale_by_zoom_linesearch: curv_rtol must be in"):
        jol.scale_by_zoom_linesearch(10, curv_rtol=-0.5)
    with pytest.raises(ValueError, match="decrease_factor must be in"):
        jol.scale_by_backtracking_linesearch(10, decrease_factor=1.5)

    params = jnp.ones(2)
    opt = jol.lbfgs()
    with pytest.raises(ValueError, match="scale_by_zoom_linesearch: update needs .* missing: value, grad, value_fn"):
        opt.update(params, opt.init(params), params)
    with pytest.raises(TypeError, match=r"extra keyword arguments \['scale'\] that value_fn"):
        opt.update(params, opt.init(params), params, value=1.0, grad=params, value_fn=rosenbrock, scale=2.0)
    backtracking = jol.chain(jol.sgd(1.0), jol.scale_by_backtracking_linesearch(10))
    with pytest.raises(ValueError, match="store_grad=True"):
        jol.value_and_grad_from_state(rosenbrock)(params, state=backtracking.init(params))


# --------------------------------------------------------------------------------------------------
# (5) torch.optim.LBFGS(line_search_fn="strong_wolfe"), where installed
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["rosenbrock2", "rosenbrock10"])
def test_torch_lbfgs_reaches_the_same_minimum(problem):
    """torch's L-BFGS shares the two-loop direction and gamma_k, but differs in the first step
    (t = min(1, 1/|g|_1) along -g), its strong-Wolfe search (minFunc's: cubic interpolation, extrapolation up
    to 10x, 25 trials) and its stopping rules, so iterates differ; solutions and costs must agree."""
    torch = pytest.importorskip("torch")
    start = np.asarray(_flat(PROBLEMS[problem][0], problem))
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [x], lr=1, max_iter=MAX_ITER, history_size=10, tolerance_grad=1e-10, tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        value = torch.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
        value.backward()
        return value

    opt.step(closure)
    torch_state = opt.state[opt._params[0]]
    params, k, evaluations, _, _ = solve("ours", problem)
    np.testing.assert_allclose(x.detach().numpy(), _flat(params, problem), atol=1e-7)
    assert torch_state["n_iter"] < MAX_ITER
    assert evaluations <= 2 * torch_state["func_evals"] + 10 and torch_state["func_evals"] <= 2 * evaluations + 10
