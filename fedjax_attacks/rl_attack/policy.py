"""Phase 2's learner: TD3 (the paper's) or PPO on many simulated FL episodes at once, resumable between chunks.

Policy learning is interleaved with the real run (sec. 4.4): the learner's state (networks, optimiser, replay
buffer, the ``num_envs`` vectorized simulator episodes) is kept between chunks, while the simulator's parameters
(the learned distribution and the start model) are an argument of every step, so a new ``P~`` or a newer global
model does not recompile anything. The updates are ``fedjax_attacks.rl``'s: ``td3.td_targets``,
``td3.critic_loss``, ``td3.actor_loss`` with its networks and replay buffer; ``ppo.loss`` with ``gae.gae`` and
``ppo.make_network``.

``make_learner(config, env) -> PolicyLearner(init, step, act)``: ``init(key, env_params) -> Learner``,
``step(learner, env_params) -> (learner, metrics)`` (one TD3 iteration: ``num_envs`` simulated rounds; one PPO
update: ``num_steps`` of them), ``act(agent, obs) -> action`` (the deterministic policy, in the action box).
PPO's learning rate is constant here (``anneal_lr`` needs a total length, and policy learning is open-ended).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.train_state import TrainState

from fedjax_attacks.rl import env as env_lib
from fedjax_attacks.rl import networks, ppo, replay, td3, wrappers
from fedjax_attacks.rl_attack.config import RLAttackConfig


@struct.dataclass
class Learner:
    """A learner between steps: ``agent`` (TD3's ``TD3State`` or PPO's ``TrainState``), TD3's replay ``buffer``
    (``()`` for PPO), the vectorized simulator's ``env_state`` and ``obs``, the PRNG ``key`` and ``steps``
    (simulated rounds per environment so far)."""

    agent: Any
    buffer: Any
    env_state: Any
    obs: jax.Array
    key: jax.Array
    steps: jax.Array


class PolicyLearner(NamedTuple):
    """``init(key, env_params)``, ``step(learner, env_params)``, ``act(agent, obs)``, ``reset(learner,
    env_params)`` (restart every simulated episode, e.g. after ``P~`` or the start model changed) and
    ``rounds_per_step`` (simulated rounds per environment in one ``step``)."""

    init: Callable
    step: Callable
    act: Callable
    reset: Callable
    rounds_per_step: int


def make_learner(config: RLAttackConfig, env) -> PolicyLearner:
    """The learner ``config.algorithm`` names, over ``config.num_envs`` copies of the simulator ``env``."""
    spec = env_lib.spec(env, None)
    venv = wrappers.VecEnv(wrappers.LogWrapper(env), config.num_envs)
    make = _td3 if config.algorithm == "td3" else _ppo
    init, step, act, rounds_per_step = make(config.learner_config, spec, venv)

    def reset(learner: Learner, env_params) -> Learner:
        key, k_env = jax.random.split(learner.key)
        obs, env_state = venv.reset(k_env, env_params)
        return learner.replace(env_state=env_state, obs=obs, key=key)

    return PolicyLearner(init, step, act, reset, rounds_per_step)


def episode_metrics(info) -> dict:
    """Mean return (total held-out loss increase) of the simulated episodes that ended, NaN if none."""
    mean, count = wrappers.episode_stats(info)
    return {"episode_return": mean, "episodes": count}


def _td3(config, spec, venv) -> PolicyLearner:
    actor_net = networks.DeterministicActor(spec.num_actions, tuple(config.hidden))
    critic_net = networks.TwinCritic(tuple(config.hidden))
    tx = optax.adam(config.learning_rate)

    def act(agent, obs):
        return networks.scale_action(actor_net.apply(agent.actor.params, obs), spec.action_low, spec.action_high)

    def init(key, env_params):
        k_actor, k_critic, k_env, key = jax.random.split(key, 4)
        obs, env_state = venv.reset(k_env, env_params)
        dummy = jnp.zeros((venv.num_envs, spec.num_actions))
        actor_params = actor_net.init(k_actor, obs)
        critic_params = critic_net.init(k_critic, obs, dummy)
        agent = td3.TD3State(
            actor=TrainState.create(apply_fn=actor_net.apply, params=actor_params, tx=tx),
            critic=TrainState.create(apply_fn=critic_net.apply, params=critic_params, tx=tx),
            actor_target=actor_params, critic_target=critic_params, num_updates=jnp.zeros((), jnp.int32))
        example = replay.Transition(obs[0], dummy[0], jnp.zeros(()), obs[0], jnp.zeros((), bool))
        return Learner(agent, replay.init(config.buffer_size, example), env_state, obs, key, jnp.zeros((), jnp.int32))

    def update(agent, buffer, key):
        k_sample, k_noise = jax.random.split(key)
        batch = replay.sample(k_sample, buffer, config.batch_size)
        targets = td3.td_targets(k_noise, actor_net.apply, critic_net.apply, agent.actor_target, agent.critic_target,
                                 batch, gamma=config.gamma, policy_noise=config.policy_noise,
                                 noise_clip=config.noise_clip)
        c_loss, c_grads = jax.value_and_grad(td3.critic_loss)(agent.critic.params, critic_net.apply, batch, targets)
        agent = agent.replace(critic=agent.critic.apply_gradients(grads=c_grads), num_updates=agent.num_updates + 1)

        def policy_update(agent):
            a_grads = jax.grad(td3.actor_loss)(agent.actor.params, actor_net.apply, critic_net.apply,
                                               agent.critic.params, batch.obs)
            actor = agent.actor.apply_gradients(grads=a_grads)
            polyak = lambda new, old: optax.incremental_update(new, old, config.tau)
            return agent.replace(actor=actor, actor_target=polyak(actor.params, agent.actor_target),
                                 critic_target=polyak(agent.critic.params, agent.critic_target))

        agent = jax.lax.cond(agent.num_updates % config.policy_frequency == 0, policy_update, lambda a: a, agent)
        return agent, c_loss

    def step(learner: Learner, env_params):
        key, k_rand, k_noise, k_env, k_upd = jax.random.split(learner.key, 5)
        explore = actor_net.apply(learner.agent.actor.params, learner.obs)
        explore = jnp.clip(explore + config.exploration_noise * jax.random.normal(k_noise, explore.shape), -1, 1)
        random = jax.random.uniform(k_rand, explore.shape, minval=-1.0, maxval=1.0)
        warm = learner.steps * venv.num_envs < config.learning_starts
        unit_action = jnp.where(warm, random, explore)
        env_action = networks.scale_action(unit_action, spec.action_low, spec.action_high)
        obs, env_state, reward, terminated, _, info = venv.step(k_env, learner.env_state, env_action, env_params)
        buffer = replay.add(learner.buffer, replay.Transition(learner.obs, unit_action, reward.astype(jnp.float32),
                                                              info["final_observation"], terminated))

        def learn(agent):
            agent, losses = jax.lax.scan(lambda a, k: update(a, buffer, k), agent,
                                         jax.random.split(k_upd, config.gradient_steps))
            return agent, jnp.mean(losses)

        ready = (learner.steps + 1) * venv.num_envs >= config.learning_starts
        agent, c_loss = jax.lax.cond(ready, learn, lambda a: (a, jnp.zeros(())), learner.agent)
        metrics = {"reward": jnp.mean(reward), "critic_loss": c_loss, **episode_metrics(info)}
        return Learner(agent, buffer, env_state, obs, key, learner.steps + 1), metrics

    return init, step, act, 1


def _ppo(config, spec, venv) -> PolicyLearner:
    network = ppo.make_network(config, spec)
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.learning_rate, eps=1e-5))
    learn = ppo.make_learn(config)

    def to_env(unit_action):
        return networks.scale_action(unit_action, spec.action_low, spec.action_high)

    def act(agent, obs):
        dist, _ = network.apply(agent.params, obs)
        return to_env(dist.mode())

    def init(key, env_params):
        k_init, k_env, key = jax.random.split(key, 3)
        obs, env_state = venv.reset(k_env, env_params)
        agent = TrainState.create(apply_fn=network.apply, params=network.init(k_init, obs), tx=tx)
        return Learner(agent, (), env_state, obs, key, jnp.zeros((), jnp.int32))

    def rollout_step(carry, _, env_params):
        agent, env_state, obs, key = carry
        key, k_act, k_env = jax.random.split(key, 3)
        dist, value = agent.apply_fn(agent.params, obs)
        action = dist.sample(k_act)
        next_obs, env_state, reward, terminated, truncated, info = venv.step(k_env, env_state, to_env(action),
                                                                             env_params)
        _, bootstrap = agent.apply_fn(agent.params, info["final_observation"])
        batch = ppo.Batch(obs, action, reward.astype(jnp.float32), terminated, truncated, value,
                          dist.log_prob(action), bootstrap)
        return (agent, env_state, next_obs, key), (batch, info)

    def step(learner: Learner, env_params):
        carry = (learner.agent, learner.env_state, learner.obs, learner.key)
        (agent, env_state, obs, key), (batch, info) = jax.lax.scan(
            lambda c, x: rollout_step(c, x, env_params), carry, None, config.num_steps)
        key, k_epochs = jax.random.split(key)
        agent, losses = learn(agent, batch, k_epochs)
        metrics = {"reward": jnp.mean(batch.rewards), **episode_metrics(jax.tree.map(lambda x: x.reshape(-1), info)),
                   "loss": jnp.mean(losses["loss"])}
        return Learner(agent, (), env_state, obs, key, learner.steps + config.num_steps), metrics

    return init, step, act, config.num_steps
