"""The shared interfaces: stateful aggregators (optax-shaped), numerics once, the FL round split, one attack
interface, the attack sweep as a vmap over FLParams."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import aggregators as agg
from fedjax_attacks import attacks, data, fl, models
from fedjax_attacks.aggregators import _common, base, registry
from fedjax_attacks.attacks import AttackInput
from fedjax_attacks.attacks import base as attack_base

DIGITS = data.load("digits")
MLP = models.get("mlp", 10, DIGITS.input_shape, hidden=(16,))
GOLDEN = pathlib.Path(__file__).parent / "data" / "centered_clipping_fl_golden.npz"


# ---------------------------------------------------------------- aggregator state
@pytest.mark.parametrize("attack", ["none", "ipm"])
def test_centered_clipping_state_reproduces_the_previous_history(attack):
    """The golden file was written by the library before centered clipping's centre moved into its state (the FL
    loop then passed the previous aggregate as context): the threaded state must give the same run. XLA's CPU code
    differs by processor and by optimization level (float sums in other orders: up to 1e-7 here after 12 rounds),
    so parameters and losses compare within 1e-5, the accuracy within one test image, and the sampled malicious
    counts (integers from the PRNG, the same on every machine) exactly. A centre that is not threaded (reset to 0
    each round) moves the parameters by up to 2e-2."""
    if jax.default_backend() != "cpu":
        pytest.skip("the golden history is a CPU's at full float32 precision")
    golden = np.load(GOLDEN)
    config = fl.FLConfig(num_clients=20, num_malicious=4, clients_per_round=5, batch_size=4, lr=0.1, rounds=12,
                         eval_every=3, aggregator="centered_clipping",
                         aggregator_hparams={"tau": 0.5, "num_iters": 2}, attack=attack)
    with jax.default_matmul_precision("highest"):  # as written (and not rounded by `make test-tf32`)
        params, history = jax.jit(fl.make_run(config, DIGITS, MLP))(jax.random.PRNGKey(3))
    np.testing.assert_allclose(np.asarray(params), golden[f"{attack}_params"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(history.test_loss), golden[f"{attack}_loss"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(history.test_accuracy), golden[f"{attack}_acc"],
                               atol=1.5 / len(DIGITS.y_test))
    np.testing.assert_array_equal(np.asarray(history.num_malicious_selected), golden[f"{attack}_count"])


def test_every_rule_can_be_jitted_as_a_function():
    """Users jit a rule as they jit a function: ``jax.jit(rule)(updates)`` equals the one-shot call."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(9, 4)), jnp.float32)
    key = jax.random.PRNGKey(0)
    for name in ("mean", "median", "trimmed_mean", "krum", "geometric_median", "centered_clipping", "bucketing"):
        rule = agg.get(name, **({"num_byzantine": 1} if name == "krum" else {}))
        context = {"key": key} if "key" in rule.needs or name == "bucketing" else {}
        np.testing.assert_allclose(jax.jit(rule)(x, **context), rule(x, **context), rtol=1e-6, err_msg=name)


def test_centered_clipping_centre_lives_in_its_state():
    rule = agg.centered_clipping(tau=0.1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 5)) + 3.0, jnp.float32)
    state = rule.init(5)
    np.testing.assert_array_equal(state, np.zeros(5))
    out1, state = rule.update(x, state)
    np.testing.assert_array_equal(out1, state)
    out2, _ = rule.update(x, state)
    # the second step clips around the first step's output (kept in the state), not around zero
    v = np.asarray(out1, np.float64)
    diff = np.asarray(x, np.float64) - v
    step = (diff * np.minimum(1, 0.1 / np.linalg.norm(diff, axis=1, keepdims=True))).mean(0)
    np.testing.assert_allclose(out2, v + step, rtol=1e-5)
    assert np.linalg.norm(out2) > np.linalg.norm(out1) + 0.05  # it kept moving towards the data at ~(3, ..., 3)


def test_chain_threads_states_and_refuses_bad_parts():
    rule = agg.chain(agg.norm_clip(1.0), agg.centered_clipping(tau=0.5))
    x = jnp.ones((4, 3)) * 5
    state = rule.init(3)
    assert state[0] == () and state[1].shape == (3,)
    out, state = rule.update(x, state)
    np.testing.assert_allclose(state[1], out)
    with pytest.raises(ValueError, match="Aggregator"):
        agg.chain("krum")
    with pytest.raises(ValueError, match="final rule"):
        agg.chain(agg.mean(), agg.median())


@pytest.mark.parametrize("name", ["norm_clip", "bucketing", "nnm"])
def test_pre_aggregator_as_the_final_rule_raises(name):
    with pytest.raises(ValueError, match="pre-aggregator"):
        fl.make_simulation(fl.FLConfig(aggregator=name), DIGITS, MLP)


