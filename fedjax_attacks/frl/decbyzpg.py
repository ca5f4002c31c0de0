"""DecByzPG (Jordan et al., 2024, Algorithm 2): decentralized Byzantine fault-tolerant federated PAGE-PG.

Every agent ``i`` keeps ``theta_t^(i)``. With the shared coin ``c_t ~ Bernoulli(p)`` (``c_0 = 1``):

* ``c_t = 1``: each agent samples ``N`` trajectories at ``theta_t^(i)``, computes GPOMDP ``g^(i)`` and
  broadcasts it; agent ``i`` receives ``(g_{j->i})_j`` (``f32[K, K, d]``: Byzantines may send each recipient
  something else) and sets ``v_t^(i) = Aggregate(g_{1->i}, ..., g_{K->i})``;
* ``c_t = 0``: each agent samples ``B`` trajectories and takes the local PAGE-PG step
  ``v_t^(i) = v_{t-1}^(i) + g_B(theta_t^(i)) - g_B^w(theta_{t-1}^(i))`` (no communication);

then ``theta~^(i) = theta_t^(i) + Adam(v_t^(i))`` (ascent) and ``theta_{t+1} = Avg-Agree(theta~)`` (MDA or GDA
for ``O(log K)`` rounds, ``fedjax_attacks.frl.agreement``).

Baselines from the same function: PAGE-PG is ``K = 1``; Dec-PAGE-PG is ``aggregator="mean", agreement="none"``.
By default this follows the paper's algorithm (aggregation only on large batches, recursion on the aggregate
``v_{t-1}^(i)``). ``Config.aggregate_every_iteration`` is the reference code's variant: the agents also broadcast
their small-batch estimates, step along the aggregate of what they received, and keep their own unaggregated
estimate as ``v_{t-1}``. Without an agreement step (Dec-PAGE-PG) that variant is what keeps the honest agents
in step: in the paper's algorithm they drift apart on the local small-batch steps.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fedjax_attacks.frl import agreement as agr
from fedjax_attacks.frl import byzantine as byz
from fedjax_attacks.frl import common


@struct.dataclass
class State:
    """DecByzPG state of one run.

    Attributes:
      theta: f32[K, d] parameters ``theta_t^(i)`` after agreement.
      theta_prev: f32[K, d] ``theta_{t-1}^(i)``, where ``v`` was estimated.
      v: f32[K, d] the agents' gradient estimates ``v_{t-1}^(i)``.
      opt_state: the agents' Adam states (leading axis ``K``).
      key: PRNG key.
    """

    theta: jax.Array
    theta_prev: jax.Array
    v: jax.Array
    opt_state: Any
    key: jax.Array


class Algorithm(NamedTuple):
    """``init(key) -> State``; ``iterate(state, switches bool[T]) -> (state, history)`` (a ``lax.scan``);
    ``run(key, switches)`` does both. ``history`` maps ``returns`` (mean undiscounted return of the honest
    agents' sampled batch) and ``diameter`` (honest agents' parameter diameter after agreement) to f32[T].
    ``policy`` is the agents' policy (``fedjax_attacks.rl.policy_gradient.Policy``)."""

    init: Callable
    iterate: Callable
    run: Callable
    policy: Any


def make_decbyzpg(config: common.Config, env=None, env_params=None) -> Algorithm:
    """Builds DecByzPG for ``config`` (validated here); ``env`` overrides ``config.env_name``.

    ``jax.vmap(alg.run, in_axes=(0, None))(keys, switches)`` runs many seeds with shared switches.
    """
    common.validate(config, centralized=False)
    env, env_params, policy = common.make_env_and_policy(config, env, env_params)
    aggregate = common.make_aggregator(config)
    optimizer = optax.adam(config.learning_rate)
    K, f = config.num_agents, config.num_byzantine
    rule = config.agreement if K > 1 else "none"

    def init(key):
        key, k_theta = jax.random.split(key)
        theta = jnp.broadcast_to(policy.init(k_theta), (K, policy.num_params))  # common initialization theta_0
        return State(theta, theta, jnp.zeros_like(theta), jax.vmap(optimizer.init)(theta), key)

    def step(state, switch):
        key, k_byz, k_sample, k_msg, k_agg, k_agree = jax.random.split(state.key, 6)
        byzantine = byz.byzantine_mask(k_byz, K, f, config.resample_byzantine)
        random_actions = byz.acts_randomly(config.behaviour, byzantine)
        sample_keys = jax.random.split(k_sample, K)

        def large(_):
            return common.batch_gradients(sample_keys, policy, state.theta, random_actions, env, env_params,
                                          config, config.large_batch)

        def small(_):
            return common.page_steps(sample_keys, policy, state.theta, state.theta_prev, state.v, random_actions,
                                     env, env_params, config)

        def communicate(own):
            messages = byz.broadcast(k_msg, config.behaviour, own, byzantine, config.noise_scale)
            return jax.vmap(aggregate)(messages, jax.random.split(k_agg, K))

        own, returns = jax.lax.cond(switch, large, small, None)
        if config.aggregate_every_iteration:  # the reference code: step along the aggregate, recurse on own
            direction, v = communicate(own), own
        else:  # Algorithm 2: aggregate only the large-batch estimates; the aggregate is v_t
            direction = jax.lax.cond(switch, communicate, lambda x: x, own)
            v = direction
        updates, opt_state = jax.vmap(optimizer.update)(-direction, state.opt_state, state.theta)
        theta = agr.average_agreement(k_agree, rule, state.theta + updates, byzantine, config.behaviour, f,
                                      config.num_rounds, config.noise_scale)
        honest = ~byzantine
        history = {
            "returns": jnp.sum(jnp.where(honest, returns, 0.0)) / jnp.sum(honest),
            "diameter": agr.diameter(theta, honest),
        }
        return State(theta, state.theta, v, opt_state, key), history

    def iterate(state, switches):
        return jax.lax.scan(step, state, switches)

    def run(key, switches):
        return iterate(init(key), switches)

    return Algorithm(init, iterate, run, policy)
