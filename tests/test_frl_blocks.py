"""ByzPG / DecByzPG in blocks of B trajectories: schedules, seeds with their own coins and several variants in one
program against runs on coins, greedy returns, and the validation of counts, coins and Byzantine majorities."""

import dataclasses

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import frl
from fedjax_attacks.frl import batch

BASE = frl.DecByzPGConfig(num_agents=3, aggregator="mean", agreement="none", large_batch=5, small_batch=2,
                          horizon=20, hidden=(8,), learning_rate=1e-2)


def test_block_schedule_cuts_large_batches_into_blocks_of_b():
    blocks = frl.block_schedule(np.array([True, False, True]), BASE)  # N = 5, B = 2: 3 blocks, the last counts 1
    np.testing.assert_array_equal(blocks.large, [1, 1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(blocks.index, [0, 1, 2, 0, 0, 1, 2])
    np.testing.assert_array_equal(blocks.count, [2, 2, 1, 2, 2, 2, 1])
    np.testing.assert_array_equal(blocks.last, [0, 0, 1, 1, 0, 0, 1])
    schedules = frl.sample_block_schedules(jax.random.PRNGKey(0), frl.CARTPOLE, 2000, num_seeds=4, multiple_of=8)
    totals = np.cumsum(schedules.count, axis=1)
    assert schedules.large.shape[1] % 8 == 0 and np.all(totals[:, -1] >= 2000)
    assert np.any(totals[:, -9] < 2000)  # no longer than needed
    assert len({tuple(row) for row in schedules.large}) == 4  # every seed its own coins
    assert np.all(schedules.large[:, 0])  # c_0 = 1


def _coins(blocks, seed):
    """The coins of the iterations that a seed's schedule completes."""
    large, index, last = (np.asarray(a[seed]) for a in (blocks.large, blocks.index, blocks.last))
    return large[index == 0][: int(last.sum())]


def _check_variants_equal_runs_on_coins(algorithm, configs, steps="blocks"):
    schedules = frl.sample_block_schedules(jax.random.PRNGKey(1), BASE, 16, num_seeds=2,
                                           whole_iterations=steps == "iterations")
    assert not np.array_equal(schedules.large[0], schedules.large[1])
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    variants = batch.make_variants(configs, algorithm, steps=steps)
    assert variants.steps == steps
    final, histories = jax.jit(variants.iterate)(jax.jit(variants.init)(keys, schedules), schedules)
    make = frl.make_decbyzpg if algorithm == "dec" else frl.make_byzpg
    for config, state, history in zip(configs.values(), final, histories):
        assert history["returns"].shape == schedules.large.shape
        run = jax.jit(make(config).run)
        for seed in range(2):
            expected, _ = run(keys[seed], _coins(schedules, seed))
            np.testing.assert_allclose(np.asarray(state.theta[seed]), np.asarray(expected.theta), rtol=1e-5,
                                       atol=1e-6)
            assert int(state.t[seed]) == int(expected.t) > 1


@pytest.mark.slow  # about 50 s on 2 cores (four compiled programs); test_frl_benchmark covers the runner fast
@pytest.mark.parametrize("steps", ["blocks", "iterations"])
def test_variants_and_seeds_in_one_program_equal_runs_on_coins(steps):
    """Two DecByzPG variants (plain averaging; median + MDA under LargeNoise with RandomAction) x two seeds with
    different coins, as one program (seeds vmapped by blocks, or mapped by iterations), end where each variant's
    run on each seed's own coins ends."""
    _check_variants_equal_runs_on_coins("dec", {
        "mean": BASE,
        "attacked": dataclasses.replace(BASE, num_byzantine=1, attack="large_noise", random_actions=True,
                                        aggregator="median", agreement="mda"),
    }, steps)


@pytest.mark.slow
@pytest.mark.parametrize("steps", ["blocks", "iterations"])
def test_byzpg_variant_in_one_program_equals_runs_on_coins(steps):
    """ByzPG's blocks sample at every worker; a small-batch block uses worker 0's as the server's samples."""
    _check_variants_equal_runs_on_coins("byz", {"attacked": dataclasses.replace(
        BASE, num_byzantine=1, attack="large_noise", random_actions=True, aggregator="median")}, steps)


def test_steps_are_checked_and_follow_the_backend():
    assert batch.default_steps() == "iterations"  # this suite runs on a CPU
    with pytest.raises(ValueError, match="steps"):
        batch.make_variants({"a": BASE}, steps="epochs")
    schedule = frl.iteration_schedule(np.array([True, False]), BASE)
    np.testing.assert_array_equal(schedule.count, [5, 2])
    assert np.all(schedule.last) and not np.any(schedule.index)


@pytest.mark.slow
def test_one_variant_steps_by_blocks_like_by_coins():
    """``alg.step`` on a ``Blocks`` state (the chunked runner's view) matches ``alg.run`` on the coins."""
    from fedjax_attacks.runner import run_chunked

    alg = frl.make_decbyzpg(BASE)
    coins = np.array([True, False, False, True])
    blocks = frl.block_schedule(coins, BASE)
    state, history = run_chunked(alg.trainer(blocks), jax.random.PRNGKey(3), chunk=3, progress=False)
    expected, expected_history = jax.jit(alg.run)(jax.random.PRNGKey(3), coins)
    np.testing.assert_allclose(np.asarray(state.theta), np.asarray(expected.theta), rtol=1e-5, atol=1e-6)
    assert int(np.sum(history["completed"])) == 4 and int(np.sum(history["trajectories"])) == 5 + 2 + 2 + 5
    # the per-block returns weighted by their episodes give the per-iteration returns
    per_iteration = np.add.reduceat(np.asarray(history["returns"]) * blocks.count,
                                    np.nonzero(blocks.index == 0)[0]) / np.where(coins, 5, 2)
    np.testing.assert_allclose(per_iteration, np.asarray(expected_history["returns"]), rtol=1e-5)


def _loop_returns(env_name, thetas, horizon, action):
    """Returns of plain Python rollouts of gymnax ``env_name`` taking ``action(theta, obs)``, one per theta, with
    the keys ``greedy_returns`` derives from ``PRNGKey(5)``."""
    gym_env, gym_params = gymnax.make(env_name)
    step_env = jax.jit(gym_env.step_env)
    totals = []
    for m, theta in enumerate(thetas):
        key = jax.random.split(jax.random.PRNGKey(5), 2)[m]
        _, reset_key = jax.random.split(key)
        obs, state = gym_env.reset(jax.random.split(reset_key, 1)[0], gym_params)
        total = 0.0
        for _ in range(horizon):
            obs, state, reward, done, _ = step_env(key, state, action(theta, obs), gym_params)
            total += float(reward)
            if bool(done):
                break
        totals.append(total)
    return totals


def test_greedy_returns_follow_the_argmax_action():
    """The greedy return of a policy equals a plain Python rollout taking ``argmax_a pi(a|s)``."""
    config = dataclasses.replace(BASE, horizon=30)
    env, env_params, policy = frl.base.make_env_and_policy(config)
    thetas = jax.vmap(policy.init)(jax.random.split(jax.random.PRNGKey(4), 2))
    got = frl.base.greedy_returns(jax.random.PRNGKey(5), policy, thetas, env, env_params, config, num_episodes=1)
    log_prob = jax.jit(policy.log_prob)

    def argmax(theta, obs):
        return int(np.argmax([float(log_prob(theta, obs[None], jnp.array([a]))[0]) for a in range(2)]))

    assert [float(g) for g in got] == _loop_returns("CartPole-v1", thetas, config.horizon, argmax)


def test_greedy_returns_of_a_gaussian_policy_follow_its_mean():
    """On a continuous action space the greedy action is the Gaussian's mean (clipped to the action box, as
    every action sent to the environment): a plain Python rollout on Pendulum-v1 gives the same returns."""
    config = dataclasses.replace(BASE, env_name="Pendulum-v1", horizon=12, activation="tanh")
    env, env_params, policy = frl.base.make_env_and_policy(config)
    thetas = jax.vmap(policy.init)(jax.random.split(jax.random.PRNGKey(4), 2)) * 4.0  # means beyond +-2: clipped
    got = frl.base.greedy_returns(jax.random.PRNGKey(5), policy, thetas, env, env_params, config, num_episodes=1)
    mode, space = jax.jit(policy.mode), env.action_space(env_params)
    want = _loop_returns("Pendulum-v1", thetas, config.horizon,
                         lambda theta, obs: jnp.clip(mode(theta, obs[None])[0], space.low, space.high))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        frl.base.greedy_returns(jax.random.PRNGKey(5), policy._replace(mode=None), thetas, env, env_params, config,
                                num_episodes=1)


def test_validation_refuses_byzantine_majorities_bad_counts_and_bad_coins():
    with pytest.raises(ValueError, match="allow_byzantine_majority"):
        frl.make_decbyzpg(dataclasses.replace(BASE, num_agents=5, num_byzantine=3, attack="large_noise"))
    with pytest.raises(ValueError, match="allow_byzantine_majority"):
        dataclasses.replace(BASE, num_agents=4, num_byzantine=2, attack="large_noise").validate()
    dataclasses.replace(BASE, num_agents=5, num_byzantine=3, attack="large_noise",
                        allow_byzantine_majority=True).validate()
    for field, value in (("num_byzantine", 1.0), ("large_batch", 0), ("small_batch", 2.0), ("num_agents", True)):
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(BASE, **{field: value}).validate()
    alg = frl.make_decbyzpg(BASE)
    for coins, match in (([], "non-empty"), (np.array([1.0, 0.0]), "booleans"), (np.array([0.3]), "booleans")):
        with pytest.raises(ValueError, match=match):
            alg.init(jax.random.PRNGKey(0), coins)
    for kwargs, match in (({"max_trajectories": 0}, "max_trajectories"), ({"max_trajectories": 10.0},
                          "max_trajectories"), ({"max_trajectories": 10, "multiple_of": 0}, "multiple_of")):
        with pytest.raises(ValueError, match=match):
            frl.sample_switches(jax.random.PRNGKey(0), BASE, **kwargs)
    with pytest.raises(ValueError, match="num_seeds"):
        frl.sample_block_schedules(jax.random.PRNGKey(0), BASE, 10, num_seeds=0)
    with pytest.raises(ValueError, match="differ"):
        batch.make_variants({"a": BASE, "b": dataclasses.replace(BASE, num_agents=4)})
    assert [list(g) for g in batch.group_by_shape({"a": BASE, "b": dataclasses.replace(BASE, num_agents=4),
                                                   "c": dataclasses.replace(BASE, aggregator="median")})] == [
        ["a", "c"], ["b"]]


@pytest.mark.parametrize("make", [frl.make_byzpg, frl.make_decbyzpg])
@pytest.mark.parametrize("aggregator", ["rfa", "krum", "median"])
def test_bucketing_into_one_bucket_is_refused(make, aggregator):
    """``bucket_size >= K`` puts every agent's vector into one bucket: the rule would get their mean only."""
    hparams = {"num_byzantine": 0} if aggregator == "krum" else {}
    config = dataclasses.replace(BASE, aggregator=aggregator, aggregator_hparams=hparams)
    for s in (3, 4):  # K = 3
        with pytest.raises(ValueError, match="bucket_size"):
            make(dataclasses.replace(config, bucket_size=s))
    dataclasses.replace(config, bucket_size=2).validate()  # two buckets of three vectors
    with pytest.raises(ValueError, match="bucket_size"):
        dataclasses.replace(config, num_agents=1, bucket_size=2).validate()


def test_coins_and_blocks_must_start_with_a_large_batch():
    """PAGE needs ``c_0 = 1``: coins or ``Blocks`` whose first iteration is a small batch are refused."""
    alg = frl.make_decbyzpg(BASE)
    for coins in (np.array([False, True]), [False]):
        with pytest.raises(ValueError, match="c_0"):
            alg.init(jax.random.PRNGKey(0), coins)
        with pytest.raises(ValueError, match="c_0"):
            frl.block_schedule(coins, BASE)
        with pytest.raises(ValueError, match="c_0"):
            frl.iteration_schedule(coins, BASE)
    good = frl.block_schedule(np.array([True, False]), BASE)
    shifted = frl.Blocks(*(np.roll(a, -3) for a in good))  # the small block first
    with pytest.raises(ValueError, match="c_0"):
        alg.init(jax.random.PRNGKey(0), shifted)


@pytest.mark.parametrize("make", [frl.make_byzpg, frl.make_decbyzpg])
def test_blocks_made_for_another_n_or_b_or_for_whole_iterations_are_refused(make):
    """A run on ``Blocks`` follows their ``count`` and ``last``: blocks cut for another ``N`` (or ``B``), or an
    iteration schedule (``count = N`` in one block), would override the config's ``N``; every entry point
    refuses them before tracing, and the config's own schedules (cut anywhere) pass."""
    alg = make(BASE)
    coins = np.array([True, False, True])
    state = alg.init(jax.random.PRNGKey(0), coins)
    for other, match in ((frl.block_schedule(coins, dataclasses.replace(BASE, large_batch=8)), "counts 8 episodes"),
                         (frl.block_schedule(coins, dataclasses.replace(BASE, small_batch=1)), "blocks of up to 1"),
                         (frl.iteration_schedule(coins, BASE), "made by iteration_schedule")):
        with pytest.raises(ValueError, match=match):
            alg.init(jax.random.PRNGKey(0), other)
        with pytest.raises(ValueError, match=match):
            alg.iterate(state, other)
        with pytest.raises(ValueError, match=match):
            alg.run(jax.random.PRNGKey(0), other)
    own = frl.block_schedule(coins, BASE)
    for cut in range(1, len(own.large) + 1):  # a schedule cut inside a large batch (sample_block_schedules) passes
        alg.init(jax.random.PRNGKey(0), frl.Blocks(*(a[:cut] for a in own)))


def test_variants_refuse_schedules_of_the_other_kind_of_steps():
    """``steps="iterations"`` runs a whole iteration per entry: given block schedules it would repeat every
    large-batch iteration once per block; ``steps="blocks"`` given iteration schedules would take ``N``
    episodes' weight from ``B``. Both are refused by ``init`` and ``iterate`` (before tracing)."""
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    for steps in ("iterations", "blocks"):
        variants = batch.make_variants({"a": BASE}, steps=steps)
        own = frl.sample_block_schedules(jax.random.PRNGKey(1), BASE, 8, num_seeds=2,
                                         whole_iterations=steps == "iterations")
        other = frl.sample_block_schedules(jax.random.PRNGKey(1), BASE, 8, num_seeds=2,
                                           whole_iterations=steps == "blocks")
        states = jax.eval_shape(variants.init, keys, own)
        with pytest.raises(ValueError, match="whole_iterations"):
            variants.init(keys, other)
        with pytest.raises(ValueError, match="whole_iterations"):
            variants.iterate(states, other)
        with pytest.raises(ValueError, match="large_batch"):
            variants.init(keys, frl.sample_block_schedules(jax.random.PRNGKey(1), dataclasses.replace(
                BASE, large_batch=8), 8, num_seeds=2, whole_iterations=steps == "iterations"))
