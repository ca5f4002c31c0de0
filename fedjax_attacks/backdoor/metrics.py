"""The paper's metrics: attack success rate (ASR), benign return ratio (BRR) and the poisoning rate.

* ASR: the mean probability ``pi(a+ | delta(s))`` of the target action over the states ``s`` the trained agent
  visits when it acts without the trigger (``evaluate``).
* BRR: the return of the poisoned agent without the trigger over the return of a clean agent trained with the
  same seed (``benign_return_ratio``).
* Poisoning rate: poisoned states over environment steps, per update and cumulated over training
  (``poisoning_rate``).
* Reward perturbation: the mean ``|r' - r|`` over the poisoned states (``perturbation``).
* The return of a uniformly random policy (``random_return``), printed beside BRR to tell a trained clean agent
  from a near-random one.
"""

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_attacks.backdoor import base
from fedjax_attacks.rl import env as env_lib
from fedjax_attacks.rl import networks


def evaluate(key: chex.PRNGKey, apply_fn: Callable, params, env, env_params, trigger: Callable,
             config: base.BackdoorConfig, num_episodes: int, max_steps: int) -> dict:
    """``{"asr", "return"}`` of a policy over ``num_episodes`` episodes run in parallel (jittable, vmappable).

    The agent samples its actions from ``apply_fn(params, obs) -> (dist, value)`` on clean observations; every
    step until an episode's first end (or ``max_steps``) counts once in the ASR, the mean of
    ``pi(a+ | delta(s))`` over those states; ``return`` is the mean undiscounted episode return.

    Raises ``ValueError`` before tracing for counts below 1 and for a ``config`` that ``BackdoorConfig.validate``
    refuses on this environment (a target outside the action space).
    """
    if num_episodes < 1 or max_steps < 1:
        raise ValueError(f"num_episodes and max_steps must be >= 1, got {num_episodes}, {max_steps}")
    spec = env_lib.spec(env, env_params)
    config.validate(spec)
    to_env_action = ((lambda a: a) if spec.discrete
                     else (lambda a: networks.scale_action(a, spec.action_low, spec.action_high)))

    def one_episode(key):
        key, k_reset = jax.random.split(key)
        obs, state = env.reset(k_reset, env_params)

        def step(carry, _):
            obs, state, key, ret, alive, prob_sum, steps = carry
            key, k_act, k_step = jax.random.split(key, 3)
            dist, _ = apply_fn(params, obs)
            trig_dist, _ = apply_fn(params, trigger(obs))
            prob_sum = prob_sum + jnp.where(alive, base.target_probability(config, spec, trig_dist), 0.0)
            steps = steps + alive
            obs, state, reward, terminated, truncated, _ = env.step(
                k_step, state, to_env_action(dist.sample(k_act)), env_params)
            ret = ret + jnp.where(alive, reward, 0.0)
            alive = alive & ~(terminated | truncated)
            return (obs, state, key, ret, alive, prob_sum, steps), None

        init = (obs, state, key, jnp.zeros(()), jnp.ones((), bool), jnp.zeros(()), jnp.zeros((), jnp.int32))
        (_, _, _, ret, _, prob_sum, steps), _ = jax.lax.scan(step, init, None, max_steps)
        return ret, prob_sum, steps

    returns, prob_sums, steps = jax.vmap(one_episode)(jax.random.split(key, num_episodes))
    return {"asr": prob_sums.sum() / steps.sum(), "return": returns.mean()}


def benign_return_ratio(poisoned_return: chex.Array, clean_return: chex.Array) -> np.ndarray:
    """BRR per seed: ``poisoned_return / clean_return`` (seed-aligned arrays); NaN where the clean return is not
    positive (the ratio is meaningless there)."""
    poisoned, clean = np.asarray(poisoned_return, np.float64), np.asarray(clean_return, np.float64)
    return np.where(clean > 0, poisoned / np.where(clean > 0, clean, 1.0), np.nan)


def poisoning_rate(poisoned: chex.Array, steps_per_update: int) -> dict:
    """``{"per_update", "cumulative"}`` poisoning rates from the states poisoned in each update ``[..., U]``:
    ``poisoned[u] / steps_per_update`` and ``sum_{v <= u} poisoned[v] / ((u + 1) steps_per_update)``."""
    poisoned = np.asarray(poisoned, np.float64)
    updates = np.arange(1, poisoned.shape[-1] + 1)
    return {"per_update": poisoned / steps_per_update,
            "cumulative": np.cumsum(poisoned, axis=-1) / (updates * steps_per_update)}


def perturbation(reward_change: chex.Array, poisoned: chex.Array) -> np.ndarray:
    """Mean ``|r' - r|`` over the poisoned states of each run: ``sum(reward_change) / sum(poisoned)`` over the
    last axis (per-update sums ``[..., U]``, as in ``TrainOutput.metrics``); NaN for a run that poisoned nothing."""
    change = np.asarray(reward_change, np.float64).sum(-1)
    count = np.asarray(poisoned, np.float64).sum(-1)
    return np.where(count > 0, change / np.where(count > 0, count, 1.0), np.nan)


def random_return(key: chex.PRNGKey, env, env_params, num_episodes: int, max_steps: int) -> chex.Array:
    """Mean undiscounted return of a uniformly random policy over ``num_episodes`` episodes (each cut at its
    first end or ``max_steps``): uniform over the actions (discrete) or over the action ``Box`` (continuous).

    Raises ``ValueError`` for counts below 1.
    """
    if num_episodes < 1 or max_steps < 1:
        raise ValueError(f"num_episodes and max_steps must be >= 1, got {num_episodes}, {max_steps}")
    spec = env_lib.spec(env, env_params)

    def act(key):
        if spec.discrete:
            return jax.random.randint(key, (), 0, spec.num_actions)
        action = jax.random.uniform(key, (spec.num_actions,), minval=spec.action_low, maxval=spec.action_high)
        return action.reshape(env.action_space(env_params).shape)

    def one_episode(key):
        key, k_reset = jax.random.split(key)
        _, state = env.reset(k_reset, env_params)

        def step(carry, _):
            state, key, ret, alive = carry
            key, k_act, k_step = jax.random.split(key, 3)
            _, state, reward, terminated, truncated, _ = env.step(k_step, state, act(k_act), env_params)
            return (state, key, ret + jnp.where(alive, reward, 0.0), alive & ~(terminated | truncated)), None

        (_, _, ret, _), _ = jax.lax.scan(step, (state, key, jnp.zeros(()), jnp.ones((), bool)), None, max_steps)
        return ret

    return jax.vmap(one_episode)(jax.random.split(key, num_episodes)).mean()


def asr_monitor(config: base.BackdoorConfig, trigger: Callable, spec: env_lib.EnvSpec) -> Callable:
    """An outer-loop ``poison`` hook that changes nothing and reports the training ASR of each rollout:
    ``{"train_asr": mean pi(a+ | delta(s))}`` over the rollout's states (what SleeperNets computes for its stop
    rule), so every attack and the clean agent get the same ASR curve."""

    def monitor(batch, train_state, key):
        del key
        dist, _ = train_state.apply_fn(train_state.params, trigger(batch.obs))
        return batch, {"train_asr": jnp.mean(base.target_probability(config, spec, dist))}

    return monitor
