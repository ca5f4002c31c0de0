"""Victims of RGIA: an RL engine run (DQN or TD3) gives the networks and the replay data the attack targets;
a DQN whose shared gradient carries the DP defense's Gaussian noise gives the defense's cost in return.

``victim_for(env, config)`` describes the victim of an ``rgia_envs.RGIAEnv`` trained with a ``DQNConfig``
(discrete actions) or a ``TD3Config`` (continuous); ``train_victim(key, env, config)`` runs the engine's
``make_train`` with a replay buffer holding every transition and returns a ``VictimRun``;
``train_victims(keys, env, config, stages)`` trains several seeds at once (vmapped) and keeps the networks at
several training stages (``VictimStages``).
"""

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState
from jax.flatten_util import ravel_pytree

from fedjax_attacks.inversion.defense import check_defense, privatize
from fedjax_attacks.inversion.rgia import Victim
from fedjax_attacks.inversion.rgia_envs import RGIAEnv
from fedjax_attacks.rl import dqn, networks, replay, td3, wrappers
from fedjax_attacks.rl.replay import Transition
from fedjax_attacks.runner import scan_steps


@flax.struct.dataclass
class VictimRun:
    """A trained victim: ``trained`` and ``untrained`` parameters (``Victim.init`` layout), its replay data
    ``replay`` (a ``Transition`` of all ``N`` transitions of the run) and ``episode_returns: f32[iterations]``
    (NaN where no episode ended)."""

    trained: dict
    untrained: dict
    replay: Transition
    episode_returns: jax.Array


def victim_for(env: RGIAEnv, config) -> Victim:
    """The ``Victim`` that ``config`` (``dqn.DQNConfig`` or ``td3.TD3Config``) trains on ``env``.

    Raises:
      ValueError: if the config's algorithm does not fit the action space.
    """
    if isinstance(config, dqn.DQNConfig) and env.discrete:
        return Victim("dqn", env.obs_dim, env.num_actions, tuple(config.hidden), config.gamma,
                      double_q=config.double_q)
    if isinstance(config, td3.TD3Config) and not env.discrete:
        return Victim("td3", env.obs_dim, env.num_actions, tuple(config.hidden), config.gamma,
                      policy_noise=config.policy_noise, noise_clip=config.noise_clip)
    raise ValueError(f"{type(config).__name__} does not fit {env.name} "
                     f"({'discrete' if env.discrete else 'continuous'} actions): use DQNConfig or TD3Config")


def train_victim(key: jax.Array, env: RGIAEnv, config) -> VictimRun:
    """Trains the victim with the RL engine (``dqn.make_train`` / ``td3.make_train``, buffer enlarged to all
    ``total_timesteps`` transitions); the untrained parameters are a fresh ``Victim.init``. One jitted run."""
    victim = victim_for(env, config)
    k_train, k_init = jax.random.split(key)
    config = dataclasses.replace(config, buffer_size=config.total_timesteps)
    module = dqn if victim.discrete else td3
    out = jax.jit(module.make_train(config, env.env, env.env_params))(k_train)
    n = int(out.buffer.size)
    return VictimRun(trained=_victim_params(victim, out), untrained=victim.init(k_init),
                     replay=jax.tree.map(lambda x: x[:n], out.buffer.data),
                     episode_returns=out.metrics["episode_return"])


@flax.struct.dataclass
class VictimStages:
    """Victims of several seeds at several training stages: ``params`` (``Victim.init`` layout, leading axes
    ``[K stages, S seeds]``), ``replay`` (``Transition`` ``[S, N]``, each run's final replay buffer),
    ``episode_returns: f32[S, iterations]`` (NaN where no episode ended); ``stage_iterations``: the iteration
    after which each stage's networks were taken (0: the untrained networks the run starts from)."""

    params: dict
    replay: Transition
    episode_returns: jax.Array
    stage_iterations: tuple = flax.struct.field(pytree_node=False)


def stage_iterations(num_iterations: int, stages) -> tuple:
    """The iteration of each training-stage fraction in ``stages`` (``round(f * num_iterations)``).

    Raises:
      ValueError: unless ``stages`` is a non-empty increasing sequence of fractions in ``[0, 1]``.
    """
    stages = [float(f) for f in stages]
    if not stages or any(not 0.0 <= f <= 1.0 for f in stages) or any(b <= a for a, b in zip(stages, stages[1:])):
        raise ValueError(f"stages must be increasing fractions of training in [0, 1], got {stages}")
    return tuple(round(f * num_iterations) for f in stages)


