"""ByzPG / DecByzPG end to end at toy size: reductions to PAGE-PG, attacks on the baselines, validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_attacks import frl
from fedjax_attacks.rl import policy_gradient as pg

TOY = frl.Config(num_agents=1, aggregator="mean", agreement="none", large_batch=4, small_batch=2, horizon=30,
                 hidden=(8,), learning_rate=1e-2)


def reference_ops(config):
    """Jitted single-agent building blocks: GPOMDP on N fresh trajectories, PAGE-PG on B fresh trajectories."""
    env, env_params, policy = frl.common.make_env_and_policy(config)

    def sample(key, theta, batch):
        return pg.sample_trajectories(key, policy, theta, env, env_params, num_episodes=batch,
                                      horizon=config.horizon)

    gpomdp = jax.jit(lambda key, theta: pg.gpomdp(policy, theta, sample(key, theta, config.large_batch),
                                                  config.gamma))
    page = jax.jit(lambda key, theta, theta_prev, v: pg.page_pg_estimate(
        policy, theta, theta_prev, v, sample(key, theta, config.small_batch), config.gamma))
    return gpomdp, page


def page_pg_loop(config, key, switches):
    """Single-agent PAGE-PG as a plain Python loop, drawing keys the way DecByzPG does for agent 0."""
    gpomdp, page = reference_ops(config)
    state = frl.make_decbyzpg(config).init(key)
    key, theta = state.key, state.theta[0]
    theta_prev, v = theta, jnp.zeros_like(theta)
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(theta)
    for switch in switches:
        key, _, k_sample, _, _, _ = jax.random.split(key, 6)
        k = jax.random.split(k_sample, 1)[0]
        v = gpomdp(k, theta) if switch else page(k, theta, theta_prev, v)
        updates, opt_state = optimizer.update(-v, opt_state, theta)
        theta_prev, theta = theta, theta + updates
    return theta


def test_switches_count_trajectories_per_agent():
    switches = frl.sample_switches(jax.random.PRNGKey(0), frl.CARTPOLE, 5000, multiple_of=8)
    per_iter = frl.trajectories_per_iteration(switches, frl.CARTPOLE)
    assert switches[0] and len(switches) % 8 == 0
    assert per_iter.sum() >= 5000 and per_iter[: -8].sum() < 5000
    assert 0.1 < switches.mean() < 0.3


def test_decbyzpg_with_one_agent_is_page_pg():
    switches = np.array([True, False, False, True, False])
    key = jax.random.PRNGKey(3)
    state, history = jax.jit(frl.make_decbyzpg(TOY).run)(key, switches)
    np.testing.assert_allclose(np.asarray(state.theta[0]), np.asarray(page_pg_loop(TOY, key, switches)),
                               rtol=1e-4, atol=1e-5)
    assert history["returns"].shape == (5,)


def test_byzpg_matches_a_loop_reference():
    """ByzPG with K = 3 honest workers and the mean: Adam on the mean of the workers' GPOMDP estimates on
    large-batch iterations, the server's own PAGE-PG step on small-batch ones."""
    config = dataclasses.replace(TOY, num_agents=3)
    switches = np.array([True, False, True, False])
    alg = frl.make_byzpg(config)
    gpomdp, page = reference_ops(config)
    state = alg.init(jax.random.PRNGKey(5))
    final, _ = jax.jit(alg.iterate)(state, switches)
    key, theta = state.key, state.theta
    theta_prev, v = theta, jnp.zeros_like(theta)
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(theta)
    for switch in switches:
        key, _, k_sample, _, _ = jax.random.split(key, 5)
        if switch:
            v = sum(gpomdp(k, theta) for k in jax.random.split(k_sample, 3)) / 3
        else:
            v = page(k_sample, theta, theta_prev, v)
        updates, opt_state = optimizer.update(-v, opt_state, theta)
        theta_prev, theta = theta, theta + updates
    np.testing.assert_allclose(np.asarray(final.theta), np.asarray(theta), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [frl.make_decbyzpg, frl.make_byzpg])
def test_avg_zero_cancels_plain_averaging(make):
    """AvgZero makes every mean-aggregated large-batch estimate 0 (up to float rounding, which Adam's
    scale-free step would still turn into full-size random steps)."""
    config = dataclasses.replace(TOY, num_agents=5, num_byzantine=2, behaviour="avg_zero")
    alg = make(config)
    attacked, _ = jax.jit(alg.iterate)(alg.init(jax.random.PRNGKey(0)), np.ones(1, bool))
    assert float(jnp.abs(attacked.v).max()) < 1e-4  # honest GPOMDP entries here are O(1) to O(10)


def test_aggregating_every_iteration_keeps_plain_averaging_agents_in_step():
    """Dec-PAGE-PG (mean, no agreement): the paper's algorithm lets honest agents drift apart on their local
    small-batch steps; the reference code's aggregation on every iteration keeps them identical."""
    switches = np.array([True, False, False, True, False, False])
    diameters = {}
    for every in (False, True):
        config = dataclasses.replace(TOY, num_agents=3, aggregate_every_iteration=every)
        _, history = jax.jit(frl.make_decbyzpg(config).run)(jax.random.PRNGKey(2), switches)
        diameters[every] = np.asarray(history["diameter"])
    assert diameters[False][0] == 0.0 and diameters[False][-1] > 1e-3
    np.testing.assert_allclose(diameters[True], 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="aggregate_every_iteration"):
        frl.make_byzpg(dataclasses.replace(TOY, num_agents=3, aggregate_every_iteration=True))


def test_config_validation():
    with pytest.raises(ValueError, match="num_byzantine"):
        frl.make_decbyzpg(dataclasses.replace(TOY, num_agents=3, num_byzantine=3, behaviour="large_noise"))
    with pytest.raises(ValueError, match="behaviour"):
        frl.make_decbyzpg(dataclasses.replace(TOY, num_agents=3, num_byzantine=1))
    with pytest.raises(ValueError, match="unknown aggregator"):
        frl.make_byzpg(dataclasses.replace(TOY, aggregator="nope"))
    with pytest.raises(ValueError, match="switch_prob"):
        frl.make_decbyzpg(dataclasses.replace(TOY, switch_prob=0.0))
    with pytest.raises(ValueError, match="agreement rule"):
        frl.make_decbyzpg(dataclasses.replace(TOY, agreement="avg"))
