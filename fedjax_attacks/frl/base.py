"""Shared pieces of ByzPG and DecByzPG: the run's state and interface, the aggregator with its state, the attack,
and batched sampling/estimation per agent. The configurations are in ``fedjax_attacks.frl.config``.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_attacks import aggregators, attacks
from fedjax_attacks.frl.config import ByzPGConfig
from fedjax_attacks.rl import env as rl_env
from fedjax_attacks.rl import policy_gradient as pg


@struct.dataclass
class State:
    """The state of one ByzPG / DecByzPG run.

    Attributes:
      theta: the parameters: f32[d] for ByzPG's server, f32[K, d] for DecByzPG's agents (after agreement).
      theta_prev: ``theta_{t-1}``, where ``v`` was estimated (same shape).
      v: the gradient estimates ``v_{t-1}`` (same shape).
      opt_state: the Adam state(s) (leading axis ``K`` for DecByzPG).
      aggregator_state: the aggregating parties' rule state (the server's, or one per agent with axis ``K``).
      switches: bool[T], the coins ``c_t`` this run follows (``step`` reads ``switches[t]``).
      t: int32, the iteration index.
      key: PRNG key.
    """

    theta: jax.Array
    theta_prev: jax.Array
    v: jax.Array
    opt_state: Any
    aggregator_state: Any
    switches: jax.Array
    t: jax.Array
    key: jax.Array


class Algorithm(NamedTuple):
    """A ByzPG / DecByzPG run in the library's run protocol.

    ``init(key, switches bool[T]) -> State``; ``step(state) -> (state, history)`` for one iteration (coin
    ``switches[t]``); ``iterate(state, switches)`` scans ``len(switches)`` iterations on the given coins;
    ``run(key, switches)`` does ``init`` then ``iterate``. ``history`` maps ``returns`` (mean undiscounted
    return of the honest agents' sampled batch) and ``diameter`` (honest agents' parameter diameter after
    agreement; 0 for ByzPG) to f32[T]. ``policy`` is the agents' policy.
    """

    init: Callable
    step: Callable
    iterate: Callable
    run: Callable
    policy: Any


def make_aggregator(config: ByzPGConfig) -> aggregators.Aggregator:
    """The configured ``Aggregator`` (with bucketing if ``s > 1``); with one agent, the identity on its row."""
    rule = aggregators.get(config.aggregator, **dict(config.aggregator_hparams))
    if config.bucket_size > 1:
        rule = aggregators.bucketing(aggregator=rule, bucket_size=config.bucket_size)
    if config.num_agents == 1:
        return aggregators.Aggregator(rule.init, lambda updates, state, **context: (updates[0], state),
                                      name="single agent")
    return rule


def make_attack(config: ByzPGConfig) -> attacks.Attack:
    """The Byzantine agents' ``Attack`` (``config.attack`` with ``config.attack_hparams``)."""
    return attacks.get(config.attack, **dict(config.attack_hparams))


def make_env_and_policy(config: ByzPGConfig, env=None, env_params=None):
    """``(env, env_params, policy)`` for ``config`` (``env`` overrides ``config.env_name``)."""
    if env is None:
        env, env_params = rl_env.make(config.env_name)
    policy = pg.make_policy(env, env_params, config.hidden, config.activation, config.output_activation)
    return env, env_params, policy


def _axis(random_actions):
    return None if random_actions is False else 0


def batch_gradients(keys, policy, thetas, random_actions, env, env_params, config: ByzPGConfig, num_episodes: int):
    """Every agent samples ``num_episodes`` trajectories at its ``theta_i``; GPOMDP estimates and returns.

    Returns ``(grads f32[K, d], mean undiscounted return f32[K])`` (vmapped over agents).
    """
    def one(key, theta, random):
        traj = pg.sample_trajectories(key, policy, theta, env, env_params, num_episodes=num_episodes,
                                      horizon=config.horizon, random_actions=random)
        return pg.gpomdp(policy, theta, traj, config.gamma), jnp.mean(pg.episode_returns(traj))

    return jax.vmap(one, in_axes=(0, 0, _axis(random_actions)))(keys, thetas, random_actions)


def page_steps(keys, policy, thetas, thetas_prev, v_prev, random_actions, env, env_params, config: ByzPGConfig):
    """Small-batch PAGE-PG steps of every agent (``B`` trajectories at ``theta_i``); ``(v f32[K, d], returns)``."""
    def one(key, theta, theta_prev, v, random):
        traj = pg.sample_trajectories(key, policy, theta, env, env_params, num_episodes=config.small_batch,
                                      horizon=config.horizon, random_actions=random)
        v_new = pg.page_pg_estimate(policy, theta, theta_prev, v, traj, config.gamma, config.importance_weights)
        return v_new, jnp.mean(pg.episode_returns(traj))

    return jax.vmap(one, in_axes=(0, 0, 0, 0, _axis(random_actions)))(keys, thetas, thetas_prev, v_prev,
                                                                      random_actions)