def test_register_refuses_to_overwrite_built_in_names():
    with pytest.raises(ValueError, match="built in"):
        agg.register("krum", agg.krum)
    with pytest.raises(ValueError, match="built in"):
        attacks.register("ipm", attacks.ipm)
    agg.register("test_my_rule", agg.mean)
    agg.register("test_my_rule", agg.mean)  # a user's own name may be re-registered
    assert agg.get("test_my_rule")(jnp.ones((2, 3))).shape == (3,)


# ---------------------------------------------------------------- numerics
def _sqdist64(x):
    x = x.astype(np.float64)
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def _ref_krum_scores(x, f):
    dist = _sqdist64(x)
    n = len(x)
    return np.array([np.sort(np.delete(dist[i], i))[: n - f - 2].sum() for i in range(n)])


def _offset_rows(n=25, d=40, seed=0):
    """Rows that share a component 1e4 times their spread (float32 Gram distances lose everything here)."""
    rng = np.random.default_rng(seed)
    spread = rng.normal(size=(n, d)) * rng.uniform(0.2, 2.0, size=(n, 1))
    return (1e4 * np.ones(d) + spread).astype(np.float32)


def test_distance_rules_agree_with_float64_when_rows_share_a_large_offset():
    x = _offset_rows()
    f = 3
    exact = _sqdist64(x)
    np.testing.assert_allclose(agg.pairwise_sq_dists(jnp.asarray(x)), exact, rtol=2e-3, atol=1e-2 * exact.mean())
    scores = _ref_krum_scores(x, f)
    assert int(np.argmin(agg.krum_scores(jnp.asarray(x), f))) == int(np.argmin(scores))
    np.testing.assert_array_equal(agg.krum(f)(jnp.asarray(x)), x[np.argmin(scores)])
    chosen = np.argsort(scores, kind="stable")[: len(x) - f]
    np.testing.assert_allclose(agg.multi_krum(f)(jnp.asarray(x)), x.astype(np.float64)[chosen].mean(0), rtol=0,
                               atol=5e-3)
    nnm = np.stack([x.astype(np.float64)[np.argsort(exact[i], kind="stable")[: len(x) - f]].mean(0)
                    for i in range(len(x))])
    np.testing.assert_allclose(agg.nnm(f)(jnp.asarray(x)), nnm, rtol=0, atol=5e-3)


@pytest.mark.parametrize("name,hparams", [("mean", {}), ("median", {}), ("trimmed_mean", {"num_trim": 1}),
                                          ("krum", {"num_byzantine": 1}), ("multi_krum", {"num_byzantine": 1}),
                                          ("geometric_median", {}), ("mda", {"num_byzantine": 1}),
                                          ("nnm", {"num_byzantine": 1, "aggregator": "mean"}),
                                          ("centered_clipping", {"tau": 2.0}), ("bulyan", {"num_byzantine": 1})])
def test_integer_input_gives_the_float32_answer(name, hparams):
    x = np.random.default_rng(1).integers(-5, 6, size=(9, 6))
    rule = agg.get(name, **hparams)
    got = rule(jnp.asarray(x, jnp.int32))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, rule(jnp.asarray(x, jnp.float32)))
    assert np.any(got != 0)


def test_half_precision_is_computed_in_float32_and_returned_in_its_dtype():
    x = np.random.default_rng(2).normal(size=(9, 6)).astype(np.float32)
    for dtype in (jnp.float16, jnp.bfloat16):
        got = agg.krum(1)(jnp.asarray(x, dtype))
        assert got.dtype == dtype
        expected = agg.krum(1)(jnp.asarray(x, dtype).astype(jnp.float32))
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected.astype(dtype), np.float32))


