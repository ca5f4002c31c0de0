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

Sampling is done in blocks of ``B`` trajectories per agent (``fedjax_attacks.frl.base.sample_blocks``): a
large-batch iteration is ``ceil(N / B)`` blocks whose GPOMDP sums make ``g^(i)``. Stepping by coins runs an
iteration per step; stepping by ``Blocks`` runs a block per step, so seeds with their own coins batch.
With ``mesh=`` (a ``jax.sharding.Mesh`` with an ``"agents"`` axis) the agents' sampling, estimates and
parameters are split over that axis; the result is the same up to float summation order.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_attacks import sharding
from fedjax_attacks.frl import agreement as agr
from fedjax_attacks.frl import base
from fedjax_attacks.frl import byzantine as byz
from fedjax_attacks.frl.base import Algorithm, BlockInputs, State
from fedjax_attacks.frl.config import Blocks, DecByzPGConfig


def make_decbyzpg(config: DecByzPGConfig, env=None, env_params=None, *, mesh=None) -> Algorithm:
    """Builds DecByzPG for ``config`` (validated here); ``env`` overrides ``config.env_name``; ``mesh`` (optional)
    shards the agents over its ``"agents"`` axis (``ValueError`` if that axis is missing or does not divide K).

    ``jax.vmap(alg.run)(keys, schedules)`` with ``schedules = frl.sample_block_schedules(key, config, T, S)``
    runs S seeds, each with its own coins, as one program. ``history`` also counts, as ``skipped``, the honest
    agents that refused a non-finite direction (keeping their state).
    """
    if not isinstance(config, DecByzPGConfig):
        raise ValueError(f"make_decbyzpg needs a DecByzPGConfig (agreement settings), got {type(config).__name__}")
    config.validate()
    mesh = base.check_mesh(mesh, config)
    env, env_params, policy = base.make_env_and_policy(config, env, env_params)
    aggregator = base.make_aggregator(config)
    attack = base.make_attack(config)
    optimizer = optax.adam(config.learning_rate)
    K, f, d = config.num_agents, config.num_byzantine, policy.num_params
    rule = config.agreement if K > 1 else "none"
    on_agents = lambda tree: sharding.constrain(tree, mesh, sharding.AGENTS)

    def init(key, switches):
        key, k_theta = jax.random.split(key)
        theta = on_agents(jnp.broadcast_to(policy.init(k_theta), (K, d)))  # common initialization theta_0
        agg_states = jax.vmap(lambda _: aggregator.init(d))(jnp.arange(K))
        zero = jnp.zeros((), jnp.int32)
        return State(theta, theta, jnp.zeros_like(theta), jax.vmap(optimizer.init)(theta), agg_states,
                     base.as_schedule(switches, config), zero, zero, key, jnp.zeros_like(theta), jnp.zeros((K,)))

    def iteration_keys(state):  # next key, k_byz, k_sample, k_msg, k_agg, k_agree: shared by the blocks
        return jax.random.split(state.key, 6)

    def byzantine_mask(state):
        return byz.byzantine_mask(iteration_keys(state)[1], K, f, config.resample_byzantine)

    def block_inputs(state, block):
        random_actions = byz.acts_randomly(config.random_actions, byzantine_mask(state))
        keys = base.block_keys(iteration_keys(state)[2], K, block.index)
        return BlockInputs(*on_agents((keys, state.theta, state.theta_prev)), random_actions)

    def add_block(state, block):
        estimates, returns = base.sample_blocks(block_inputs(state, block), block, policy, env, env_params, config)
        return state.replace(partial=on_agents(state.partial + estimates),
                             partial_returns=state.partial_returns + returns)

    def finish(state, large):
        """The end of an iteration: ``v_t`` from the blocks, aggregation, Adam, Avg-Agree."""
        key, k_byz, _, k_msg, k_agg, k_agree = iteration_keys(state)
        byzantine = byzantine_mask(state)
        honest = ~byzantine
        agg_keys = jax.random.split(k_agg, K)
        own = jnp.where(large, state.partial, state.v + state.partial)  # GPOMDP g^(i), or the PAGE-PG step

        def communicate(own_and_states):
            own, agg_states = own_and_states
            messages = byz.broadcast(k_msg, attack, own, byzantine, state.t, config.per_recipient, aggregator,
                                     agg_states, agg_keys)
            return jax.vmap(lambda m, s, k: aggregator.update(m, s, key=k))(messages, agg_states, agg_keys)

        if config.aggregate_every_iteration:  # the reference code: step along the aggregate, recurse on own
            direction, agg_states = communicate((own, state.aggregator_state))
            v = own
        else:  # Algorithm 2: aggregate only the large-batch estimates; the aggregate is v_t
            direction, agg_states = jax.lax.cond(large, communicate, lambda x: x, (own, state.aggregator_state))
            v = direction
        updates, opt_state = jax.vmap(optimizer.update)(-direction, state.opt_state, state.theta)
        # an agent whose direction is non-finite refuses it: it keeps its parameters, estimate and optimizer
        skipped = ~jnp.isfinite(jnp.sum(direction * direction, axis=1))
        keep = lambda new, old: jax.tree_util.tree_map(
            lambda n, o: jnp.where(skipped.reshape((K,) + (1,) * (n.ndim - 1)), o, n), new, old)
        stepped, v, opt_state, agg_states = keep((state.theta + updates, v, opt_state, agg_states),
                                                 (state.theta, state.v, state.opt_state, state.aggregator_state))
        theta = on_agents(agr.average_agreement(k_agree, rule, stepped, byzantine, attack, f, config.num_rounds,
                                                state.t, config.per_recipient))
        per_agent = state.partial_returns / jnp.where(large, config.large_batch, config.small_batch)
        history = {
            "returns": jnp.sum(jnp.where(honest, per_agent, 0.0)) / jnp.sum(honest),
            "diameter": agr.diameter(theta, honest),
            "skipped": jnp.sum((skipped & honest).astype(jnp.int32)),
        }
        new = State(theta, state.theta, v, opt_state, agg_states, state.switches, state.t + 1, state.cursor, key,
                    jnp.zeros_like(state.partial), jnp.zeros_like(state.partial_returns))
        return new, history

    def pending(state):  # a block inside an iteration: nothing steps yet
        return state, {"returns": jnp.zeros(()), "diameter": agr.diameter(state.theta, ~byzantine_mask(state)),
                       "skipped": jnp.zeros((), jnp.int32)}

    def absorb(state, block, estimates, returns):
        honest = ~byzantine_mask(state)
        state = state.replace(partial=on_agents(state.partial + estimates),
                              partial_returns=state.partial_returns + returns)
        state, history = jax.lax.cond(block.last, lambda s: finish(s, block.large), pending, state)
        block_return = jnp.sum(jnp.where(honest, returns, 0.0)) / (jnp.sum(honest) * block.count)
        history.update(returns=block_return, trajectories=block.count, completed=block.last)
        return state.replace(cursor=state.cursor + 1), history

    def block_step(state, block):
        inputs = block_inputs(state, block)
        return absorb(state, block, *base.sample_blocks(inputs, block, policy, env, env_params, config))

    def iteration_step(state, switch):
        """One iteration on coin ``switch``: its ``ceil(N / B)`` blocks at once (one wide rollout) or its one
        block, then ``finish``."""
        def large(s):
            estimates, returns = base.sample_large_batch(lambda block: block_inputs(s, block), policy, env,
                                                         env_params, config)
            s = s.replace(partial=on_agents(s.partial + estimates), partial_returns=s.partial_returns + returns)
            return finish(s, True)

        def small(s):
            return finish(add_block(s, Blocks(False, 0, config.small_batch, True)), False)

        state, history = jax.lax.cond(switch, large, small, state)
        return state.replace(cursor=state.cursor + 1), history

    def step(state):
        if isinstance(state.switches, Blocks):
            return block_step(state, base.current_block(state.switches, state.cursor))
        return iteration_step(state, state.switches[state.cursor])

    def iterate(state, switches):
        if isinstance(switches, Blocks):
            return jax.lax.scan(block_step, state, base.as_schedule(switches, config))
        return jax.lax.scan(iteration_step, state, base.as_schedule(switches, config))

    def run(key, switches):
        return iterate(init(key, switches), switches)

    return Algorithm(init, step, iterate, run, policy, block_inputs, absorb)
