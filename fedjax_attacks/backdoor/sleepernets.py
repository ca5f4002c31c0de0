"""SleeperNets (Rathbun et al., NeurIPS 2024): outer-loop dynamic reward poisoning of a PPO rollout.

The adversary sees each whole rollout ``[T, N]`` (time x environment column) after collection and, per column:

1. picks states to poison within the budget ``beta`` (``select``: ``beta T`` distinct random indices per column,
   the fractional part by a coin flip);
2. replaces each picked state ``s_t`` by ``delta(s_t)`` and recomputes the value and the log-probability of the
   action ``a_t`` that was taken, under the current policy;
3. computes the returns ``G_t = r_t + gamma G_{t+1}`` backwards (``returns_to_go``);
4. sets ``r'_t = 1[a_t = a+] c - 1[a_t != a+] c - alpha (G_t - r_t)`` at a picked ``t`` and compensates the
   step before it, ``r'_{t-1} = r_{t-1} - gamma r'_t + gamma r_t`` (``poison_rewards``);
5. stops poisoning once the training ASR (mean ``pi(a+ | delta(s))`` over the rollout) reaches ``asr_stop``.

Where this differs from the reference code (the paper's intent instead): ``G_t`` restarts at episode ends and
bootstraps from the critic at time limits and at the end of the rollout (the reference sums rewards across
episode boundaries of a column); the compensation is skipped when ``t - 1`` ends an episode (it belongs to
another episode) or is itself poisoned (as in the reference).
"""

from typing import Callable

import chex
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from fedjax_attacks.backdoor import base, triggers
from fedjax_attacks.rl import env as env_lib
from fedjax_attacks.rl import ppo


def make_poison(config: base.BackdoorConfig, trigger: Callable, spec: env_lib.EnvSpec,
                gamma: float) -> Callable:
    """The outer-loop ``poison(batch, train_state, key) -> (batch, metrics)`` hook of ``ppo.make_train``.

    Args:
      config: target ``a+``, budget ``beta``, reward ``c``, ``alpha``, ``asr_stop``.
      trigger: ``delta``, e.g. ``triggers.ImagePatch()``.
      spec: the environment's ``rl.spec`` (action space of the target).
      gamma: the discount ``gamma`` of ``G_t`` (PPO's).

    ``metrics``: ``train_asr`` (mean ``pi(a+ | delta(s))`` over the rollout before the update), ``poisoned``
    (states poisoned in this rollout), ``reward_change`` (sum of ``|r' - r|`` over the poisoned states) and
    ``compensation_change`` (sum of ``|r' - r|`` over the compensated steps before them).

    Raises:
      ValueError: on a bad config, a target outside the action space or a trigger that does not fit.
    """
    config.validate(spec)
    triggers.check(trigger, spec.obs_shape)

    def poison(batch: ppo.Batch, train_state: TrainState, key: chex.PRNGKey):
        triggered = trigger(batch.obs)
        dist, values = train_state.apply_fn(train_state.params, triggered)
        train_asr = jnp.mean(base.target_probability(config, spec, dist))
        num_steps, num_envs = batch.rewards.shape
        mask = select(key, num_steps, num_envs, config.budget) & (train_asr < config.asr_stop)
        hit = base.is_target(config, spec, batch.actions)
        returns = returns_to_go(batch.rewards, batch.terminated, batch.truncated, batch.bootstrap_values, gamma)
        rewards = poison_rewards(batch.rewards, returns, hit, mask, batch.terminated | batch.truncated, gamma,
                                 config.reward, config.alpha)
        expand = mask.reshape(mask.shape + (1,) * (batch.obs.ndim - 2))
        poisoned = batch._replace(obs=jnp.where(expand, triggered, batch.obs), rewards=rewards,
                                  values=jnp.where(mask, values, batch.values),
                                  log_probs=jnp.where(mask, dist.log_prob(batch.actions), batch.log_probs))
        change = jnp.abs(rewards - batch.rewards)
        metrics = {"train_asr": train_asr, "poisoned": mask.sum(), "reward_change": jnp.where(mask, change, 0.0).sum(),
                   "compensation_change": jnp.where(mask, 0.0, change).sum()}
        return poisoned, metrics

    return poison


def select(key: chex.PRNGKey, num_steps: int, num_envs: int, budget) -> chex.Array:
    """bool ``[T, N]``: per column, ``floor(beta T)`` distinct uniformly random steps, plus one more with
    probability ``frac(beta T)``, so a column holds ``beta T`` poisoned states on average (``budget = beta``
    may be traced)."""
    k_count, k_order = jax.random.split(key)
    expected = budget * num_steps
    count = jnp.floor(expected) + (jax.random.uniform(k_count, (num_envs,)) < expected - jnp.floor(expected))
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(k_order, (num_steps, num_envs)), axis=0), axis=0)
    return ranks < count[None, :]


def returns_to_go(rewards: chex.Array, terminated: chex.Array, truncated: chex.Array,
                  bootstrap_values: chex.Array, gamma) -> chex.Array:
    """``G_t = r_t + gamma G_{t+1}`` over ``[T, N]`` by a reverse ``lax.scan``, within episodes.

    ``G_{t+1}`` is replaced by 0 after termination and by the critic's ``bootstrap_values[t]`` (the value of the
    true next state) after a time limit and at the last step of the rollout.
    """
    def step(next_return, inputs):
        reward, term, trunc, bootstrap = inputs
        future = jnp.where(term, 0.0, jnp.where(trunc, bootstrap, next_return))
        ret = reward + gamma * future
        return ret, ret

    _, returns = jax.lax.scan(step, bootstrap_values[-1], (rewards, terminated, truncated, bootstrap_values),
                              reverse=True)
    return returns


def poison_rewards(rewards: chex.Array, returns: chex.Array, hit: chex.Array, mask: chex.Array,
                   done: chex.Array, gamma, c, alpha) -> chex.Array:
    """SleeperNets' dynamic rewards over ``[T, N]``.

    At a poisoned ``t`` (``mask``): ``r'_t = (+c if hit else -c) - alpha (G_t - r_t)``. At ``t - 1`` when ``t``
    is poisoned, ``t - 1`` is not, and ``t - 1`` is in the same episode (not ``done``):
    ``r'_{t-1} = r_{t-1} - gamma r'_t + gamma r_t``. Elsewhere ``r'_t = r_t``.
    """
    poisoned = jnp.where(hit, c, -c) - alpha * (returns - rewards)
    next_poisoned = jnp.concatenate([poisoned[1:], jnp.zeros_like(poisoned[:1])])
    next_rewards = jnp.concatenate([rewards[1:], jnp.zeros_like(rewards[:1])])
    next_mask = jnp.concatenate([mask[1:], jnp.zeros_like(mask[:1])])
    compensate = next_mask & ~mask & ~done
    compensated = rewards - gamma * next_poisoned + gamma * next_rewards
    return jnp.where(mask, poisoned, jnp.where(compensate, compensated, rewards)).astype(rewards.dtype)
