"""ByzPG (Jordan et al., 2024, Algorithm 1): centralized Byzantine fault-tolerant federated PAGE-PG.

A trusted server keeps ``theta_t``. With the shared coin ``c_t ~ Bernoulli(p)`` (``c_0 = 1``):

* ``c_t = 1``: the ``K`` workers sample ``N`` trajectories each at ``theta_t`` and send GPOMDP estimates
  ``g^(i)`` (Byzantine workers send what their attack crafts, ``f32[K, d]`` at the server);
  ``v_t = Aggregate(g^(1..K))`` (the server's rule, its state threaded);
* ``c_t = 0``: only the server samples ``B`` trajectories: ``v_t = v_{t-1} + g_B(theta_t) - g_B^w(theta_{t-1})``;

then ``theta_{t+1} = theta_t + Adam(v_t)`` (ascent). ``K = 1`` is PAGE-PG; ``aggregator="mean"`` is
Fed-PAGE-PG. The returned ``Algorithm`` has the same shape as DecByzPG's with ``theta: f32[d]``.

Sampling is done in blocks of ``B`` trajectories (``fedjax_attacks.frl.base.sample_blocks``): a large-batch
iteration is ``ceil(N / B)`` blocks of the ``K`` workers. Stepping by ``Blocks`` (one block per step, for seeds
with their own coins in one program) has every block sample at the ``K`` workers, and a small-batch block uses
worker 0's samples as the server's; stepping by coins samples only at the server on small-batch iterations.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_attacks import sharding
from fedjax_attacks.frl import base
from fedjax_attacks.frl import byzantine as byz
from fedjax_attacks.frl.base import Algorithm, BlockInputs, State
from fedjax_attacks.frl.config import Blocks, ByzPGConfig


def make_byzpg(config: ByzPGConfig, env=None, env_params=None, *, mesh=None) -> Algorithm:
    """Builds ByzPG for ``config`` (validated here; a ``DecByzPGConfig``'s agreement fields are unused, and its
    ``aggregate_every_iteration`` is refused); ``env`` overrides ``env_name``; ``mesh`` (optional) shards the
    workers' sampling over its ``"agents"`` axis (``ValueError`` if missing or not dividing K).

    ``history`` maps ``returns`` (mean return of the honest workers' batches on large-batch iterations, of the
    server's batch otherwise), ``diameter`` (always 0: one model) and ``skipped`` (1 where a non-finite estimate
    was refused and theta kept) to arrays [T].
    """
    config.validate()
    if getattr(config, "aggregate_every_iteration", False):
        raise ValueError("aggregate_every_iteration is a DecByzPG option: ByzPG's small batches are sampled at "
                         "the server")
    mesh = base.check_mesh(mesh, config)
    env, env_params, policy = base.make_env_and_policy(config, env, env_params)
    aggregator = base.make_aggregator(config)
    attack = base.make_attack(config)
    optimizer = optax.adam(config.learning_rate)
    K, f = config.num_agents, config.num_byzantine
    on_agents = lambda tree: sharding.constrain(tree, mesh, sharding.AGENTS)

    def init(key, switches):
        key, k_theta = jax.random.split(key)
        theta = policy.init(k_theta)
        zero = jnp.zeros((), jnp.int32)
        return State(theta, theta, jnp.zeros_like(theta), optimizer.init(theta), aggregator.init(theta.shape[0]),
                     base.as_schedule(switches, config), zero, zero, key, jnp.zeros((K, theta.size)), jnp.zeros((K,)))

    def iteration_keys(state):  # next key, k_byz, k_sample, k_msg, k_agg: shared by the blocks
        return jax.random.split(state.key, 5)

    def byzantine_mask(state):
        return byz.byzantine_mask(iteration_keys(state)[1], K, f, config.resample_byzantine)

    def block_inputs(state, block, samplers=K):
        """The workers' (or, with ``samplers=1``, the server's) inputs: all sample at the server's theta; the
        Byzantine workers act randomly (RandomAction) on large-batch blocks only."""
        random_actions = byz.acts_randomly(config.random_actions, byzantine_mask(state) & block.large)
        if random_actions is not False:
            random_actions = random_actions[:samplers]
        keys = base.block_keys(iteration_keys(state)[2], K, block.index)[:samplers]
        spread = lambda x: jnp.broadcast_to(x, (samplers, x.size))
        inputs = (keys, spread(state.theta), spread(state.theta_prev))
        return BlockInputs(*(on_agents(inputs) if samplers == K else inputs), random_actions)

    def add_block(state, block, samplers=K):
        inputs = block_inputs(state, block, samplers)
        estimates, returns = base.sample_blocks(inputs, block, policy, env, env_params, config)
        return state.replace(partial=state.partial.at[:samplers].add(estimates),
                             partial_returns=state.partial_returns.at[:samplers].add(returns))

    def finish(state, large):
        """The end of an iteration: ``v_t`` (aggregate of the workers' GPOMDP, or the server's PAGE-PG step)."""
        key, k_byz, _, k_msg, k_agg = iteration_keys(state)
        byzantine = byzantine_mask(state)

        def aggregate(agg_state):
            received = byz.received(k_msg, attack, on_agents(state.partial), byzantine, state.t, aggregator,
                                    agg_state, k_agg)
            v, agg_state = aggregator.update(received, agg_state, key=k_agg)
            honest = ~byzantine
            returns = jnp.sum(jnp.where(honest, state.partial_returns, 0.0)) / jnp.sum(honest)
            return v, returns / config.large_batch, agg_state

        def server(agg_state):
            return state.v + state.partial[0], state.partial_returns[0] / config.small_batch, agg_state

        v, returns, agg_state = jax.lax.cond(large, aggregate, server, state.aggregator_state)
        updates, opt_state = optimizer.update(-v, state.opt_state, state.theta)
        skipped = ~jnp.isfinite(jnp.sum(v * v))  # a non-finite (or overflowing) estimate is refused: no step
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(skipped, o, n), new, old)
        theta, v, opt_state, agg_state = keep((state.theta + updates, v, opt_state, agg_state),
                                              (state.theta, state.v, state.opt_state, state.aggregator_state))
        history = {"returns": returns, "diameter": jnp.zeros(()), "skipped": skipped.astype(jnp.int32)}
        new = State(theta, state.theta, v, opt_state, agg_state, state.switches, state.t + 1, state.cursor, key,
                    jnp.zeros_like(state.partial), jnp.zeros_like(state.partial_returns))
        return new, history

    def pending(state):  # a block inside an iteration: nothing steps yet
        return state, {"returns": jnp.zeros(()), "diameter": jnp.zeros(()), "skipped": jnp.zeros((), jnp.int32)}

    def absorb(state, block, estimates, returns):
        honest = ~byzantine_mask(state)
        honest_mean = jnp.sum(jnp.where(honest, returns, 0.0)) / jnp.sum(honest)
        block_return = jnp.where(block.large, honest_mean, returns[0]) / block.count
        state = state.replace(partial=state.partial + estimates, partial_returns=state.partial_returns + returns)
        state, history = jax.lax.cond(block.last, lambda s: finish(s, block.large), pending, state)
        history.update(returns=block_return, trajectories=block.count, completed=block.last)
        return state.replace(cursor=state.cursor + 1), history

    def block_step(state, block):
        inputs = block_inputs(state, block)
        return absorb(state, block, *base.sample_blocks(inputs, block, policy, env, env_params, config))

    def iteration_step(state, switch):
        """One iteration on coin ``switch``: the workers' ``ceil(N / B)`` blocks at once (one wide rollout), or
        the server's one block."""
        def large(s):
            estimates, returns = base.sample_large_batch(lambda block: block_inputs(s, block), policy, env,
                                                         env_params, config)
            return finish(s.replace(partial=s.partial + estimates, partial_returns=s.partial_returns + returns),
                          True)

        def small(s):
            return finish(add_block(s, Blocks(False, 0, config.small_batch, True), samplers=1), False)

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