@pytest.mark.parametrize("method", ["network", "sort"])
def test_order_statistics_both_backend_paths(method):
    x = np.random.default_rng(3).normal(size=(40, 300)).astype(np.float32)
    x[3, :5] = np.nan
    clean = np.where(np.isnan(x), np.inf, x)
    np.testing.assert_allclose(agg.median(method)(jnp.asarray(x)), np.median(clean, 0), rtol=1e-6)
    trimmed = np.sort(clean, 0)[4:36].mean(0)
    np.testing.assert_allclose(agg.trimmed_mean(4, method)(jnp.asarray(x)), trimmed, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        agg.median("quicksort")


# ---------------------------------------------------------------- the FL round split
SMALL = fl.FLConfig(num_clients=20, num_malicious=6, clients_per_round=6, batch_size=4, lr=0.1, rounds=6,
                    eval_every=3, aggregator="centered_clipping", aggregator_hparams={"tau": 1.0})


def _scaled_flip(key, inp):
    """A hand-written attack: the negated benign mean, scaled by the round index + 2."""
    del key
    benign = ~inp.malicious_mask
    mean = jnp.sum(jnp.where(benign[:, None], inp.updates, 0), 0) / jnp.maximum(jnp.sum(benign), 1)
    return jnp.broadcast_to(-(inp.round + 2.0) * mean, inp.updates.shape)


@pytest.mark.slow  # kept out of `make test` for time (10-minute budget); `make test-slow` runs it
def test_external_attacker_loop_equals_run_with_the_same_attack():
    attacks.register("test_scaled_flip", lambda: attacks.Attack("test_scaled_flip", _scaled_flip))
    config = dataclasses.replace(SMALL, attack="test_scaled_flip")
    sim = fl.make_simulation(config, DIGITS, MLP)
    params = sim.default_params()
    key = jax.random.PRNGKey(7)

    @jax.jit
    def external(key):
        state = sim.init(key)
        for _ in range(config.rounds):  # the attacker plays from outside the simulation
            rin = sim.client_updates(state, params)
            inp = AttackInput(rin.updates, rin.malicious_mask, state.round)
            submitted = jnp.where(rin.malicious_mask[:, None], _scaled_flip(rin.attack_key, inp), rin.updates)
            state, metrics = sim.server_step(state, submitted, params)
        return state.params

    expected, _ = jax.jit(sim.run)(key)
    np.testing.assert_allclose(external(key), expected, rtol=1e-5, atol=1e-6)
    honest, _ = jax.jit(fl.make_run(SMALL, DIGITS, MLP))(key)
    assert not np.allclose(honest, expected, atol=1e-3)  # the attack did change the run


def test_vmapped_attack_sweep_equals_separate_runs():
    members = [("none", {}), ("ipm", {"eps": 5.0})]
    config = dataclasses.replace(SMALL, aggregator="median", aggregator_hparams={})
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    sweep = fl.make_attack_sweep(config, DIGITS, MLP, members)
    batched = sweep(keys, jnp.arange(len(members)))
    assert batched.test_loss.shape == (len(members), 2, 2)
    for index, (name, hparams) in enumerate(members):
        expected = jax.jit(jax.vmap(fl.make_run(dataclasses.replace(config, attack=name, attack_hparams=hparams),
                                                DIGITS, MLP)))(keys)[1]
        np.testing.assert_allclose(batched.test_loss[index], expected.test_loss, rtol=1e-5)


def test_fl_params_override_traced_hyperparameters():
    config = dataclasses.replace(SMALL, aggregator="median", aggregator_hparams={}, attack="ipm",
                                 attack_hparams={"eps": 5.0})
    sim = fl.make_simulation(config, DIGITS, MLP)
    key = jax.random.PRNGKey(0)
    run = jax.jit(sim.run)
    base = sim.default_params()
    for lr, eps in ((0.05, 0.5), (0.2, 8.0)):
        params = base.replace(lr=jnp.float32(lr), attack_hparams={"eps": jnp.float32(eps)})
        other = dataclasses.replace(config, lr=lr, attack_hparams={"eps": eps})
        expected = jax.jit(fl.make_run(other, DIGITS, MLP))(key)[0]
        np.testing.assert_allclose(run(key, params)[0], expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- one run protocol
def _assert_trees_close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # test_robustness resumes FL through the same chunked runner in the fast suite
def test_chunked_ppo_run_equals_the_whole_run():
    from fedjax_attacks.rl import env as rl_env
    from fedjax_attacks.rl import ppo

    env, env_params = rl_env.make("CartPole-v1")
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    trainer = ppo.make_trainer(ppo.PPOConfig(total_timesteps=5 * 4 * 16, num_envs=4, num_steps=16, hidden=(8,)),
                               env, env_params)
    whole = jax.jit(jax.vmap(trainer.run))(keys)
    chunked = trainer.run_with_progress(keys, chunk=2)  # 5 updates: chunks of 2, 2, 1
    assert chunked.metrics["episode_return"].shape == (2, 5)
    _assert_trees_close(chunked.train_state.params, whole.train_state.params)
    _assert_trees_close(chunked.metrics, whole.metrics)


@pytest.mark.slow  # two more compiles of the same chunked runner (test_robustness resumes DecByzPG in chunks too)
def test_chunked_dqn_and_decbyzpg_runs_equal_whole_runs():
    from fedjax_attacks import frl
    from fedjax_attacks.rl import dqn
    from fedjax_attacks.rl import env as rl_env

    env, env_params = rl_env.make("CartPole-v1")
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    q_trainer = dqn.make_trainer(dqn.DQNConfig(total_timesteps=96, num_envs=4, learning_starts=32, batch_size=8,
                                               train_frequency=4, buffer_size=96, hidden=(8,)), env, env_params)
    _assert_trees_close(q_trainer.run_with_progress(keys[0], chunk=7).q_state.params,
                        jax.jit(q_trainer.run)(keys[0]).q_state.params)

    config = frl.DecByzPGConfig(num_agents=3, aggregator="mean", agreement="none", large_batch=4, small_batch=2,
                                horizon=20, hidden=(8,))
    alg = frl.make_decbyzpg(config)
    switches = np.array([True, False, True, False, False])
    state, history = run_chunked_frl(alg, keys[0], switches)
    expected_state, expected_history = jax.jit(alg.run)(keys[0], switches)
    _assert_trees_close(state.theta, expected_state.theta)
    _assert_trees_close(history, expected_history)


def run_chunked_frl(alg, key, switches):
    from fedjax_attacks.runner import run_chunked

    return run_chunked(alg.trainer(switches), key, chunk=2, progress=False)

# ----------------------------------------------------------------------------------------------------
# Written for mutants of the shared interfaces (aggregators/_common.py, base.py, registry.py; attacks/base.py, switch.py)
# Tests added to kill the mutants of ``make mutation`` that survived the interface tests (issue 18): the shared
# aggregator helpers (``aggregators/_common.py``: validation, row sums, centred pairwise distances, the reference
# row), the ``Aggregator`` type and ``chain`` (``aggregators/base.py``), ``mean`` on both of its paths, both
# registries, ``AttackInput``/``Attack`` (``attacks/base.py``) and the attack ``switch``, each against plain NumPy
# or Python references on data offset away from zero.


F32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------- validation helpers
def test_check_updates_accepts_one_row_and_one_column_and_refuses_the_rest():
    assert _common.check_updates(jnp.zeros((1, 1)), "r") == (1, 1)
    assert _common.check_updates(jnp.zeros((3, 2)), "r") == (3, 2)
    for bad in (jnp.zeros((0, 3)), jnp.zeros((3, 0)), jnp.zeros(3), jnp.zeros((2, 2, 2)), [[1.0, 2.0]]):
        with pytest.raises(ValueError, match="r: updates must"):
            _common.check_updates(bad, "r")


def test_check_int_bounds_and_types():
    assert _common.check_int(3, "k", 3) == 3
    got = _common.check_int(np.int64(4), "k", 0)
    assert got == 4 and type(got) is int
    for bad in (2, True, 2.0, 3.0, "3", None):
        with pytest.raises(ValueError, match="k must be an integer >= 3"):
            _common.check_int(bad, "k", 3)


def test_check_positive_for_aggregators():
    got = _common.check_positive(2, "c")
    assert got == 2.0 and type(got) is float
    assert _common.check_positive(np.float32(0.5), "c") == 0.5
    for bad in (0, 0.0, -1.0, np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="c must be a positive finite number"):
            _common.check_positive(bad, "c")
    for bad in (True, "1", None, jnp.ones(2)):
        with pytest.raises(ValueError, match="c must be a positive number"):
            _common.check_positive(bad, "c")
    # a traced value passes unchanged (it was validated where it was made)
    assert float(jax.jit(lambda c: _common.check_positive(c, "c") * 2)(3.0)) == 6.0


# ---------------------------------------------------------------- sums over rows
def test_sq_norms_finite_rows_and_sum_rows():
    x = np.arange(12, dtype=np.float32).reshape(4, 3) + 0.5
    np.testing.assert_array_equal(_common.sq_norms(jnp.asarray(x)), (x.astype(np.float64) ** 2).sum(1))
    x[1, 2], x[3, 0] = np.nan, 2e19  # a NaN row and one whose squared norm overflows
    np.testing.assert_array_equal(_common.finite_rows(jnp.asarray(x)), [True, False, True, False])
    for k in range(1, 10):
        terms = [np.float32(3.0 ** i) for i in range(k)]
        assert _common.sum_rows(terms) == sum(3.0 ** i for i in range(k))


@pytest.mark.parametrize("n", [5, 300])  # the unrolled tree and the matrix product (n > 256)
def test_weighted_row_sum_matches_numpy_and_skips_invalid_rows(n):
    rng = np.random.default_rng(n)
    x = (rng.normal(size=(n, 3)) + 4.0).astype(np.float32)
    w = rng.uniform(0.5, 2.0, size=n).astype(np.float32)
    expected = (w[:, None].astype(np.float64) * x).sum(0)
    np.testing.assert_allclose(_common.weighted_row_sum(jnp.asarray(x), jnp.asarray(w)), expected, rtol=1e-5)
    valid = np.ones(n, bool)
    valid[[1, 3]] = False
    x[1], x[3, 2] = np.nan, np.inf
    w[3] = np.nan  # an invalid row's weight may be anything
    expected = (w[valid, None].astype(np.float64) * x[valid]).sum(0)
    got = _common.weighted_row_sum(jnp.asarray(x), jnp.asarray(w), jnp.asarray(valid))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("n", [5, 300])
def test_mean_on_both_paths_matches_numpy(n):
    x = (np.random.default_rng(n).normal(size=(n, 4)) + 7.0).astype(np.float32)
    np.testing.assert_allclose(agg.mean()(jnp.asarray(x)), x.astype(np.float64).mean(0), rtol=1e-6)


# ---------------------------------------------------------------- pairwise distances and the reference row
def _sqdist_ref(x, good):
    x = x.astype(np.float64)
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    dist[~(good[:, None] & good[None, :])] = np.inf
    np.fill_diagonal(dist, 0.0)
    return dist


def test_pairwise_sq_dists_match_float64_on_offset_rows_with_a_mask():
    """Rows at 1e3 with a spread of 0.1 to 1 (near pairs below distance 1), a NaN row and an overflowing row at
    distance inf, and a mask that drops one more row."""
    rng = np.random.default_rng(0)
    x = (1e3 + rng.normal(size=(7, 5)) * rng.uniform(0.1, 1.0, size=(7, 1))).astype(np.float32)
    x[2] = x[1] + 0.05
    x[4, 1], x[6, 0] = np.nan, 2e19
    good = np.array([True, True, True, True, False, True, False])
    mask = np.array([True, True, True, False, True, True, True])
    plain, masked = jax.jit(lambda x, m: (agg.pairwise_sq_dists(x), agg.pairwise_sq_dists(x, m)))(jnp.asarray(x),
                                                                                               jnp.asarray(mask))
    np.testing.assert_allclose(plain, _sqdist_ref(x, good), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(masked, _sqdist_ref(x, good & mask), rtol=1e-4, atol=1e-5)


def test_pairwise_sq_dists_compute_integers_and_half_precision_in_float32():
    """Squares that overflow int32 (5e4^2) and float16 (300^2) are exact in float32."""
    ints = np.array([[0, 0], [50000, 0], [0, 30000]], np.int32)
    half = np.array([[0, 0], [300, 0], [0, 200]], np.float16)
    from_ints, got = jax.jit(lambda a, b: (agg.pairwise_sq_dists(a), agg.pairwise_sq_dists(b)))(jnp.asarray(ints),
                                                                                             jnp.asarray(half))
    np.testing.assert_array_equal(from_ints, _sqdist_ref(ints, np.ones(3, bool)))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, _sqdist_ref(half, np.ones(3, bool)))


def _reference_row_ref(x, good):
    """The documented centre: among the good rows, the least sum of distances to its ceil(n / 2) nearest (on every
    (d // 256)-th column), in float64; ``None`` when two rows tie."""
    n, d = x.shape
    s = x[:, :: max(1, d // 256)].astype(np.float64)
    ok = good[:, None] & good[None, :]
    dist = np.where(ok, np.sqrt(((np.where(good[:, None], s, 0)[:, None] - np.where(good[:, None], s, 0)[None]) ** 2)
                                .sum(-1)), np.inf)
    cost = np.sort(dist, axis=1)[:, : (n + 1) // 2].sum(1)
    cost[~good] = np.inf
    order = np.sort(cost)
    if np.isfinite(order[1]) and order[1] - order[0] < 1e-3:
        return None
    return int(np.argmin(cost))


def test_reference_row_is_the_medoid_of_the_good_rows():
    """Integer rows (exact Gram distances), odd and even n, d above 256 columns (d = 510 samples every column,
    d = 512 every other one), with and without non-finite rows, centred and offset from zero; one
    vmapped call per shape."""
    rng = np.random.default_rng(1)
    checked = 0
    for n, d in ((5, 510), (6, 512)):
        xs = rng.integers(-4, 5, size=(8, n, d)).astype(np.float32)
        xs[:, :, 1::2] *= 3  # the odd columns weigh more: sampling every other column changes the centre
        xs[1::2] += 10.0
        goods = np.ones((8, n), bool)
        for case in range(8):
            for i in rng.choice(n, case % 3, replace=False):
                xs[case, i, 0], goods[case, i] = (np.nan, np.inf)[i % 2], False
        got = np.asarray(jax.jit(jax.vmap(_common.reference_row))(jnp.asarray(xs), jnp.asarray(goods)))
        for case in range(8):
            want = _reference_row_ref(xs[case], goods[case])
            if want is not None:
                checked += 1
                np.testing.assert_array_equal(got[case], xs[case, want], err_msg=f"n={n}, d={d}, case {case}")
    assert checked >= 12
    nan_rows = jnp.full((3, 4), jnp.nan)
    np.testing.assert_array_equal(_common.reference_row(nan_rows, jnp.zeros(3, bool)), np.zeros(4))


def test_distances_are_never_negative_and_the_centre_is_the_clusters_middle_row():
    """A tight cluster of five rows (spread 0.05, its middle row at index 6) and four near-duplicates 1e3 away:
    the Gram form gives the near-duplicates small negative squares (cancellation), which must be clamped to 0
    (a NaN from sqrt would make a near-duplicate the centre), and distances below 1 count as they are."""
    rng = np.random.default_rng(0)
    c = np.full(6, 3.0)
    cluster = c + 0.05 * np.array([[0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1], [0, -1, 0, 1, 0, 0], [0, 0, -1, 0, 1, 0],
                                   [1, 1, 1, -1, 0, 0]])
    far = c + 1e3 + rng.normal(size=(4, 6)) * 1e-3
    x = np.concatenate([far[:2], cluster[1:3], far[2:], cluster[:1], cluster[3:]]).astype(np.float32)
    centre, dists = jax.jit(lambda x: (_common.reference_row(x, jnp.ones(9, bool)), agg.pairwise_sq_dists(x)))(
        jnp.asarray(x))
    np.testing.assert_array_equal(centre, x[6])
    dists = np.asarray(dists)
    assert np.all(dists >= 0)
    exact = _sqdist_ref(x, np.ones(9, bool))
    near = [2, 3, 6, 7, 8]
    np.testing.assert_allclose(dists[np.ix_(near, near)], exact[np.ix_(near, near)], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dists, exact, rtol=1e-4, atol=0.5)


def test_smallest_sum_per_row():
    v = np.array([[5.0, -1.0, 3.0, 2.0], [0.5, 9.0, -4.0, 1.0]], np.float32)
    np.testing.assert_array_equal(_common.smallest_sum(jnp.asarray(v), 2), [1.0, -3.5])
    np.testing.assert_array_equal(_common.smallest_sum(jnp.asarray(v), 3), [4.0, -2.5])


# ---------------------------------------------------------------- the Aggregator type and chain
def test_aggregator_defaults_and_one_shot_call():
    rule = base.Aggregator(lambda dim: jnp.full(dim, 2.0), lambda x, s, **c: (x.sum(0) + s, s + 1))
    assert rule.pre is False and rule.needs == frozenset() and rule.name == "aggregator"
    x = jnp.arange(6.0).reshape(3, 2)  # n != d: the state is sized by d
    np.testing.assert_array_equal(rule(x), [8.0, 11.0])
    assert not agg.mean().pre and agg.norm_clip().pre and agg.mean()(x).shape == (2,)
    for bad in (jnp.zeros(3), jnp.float32(1.0)):  # 1-D and 0-D input reach the rule's own check
        with pytest.raises(ValueError, match="2-D"):
            agg.centered_clipping()(bad)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.float16])
def test_stateless_rules_compute_in_float32_at_least(dtype):
    x = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]])
    got = agg.mean()(jnp.asarray(x, dtype))
    want_dtype = dtype if dtype == jnp.float16 else jnp.float32
    assert got.dtype == want_dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), x.mean(0), rtol=1e-2)
    half = jnp.full((3, 2), 3e4, jnp.float16)  # the sum 9e4 overflows float16 (max 65504), not float32
    np.testing.assert_array_equal(agg.mean()(half), np.full(2, 3e4, np.float16))


