"""ByzPG (Jordan et al., 2024, Algorithm 1): centralized Byzantine fault-tolerant federated PAGE-PG.

A trusted server keeps ``theta_t``. With the shared coin ``c_t ~ Bernoulli(p)`` (``c_0 = 1``):

* ``c_t = 1``: the ``K`` workers sample ``N`` trajectories each at ``theta_t`` and send GPOMDP estimates
  ``g^(i)`` (Byzantine workers send what their attack crafts, ``f32[K, d]`` at the server);
  ``v_t = Aggregate(g^(1..K))`` (the server's rule, its state threaded);
* ``c_t = 0``: only the server samples ``B`` trajectories: ``v_t = v_{t-1} + g_B(theta_t) - g_B^w(theta_{t-1})``;

then ``theta_{t+1} = theta_t + Adam(v_t)`` (ascent). ``K = 1`` is PAGE-PG; ``aggregator="mean"`` is
Fed-PAGE-PG. The returned ``Algorithm`` has the same shape as DecByzPG's with ``theta: f32[d]``.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_attacks.frl import base
from fedjax_attacks.frl import byzantine as byz
from fedjax_attacks.frl.base import Algorithm, State
from fedjax_attacks.frl.config import ByzPGConfig
from fedjax_attacks.rl import policy_gradient as pg


def make_byzpg(config: ByzPGConfig, env=None, env_params=None) -> Algorithm:
    """Builds ByzPG for ``config`` (validated here; a ``DecByzPGConfig``'s agreement fields are unused, and its
    ``aggregate_every_iteration`` is refused); ``env`` overrides ``env_name``.

    ``history`` maps ``returns`` (mean return of the honest workers' batches on large-batch iterations, of the
    server's batch otherwise), ``diameter`` (always 0: one model) and ``skipped`` (1 where a non-finite estimate
    was refused and theta kept) to arrays [T].
    """
    config.validate()
    if getattr(config, "aggregate_every_iteration", False):
        raise ValueError("aggregate_every_iteration is a DecByzPG option: ByzPG's small batches are sampled at "
                         "the server")
    env, env_params, policy = base.make_env_and_policy(config, env, env_params)
    aggregator = base.make_aggregator(config)
    attack = base.make_attack(config)
    optimizer = optax.adam(config.learning_rate)
    K, f = config.num_agents, config.num_byzantine

    def init(key, switches):
        key, k_theta = jax.random.split(key)
        theta = policy.init(k_theta)
        return State(theta, theta, jnp.zeros_like(theta), optimizer.init(theta), aggregator.init(theta.shape[0]),
                     jnp.asarray(switches, bool), jnp.zeros((), jnp.int32), key)

    def step_with(state, switch):
        key, k_byz, k_sample, k_msg, k_agg = jax.random.split(state.key, 5)
        byzantine = byz.byzantine_mask(k_byz, K, f, config.resample_byzantine)

        def large(agg_state):
            thetas = jnp.broadcast_to(state.theta, (K, state.theta.size))
            grads, returns = base.batch_gradients(jax.random.split(k_sample, K), policy, thetas,
                                                  byz.acts_randomly(config.random_actions, byzantine), env,
                                                  env_params, config, config.large_batch)
            received = byz.received(k_msg, attack, grads, byzantine, state.t, aggregator, agg_state, k_agg)
            v, agg_state = aggregator.update(received, agg_state, key=k_agg)
            honest = ~byzantine
            return v, jnp.sum(jnp.where(honest, returns, 0.0)) / jnp.sum(honest), agg_state

        def small(agg_state):
            traj = pg.sample_trajectories(k_sample, policy, state.theta, env, env_params,
                                          num_episodes=config.small_batch, horizon=config.horizon)
            v = pg.page_pg_estimate(policy, state.theta, state.theta_prev, state.v, traj, config.gamma,
                                     config.importance_weights)
            return v, jnp.mean(pg.episode_returns(traj)), agg_state

        v, returns, agg_state = jax.lax.cond(switch, large, small, state.aggregator_state)
        updates, opt_state = optimizer.update(-v, state.opt_state, state.theta)
        skipped = ~jnp.isfinite(jnp.sum(v * v))  # a non-finite (or overflowing) estimate is refused: no step
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(skipped, o, n), new, old)
        theta, v, opt_state, agg_state = keep((state.theta + updates, v, opt_state, agg_state),
                                              (state.theta, state.v, state.opt_state, state.aggregator_state))
        history = {"returns": returns, "diameter": jnp.zeros(()), "skipped": skipped.astype(jnp.int32)}
        return State(theta, state.theta, v, opt_state, agg_state, state.switches, state.t + 1, key), history

    def step(state):
        return step_with(state, state.switches[state.t])

    def iterate(state, switches):
        return jax.lax.scan(step_with, state, jnp.asarray(switches, bool))

    def run(key, switches):
        return iterate(init(key, switches), switches)

    return Algorithm(init, step, iterate, run, policy)
