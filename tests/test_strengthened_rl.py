"""RL plumbing checked exactly (issue 18): NormalizeObservation and normalize against NumPy moments, LogWrapper
episode lengths against a step counter, the replay buffer's sampling distribution over many draws, dqn.epsilon
and PPO with observation normalization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import rl
from fedjax_attacks.rl import dqn, ppo, replay, wrappers

CARTPOLE = rl.make("CartPole-v1")


def test_normalize_observation_matches_numpy_moments():
    """The wrapper's moments are those of all raw observations so far plus the prior (mean 0, var 1, weight
    1e-4), and it returns clip((obs - mean) / sqrt(var + 1e-8), +-10); raw observations come from the same
    environment stepped with the same keys."""
    env, params = CARTPOLE
    raw_env = wrappers.VecEnv(env, 4)
    norm_env = wrappers.NormalizeObservation(raw_env, clip=2.0)  # a small clip so clipping happens
    obs, state = norm_env.reset(jax.random.key(0), params)
    raw, raw_state = raw_env.reset(jax.random.key(0), params)
    seen = [np.asarray(raw, np.float64)]
    step, raw_step = jax.jit(norm_env.step), jax.jit(raw_env.step)
    clipped = 0
    for i in range(12):
        action = jnp.asarray([i % 2, 1, 0, (i // 3) % 2], jnp.int32)
        obs, state, *_ = step(jax.random.key(i + 1), state, action, params)
        raw, raw_state, *_ = raw_step(jax.random.key(i + 1), raw_state, action, params)
        seen.append(np.asarray(raw, np.float64))
        allx = np.concatenate(seen)
        c0, n = 1e-4, len(allx)
        mean = allx.sum(0) / (c0 + n)
        var = (c0 * (1.0 + mean ** 2) + ((allx - mean) ** 2).sum(0)) / (c0 + n)
        np.testing.assert_allclose(state.moments.mean, mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state.moments.var, var, rtol=1e-3, atol=1e-5)
        expected = np.clip((seen[-1] - mean) / np.sqrt(var + 1e-8), -2.0, 2.0)
        np.testing.assert_allclose(obs, expected, rtol=1e-3, atol=1e-3)
        clipped += int(np.sum(np.abs(expected) == 2.0))
    assert clipped > 0


def test_normalize_function_formula_and_clip():
    moments = wrappers.RunningMoments(jnp.asarray([1.0, -2.0, 5.0]), jnp.asarray([4.0, 0.25, 1.0]),
                                      jnp.asarray(10.0))
    obs = jnp.asarray([[3.0, -2.5, 5.0], [1.0, 100.0, -100.0]])
    expected = np.clip((np.asarray(obs) - [1.0, -2.0, 5.0]) / np.sqrt(np.asarray([4.0, 0.25, 1.0]) + 1e-8), -10, 10)
    np.testing.assert_allclose(wrappers.normalize(moments, obs), expected, rtol=1e-6)
    np.testing.assert_allclose(wrappers.normalize(moments, obs, clip=0.5), np.clip(expected, -0.5, 0.5), rtol=1e-6)
    np.testing.assert_allclose(wrappers.normalize(moments, obs)[0], [1.0, -1.0, 0.0], atol=1e-6)


def test_log_wrapper_episode_lengths_and_returns_match_a_counter():
    """Per env: the reported length and return of every finished episode equal a step counter's and a reward
    sum's; between episode ends the reported values stay those of the last finished episode."""
    env, params = CARTPOLE
    venv = wrappers.VecEnv(wrappers.LogWrapper(env), 3)
    obs, state = venv.reset(jax.random.key(1), params)
    step = jax.jit(venv.step)
    length, total = np.zeros(3, int), np.zeros(3)
    last_len, last_ret = np.zeros(3, int), np.zeros(3)
    lengths = []
    for i in range(120):
        action = jax.random.bernoulli(jax.random.key(1000 + i), 0.5, (3,)).astype(jnp.int32)
        obs, state, reward, terminated, truncated, info = step(jax.random.key(i), state, action, params)
        length += 1
        total += np.asarray(reward)
        done = np.asarray(info["returned_episode"])
        np.testing.assert_array_equal(done, np.asarray(terminated | truncated))
        last_len = np.where(done, length, last_len)
        last_ret = np.where(done, total, last_ret)
        np.testing.assert_array_equal(info["returned_episode_lengths"], last_len)
        np.testing.assert_allclose(info["returned_episode_returns"], last_ret)
        lengths += length[done].tolist()
        length, total = np.where(done, 0, length), np.where(done, 0.0, total)
    assert len(lengths) >= 6 and len(set(lengths)) > 2  # random actions: many episodes of different lengths
    mean, count = wrappers.episode_stats(info)
    assert int(count) == int(np.sum(done))