def test_check_final():
    rule = agg.mean()
    assert agg.check_final(rule, "server") is rule
    with pytest.raises(ValueError, match="server: norm_clip is a pre-aggregator"):
        agg.check_final(agg.norm_clip(), "server")
    with pytest.raises(ValueError, match="server: expected an Aggregator"):
        agg.check_final("krum", "server")


def test_chain_folds_the_key_per_part_and_forwards_the_context():
    x = jnp.asarray(np.arange(24, dtype=np.float32).reshape(8, 3) ** 1.5 + 5.0)
    key = jax.random.key(3)
    pre = agg.chain(agg.bucketing(bucket_size=2), agg.bucketing(bucket_size=2))
    assert pre.pre and pre.needs == {"key"} and pre.name == "chain(bucketing, bucketing)"
    rule = agg.chain(agg.norm_clip(3.0), agg.fltrust())
    assert not rule.pre and rule.needs == {"server_update"}

    @jax.jit
    def both(x, key):
        bucket = agg.bucketing(bucket_size=2)
        by_hand = bucket(bucket(x, key=jax.random.fold_in(key, 0)), key=jax.random.fold_in(key, 1))
        g0 = x[0] - 2.0
        return pre(x, key=key), by_hand, rule(x, server_update=g0), agg.fltrust()(agg.norm_clip(3.0)(x), server_update=g0)

    chained, by_hand, trusted, trusted_by_hand = both(x, key)
    np.testing.assert_array_equal(chained, by_hand)
    np.testing.assert_array_equal(trusted, trusted_by_hand)
    with pytest.raises(ValueError, match="key"):
        pre(x)
    three = agg.chain(agg.norm_clip(), agg.norm_clip(), agg.mean())
    assert not three.pre
    assert agg.chain(agg.norm_clip(), agg.norm_clip(), agg.norm_clip()).pre
    assert agg.chain(agg.mean()).init(3) == ((),)
    with pytest.raises(ValueError, match="at least one"):
        agg.chain()
    with pytest.raises(ValueError, match="part 1 .mean. is a final rule"):
        agg.chain(agg.norm_clip(), agg.mean(), agg.mean())


