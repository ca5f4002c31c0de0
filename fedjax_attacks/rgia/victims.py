"""Victims of RGIA: an RL engine run (DQN or TD3) gives the networks and the replay data the attack targets;
a DQN whose shared gradient carries the DP defense's Gaussian noise gives the defense's cost in return.

``victim_for(env, config)`` describes the victim of an ``envs.RGIAEnv`` trained with a ``DQNConfig``
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
from jax.flatten_util import ravel_pytree

from fedjax_attacks.inversion.defense import check_defense, privatize
from fedjax_attacks.rgia.attack import Victim
from fedjax_attacks.rgia.envs import RGIAEnv
from fedjax_attacks.rl import dqn, td3
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
        carry, done, snapshots, returns = trainer.init(key, trainer.params), 0, [], []
        for bound in bounds + (trainer.num_steps,):
            if bound > done:
                carry, metrics = scan_steps(lambda c: trainer.step(c, trainer.params), carry, bound - done)
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
    """``train(key, variance) -> (q_params, episode_returns f32[iterations])``: the RL engine's double DQN
    (``dqn.make_train``) whose every update applies ``privatize(key, grad, variance)`` (its ``grad_hook``), the
    gradient the FRL client shares under the DP defense (``N(0, variance I)`` added to the flat TD-loss gradient);
    at variance 0 it is ``dqn.make_train``'s run. ``variance`` is traced, so one ``jax.vmap`` trains under every
    noise level of a sweep. A concrete negative, NaN or infinite ``variance`` raises ``ValueError``
    (``defense.check_defense``); a traced one passes unread: check a sweep's variances where they are made.

    Raises:
      ValueError: on a bad config or one that does not fit ``env`` (``victim_for``: discrete actions).
    """
    config.validate()
    victim_for(env, config)

    def train(key, variance):
        check_defense(variance)

        def noisy(k, grads):
            flat, unravel = ravel_pytree(grads)
            return unravel(privatize(k, flat, variance))

        out = dqn.make_train(config, env.env, env.env_params, grad_hook=noisy)(key)
        return out.q_state.params, out.metrics["episode_return"]

    return train
