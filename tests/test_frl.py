"""ByzPG / DecByzPG end to end at toy size: reductions to PAGE-PG, attacks on the baselines, validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh
from test_frl_blocks import _coins

from fedjax_attacks import aggregators, attacks, frl
from fedjax_attacks.frl import base
from fedjax_attacks.frl import byzantine as byz
from fedjax_attacks.frl.config import Blocks
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

# ----------------------------------------------------------------------------------------------------
# Written for mutants of frl/base.py, byzpg.py, decbyzpg.py and batch.py
# Tests added to kill the mutants of ``make mutation`` that survived the FRL algorithm tests (issue 18): the pieces
# of ``frl/base.py`` (block sampling and its GPOMDP / PAGE-PG estimates, keys, counts, schedules, the aggregator)
# against ``policy_gradient``'s own estimators on the same trajectories, ByzPG's and DecByzPG's refusal of a
# non-finite direction, and ``frl/batch.py``'s ``make_variants`` against each variant's own runs, at toy size (a few
# compiles).


# N = 5, B = 3: a large batch is 2 blocks, the last counting 2 episodes; gamma away from 1 so it shows
CFG = frl.DecByzPGConfig(num_agents=3, aggregator="mean", agreement="none", large_batch=5, small_batch=3, horizon=6,
                         hidden=(4,), gamma=0.8, learning_rate=1e-2)


def _sub(traj, count):
    return jax.tree.map(lambda x: x[:, :count], traj)


def test_block_keys_counts_schedules_and_blocks():
    k = jax.random.key(9)
    got = base.block_keys(k, 3, 2)
    want = [jax.random.fold_in(s, 2) for s in jax.random.split(k, 3)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(jax.random.key_data(g), jax.random.key_data(w))
    for N, B in ((5, 3), (6, 3), (2, 3), (7, 2)):
        config = dataclasses.replace(CFG, large_batch=N, small_batch=B)
        counts = [int(base.large_block_count(config, j)) for j in range(-(-N // B))]
        assert counts == [min(B, N - j * B) for j in range(-(-N // B))] and sum(counts) == N
    blocks = frl.block_schedule(np.array([True, False]), CFG)
    schedule = base.as_schedule(blocks)
    assert [a.dtype for a in schedule] == [jnp.bool_, jnp.int32, jnp.int32, jnp.bool_]
    one = base.current_block(schedule, 1)
    assert (bool(one.large), int(one.index), int(one.count), bool(one.last)) == (True, 1, 2, True)
    coins = base.as_schedule([True, False])
    assert coins.dtype == jnp.bool_ and coins.tolist() == [True, False]
    with pytest.raises(ValueError, match="booleans"):
        base.as_schedule([1, 0])


def test_make_aggregator_wraps_bucketing_and_one_agent():
    x = jnp.asarray([[1.0, 7.0], [2.0, 5.0], [40.0, -3.0], [3.0, 4.0], [5.0, 5.5]])
    plain = base.make_aggregator(dataclasses.replace(CFG, aggregator="median"))
    assert plain.name == aggregators.get("median").name
    np.testing.assert_allclose(np.asarray(plain(x)), np.median(np.asarray(x), axis=0))
    bucketed = base.make_aggregator(dataclasses.replace(CFG, aggregator="median", bucket_size=2))
    want = aggregators.bucketing(aggregator="median", bucket_size=2)
    np.testing.assert_allclose(np.asarray(bucketed(x, key=jax.random.key(0))),
                               np.asarray(want(x, key=jax.random.key(0))))
    assert bucketed.name == want.name != plain.name
    single = base.make_aggregator(dataclasses.replace(CFG, num_agents=1, aggregator="median"))
    assert single.name == "single agent"
    np.testing.assert_array_equal(np.asarray(single(x[:1])), np.asarray(x[0]))
    assert base.make_attack(dataclasses.replace(CFG, num_byzantine=1, attack="large_noise")).name == "large_noise"


def test_check_mesh():
    assert base.check_mesh(None, CFG) is None
    mesh = Mesh(np.array(jax.devices()[:1]), ("agents",))
    assert base.check_mesh(mesh, CFG) is mesh
    with pytest.raises(ValueError, match="agents"):
        base.check_mesh(Mesh(np.array(jax.devices()[:1]), ("seeds",)), CFG)


def test_state_is_a_pytree():
    """``State`` is a ``flax.struct`` dataclass: jit and scan carry it (its eleven fields are its leaves)."""
    fields = [jnp.full((2,), float(i)) for i in range(11)]
    state = base.State(*fields)
    assert len(jax.tree_util.tree_leaves(state)) == 11
    doubled = jax.jit(lambda s: jax.tree.map(lambda x: 2 * x, s))(state)
    assert isinstance(doubled, base.State) and float(doubled.t[0]) == 12.0


@pytest.fixture(scope="module")
def estimates():
    """``sample_blocks`` on a large block (Python and traced coin, counting 2 of 3 episodes), a small block (both
    importance weights) and a small block with RandomAction on sampler 0, with the references on the same
    trajectories, in one program."""
    env, env_params, policy = base.make_env_and_policy(CFG)
    per_step = dataclasses.replace(CFG, importance_weights="per_step")
    long = dataclasses.replace(per_step, horizon=40)  # CartPole episodes end inside it: rewards 0 after the end
    thetas = 0.5 + jax.vmap(policy.init)(jax.random.split(jax.random.key(0), 2))
    thetas_prev = thetas + 0.3 * jax.random.normal(jax.random.key(1), thetas.shape)
    keys = base.block_keys(jax.random.key(2), 2, 1)
    k_large = jax.random.key(3)
    inputs = base.BlockInputs(keys, thetas, thetas_prev, False)
    random = base.BlockInputs(keys, thetas, thetas_prev, jnp.asarray([True, False]))

    def sample(key, theta, random_actions=False, horizon=CFG.horizon):
        return pg.sample_trajectories(key, policy, theta, env, env_params, num_episodes=CFG.small_batch,
                                      horizon=horizon, random_actions=random_actions)

    @jax.jit
    def run():
        got = {
            "large_python": base.sample_blocks(inputs, Blocks(True, 1, 2, False), policy, env, env_params, CFG),
            "large_traced": base.sample_blocks(inputs, Blocks(jnp.asarray(True), jnp.asarray(1), jnp.asarray(2),
                                                              jnp.asarray(False)), policy, env, env_params, CFG),
            "small": base.sample_blocks(inputs, Blocks(jnp.asarray(False), 0, jnp.asarray(3), True), policy, env,
                                        env_params, CFG),
            "per_step": base.sample_blocks(inputs, Blocks(jnp.asarray(False), 0, 3, True), policy, env, env_params,
                                           per_step),
            "per_step_ended": base.sample_blocks(inputs, Blocks(jnp.asarray(False), 0, 3, True), policy, env,
                                                 env_params, long),
            "random": base.sample_blocks(random, Blocks(jnp.asarray(False), 0, 3, True), policy, env, env_params,
                                         CFG),
            "whole_large": base.sample_large_batch(
                lambda block: base.BlockInputs(base.block_keys(k_large, 2, block.index), thetas, thetas_prev, False),
                policy, env, env_params, CFG),
        }
        def reference(key, k_i, theta, theta_prev, random_flag):  # one sampler; vmapped: fewer rollouts to compile
            traj = sample(key, theta)
            large = _sub(traj, 2)
            g_large = (pg.gpomdp(policy, theta, large, CFG.gamma) * 2 / CFG.large_batch, jnp.sum(large.rewards))
            randomly = sample(key, theta, random_actions=random_flag)
            ended = sample(key, theta, horizon=long.horizon)
            # the N episodes of a large batch: the first N of the blocks' fold_in(k_i, j)
            blocks = jax.vmap(lambda j: sample(jax.random.fold_in(k_i, j), theta))(jnp.arange(2))
            whole = jax.tree.map(lambda x: jnp.concatenate([x[0], x[1]], axis=1)[:, :CFG.large_batch], blocks)
            return {"large_python": g_large, "large_traced": g_large,
                    "small": (pg.page_pg_estimate(policy, theta, theta_prev, 0.0, traj, CFG.gamma),
                              jnp.sum(traj.rewards)),
                    "per_step": (pg.page_pg_estimate(policy, theta, theta_prev, 0.0, traj, CFG.gamma, "per_step"),
                                 jnp.sum(traj.rewards)),
                    "per_step_ended": (pg.page_pg_estimate(policy, theta, theta_prev, 0.0, ended, CFG.gamma,
                                                           "per_step"), jnp.sum(ended.rewards)),
                    "random": (pg.page_pg_estimate(policy, theta, theta_prev, 0.0, randomly, CFG.gamma),
                               jnp.sum(randomly.rewards)),
                    "whole_large": (pg.gpomdp(policy, theta, whole, CFG.gamma), jnp.sum(whole.rewards))}

        return got, jax.vmap(reference)(keys, jax.random.split(k_large, 2), thetas, thetas_prev,
                                        jnp.asarray([True, False]))

    # the estimators' algebra is under test, not a TF32 device's rounding (~1e-3 relative, differently on each side)
    with jax.default_matmul_precision("highest"):
        return run()


@pytest.mark.parametrize("name", ["large_python", "large_traced", "small", "per_step", "per_step_ended", "random",
                                  "whole_large"])
def test_sample_blocks_match_gpomdp_and_page_pg(estimates, name):
    """A large block is ``1/N`` times the GPOMDP sum over its ``count`` episodes; a small block is PAGE-PG's
    correction ``g_B(theta) - g_B^w(theta_prev)`` (``page_pg_estimate`` with ``v = 0``); a whole large batch is
    GPOMDP on the first ``N`` episodes of its blocks. ``per_step_ended``: episodes that end inside the horizon (the
    rewards after the end are 0)."""
    got, want = estimates
    (g, r), (g_want, r_want) = got[name], want[name]
    assert g.shape == g_want.shape == (2, frl.base.make_env_and_policy(CFG)[2].num_params)
    assert float(jnp.abs(g_want).max()) > 1e-2  # a real gradient, not 0 = 0
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_want), rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r), np.asarray(r_want), rtol=1e-6)
    if name == "per_step_ended":
        assert float(r.max()) < 40 * CFG.small_batch  # some episode ended before the horizon


def test_estimates_differ_between_the_variants(estimates):
    """The variants above are distinguishable (so the matches are not vacuous): counts, weights, random actions."""
    got, _ = estimates
    for a, b in (("small", "per_step"), ("small", "random")):
        assert not np.allclose(np.asarray(got[a][0][0]), np.asarray(got[b][0][0]), rtol=1e-3)


def test_make_byzpg_takes_a_plain_config_by_keyword():
    """ByzPG is built from a ``ByzPGConfig`` (no agreement fields, so no ``aggregate_every_iteration``), passed by
    keyword as well as by position; only the environment and policy are built (nothing is traced)."""
    plain = frl.ByzPGConfig(num_agents=2, aggregator="mean", large_batch=4, small_batch=2, horizon=10, hidden=(4,))
    assert not hasattr(plain, "aggregate_every_iteration")
    alg = frl.make_byzpg(config=plain)
    assert alg.policy.num_params == frl.make_byzpg(plain).policy.num_params > 0


def test_make_decbyzpg_takes_the_mesh_by_keyword_and_steps_on_coins_or_blocks():
    """``make_decbyzpg``'s ``mesh`` is keyword-only; ``alg.step`` takes one iteration of a state on coins and one
    block of a state on ``Blocks`` (``jax.eval_shape``: traced, not compiled)."""
    with pytest.raises(TypeError):
        frl.make_decbyzpg(CFG, None, None, None)
    alg = frl.make_decbyzpg(CFG)
    coins = np.array([True, False])
    for schedule in (coins, frl.block_schedule(coins, CFG)):
        state = alg.init(jax.random.key(0), schedule)
        stepped, history = jax.eval_shape(alg.step, state)
        assert stepped.theta.shape == state.theta.shape and history["returns"].shape == ()


def test_two_agents_agree_after_their_own_small_batch_steps():
    """K = 2 (the smallest K with an agreement step), no Byzantine agent, MDA: after a small-batch iteration the
    agents' own PAGE-PG estimates ``v`` differ, yet Avg-Agree leaves them at one point (diameter 0)."""
    alg = frl.make_decbyzpg(dataclasses.replace(CFG, num_agents=2, agreement="mda"))
    final, history = jax.jit(alg.run)(jax.random.key(3), np.array([True, False]))
    assert not np.allclose(np.asarray(final.v[0]), np.asarray(final.v[1]))
    np.testing.assert_array_equal(np.asarray(final.theta[0]), np.asarray(final.theta[1]))
    np.testing.assert_array_equal(np.asarray(history["diameter"]), 0.0)