# ---------------------------------------------------------------- registries
def test_aggregator_registry_protects_built_ins_and_wraps_bad_hyperparameters():
    original = registry._FACTORIES["mean"]
    with pytest.raises(ValueError, match="built in"):
        agg.register("mean", agg.median)
    try:
        assert agg.register("mean", agg.median, overwrite=True) is agg.median
        assert agg.get("mean").name == "median"
    finally:
        registry._FACTORIES["mean"] = original
    assert agg.get("mean").name == "mean"
    assert agg.register("test_interfaces_rule", agg.mean) is agg.mean  # a user's name may be re-registered
    assert agg.register("test_interfaces_rule", agg.median) is agg.median
    assert "test_interfaces_rule" not in registry._BUILT_IN and "mean" in registry._BUILT_IN
    assert agg.names() == sorted(agg.names()) and "test_interfaces_rule" in agg.names()
    for bad in ("nope", 3, None):
        with pytest.raises(ValueError, match="unknown aggregator"):
            agg.get(bad)
    with pytest.raises(ValueError, match="aggregator 'krum': .*bogus"):
        agg.get("krum", bogus=1)


def test_attack_registry_protects_built_ins_and_wraps_bad_hyperparameters():
    original = attack_base._FACTORIES["none"]
    with pytest.raises(ValueError, match="built in"):
        attacks.register("none", attacks.ipm)
    try:
        assert attacks.register("none", attacks.ipm, overwrite=True) is attacks.ipm
        assert attacks.get("none").name == "ipm"
    finally:
        attack_base._FACTORIES["none"] = original
    assert attacks.get("none").name == "none"
    assert attacks.register("test_interfaces_attack", attacks.ipm) is attacks.ipm
    assert attacks.register("test_interfaces_attack", attacks.eb) is attacks.eb
    assert "test_interfaces_attack" not in attack_base._BUILT_IN and "none" in attack_base._BUILT_IN
    assert attacks.names() == sorted(attacks.names()) and "test_interfaces_attack" in attacks.names()
    for bad in ("nope", 3):
        with pytest.raises(ValueError, match="unknown attack"):
            attacks.get(bad)
    with pytest.raises(ValueError, match="attack 'ipm': .*bogus"):
        attacks.get("ipm", bogus=1)


