"""Toy-size end-to-end runs of PPO, TD3 and DQN: they learn, vmap over seeds, and PPO's hooks apply."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import rl
from fedjax_attacks.rl import dqn, networks, ppo, td3


def _first_last(returns, k):
    r = np.asarray(returns)
    r = r[~np.isnan(r)]
    return r[:k].mean(), r[-k:].mean()


def test_ppo_cartpole_learns_vmapped_over_seeds_and_hyperparameters_without_retrace():
    env, params = rl.make("CartPole-v1")
    cfg = ppo.PPOConfig(total_timesteps=24_576, num_envs=8, num_steps=64, learning_rate=1e-3, hidden=(32, 32))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sweep(learning_rates, keys):
        run = lambda lr, key: ppo.make_train(dataclasses.replace(cfg, learning_rate=lr), env, params)(key)
        return jax.vmap(run)(learning_rates, keys).metrics["episode_return"]

    returns = sweep(jnp.array([1e-3, 2e-3]), jax.random.split(jax.random.key(0), 2))
    for seed in range(2):
        first, last = _first_last(returns[seed], 5)
        assert last > 2 * first, (first, last)
    sweep(jnp.array([1e-3, 1e-3]), jax.random.split(jax.random.key(1), 2))  # new values: no retrace


def test_ppo_hooks_are_applied_in_order():
    """The inner hook changes observations and rewards; the outer poison sees the hooked rewards."""
    env, params = rl.make("CartPole-v1")
    cfg = ppo.PPOConfig(total_timesteps=3 * 4 * 16, num_envs=4, num_steps=16, hidden=(8,))

    def observe(key, count, obs, train_state):
        assert obs.shape == (4, 4)
        return obs.at[:, 0].set(7.0), count + 1

    hook = ppo.RolloutHook(init=lambda: jnp.zeros((), jnp.int32), observe=observe,
                           reward=lambda count, action, reward: (jnp.full_like(reward, 2.0), count))

    def poison(batch, train_state, key):
        assert batch.rewards.shape == (16, 4) and batch.obs.shape == (16, 4, 4)
        ok = jnp.all(batch.rewards == 2.0) & jnp.all(batch.obs[..., 0] == 7.0)
        log_probs, values, _ = ppo.evaluate_actions(train_state, batch.obs, batch.actions)
        ok = ok & jnp.allclose(values, batch.values, atol=1e-5) & jnp.allclose(log_probs, batch.log_probs, atol=1e-5)
        # Huge rewards if every reward and observation came through the hook, NaN otherwise.
        return batch._replace(rewards=jnp.where(ok, jnp.full_like(batch.rewards, 1e4), jnp.nan))

    out = jax.jit(ppo.make_train(cfg, env, params, poison=poison, rollout_hook=hook))(jax.random.key(1))
    assert int(out.hook_state) == 3 * 16
    # Hooked rewards of 2 would give value losses below 1e3; the poisoned batch drives the update instead.
    assert np.all(np.asarray(out.metrics["value_loss"]) > 1e6), out.metrics["value_loss"]
    bad = lambda batch, ts, key: batch._replace(rewards=batch.rewards.sum())
    with pytest.raises(ValueError, match="poison"):
        jax.eval_shape(ppo.make_train(cfg, env, params, poison=bad), jax.random.key(0))


@pytest.mark.slow  # kept out of `make test` for time (10-minute budget); `make test-slow` runs it
def test_td3_pendulum_improves():
    env, params = rl.make("Pendulum-v1")
    cfg = td3.TD3Config(total_timesteps=6_000, learning_starts=1_000, hidden=(64, 64), batch_size=128,
                        learning_rate=1e-3)
    out = jax.jit(td3.make_train(cfg, env, params))(jax.random.key(0))
    first, last = _first_last(out.metrics["episode_return"], 3)
    policy = td3.make_policy(cfg, env, params, out.learner.actor.params)
    evaluated = float(jnp.mean(rl.evaluate_policy(jax.random.key(1), policy, env, params, 8, 200)))
    assert last > first + 300 and evaluated > -900, (first, last, evaluated)


def test_dqn_cartpole_improves():
    env, params = rl.make("CartPole-v1")
    cfg = dqn.DQNConfig(total_timesteps=15_000, learning_starts=1_000, exploration_fraction=0.3,
                        train_frequency=1, batch_size=64, target_network_frequency=100, learning_rate=1e-3,
                        hidden=(64,))
    out = jax.jit(dqn.make_train(cfg, env, params))(jax.random.key(0))
    first, last = _first_last(out.metrics["episode_return"], 10)
    assert last > 3 * first, (first, last)


def test_dqn_grad_hook_transforms_every_update_and_leaves_the_plain_run_alone():
    """``grad_hook`` sees each update's gradient: zeroed, Adam never moves the Q-network; the identity hook
    draws the same run as no hook (its key is folded, not split, from the update's)."""
    env, params = rl.make("CartPole-v1")
    cfg = dqn.DQNConfig(total_timesteps=256, num_envs=8, learning_starts=64, batch_size=16, train_frequency=8,
                        target_network_frequency=64, hidden=(8,))
    calls = []

    def zero(key, grads):
        calls.append(key)
        return jax.tree.map(jnp.zeros_like, grads)

    key = jax.random.key(0)
    plain = jax.jit(dqn.make_train(cfg, env, params))(key)
    frozen = jax.jit(dqn.make_train(cfg, env, params, grad_hook=zero))(key)
    same = jax.jit(dqn.make_train(cfg, env, params, grad_hook=lambda k, g: g))(key)
    start = dqn.make_trainer(cfg, env, params).init(key, params)[0].params
    assert calls  # traced once inside the update
    for a, b in zip(jax.tree.leaves(frozen.q_state.params), jax.tree.leaves(start)):
        np.testing.assert_array_equal(a, b)
    assert int(frozen.q_state.step) == int(plain.q_state.step) > 0
    for a, b in zip(jax.tree.leaves(same.q_state.params), jax.tree.leaves(plain.q_state.params)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(jax.tree.leaves(plain.q_state.params)[0], jax.tree.leaves(start)[0])


@pytest.mark.slow  # the benchmark end to end at --quick size
def test_rl_speed_benchmark_quick(tmp_path):
    """The benchmark's --quick mode (DQN section only, to keep the suite fast) writes its JSON and PNG."""
    import json

    from benchmarks import rl_speed

    rl_speed.main(["--quick", "--sections", "dqn", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dqn"]["steps_per_s"] > 0 and np.isfinite(results["dqn"]["eval_return"])
    assert len(results["dqn"]["eval_returns"]) == results["dqn"]["num_seeds"] == 2
    assert results["environment"]["devices"] and (tmp_path / "rl_speed.png").exists()


def test_ppo_conv_network_on_minatar_trains_and_exports_a_policy():
    env, params = rl.make("Breakout-MinAtar")
    cfg = ppo.PPOConfig(total_timesteps=2 * 4 * 16, num_envs=4, num_steps=16, update_epochs=1, num_minibatches=2)
    network = networks.ConvActorCritic(num_actions=3, discrete=True, channels=(8,), hidden=(32,))
    out = jax.jit(ppo.make_train(cfg, env, params, network=network))(jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(out.metrics["loss"]))), out.metrics
    trained = out.train_state.params
    assert trained["params"]["Conv_0"]["kernel"].shape == (3, 3, 4, 8)
    policy = ppo.make_policy(cfg, env, params, trained, network=network)
    action = policy(jax.random.key(1), env.reset(jax.random.key(2), params)[0])
    assert action.shape == () and 0 <= int(action) < 3
    returns = jax.jit(lambda key: rl.evaluate_policy(key, policy, env, params, 2, 20))(jax.random.key(3))
    assert returns.shape == (2,) and np.all(np.isfinite(np.asarray(returns)))


class _ValueWithTrailingAxis(nn.Module):
    @nn.compact
    def __call__(self, obs):
        dist, value = networks.ActorCritic(num_actions=2, discrete=True, hidden=(8,))(obs)
        return dist, value[..., None]


def test_ppo_uses_a_custom_network_and_rejects_one_that_does_not_fit_the_env():
    env, params = rl.make("CartPole-v1")
    cfg = ppo.PPOConfig(total_timesteps=4 * 16, num_envs=4, num_steps=16)
    network = networks.ActorCritic(num_actions=2, discrete=True, hidden=(8,))
    trained = jax.jit(ppo.make_train(cfg, env, params, network=network))(jax.random.key(0)).train_state.params
    assert trained["params"]["MLP_0"]["Dense_0"]["kernel"].shape == (4, 8)
    for bad in (networks.ActorCritic(num_actions=3, discrete=True, hidden=(8,)),
                networks.ActorCritic(num_actions=2, discrete=False, hidden=(8,)), _ValueWithTrailingAxis()):
        with pytest.raises(ValueError, match="network must map"):
            ppo.make_train(cfg, env, params, network=bad)


class _ScaledReward:
    """Pendulum with its rewards multiplied by ``scale`` (everything else delegated)."""

    def __init__(self, env, scale):
        self.env, self.scale = env, scale

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, key, params=None):
        return self.env.reset(key, params)

    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        return obs, state, self.scale * reward, terminated, truncated, info


def _short_td3(**changes):
    base = dict(total_timesteps=240, learning_starts=64, hidden=(16,), batch_size=32, buffer_size=240, num_envs=2,
                learning_rate=3e-3)
    return td3.TD3Config(**{**base, **changes})


@pytest.mark.parametrize("normalize", [True, False])
def test_td3_reward_normalization_makes_learning_blind_to_the_reward_scale(normalize):
    env, params = rl.make("Pendulum-v1")
    cfg = _short_td3(normalize_rewards=normalize)
    runs = [jax.jit(td3.make_train(cfg, _ScaledReward(env, scale), params))(jax.random.key(3)).learner.actor.params
            for scale in (1.0, 100.0)]
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])))
    if normalize:  # r / std(buffer rewards) is the same for 100 r: the same updates
        assert diff < 1e-3, diff
    else:
        assert diff > 1e-2, diff


