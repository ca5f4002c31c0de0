"""DecByzPG (Jordan et al., 2024, Algorithm 2): decentralized Byzantine fault-tolerant federated PAGE-PG.

Every agent ``i`` keeps ``theta_t^(i)``. With the shared coin ``c_t ~ Bernoulli(p)`` (``c_0 = 1``):

* ``c_t = 1``: each agent samples ``N`` trajectories at ``theta_t^(i)``, computes GPOMDP ``g^(i)`` and
  broadcasts it; agent ``i`` receives ``(g_{j->i})_j`` (``f32[K, K, d]``: Byzantines send what their attack
  crafts, per recipient by default) and sets ``v_t^(i) = Aggregate(g_{1->i}, ..., g_{K->i})`` with its own
  aggregator state;
* ``c_t = 0``: each agent samples ``B`` trajectories and takes the local PAGE-PG step
  ``v_t^(i) = v_{t-1}^(i) + g_B(theta_t^(i)) - g_B^w(theta_{t-1}^(i))`` (no communication);

then ``theta~^(i) = theta_t^(i) + Adam(v_t^(i))`` (ascent) and ``theta_{t+1} = Avg-Agree(theta~)`` (MDA or GDA
for ``O(log K)`` rounds, ``fedjax_attacks.frl.agreement``; the Byzantines' agreement messages come from the same
attack).

Baselines from the same function: PAGE-PG is ``K = 1``; Dec-PAGE-PG is ``aggregator="mean", agreement="none"``.
By default this follows the paper's algorithm (aggregation only on large batches, recursion on the aggregate
``v_{t-1}^(i)``). ``DecByzPGConfig.aggregate_every_iteration`` is the reference code's variant: the agents also
broadcast their small-batch estimates, step along the aggregate of what they received, and keep their own
unaggregated estimate as ``v_{t-1}``. Without an agreement step (Dec-PAGE-PG) that variant is what keeps the
honest agents in step: in the paper's algorithm they drift apart on the local small-batch steps.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_attacks.frl import agreement as agr
from fedjax_attacks.frl import base
from fedjax_attacks.frl import byzantine as byz
from fedjax_attacks.frl.base import Algorithm, State
from fedjax_attacks.frl.config import DecByzPGConfig


def make_decbyzpg(config: DecByzPGConfig, env=None, env_params=None) -> Algorithm:
    """Builds DecByzPG for ``config`` (validated here); ``env`` overrides ``config.env_name``.

    ``jax.vmap(alg.run, in_axes=(0, None))(keys, switches)`` runs many seeds with shared switches. ``history``
    also counts, as ``skipped``, the honest agents that refused a non-finite direction (keeping their state).
    """
    if not isinstance(config, DecByzPGConfig):
        raise ValueError(f"make_decbyzpg needs a DecByzPGConfig (agreement settings), got {type(config).__name__}")
    config.validate()
    env, env_params, policy = base.make_env_and_policy(config, env, env_params)
    aggregator = base.make_aggregator(config)
    attack = base.make_attack(config)
    optimizer = optax.adam(config.learning_rate)
    K, f = config.num_agents, config.num_byzantine
    rule = config.agreement if K > 1 else "none"

    def init(key, switches):
        key, k_theta = jax.random.split(key)
        theta = jnp.broadcast_to(policy.init(k_theta), (K, policy.num_params))  # common initialization theta_0
        agg_states = jax.vmap(lambda _: aggregator.init(policy.num_params))(jnp.arange(K))
        return State(theta, theta, jnp.zeros_like(theta), jax.vmap(optimizer.init)(theta), agg_states,
                     jnp.asarray(switches, bool), jnp.zeros((), jnp.int32), key)

    def step_with(state, switch):
        key, k_byz, k_sample, k_msg, k_agg, k_agree = jax.random.split(state.key, 6)
        byzantine = byz.byzantine_mask(k_byz, K, f, config.resample_byzantine)
        random_actions = byz.acts_randomly(config.random_actions, byzantine)
        sample_keys = jax.random.split(k_sample, K)
        agg_keys = jax.random.split(k_agg, K)

        def large(_):
            return base.batch_gradients(sample_keys, policy, state.theta, random_actions, env, env_params,
                                        config, config.large_batch)

        def small(_):
            return base.page_steps(sample_keys, policy, state.theta, state.theta_prev, state.v, random_actions,
                                   env, env_params, config)

        def communicate(own_and_states):
            own, agg_states = own_and_states
            messages = byz.broadcast(k_msg, attack, own, byzantine, state.t, config.per_recipient, aggregator,
                                     agg_states, agg_keys)
            return jax.vmap(lambda m, s, k: aggregator.update(m, s, key=k))(messages, agg_states, agg_keys)

        own, returns = jax.lax.cond(switch, large, small, None)
        if config.aggregate_every_iteration:  # the reference code: step along the aggregate, recurse on own
            direction, agg_states = communicate((own, state.aggregator_state))
            v = own
        else:  # Algorithm 2: aggregate only the large-batch estimates; the aggregate is v_t
            direction, agg_states = jax.lax.cond(switch, communicate, lambda x: x, (own, state.aggregator_state))
            v = direction
        updates, opt_state = jax.vmap(optimizer.update)(-direction, state.opt_state, state.theta)
        # an agent whose direction is non-finite refuses it: it keeps its parameters, estimate and optimizer
        skipped = ~jnp.isfinite(jnp.sum(direction * direction, axis=1))
        keep = lambda new, old: jax.tree_util.tree_map(
            lambda n, o: jnp.where(skipped.reshape((K,) + (1,) * (n.ndim - 1)), o, n), new, old)
        stepped, v, opt_state, agg_states = keep((state.theta + updates, v, opt_state, agg_states),
                                                 (state.theta, state.v, state.opt_state, state.aggregator_state))
        theta = agr.average_agreement(k_agree, rule, stepped, byzantine, attack, f, config.num_rounds, state.t,
                                      config.per_recipient)
        honest = ~byzantine
        history = {
            "returns": jnp.sum(jnp.where(honest, returns, 0.0)) / jnp.sum(honest),
            "diameter": agr.diameter(theta, honest),
            "skipped": jnp.sum((skipped & honest).astype(jnp.int32)),
        }
        return State(theta, state.theta, v, opt_state, agg_states, state.switches, state.t + 1, key), history

    def step(state):
        return step_with(state, state.switches[state.t])

    def iterate(state, switches):
        return jax.lax.scan(step_with, state, jnp.asarray(switches, bool))

    def run(key, switches):
        return iterate(init(key, switches), switches)

    return Algorithm(init, step, iterate, run, policy)