# ---------------------------------------------------------------- the attack interface
def _input(aggregator=None, **extra):
    rng = np.random.default_rng(5)
    updates = jnp.asarray(rng.normal(size=(6, 4)) + 3.0, jnp.float32)  # w = 6 != d = 4
    mask = jnp.asarray([True, False, True, False, False, True])
    return AttackInput(updates, mask, jnp.int32(2), aggregator=aggregator, full_knowledge=True, **extra)


def test_attack_input_counts_and_aggregates_with_the_rounds_state_key_and_g0():
    inp = _input()
    assert inp.num_sampled == 6
    assert inp.num_malicious.dtype == jnp.int32 and int(inp.num_malicious) == 3
    with pytest.raises(ValueError, match="no aggregator"):
        inp.aggregate(inp.updates)
    x = inp.updates * 1.5
    key, state = jax.random.key(4), jnp.full(4, 2.0)
    cases = [(agg.bucketing(agg.median(), 2), {"aggregator_key": key}, {"key": key}),
             (agg.fltrust(), {"server_update": x[1]}, {"server_update": x[1]}),
             (agg.centered_clipping(0.5), {"aggregator_state": state}, {})]

    @jax.jit
    def both(x):
        pairs = []
        for rule, fields, context in cases:
            fields = {"aggregator_state": rule.init(4), **fields}
            pairs.append((_input(rule, **fields).aggregate(x), rule.update(x, fields["aggregator_state"], **context)[0]))
        return pairs

    for got, want in both(x):
        np.testing.assert_array_equal(got, want)
        assert got.shape == (4,)