def train_victims(keys: jax.Array, env: RGIAEnv, config, stages=(0.0, 1.0)) -> VictimStages:
    """Trains one victim per key of ``keys`` (vmapped: one jitted program for all seeds) with the RL engine's
    trainer (``dqn.make_trainer`` / ``td3.make_trainer``, the config's replay buffer) and keeps its networks
    after each fraction ``stages`` of the iterations (0: the networks the run starts from, online = target);
    ``replay`` is the buffer's content at the end of the run (its last ``min(buffer_size, total_timesteps)``
    transitions). Raises ``ValueError`` on bad ``stages`` (``stage_iterations``) or a config that does not fit
    ``env`` (``victim_for``)."""
    victim = victim_for(env, config)
    trainer = (dqn if victim.discrete else td3).make_trainer(config, env.env, env.env_params)
    bounds = stage_iterations(trainer.num_steps, stages)

    def run(key):
        carry, done, snapshots, returns = trainer.init(key), 0, [], []
        for bound in bounds + (trainer.num_steps,):
            if bound > done:
                carry, metrics = scan_steps(trainer.step, carry, bound - done)
                returns.append(metrics["episode_return"])
                done = bound
            snapshots.append(_victim_params(victim, trainer.finish(carry, None)))
        out = trainer.finish(carry, None)
        return (jax.tree.map(lambda *x: jnp.stack(x), *snapshots[:len(bounds)]), out.buffer.data,
                jnp.concatenate(returns))

    params, replay_data, returns = jax.jit(jax.vmap(run))(keys)
    n = min(trainer.num_steps * config.num_envs, config.buffer_size)  # the slots filled
    return VictimStages(params=jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), params),
                        replay=jax.tree.map(lambda x: x[:, :n], replay_data),
                        episode_returns=returns, stage_iterations=bounds)


def _victim_params(victim: Victim, out) -> dict:
    """The ``Victim.init`` layout of a DQN or TD3 ``TrainOutput``."""
    if victim.discrete:
        return {"online": out.q_state.params, "target": out.target_params}
    return {"online": out.learner.critic.params, "target": out.learner.critic_target,
            "actor_target": out.learner.actor_target}


def make_noisy_dqn_train(config: dqn.DQNConfig, env: RGIAEnv) -> Callable[[jax.Array, jax.Array], tuple]:
    """``train(key, variance) -> (q_params, episode_returns f32[iterations])``: ``dqn.make_train``'s double
    DQN where every update applies ``privatize(key, grad, variance)``, the gradient the FRL client shares under
    the DP defense (``N(0, variance I)`` added to the flat TD-loss gradient). ``variance`` is traced, so one
    ``jax.vmap`` trains under every noise level of a sweep. A concrete negative, NaN or infinite ``variance``
    raises ``ValueError`` (``defense.check_defense``); a traced one passes unread: check a sweep's variances
    where they are made."""
    config.validate()
    victim = victim_for(env, config)
    q_net = networks.QNetwork(env.num_actions, tuple(config.hidden))
    venv = wrappers.VecEnv(wrappers.LogWrapper(env.env), config.num_envs)
    capacity = min(config.buffer_size, config.total_timesteps)
    tx = optax.adam(config.learning_rate)
    crosses = lambda step, every: (step + 1) * config.num_envs // every > step * config.num_envs // every

    def train(key, variance):
        check_defense(variance)
        key, k_init, k_env = jax.random.split(key, 3)
        obs, env_state = venv.reset(k_env, env.env_params)
        params = q_net.init(k_init, obs)
        unravel = ravel_pytree(params)[1]
        q_state = TrainState.create(apply_fn=q_net.apply, params=params, tx=tx)
        example = Transition(obs[0], jnp.zeros((), jnp.int32), jnp.zeros(()), obs[0], jnp.zeros((), bool))

        def iteration(carry, step):
            q_state, target_params, buffer, env_state, obs, key = carry
            key, k_eps, k_rand, k_env, k_upd, k_noise = jax.random.split(key, 6)
            greedy = jnp.argmax(q_net.apply(q_state.params, obs), axis=-1)
            explore = jax.random.uniform(k_eps, greedy.shape) < dqn.epsilon(config, step * config.num_envs)
            action = jnp.where(explore, jax.random.randint(k_rand, greedy.shape, 0, env.num_actions), greedy)
            next_obs, env_state, reward, terminated, _, info = venv.step(k_env, env_state, action, env.env_params)
            buffer = replay.add(buffer, Transition(obs, action, reward.astype(jnp.float32),
                                                   info["final_observation"], terminated))
            learning = (step + 1) * config.num_envs >= config.learning_starts

            def learn(q_state):
                batch = replay.sample(k_upd, buffer, config.batch_size)
                grads = victim.gradient({"online": q_state.params, "target": target_params}, batch)
                noisy = privatize(k_noise, ravel_pytree(grads)[0], variance)
                return q_state.apply_gradients(grads=unravel(noisy))

            q_state = jax.lax.cond(jnp.logical_and(learning, crosses(step, config.train_frequency)), learn,
                                   lambda s: s, q_state)
            sync = jnp.logical_and(learning, crosses(step, config.target_network_frequency))
            target_params = jax.tree.map(lambda t, o: jnp.where(sync, config.tau * o + (1.0 - config.tau) * t, t),
                                         target_params, q_state.params)
            done = info["returned_episode"]
            n = done.sum()
            ret = jnp.where(n > 0, jnp.sum(info["returned_episode_returns"] * done) / jnp.maximum(n, 1), jnp.nan)
            return (q_state, target_params, buffer, env_state, next_obs, key), ret

        carry = (q_state, params, replay.init(capacity, example), env_state, obs, key)
        (q_state, *_), returns = jax.lax.scan(iteration, carry, jnp.arange(config.num_iterations))
        return q_state.params, returns

    return train