@pytest.mark.parametrize("make", [frl.make_byzpg, frl.make_decbyzpg])
def test_overflowing_and_nan_directions_are_refused(make):
    """The one Byzantine sender sends entries of 1e30 (finite, but the averaged direction's squared norm overflows
    float32), then NaN: both directions are refused, so theta, v and Adam's state stay where they started, and
    ``skipped`` counts each iteration (every honest agent of DecByzPG, the server of ByzPG). The loop references
    in ``tests/test_frl.py`` check that finite directions are stepped along with ``skipped = 0``."""
    from fedjax_attacks import attacks
    attacks.register("test_overflow_then_nan", lambda: attacks.Attack("test_overflow_then_nan", lambda key, inp: (
        jnp.full_like(inp.updates, jnp.where(inp.round == 0, 1e30, jnp.nan)))), overwrite=True)
    alg = make(dataclasses.replace(CFG, num_byzantine=1, attack="test_overflow_then_nan"))
    coins = np.ones(2, bool)
    state = alg.init(jax.random.key(0), coins)
    final, history = jax.jit(alg.iterate)(state, coins)
    honest = 2 if make is frl.make_decbyzpg else 1
    np.testing.assert_array_equal(np.asarray(history["skipped"]), [honest, honest])
    for got, start in ((final.theta, state.theta), (final.v, state.v), (final.opt_state, state.opt_state)):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, start)