def test_td3_preactivation_penalty_keeps_the_actor_off_saturation():
    env, params = rl.make("Pendulum-v1")
    obs = jax.vmap(lambda k: env.reset(k, params)[0])(jax.random.split(jax.random.key(0), 64))

    def mean_abs_preactivation(penalty):
        cfg = _short_td3(preactivation_penalty=penalty, learning_rate=3e-2)  # a fast actor saturates
        out = jax.jit(td3.make_train(cfg, env, params))(jax.random.key(1))
        net = networks.DeterministicActor(1, cfg.hidden)
        return float(jnp.mean(jnp.abs(net.apply(out.learner.actor.params, obs, return_preactivation=True)[1])))

    free, penalised = mean_abs_preactivation(0.0), mean_abs_preactivation(1.0)
    assert penalised < 0.5 * free, (free, penalised)


def test_td3_steps_take_the_environment_parameters_at_every_call():
    env, params = rl.make("Pendulum-v1")
    cfg = _short_td3()
    steps = td3.make_steps(cfg, env, params)
    heavy = params.replace(g=4.0 * params.g)
    carry = steps.init(jax.random.key(0), params)
    step = jax.jit(chex.assert_max_traces(steps.step, n=1))
    a, _ = step(carry, params)
    b, _ = step(carry, heavy)  # same program, other parameters: another transition
    assert not np.allclose(np.asarray(a[3]), np.asarray(b[3]))
    trainer = td3.make_trainer(cfg, env, params)
    np.testing.assert_array_equal(np.asarray(trainer.step(carry, trainer.params)[0][3]), np.asarray(a[3]))