def test_attacks_check_positive():
    for ok in (1, 0.5, np.float32(2.0), np.array(3.0), jnp.asarray(0.25)):
        assert attack_base.check_positive(ok, "eps") is ok
    assert attack_base.check_positive(0, "eps", allow_zero=True) == 0
    assert attack_base.check_positive(0.5, "eps", allow_zero=True) == 0.5
    for bad in (0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            attack_base.check_positive(bad, "eps")
    for bad in (-0.5, np.inf):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            attack_base.check_positive(bad, "eps", allow_zero=True)
    for bad in (True, "1", None, np.ones(2), jnp.ones(1)):
        with pytest.raises(ValueError, match="eps must be a number"):
            attack_base.check_positive(bad, "eps")
    assert float(jax.jit(lambda e: attack_base.check_positive(e, "eps") + 1)(-2.0)) == -1.0  # traced: unchecked


def test_attack_defaults_and_none():
    attack = attacks.Attack("mine", craft=lambda key, inp: inp.updates)
    assert attack.poisons_data is False and attack.needs_full_knowledge is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        attack.name = "other"
    bare = AttackInput(jnp.ones((2, 3)), jnp.asarray([True, False]), jnp.int32(0))
    assert bare.full_knowledge is False and bare.aggregator is None and bare.aggregator_state == ()
    assert bare.global_params is None and bare.aggregator_key is None and bare.server_update is None
    x, y = jnp.ones((2, 3)), jnp.arange(2)
    got = attack.poison_data(jax.random.key(0), x, y)
    assert got[0] is x and got[1] is y
    inp = _input()
    assert attacks.none.craft(jax.random.key(0), inp) is inp.updates
    assert attacks.get("none").name == "none" and not attacks.none.poisons_data


def test_switch_dispatches_craft_and_poison_data_on_the_index():
    members = (("none", {}), ("label_flip", {"num_classes": 4}), ("sign_flip", {"scale": 2.0}))
    with pytest.raises(ValueError, match="at least one"):
        attacks.switch(())
    for bad in (3, -1, 1.5, True):  # a concrete index outside the members used to be clamped silently
        with pytest.raises(ValueError, match="switch: index"):
            attacks.switch(members, bad)
    inp, key = _input(), jax.random.key(1)
    x, y = jnp.ones((3, 2)), jnp.asarray([0, 1, 3])
    for i, (name, hparams) in enumerate(members):
        chosen = attacks.switch(members, jnp.int32(i))
        np.testing.assert_array_equal(chosen.craft(key, inp), attacks.get(name, **hparams).craft(key, inp))
        np.testing.assert_array_equal(chosen.poison_data(key, x, y)[1], [3, 2, 0] if i == 1 else y)
    switched = attacks.switch(members)  # index 0 by default
    np.testing.assert_array_equal(switched.poison_data(key, x, y)[1], y)
    np.testing.assert_array_equal(switched.craft(key, inp), inp.updates)
    assert switched.poisons_data and not switched.needs_full_knowledge and switched.name == "switch"
    assert not attacks.switch(members[::2]).poisons_data
    assert attacks.switch((("ipm", {}),)).needs_full_knowledge


def test_attack_input_is_a_pytree_with_static_aggregator():
    inp = _input(agg.mean())
    leaves = jax.tree.leaves(inp)
    assert len(leaves) == 3  # updates, mask, round (the None fields and () state hold no leaves)
    doubled = jax.tree.map(lambda a: a * 2, inp)
    assert doubled.aggregator is inp.aggregator and doubled.full_knowledge
    assert dataclasses.replace(inp, round=jnp.int32(5)).round == 5


def test_flags_and_context_are_keyword_only():
    """``stateless(fn, *, name, ...)``, ``chain(...).update(x, state, *, key, ...)`` and ``register(name, factory, *,
    overwrite)`` refuse positional flags (a positional ``True`` must not overwrite a built-in rule)."""
    with pytest.raises(TypeError):
        base.stateless(lambda x: x, "rule")
    rule = agg.chain(agg.norm_clip(), agg.mean())
    with pytest.raises(TypeError):
        rule.update(jnp.ones((2, 3)), rule.init(3), jax.random.key(0))
    with pytest.raises(TypeError):
        agg.register("mean", agg.median, True)
    with pytest.raises(TypeError):
        attacks.register("none", attacks.ipm, True)
    assert agg.get("mean").name == "mean" and attacks.get("none").name == "none"


def test_chain_refuses_a_state_that_is_not_its_parts_states():
    """A chain given a state of the wrong arity (``AttackInput``'s default ``()`` for instance) used to run no part
    and return its input unchanged; it must refuse, and accept ``init``'s state."""
    rule = agg.chain(agg.norm_clip(1.0), agg.mean())
    x = jnp.full((3, 4), 2.0)
    with pytest.raises(ValueError, match="2 parts"):
        rule.update(x, ())
    out, _ = rule.update(x, rule.init(4))
    np.testing.assert_allclose(out, np.full(4, 0.5), rtol=1e-6)