def test_variants_take_mesh_and_steps_by_keyword_and_trace_on_one_device_meshes():
    """``make_variants``' ``mesh`` and ``steps`` are keyword-only; ``"iterations"`` over a seeds x agents mesh is
    refused, and so are 3 seeds over a seeds axis of 2 (by either kind of steps); without a mesh and on one-device
    meshes (seeds only; seeds x agents) both kinds of steps trace (``jax.eval_shape``, so nothing compiles) to one
    state per seed. The forced-device tests of
    ``tests/test_frl_sharding.py`` (slow) check the sharded values."""
    from fedjax_attacks.frl import batch
    device = np.array(jax.devices()[:1])
    seeds, grid = Mesh(device, ("seeds",)), Mesh(device.reshape(1, 1), ("seeds", "agents"))
    with pytest.raises(TypeError):
        batch.make_variants({"a": CFG}, "dec", None, None, seeds)
    with pytest.raises(ValueError, match="blocks"):
        batch.make_variants({"a": CFG}, "dec", mesh=grid, steps="iterations")
    doubled = Mesh(np.array([device[0], device[0]]), ("seeds",))  # a seeds axis of 2 (its size is all that is read)
    three = jax.random.split(jax.random.PRNGKey(0), 3)  # raw keys, shape [3, 2]: the seeds axis comes first
    for steps in ("iterations", "blocks"):
        schedules = frl.sample_block_schedules(jax.random.key(1), CFG, 8, num_seeds=3,
                                               whole_iterations=steps == "iterations")
        with pytest.raises(ValueError, match="number of seeds S"):
            batch.make_variants({"a": CFG}, "dec", mesh=doubled, steps=steps).init(three, schedules)
    keys = jax.random.split(jax.random.key(0), 2)
    for mesh, steps in ((None, "blocks"), (seeds, "iterations"), (seeds, "blocks"), (grid, "blocks")):
        schedules = frl.sample_block_schedules(jax.random.key(1), CFG, 8, num_seeds=2,
                                               whole_iterations=steps == "iterations")
        variants = batch.make_variants({"a": CFG}, "dec", mesh=mesh, steps=steps)
        states = jax.eval_shape(variants.init, keys, schedules)
        final, history = jax.eval_shape(variants.iterate, states, schedules)
        assert final[0].theta.shape == (2, CFG.num_agents, states[0].theta.shape[-1])
        assert history[0]["returns"].shape == schedules.large.shape


