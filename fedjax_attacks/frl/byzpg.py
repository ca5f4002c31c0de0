"""ByzPG (Jordan et al., 2024, Algorithm 1): centralized Byzantine fault-tolerant federated PAGE-PG.

A trusted server keeps ``theta_t``. With the shared coin ``c_t ~ Bernoulli(p)`` (``c_0 = 1``):

* ``c_t = 1``: the ``K`` workers sample ``N`` trajectories each at ``theta_t`` and send GPOMDP estimates
  ``g^(i)`` (Byzantine workers send anything, ``f32[K, d]`` at the server); ``v_t = Aggregate(g^(1..K))``;
* ``c_t = 0``: only the server samples ``B`` trajectories: ``v_t = v_{t-1} + g_B(theta_t) - g_B^w(theta_{t-1})``;

then ``theta_{t+1} = theta_t + Adam(v_t)`` (ascent). ``K = 1`` is PAGE-PG; ``aggregator="mean"`` is
Fed-PAGE-PG. The returned ``Algorithm`` has the same shape as DecByzPG's with ``theta: f32[d]``.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_attacks.frl import byzantine as byz
from fedjax_attacks.frl import common
from fedjax_attacks.frl.decbyzpg import Algorithm, State
from fedjax_attacks.rl import policy_gradient as pg


def make_byzpg(config: common.Config, env=None, env_params=None) -> Algorithm:
    """Builds ByzPG for ``config`` (validated here; ``agreement`` is unused); ``env`` overrides ``env_name``.

    ``history`` maps ``returns`` (mean return of the honest workers' batches on large-batch iterations, of the
    server's batch otherwise) and ``diameter`` (always 0: one model) to f32[T].
    """
    common.validate(config, centralized=True)
    env, env_params, policy = common.make_env_and_policy(config, env, env_params)
    aggregate = common.make_aggregator(config)
    optimizer = optax.adam(config.learning_rate)
    K, f = config.num_agents, config.num_byzantine

    def init(key):
        key, k_theta = jax.random.split(key)
        theta = policy.init(k_theta)
        return State(theta, theta, jnp.zeros_like(theta), optimizer.init(theta), key)

    def step(state, switch):
        key, k_byz, k_sample, k_msg, k_agg = jax.random.split(state.key, 5)
        byzantine = byz.byzantine_mask(k_byz, K, f, config.resample_byzantine)

        def large(_):
            thetas = jnp.broadcast_to(state.theta, (K, state.theta.size))
            grads, returns = common.batch_gradients(jax.random.split(k_sample, K), policy, thetas,
                                                    byz.acts_randomly(config.behaviour, byzantine), env,
                                                    env_params, config, config.large_batch)
            received = byz.received(k_msg, config.behaviour, grads, byzantine, config.noise_scale)
            honest = ~byzantine
            return aggregate(received, k_agg), jnp.sum(jnp.where(honest, returns, 0.0)) / jnp.sum(honest)

        def small(_):
            traj = pg.sample_trajectories(k_sample, policy, state.theta, env, env_params,
                                          num_episodes=config.small_batch, horizon=config.horizon)
            v = pg.page_pg_estimate(policy, state.theta, state.theta_prev, state.v, traj, config.gamma,
                                     config.importance_weights)
            return v, jnp.mean(pg.episode_returns(traj))

        v, returns = jax.lax.cond(switch, large, small, None)
        updates, opt_state = optimizer.update(-v, state.opt_state, state.theta)
        history = {"returns": returns, "diameter": jnp.zeros(())}
        return State(state.theta + updates, state.theta, v, opt_state, key), history

    def iterate(state, switches):
        return jax.lax.scan(step, state, switches)

    def run(key, switches):
        return iterate(init(key), switches)

    return Algorithm(init, iterate, run, policy)
