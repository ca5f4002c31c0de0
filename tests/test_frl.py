"""ByzPG / DecByzPG end to end at toy size: reductions to PAGE-PG, attacks on the baselines, validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_attacks import aggregators, attacks, frl
from fedjax_attacks.frl import byzantine as byz
from fedjax_attacks.rl import policy_gradient as pg

TOY = frl.DecByzPGConfig(num_agents=1, aggregator="mean", agreement="none", large_batch=4, small_batch=2, horizon=30,
                 hidden=(8,), learning_rate=1e-2)


def reference_ops(config):
    """Jitted single-agent building blocks, each with the mean undiscounted return of the episodes it sampled:
    GPOMDP on N fresh trajectories, PAGE-PG on B fresh trajectories.

    FRL samples in blocks of B episodes, block j with key ``fold_in(key, j)``: the N episodes of a large batch
    are the first N of the concatenated blocks; GPOMDP on them is ``pg.gpomdp`` of that batch.
    """
    env, env_params, policy = frl.base.make_env_and_policy(config)
    num_blocks = -(-config.large_batch // config.small_batch)

    def large_batch(key, theta):
        blocks = [pg.sample_trajectories(jax.random.fold_in(key, j), policy, theta, env, env_params,
                                         num_episodes=config.small_batch, horizon=config.horizon)
                  for j in range(num_blocks)]
        return jax.tree.map(lambda *x: jnp.concatenate(x, axis=1)[:, :config.large_batch], *blocks)

    def small_batch(key, theta):
        return pg.sample_trajectories(jax.random.fold_in(key, 0), policy, theta, env, env_params,
                                      num_episodes=config.small_batch, horizon=config.horizon)

    def gpomdp(key, theta):
        traj = large_batch(key, theta)
        return pg.gpomdp(policy, theta, traj, config.gamma), jnp.mean(pg.episode_returns(traj))

    def page(key, theta, theta_prev, v):
        traj = small_batch(key, theta)
        return (pg.page_pg_estimate(policy, theta, theta_prev, v, traj, config.gamma),
                jnp.mean(pg.episode_returns(traj)))

    return jax.jit(gpomdp), jax.jit(page)


def page_pg_loop(config, key, switches):
    """Single-agent PAGE-PG as a plain Python loop, drawing keys the way DecByzPG does for agent 0."""
    gpomdp, page = reference_ops(config)
    state = frl.make_decbyzpg(config).init(key, switches)
    key, theta = state.key, state.theta[0]
    theta_prev, v = theta, jnp.zeros_like(theta)
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(theta)
    for switch in switches:
        key, _, k_sample, _, _, _ = jax.random.split(key, 6)
        k = jax.random.split(k_sample, 1)[0]
        v = (gpomdp(k, theta) if switch else page(k, theta, theta_prev, v))[0]
        updates, opt_state = optimizer.update(-v, opt_state, theta)
        theta_prev, theta = theta, theta + updates
    return theta


def test_switches_count_trajectories_per_agent():
    switches = frl.sample_switches(jax.random.PRNGKey(0), frl.CARTPOLE, 5000, multiple_of=8)
    per_iter = frl.trajectories_per_iteration(switches, frl.CARTPOLE)
    assert switches[0] and len(switches) % 8 == 0
    assert per_iter.sum() >= 5000 and per_iter[: -8].sum() < 5000
    assert 0.1 < switches.mean() < 0.3


# N = 5, B = 2: the last of a large batch's blocks counts 1
@pytest.mark.parametrize("large_batch", [4, pytest.param(5, marks=pytest.mark.slow)])
def test_decbyzpg_with_one_agent_is_page_pg(large_batch):
    config = dataclasses.replace(TOY, large_batch=large_batch)
    switches = np.array([True, False, False, True, False])
    key = jax.random.PRNGKey(3)
    state, history = jax.jit(frl.make_decbyzpg(config).run)(key, switches)
    np.testing.assert_allclose(np.asarray(state.theta[0]), np.asarray(page_pg_loop(config, key, switches)),
                               rtol=1e-4, atol=1e-5)
    assert history["returns"].shape == (5,)


def test_byzpg_matches_a_loop_reference():
    """ByzPG with K = 4 workers, one Byzantine (drawn afresh each iteration) sending IPM, and the coordinate-wise
    median: Adam on the median of what the server receives on large-batch iterations, the server's own PAGE-PG
    step on small-batch ones; ``returns`` is the honest workers' (or the server's) mean episode return. Stepping
    by blocks of B ends at the same parameters, and its per-block returns weighted by their episodes give the
    per-iteration ones."""
    K, N, B = 4, TOY.large_batch, TOY.small_batch
    config = dataclasses.replace(TOY, num_agents=K, num_byzantine=1, resample_byzantine=True, attack="ipm",
                                 attack_hparams={"eps": 0.5}, aggregator="median")
    switches = np.array([True, False, True, False])
    alg = frl.make_byzpg(config)
    gpomdp, page = reference_ops(config)
    attack, rule = attacks.get("ipm", eps=0.5), aggregators.get("median")
    state = alg.init(jax.random.PRNGKey(5), switches)
    final, history = jax.jit(alg.iterate)(state, switches)
    key, theta = state.key, state.theta
    theta_prev, v, rule_state = theta, jnp.zeros_like(theta), rule.init(theta.size)
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(theta)
    returns, byzantine_seen = [], []
    for t, switch in enumerate(switches):
        key, k_byz, k_sample, k_msg, k_agg = jax.random.split(key, 5)
        worker_keys = jax.random.split(k_sample, K)
        if switch:
            byzantine = byz.byzantine_mask(k_byz, K, 1, True)
            estimates, worker_returns = zip(*(gpomdp(k, theta) for k in worker_keys))
            received = byz.received(k_msg, attack, jnp.stack(estimates), byzantine, t, rule, rule_state, k_agg)
            v, rule_state = rule.update(received, rule_state, key=k_agg)
            returns.append(np.mean(np.asarray(worker_returns)[~np.asarray(byzantine)]))
            byzantine_seen.append(int(np.argmax(byzantine)))
        else:
            v, server_return = page(worker_keys[0], theta, theta_prev, v)  # the server samples as worker 0
            returns.append(server_return)
        updates, opt_state = optimizer.update(-v, opt_state, theta)
        theta_prev, theta = theta, theta + updates
    assert len(set(byzantine_seen)) == 2  # the Byzantine worker was redrawn
    for got, want in ((final.theta, theta), (final.theta_prev, theta_prev), (final.v, v)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    assert int(final.t) == int(final.cursor) == 4
    np.testing.assert_allclose(np.asarray(history["returns"]), np.asarray(returns), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(history["skipped"]), 0)
    np.testing.assert_array_equal(np.asarray(history["diameter"]), 0.0)

    blocks = frl.block_schedule(switches, config)
    by_blocks, block_history = jax.jit(alg.iterate)(alg.init(jax.random.PRNGKey(5), blocks), blocks)
    np.testing.assert_allclose(np.asarray(by_blocks.theta), np.asarray(theta), rtol=1e-4, atol=1e-5)
    assert int(by_blocks.t) == 4 and int(by_blocks.cursor) == len(blocks.large)
    np.testing.assert_array_equal(np.asarray(block_history["completed"]), np.asarray(blocks.last))
    np.testing.assert_array_equal(np.asarray(block_history["trajectories"]), np.asarray(blocks.count))
    per_iteration = np.add.reduceat(np.asarray(block_history["returns"]) * np.asarray(blocks.count),
                                    np.nonzero(np.asarray(blocks.index) == 0)[0]) / np.where(switches, N, B)
    np.testing.assert_allclose(per_iteration, np.asarray(returns), rtol=1e-5)


def _gda_reference(own, received, f):
    """Greedy diameter averaging in NumPy: the mean of the ``n - f`` received rows nearest to ``own``."""
    nearest = np.argsort(np.linalg.norm(received - own, axis=1))[:len(received) - f]
    return received[nearest].mean(axis=0)


def test_decbyzpg_matches_a_loop_reference():
    """DecByzPG (Algorithm 2) with K = 4 agents, one Byzantine (drawn afresh each iteration) sending ALIE
    (``mu - z sigma`` of the honest rows, z = 1) both as its estimate and in every agreement round, the
    coordinate-wise median and GDA, against a Python loop with NumPy ALIE, median and GDA: each agent aggregates
    what it receives on large batches (``v^(i)`` is the aggregate), takes its own PAGE-PG step on small ones, steps
    Adam, then ``ceil(log2 K) = 2`` agreement rounds, in which agents that drifted apart keep different rows.
    ``returns`` is the honest agents' mean episode return and ``diameter`` the honest agents' spread after
    agreement. Stepping by blocks of B ends at the same parameters;
    its in-iteration blocks report the honest diameter at the iteration's start and no step."""
    K, f = 4, 1
    config = dataclasses.replace(TOY, num_agents=K, num_byzantine=f, resample_byzantine=True, attack="alie",
                                 attack_hparams={"z": 1.0}, aggregator="median", agreement="gda")
    switches = np.array([True, False, True, False])
    alg = frl.make_decbyzpg(config)
    gpomdp, page = reference_ops(config)
    state = alg.init(jax.random.PRNGKey(7), switches)
    final, history = jax.jit(alg.iterate)(state, switches)
    key, theta = state.key, np.asarray(state.theta)
    theta_prev, v = theta, np.zeros_like(theta)
    optimizer = optax.adam(config.learning_rate)
    opt_states = [optimizer.init(jnp.asarray(row)) for row in theta]
    returns, diameters, byzantine_seen, start_diameters = [], [], [], []

    def spread(rows):
        return max(np.linalg.norm(a - b) for a in rows for b in rows)

    def with_alie(rows, byzantine):
        honest = rows[~byzantine]
        return np.where(byzantine[:, None], honest.mean(axis=0) - honest.std(axis=0), rows)

    for t, switch in enumerate(switches):
        key, k_byz, k_sample, _, _, k_agree = jax.random.split(key, 6)
        byzantine = np.asarray(byz.byzantine_mask(k_byz, K, f, True))
        agent_keys = jax.random.split(k_sample, K)
        start_diameters.append(spread(theta[~byzantine]))
        if switch:
            own, agent_returns = zip(*(gpomdp(k, row) for k, row in zip(agent_keys, theta)))
            own = np.asarray(own)
            v = np.repeat(np.median(with_alie(own, byzantine), axis=0)[None], K, axis=0)  # every recipient alike
        else:
            v, agent_returns = map(np.asarray, zip(*(page(k, th, th_prev, vi) for k, th, th_prev, vi
                                                     in zip(agent_keys, theta, theta_prev, v))))
        stepped = []
        for i in range(K):
            updates, opt_states[i] = optimizer.update(-jnp.asarray(v[i]), opt_states[i], jnp.asarray(theta[i]))
            stepped.append(theta[i] + np.asarray(updates))
        agreed = np.asarray(stepped)
        for _ in range(config.num_rounds):  # every agent, the Byzantine one included, runs GDA on what it gets
            received = with_alie(agreed, byzantine)
            agreed = np.asarray([_gda_reference(own, received, f) for own in agreed])
        theta_prev, theta = theta, agreed
        returns.append(np.mean(np.asarray(agent_returns)[~byzantine]))
        diameters.append(spread(theta[~byzantine]))
        byzantine_seen.append(int(np.argmax(byzantine)))
    assert len(set(byzantine_seen)) >= 2  # the Byzantine agent was redrawn
    assert min(diameters[1], diameters[3]) > 1e-4  # the small-batch steps spread the agents, GDA keeps some
    for got, want in ((final.theta, theta), (final.theta_prev, theta_prev), (final.v, v)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    assert int(final.t) == int(final.cursor) == 4
    np.testing.assert_allclose(np.asarray(history["returns"]), returns, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(history["diameter"]), diameters, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(history["skipped"]), 0)

    blocks = frl.block_schedule(switches, config)
    by_blocks, block_history = jax.jit(alg.iterate)(alg.init(jax.random.PRNGKey(7), blocks), blocks)
    np.testing.assert_allclose(np.asarray(by_blocks.theta), theta, rtol=1e-4, atol=1e-5)
    assert int(by_blocks.t) == 4 and int(by_blocks.cursor) == len(blocks.large)
    np.testing.assert_array_equal(np.asarray(block_history["completed"]), np.asarray(blocks.last))
    ends = np.nonzero(np.asarray(blocks.last))[0]
    np.testing.assert_allclose(np.asarray(block_history["diameter"])[ends], diameters, atol=1e-5)
    inside = np.nonzero(~np.asarray(blocks.last))[0]
    iteration = np.cumsum(np.asarray(blocks.index) == 0) - 1
    assert len(inside) and np.all(np.asarray(block_history["skipped"])[inside] == 0)
    np.testing.assert_allclose(np.asarray(block_history["diameter"])[inside],
                               np.asarray(start_diameters)[iteration[inside]], atol=1e-5)
    starts = np.nonzero(np.asarray(blocks.index) == 0)[0]
    per_iteration = np.add.reduceat(np.asarray(block_history["returns"]) * np.asarray(blocks.count), starts)
    np.testing.assert_allclose(per_iteration / np.where(switches, config.large_batch, config.small_batch), returns,
                               rtol=1e-5)


@pytest.mark.parametrize("make", [frl.make_decbyzpg, pytest.param(frl.make_byzpg, marks=pytest.mark.slow)])
def test_avg_zero_cancels_plain_averaging(make):
    """AvgZero makes every mean-aggregated large-batch estimate 0 (up to float rounding, which Adam's
    scale-free step would still turn into full-size random steps)."""
    config = dataclasses.replace(TOY, num_agents=5, num_byzantine=2, attack="avg_zero")
    alg = make(config)
    attacked, _ = jax.jit(alg.iterate)(alg.init(jax.random.PRNGKey(0), np.ones(1, bool)), np.ones(1, bool))
    assert float(jnp.abs(attacked.v).max()) < 1e-4  # honest GPOMDP entries here are O(1) to O(10)


@pytest.mark.slow
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
        frl.make_decbyzpg(dataclasses.replace(TOY, num_agents=3, num_byzantine=3, attack="large_noise"))
    with pytest.raises(ValueError, match="behaviour"):
        frl.make_decbyzpg(dataclasses.replace(TOY, num_agents=3, num_byzantine=1))
    with pytest.raises(ValueError, match="unknown aggregator"):
        frl.make_byzpg(dataclasses.replace(TOY, aggregator="nope"))
    with pytest.raises(ValueError, match="switch_prob"):
        frl.make_decbyzpg(dataclasses.replace(TOY, switch_prob=0.0))
    with pytest.raises(ValueError, match="agreement rule"):
        frl.make_decbyzpg(dataclasses.replace(TOY, agreement="avg"))


def _counting_rule():
    """A stateful rule whose output is its state plus one: it shows where, and how often, FRL threads the state."""
    def update(updates, state, **context):
        return state + 1.0, state + 1.0

    return aggregators.Aggregator(lambda dim: jnp.zeros((dim,)), update, name="counting")


@pytest.mark.parametrize("make", [frl.make_decbyzpg, pytest.param(frl.make_byzpg, marks=pytest.mark.slow)])
def test_frl_threads_the_aggregator_state_on_large_batch_iterations(make):
    aggregators.register("test_counting", _counting_rule)
    config = dataclasses.replace(TOY, num_agents=3, aggregator="test_counting")
    alg = make(config)
    final, _ = jax.jit(alg.run)(jax.random.PRNGKey(1), np.array([True, False, True, False]))
    np.testing.assert_array_equal(np.asarray(final.aggregator_state), 2.0)  # two aggregations, state carried


def test_centered_clipping_in_frl_clips_around_its_own_centre():
    """ByzPG's server keeps centered clipping's centre: the aggregate is its state and each round moves it by
    at most tau from where the previous round left it."""
    tau = 1e-3
    config = dataclasses.replace(TOY, num_agents=3, aggregator="centered_clipping", aggregator_hparams={"tau": tau})
    alg = frl.make_byzpg(config)
    state = alg.init(jax.random.PRNGKey(1), np.ones(3, bool))
    first, _ = jax.jit(alg.step)(state)
    second, _ = jax.jit(alg.step)(first)
    for s in (first, second):
        np.testing.assert_array_equal(s.aggregator_state, s.v)
    assert 0 < float(jnp.linalg.norm(first.v)) <= tau * (1 + 1e-5)
    assert float(jnp.linalg.norm(second.v - first.v)) <= tau * (1 + 1e-5)


@pytest.mark.slow  # ~27 s (four programs); test_byzpg_matches_a_loop_reference runs ByzPG under IPM fast
@pytest.mark.parametrize("make", [frl.make_decbyzpg, frl.make_byzpg])
def test_ipm_flips_plain_averaging_but_not_the_median(make):
    """IPM (an FL attack) from one of five agents: the mean of the received estimates points against the honest
    mean, the coordinate-wise median does not."""
    inner = {}
    for aggregator in ("mean", "median"):
        config = dataclasses.replace(TOY, num_agents=5, num_byzantine=1, attack="ipm", attack_hparams={"eps": 20.0},
                                     aggregator=aggregator)
        alg = make(config)
        state = alg.init(jax.random.PRNGKey(0), np.ones(1, bool))
        attacked, _ = jax.jit(alg.step)(state)
        honest_cfg = dataclasses.replace(config, num_byzantine=0, attack="none", attack_hparams={})
        honest_alg = make(honest_cfg)
        clean, _ = jax.jit(honest_alg.step)(honest_alg.init(jax.random.PRNGKey(0), np.ones(1, bool)))
        v, v_clean = np.asarray(attacked.v).reshape(-1, state.theta.shape[-1]), np.asarray(clean.v)
        inner[aggregator] = float(np.sum(v[-1] * v_clean.reshape(-1, v.shape[-1])[-1]))
    assert inner["mean"] < 0 < inner["median"]


@pytest.mark.slow  # kept out of `make test` for time (10-minute budget); `make test-slow` runs it
def test_decbyzpg_runs_under_alie_and_refuses_fltrust():
    config = dataclasses.replace(TOY, num_agents=5, num_byzantine=1, attack="alie", aggregator="median",
                                 agreement="mda")
    state, history = jax.jit(frl.make_decbyzpg(config).run)(jax.random.PRNGKey(2), np.array([True, False]))
    assert np.all(np.isfinite(np.asarray(state.theta))) and np.all(np.isfinite(history["returns"]))
    with pytest.raises(ValueError, match="server"):
        frl.make_decbyzpg(dataclasses.replace(TOY, num_agents=3, aggregator="fltrust"))
    with pytest.raises(ValueError, match="pre-aggregator"):
        frl.make_byzpg(dataclasses.replace(TOY, num_agents=3, aggregator="norm_clip"))