def test_variants_greedy_scores_byzpg_s_server():
    """ByzPG's variants score the server's policy greedily, even with a fixed Byzantine worker (only DecByzPG's
    fixed Byzantine agents are left out): at the initial states, ``greedy`` is ``base.greedy_returns`` of each
    seed's server theta."""
    from fedjax_attacks.frl import batch
    config = dataclasses.replace(CFG, num_byzantine=1, attack="large_noise", horizon=30)
    schedules = frl.sample_block_schedules(jax.random.key(1), config, 4, num_seeds=2, whole_iterations=True)
    variants = batch.make_variants({"a": config}, "byz")
    states = variants.init(jax.random.split(jax.random.key(0), 2), schedules)
    greedy = jax.jit(variants.greedy, static_argnums=2)(jax.random.key(2), states, 1)
    env, env_params, policy = base.make_env_and_policy(config)
    for seed, key in enumerate(jax.random.split(jax.random.key(2), 2)):
        want = base.greedy_returns(key, policy, states[0].theta[seed][None], env, env_params, config, 1)
        np.testing.assert_allclose(float(greedy[0, seed]), float(want[0]), rtol=1e-6)


@pytest.mark.parametrize("algorithm", ["dec", pytest.param("byz", marks=pytest.mark.slow)])
def test_variants_by_iterations_equal_each_run_on_its_seeds_coins(algorithm):
    """``batch.make_variants`` at toy size on this CPU's default steps (``"iterations"``): two variants (plain
    averaging; the median against a LargeNoise sender that also acts at random, not redrawn) x two seeds with their
    own coins, as one program, end where each variant's run on each seed's coins ends, with the same per-iteration
    returns; ``greedy`` scores each variant's honest agents (DecByzPG skips the fixed Byzantine agent 0 and scores
    every agent where the Byzantine set is redrawn, ByzPG scores the server) as ``base.greedy_returns`` does.
    Without agreement the agents differ, and so do their greedy returns (horizon 30). The slow
    ``tests/test_frl_blocks.py`` checks the same at a larger size and by blocks."""
    from fedjax_attacks.frl import batch
    small = dataclasses.replace(CFG, large_batch=4, small_batch=2, horizon=30, switch_prob=0.5)
    configs = {"mean": dataclasses.replace(small, resample_byzantine=True), "attacked": dataclasses.replace(
        small, num_byzantine=1, attack="large_noise", random_actions=True, aggregator="median")}
    schedules = frl.sample_block_schedules(jax.random.key(1), small, 8, num_seeds=2, whole_iterations=True)
    assert not np.array_equal(schedules.large[0], schedules.large[1])
    keys = jax.random.split(jax.random.key(0), 2)
    variants = batch.make_variants(configs, algorithm)
    assert variants.steps == "iterations" and variants.labels == ("mean", "attacked")
    final, histories = jax.jit(variants.iterate)(jax.jit(variants.init)(keys, schedules), schedules)
    greedy = jax.jit(variants.greedy, static_argnums=2)(jax.random.key(2), final, 1)
    assert greedy.shape == (2, 2)
    make = frl.make_decbyzpg if algorithm == "dec" else frl.make_byzpg
    env, env_params, policy = base.make_env_and_policy(small)
    greedy_keys = jax.random.split(jax.random.key(2), 2)
    for v, (config, state, history) in enumerate(zip(configs.values(), final, histories)):
        run = jax.jit(make(config).run)
        for seed in range(2):
            expected, expected_history = run(keys[seed], _coins(schedules, seed))
            np.testing.assert_allclose(np.asarray(state.theta[seed]), np.asarray(expected.theta), rtol=1e-5,
                                       atol=1e-6)
            assert int(state.t[seed]) == int(expected.t) == int(np.sum(schedules.last[seed]))
            done = int(expected.t)
            np.testing.assert_allclose(np.asarray(history["returns"][seed][:done]),
                                       np.asarray(expected_history["returns"]), rtol=1e-5)
            honest = state.theta[seed].reshape(-1, policy.num_params)[1 if algorithm == "dec" and v else 0:]
            want = base.greedy_returns(greedy_keys[seed], policy, honest, env, env_params, config, 1)
            np.testing.assert_allclose(float(greedy[v, seed]), float(jnp.mean(want)), rtol=1e-6)
