"""Shared pieces of ByzPG and DecByzPG: the run's state and interface, the aggregator with its state, the attack,
and batched sampling/estimation per agent. The configurations are in ``fedjax_attacks.frl.config``.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_attacks import aggregators, attacks, sharding
from fedjax_attacks.frl.config import Blocks, ByzPGConfig, blocks_per_large_batch, check_blocks, check_switches
from fedjax_attacks.rl import env as rl_env
from fedjax_attacks.rl import policy_gradient as pg
from fedjax_attacks.runner import Trainer


@struct.dataclass
class State:
    """The state of one ByzPG / DecByzPG run.

    Attributes:
      theta: the parameters: f32[d] for ByzPG's server, f32[K, d] for DecByzPG's agents (after agreement).
      theta_prev: ``theta_{t-1}``, where ``v`` was estimated (same shape).
      v: the gradient estimates ``v_{t-1}`` (same shape).
      opt_state: the Adam state(s) (leading axis ``K`` for DecByzPG).
      aggregator_state: the aggregating parties' rule state (the server's, or one per agent with axis ``K``).
      switches: what ``step`` follows: bool[T], the coins ``c_t`` (one iteration per step), or ``Blocks`` of
        ``fedjax_attacks.frl.config`` (one block of ``B`` trajectories per agent per step).
      t: int32, the iteration index (the attacks' round index).
      cursor: int32, the position ``step`` reads in ``switches`` (``t`` for coins, the block for ``Blocks``).
      key: PRNG key of the current iteration (every block of an iteration derives its keys from it).
      partial: the current iteration's estimate so far, f32[K, d] (a row per sampling agent).
      partial_returns: the summed undiscounted returns of its episodes so far, f32[K].
    """

    theta: jax.Array
    theta_prev: jax.Array
    v: jax.Array
    opt_state: Any
    aggregator_state: Any
    switches: Any
    t: jax.Array
    cursor: jax.Array
    key: jax.Array
    partial: jax.Array
    partial_returns: jax.Array


class Algorithm(NamedTuple):
    """A ByzPG / DecByzPG run in the library's run protocol.

    ``init(key, switches) -> State``; ``step(state) -> (state, history)``; ``iterate(state, switches)`` scans
    every step of ``switches``; ``run(key, switches)`` does ``init`` then ``iterate``. ``switches`` is either

    * bool[T], the coins ``c_t``: one step is one iteration (``N`` or ``B`` trajectories per agent), and
      ``history`` maps ``returns`` (mean undiscounted return of the honest agents' batch), ``diameter`` (the
      honest agents' parameter diameter after agreement; 0 for ByzPG) and ``skipped`` to arrays [T]; or
    * ``Blocks`` (``fedjax_attacks.frl.config.block_schedule`` / ``sample_block_schedules``): one step is one
      block of ``B`` trajectories per agent, the same work whatever the coin, so ``jax.vmap`` over seeds with
      their own coins runs as one program; ``returns`` is then the block's mean return, ``trajectories`` the
      episodes it counted and ``completed`` whether the parameters stepped after it.

    Both follow the same computation (an iteration is its blocks): coins and their ``block_schedule`` give the
    same run. ``policy`` is the agents' policy. ``block_inputs(state, block)`` and ``absorb(state, block,
    estimates, returns)`` are the two halves of a block step around ``sample_blocks`` (what the figure runner
    shares between variants, ``fedjax_attacks.frl.batch``).
    """

    init: Callable
    step: Callable
    iterate: Callable
    run: Callable
    policy: Any
    block_inputs: Callable = None
    absorb: Callable = None

    def trainer(self, switches) -> Trainer:
        """This run in the library's protocol (``runner.run_chunked``): ``params`` are ``switches`` (coins or
        ``Blocks``; with a leading seed axis for ``sweep=True``), one step per entry of their last axis,
        ``finish -> (state, history)``."""
        num_steps = int(jnp.shape(jax.tree_util.tree_leaves(switches)[0])[-1])
        return Trainer(self.init, lambda state, _: self.step(state), num_steps,
                       lambda state, history: (state, history), params=switches, unit="step")


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


def as_schedule(switches, config: ByzPGConfig | None = None):
    """``switches`` as arrays for the ``State``: coins (checked, ``config.check_switches``) or ``Blocks`` (checked
    against ``config`` when given, ``config.check_blocks``, for stepping by blocks). Traced schedules pass
    unchecked."""
    if isinstance(switches, Blocks):
        if config is not None:
            check_blocks(switches, config)
        dtypes = Blocks(jnp.bool_, jnp.int32, jnp.int32, jnp.bool_)
        return Blocks(*(jnp.asarray(a, d) for a, d in zip(switches, dtypes)))
    return jnp.asarray(check_switches(switches), bool)


def current_block(switches: Blocks, cursor) -> Blocks:
    """The block at position ``cursor`` of a ``Blocks`` schedule."""
    return Blocks(*(a[cursor] for a in switches))


def check_mesh(mesh, config: ByzPGConfig):
    """``ValueError`` unless ``mesh`` (a ``jax.sharding.Mesh`` or None) has an ``"agents"`` axis whose size
    divides ``K``; returns ``mesh``."""
    if mesh is not None:
        sharding.check_divides(mesh, sharding.AGENTS, config.num_agents, f"{type(config).__name__}.num_agents K")
    return mesh


class BlockInputs(NamedTuple):
    """What the sampling agents of one block need, with a leading axis of ``m`` samplers: ``keys``,
    ``thetas`` f32[m, d] (where they sample), ``thetas_prev`` f32[m, d] (``theta_{t-1}`` for the PAGE-PG
    correction) and ``random_actions`` (bool[m], or a Python ``False`` when nobody acts randomly)."""

    keys: jax.Array
    thetas: jax.Array
    thetas_prev: jax.Array
    random_actions: Any


def sample_blocks(inputs: BlockInputs, block: Blocks, policy, env, env_params, config: ByzPGConfig):
    """Every sampler draws ``B`` trajectories at its ``theta`` and returns its part of the iteration's estimate.

    On a large-batch block: ``1/N sum_tau g(tau | theta)`` over the block's ``count`` counted episodes (GPOMDP;
    the blocks of an iteration sum to the estimate on all ``N``). On a small-batch block: PAGE-PG's correction
    ``g_B(theta_t) - g_B^w(theta_{t-1})`` (``fedjax_attacks.rl.policy_gradient.page_pg_estimate`` less
    ``v_{t-1}``). Both are one backward pass of the same surrogate, with the importance-weighted term masked
    out on large blocks, so a batch of samplers on different coins is one program. A ``block.large`` that is
    the Python ``True`` (known at trace time, as on coins) skips the ``theta_{t-1}`` terms.

    Returns ``(estimates f32[m, d], summed undiscounted returns f32[m])``.
    """
    def one(key, theta, theta_prev, random):
        traj = pg.sample_trajectories(key, policy, theta, env, env_params, num_episodes=config.small_batch,
                                      horizon=config.horizon, random_actions=random)
        counted = (jnp.arange(config.small_batch) < block.count).astype(jnp.float32)
        traj = traj.replace(rewards=traj.rewards * counted, mask=traj.mask * counted)
        return _block_estimate(policy, theta, theta_prev, traj, block.large, config), jnp.sum(traj.rewards)

    axis = None if inputs.random_actions is False else 0
    return jax.vmap(one, in_axes=(0, 0, 0, axis))(inputs.keys, inputs.thetas, inputs.thetas_prev,
                                                 inputs.random_actions)


def _block_estimate(policy, theta, theta_prev, traj, large, config: ByzPGConfig):
    scale = jnp.where(large, 1.0 / config.large_batch, 1.0 / config.small_batch)
    coef_now = pg.discounted_rewards_to_go(traj.rewards, config.gamma) * scale
    if large is True:  # known at trace time (an iteration on coins): GPOMDP only, no theta_{t-1} pass
        return pg.score_gradient(policy, theta, traj, coef_now)
    if config.importance_weights == "trajectory":  # as pg.page_pg_estimate
        coef_prev = coef_now * jnp.exp(pg.log_importance_weights(policy, theta, theta_prev, traj))
    else:
        step_weights = jnp.exp(jnp.cumsum(pg.per_step_log_ratios(policy, theta, theta_prev, traj), axis=0))
        discounts = config.gamma ** jnp.arange(traj.rewards.shape[0], dtype=jnp.float32)[:, None]
        weighted = step_weights * discounts * traj.rewards * scale
        coef_prev = jnp.flip(jnp.cumsum(jnp.flip(weighted, 0), axis=0), 0)
    coef_prev = jnp.where(large, 0.0, coef_prev)  # `where`, not a product: the weights may overflow to inf

    def block(obs, actions, mask, coefs):
        c_now, c_prev = coefs

        def surrogate(th, th_prev):
            now = jnp.sum(mask * c_now * policy.log_prob(th, obs, actions))
            return now + jnp.sum(mask * c_prev * policy.log_prob(th_prev, obs, actions))

        g_now, g_before = jax.grad(surrogate, argnums=(0, 1))(theta, theta_prev)
        return g_now - g_before

    coefs = jax.lax.stop_gradient((coef_now, coef_prev))
    return pg.reduce_live_blocks(block, traj, coefs, jnp.zeros_like(theta))


def block_keys(k_sample, num_samplers: int, index) -> jax.Array:
    """The samplers' keys for block ``index`` of an iteration: ``fold_in(split(k_sample, m)[i], index)``."""
    return jax.vmap(lambda k: jax.random.fold_in(k, index))(jax.random.split(k_sample, num_samplers))


