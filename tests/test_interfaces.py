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
from fedjax_attacks.attacks import AttackInput

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
    from fedjax_attacks.rl import env as rl_env, ppo

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
    from fedjax_attacks.rl import dqn, env as rl_env

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

    return run_chunked(lambda k: alg.init(k, switches), alg.step, len(switches), key, chunk=2, progress=False)
