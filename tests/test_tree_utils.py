"""The Optax ``tree`` / ``tree_utils`` functions added for issue 8, against NumPy and against Optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_lite as jol
from jaxopt_lite import tree as jtree
from jaxopt_lite import tree_utils

TREE = {"a": jnp.array([1.0, -2.0, 3.0]), "b": (jnp.array([[4.0, -5.0]]), jnp.array(0.5))}


def test_tree_utils_namespace_is_optax_s():
    optax_names = {n for n in dir(optax.tree_utils) if not n.startswith("_")} - {"functools", "typing"}
    assert optax_names == set(tree_utils.__all__)
    for name in optax_names:
        assert hasattr(tree_utils, name)
    assert jol.tree_map_params is jtree.map_params
    for name in ("allclose", "batch_shape", "conj", "dtype", "get", "get_all_with_path", "map_params", "max", "min",
                 "random_like", "real", "set", "size", "split_key_like", "unwrap_random_key_data"):
        assert getattr(optax.tree, name) and callable(getattr(jtree, name))


def test_reductions_against_numpy_and_optax():
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(TREE)])
    assert float(jtree.max(TREE)) == flat.max() == float(optax.tree.max(TREE))
    assert float(jtree.min(TREE)) == flat.min() == float(optax.tree.min(TREE))
    assert jtree.size(TREE) == flat.size == optax.tree.size(TREE)
    assert float(jtree.max({"e": jnp.zeros(0)})) == -np.inf and float(jtree.min({})) == np.inf
    assert jax.jit(jtree.max)(TREE) == 4.0


def test_allclose_conj_real_batch_shape():
    other = jax.tree.map(lambda x: x + 1e-9, TREE)
    assert bool(jtree.allclose(TREE, other)) and bool(optax.tree.allclose(TREE, other))
    far = jax.tree.map(lambda x: x + 1e-3, TREE)
    assert not bool(jtree.allclose(TREE, far)) and not bool(optax.tree.allclose(TREE, far))
    nan = {"x": jnp.array([jnp.nan])}
    assert not bool(jtree.allclose(nan, nan)) and bool(jtree.allclose(nan, nan, equal_nan=True))
    with pytest.raises(ValueError, match="same tree structure"):
        jtree.allclose(TREE, {"a": TREE["a"]})
    z = {"c": jnp.array([1 + 2j, -3j])}
    np.testing.assert_array_equal(jtree.conj(z)["c"], np.conj(np.asarray(z["c"])))
    np.testing.assert_array_equal(jtree.real(z)["c"], [1.0, 0.0])
    batched = jtree.batch_shape(TREE, (4, 2))
    assert jax.tree.map(jnp.shape, batched) == jax.tree.map(jnp.shape, optax.tree.batch_shape(TREE, (4, 2)))
    np.testing.assert_array_equal(batched["b"][0][3, 1], TREE["b"][0])


def test_dtype():
    mixed = {"a": jnp.zeros(2, jnp.float16), "b": jnp.zeros(2, jnp.float32)}
    assert jtree.dtype(TREE) == jnp.float64
    for handler in ("promote", "highest", "lowest"):
        assert jtree.dtype(mixed, handler) == optax.tree.dtype(mixed, handler)
    assert jtree.dtype({}) == optax.tree.dtype({})
    with pytest.raises(ValueError, match=r"Expected dtype=float16 for \['b'\]"):
        jtree.dtype(mixed)
    with pytest.raises(ValueError, match="neither of int32 and uint32"):
        jtree.dtype({"a": jnp.zeros(1, jnp.int32), "b": jnp.zeros(1, jnp.uint32)}, "highest")
    with pytest.raises(ValueError, match="mixed_dtype_handler must be"):
        jtree.dtype(mixed, "largest")


def test_random_trees_match_optax_draws():
    key = jax.random.PRNGKey(3)
    keys = jtree.split_key_like(key, TREE)
    assert jax.tree.structure(keys) == jax.tree.structure(TREE)
    for sampler in (jax.random.normal, jax.random.uniform):
        ours = jtree.random_like(key, TREE, sampler)
        theirs = optax.tree.random_like(key, TREE, sampler)
        jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    assert jtree.random_like(key, TREE, dtype=jnp.float32)["a"].dtype == jnp.float32
    typed = {"k": jax.random.key(0), "x": jnp.ones(2)}
    unwrapped = jtree.unwrap_random_key_data(typed)
    np.testing.assert_array_equal(unwrapped["k"], jax.random.key_data(typed["k"]))
    assert unwrapped["x"] is typed["x"]


def _keystrs(found):
    return [(jax.tree_util.keystr(path), value) for path, value in found]


STATES = {
    "adam": (lambda o: o.adam(1e-3), {"w": jnp.ones(3)}),
    "chain": (lambda o: o.chain(o.scale_by_adam(), o.scale_by_schedule(lambda c: 0.1), o.trace(0.9)),
              {"w": jnp.ones(2), "b": jnp.ones(())}),
    "inject": (lambda o: o.inject_hyperparams(o.sgd)(learning_rate=0.1, momentum=0.9), {"w": jnp.ones(2)}),
}


@pytest.mark.parametrize("name", sorted(STATES))
@pytest.mark.parametrize("key", ["count", "mu", "trace", "learning_rate", "ScaleByAdamState", "missing"])
def test_get_all_with_path_matches_optax(name, key):
    make, params = STATES[name]
    state = make(jol).init(params)
    ours = _keystrs(jtree.get_all_with_path(state, key))
    theirs = _keystrs(optax.tree.get_all_with_path(make(optax).init(params), key))
    assert [p for p, _ in ours] == [p.replace("InjectStatefulHyperparamsState", "InjectHyperparamsState") for p, _
                                    in theirs] or name == "inject"
    assert len(ours) == len(theirs)


def test_get_and_set():
    state = jol.chain(jol.scale_by_adam(), jol.scale_by_schedule(lambda c: 0.1)).init({"w": jnp.ones(2)})
    with pytest.raises(KeyError, match="found 2 values for 'count'"):
        jtree.get(state, "count")
    adam_only = lambda path, value: isinstance(path[-1], jtree.NamedTupleKey) and path[-1].tuple_name == "ScaleByAdamState"
    assert jtree.get(state, "count", filtering=adam_only) is state[0].count
    assert jtree.get(state, "missing", default=7) == 7
    assert jtree.get(state, "ScaleByAdamState") is state[0]

    new = jtree.set(state, adam_only, count=jnp.asarray(5))
    assert int(new[0].count) == 5 and new[1].count is state[1].count and new[0].mu["w"] is state[0].mu["w"]
    both = jtree.set(state, count=jnp.asarray(9))
    assert int(both[0].count) == 9 and int(both[1].count) == 9
    opt_state = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(lambda c: 0.1)).init({"w": jnp.ones(2)})
    theirs = optax.tree.set(opt_state, count=jnp.asarray(9))
    assert int(theirs[0].count) == 9 and int(theirs[1].count) == 9
    replaced = jtree.set(state, ScaleByAdamState="gone")
    assert replaced[0] == "gone" and replaced[1].count is state[1].count
    with pytest.raises(KeyError, match="found no value for 'nope'"):
        jtree.set(state, nope=1)
    with pytest.raises(KeyError, match="given the filtering"):
        jtree.set(state, lambda p, v: False, count=1)
    assert jtree.set({"lr": 1.0, "x": {"lr": 2.0}}, lr=3.0) == {"lr": 3.0, "x": {"lr": 3.0}}


def test_map_params_matches_optax():
    params = {"w": jnp.ones(3), "b": jnp.zeros(2)}
    specs = {"w": "W", "b": "B"}
    for make in (lambda o: o.adam(1e-3), lambda o: o.sgd(0.1, momentum=0.9)):
        ours = jtree.map_params(make(jol), lambda _, spec: spec, make(jol).init(params), specs,
                                transform_non_params=lambda _: None)
        theirs = optax.tree.map_params(make(optax), lambda _, spec: spec, make(optax).init(params), specs,
                                       transform_non_params=lambda _: None)
        assert jax.tree.leaves(ours) == jax.tree.leaves(theirs) and "W" in jax.tree.leaves(ours)
    state = jol.adam(1e-3).init(params)
    doubled = jol.tree_map_params(jol.adam(1e-3).init, lambda x: x + 1, state)
    np.testing.assert_array_equal(doubled[0].mu["w"], np.ones(3))
    assert doubled[0].count is state[0].count


def test_unzip_leaves_keeps_a_list_shaped_tree():
    """A tree whose root is a list (layers) unzips by its leaves, not as a list of tuples."""
    import jax

    from jaxopt_lite import tree as T

    tree = [{"w": 1.0, "b": 2.0}, {"w": 3.0}]
    treedef = jax.tree.structure(tree)
    per_leaf = [(x, 10 * x) for x in jax.tree.leaves(tree)]
    first, second = T.unzip_leaves(treedef, per_leaf, 2)
    assert first == tree
    assert second == jax.tree.map(lambda x: 10 * x, tree)