def sample_large_batch(inputs_of, policy, env, env_params, config: ByzPGConfig):
    """All ``ceil(N / B)`` blocks of a large-batch iteration at once (vmapped over the block index, so one wide
    rollout instead of one block after another): ``inputs_of(block) -> BlockInputs``. Returns the blocks'
    summed ``(estimates f32[m, d], returns f32[m])``, what stepping block by block accumulates."""
    def one(index):
        block = Blocks(True, index, large_block_count(config, index), False)
        return sample_blocks(inputs_of(block), block, policy, env, env_params, config)

    estimates, returns = jax.vmap(one)(jnp.arange(blocks_per_large_batch(config)))
    return jnp.sum(estimates, axis=0), jnp.sum(returns, axis=0)


def large_block_count(config: ByzPGConfig, index):
    """Episodes counted by block ``index`` of a large-batch iteration: ``min(B, N - index B)``."""
    return jnp.minimum(config.small_batch, config.large_batch - index * config.small_batch).astype(jnp.int32)


def greedy_returns(key, policy, thetas, env, env_params, config: ByzPGConfig, num_episodes: int):
    """Undiscounted returns of the greedy policy at each ``theta`` (f32[m, d]): the most likely action
    ``policy.mode`` (``argmax_a pi_theta(a|s)``; a Gaussian policy's mean), averaged over ``num_episodes``
    episodes: f32[m]."""
    if policy.mode is None:
        raise ValueError("greedy_returns needs a policy with a mode (its most likely action)")
    greedy = policy._replace(sample=lambda _, theta, obs: policy.mode(theta, obs))

    def one(k, theta):
        traj = pg.sample_trajectories(k, greedy, theta, env, env_params, num_episodes=num_episodes,
                                      horizon=config.horizon)
        return jnp.mean(pg.episode_returns(traj))

    return jax.vmap(one)(jax.random.split(key, thetas.shape[0]), thetas)