def test_replay_samples_uniformly_from_the_valid_entries_only():
    example = replay.Transition(jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.zeros(()),
                                jnp.zeros((), bool))
    buffer = replay.init(8, example)

    def batch(ids):
        ids = jnp.asarray(ids, jnp.float32)
        return replay.Transition(ids, ids.astype(jnp.int32), ids, ids + 0.5, ids > 100)

    buffer = replay.add(buffer, batch([11, 12, 13]))
    buffer = replay.add(buffer, batch([14, 15]))  # 5 of 8 slots valid
    draws = 20_000
    sample = replay.sample(jax.random.key(0), buffer, draws)
    ids, counts = np.unique(np.asarray(sample.obs), return_counts=True)
    np.testing.assert_array_equal(ids, [11, 12, 13, 14, 15])  # never an empty slot (0)
    expected, sigma = draws / 5, np.sqrt(draws * 0.2 * 0.8)
    assert np.all(np.abs(counts - expected) < 5 * sigma), counts
    np.testing.assert_array_equal(sample.next_obs, sample.obs + 0.5)  # rows stay whole
    assert not np.array_equal(np.asarray(replay.sample(jax.random.key(1), buffer, 50).obs),
                              np.asarray(replay.sample(jax.random.key(2), buffer, 50).obs))
    # wrap around: 6 more into 8 slots keeps the 8 newest, and all 8 are sampled uniformly
    buffer = replay.add(buffer, batch([16, 17, 18, 19, 20, 21]))
    assert int(buffer.size) == 8 and int(buffer.position) == 3
    ids, counts = np.unique(np.asarray(replay.sample(jax.random.key(3), buffer, draws).obs), return_counts=True)
    np.testing.assert_array_equal(ids, np.arange(14, 22))
    assert np.all(np.abs(counts - draws / 8) < 5 * np.sqrt(draws / 8 * 7 / 8)), counts


def test_dqn_epsilon_linear_decay_then_floor():
    config = dqn.DQNConfig(total_timesteps=1000, start_e=1.0, end_e=0.1, exploration_fraction=0.5,
                           learning_starts=10, batch_size=4)
    steps = jnp.asarray([0, 100, 250, 499, 500, 501, 999])
    expected = np.maximum(1.0 - 0.9 * np.asarray(steps) / 500, 0.1)
    np.testing.assert_allclose(dqn.epsilon(config, steps), expected, rtol=1e-6, atol=1e-7)


def test_ppo_with_observation_normalization():
    """The moments count every observation of the run (the reset's and each step's, per env); the exported
    policy normalizes with them, so it equals the unnormalized policy applied to ``normalize(moments, obs)``."""
    env, params = CARTPOLE
    config = ppo.PPOConfig(total_timesteps=2 * 2 * 16, num_envs=2, num_steps=16, hidden=(8,), update_epochs=1,
                           num_minibatches=2, normalize_observations=True)
    out = jax.jit(ppo.make_train(config, env, params))(jax.random.key(0))
    moments = out.env_state.moments
    assert float(moments.count) == pytest.approx(1e-4 + 2 * (1 + 2 * 16), rel=1e-6)
    assert np.all(np.isfinite(jax.tree_util.tree_leaves(out.train_state.params)[0]))
    assert np.all(np.asarray(moments.var) > 0) and not np.allclose(moments.mean, 0.0)
    obs = jnp.asarray([0.05, 0.3, -0.02, -0.4])
    normalized = ppo.make_policy(config, env, params, out.train_state.params, moments)
    plain = ppo.make_policy(config, env, params, out.train_state.params)
    network = ppo.make_network(config, rl.spec(env, params))
    logits_norm = network.apply(out.train_state.params, wrappers.normalize(moments, obs))[0].logits
    logits_raw = network.apply(out.train_state.params, obs)[0].logits
    assert int(normalized(jax.random.key(0), obs)) == int(jnp.argmax(logits_norm))
    assert int(plain(jax.random.key(0), obs)) == int(jnp.argmax(logits_raw))
