"""Policy evaluation over N episodes; ``export_params``/``import_params`` (shared with FL) live in
``fedjax_attacks.runner`` and are re-exported here."""

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from fedjax_attacks.runner import export_params, import_params

__all__ = ["evaluate", "export_params", "import_params"]


def evaluate(key: chex.PRNGKey, policy: Callable[[chex.PRNGKey, chex.Array], chex.Array], env, env_params,
             num_episodes: int, max_steps: int) -> chex.Array:
    """Undiscounted returns ``f32[num_episodes]`` of ``policy`` on ``env``, episodes run in parallel.

    ``policy(key, obs) -> action`` acts on one observation (e.g. ``ppo.make_policy``); each episode runs until
    its first ``terminated | truncated`` or ``max_steps`` steps (both static). Jittable and vmappable.
    """
    if num_episodes < 1 or max_steps < 1:
        raise ValueError(f"num_episodes and max_steps must be >= 1, got {num_episodes}, {max_steps}")

    def one_episode(key):
        key, k_reset = jax.random.split(key)
        obs, state = env.reset(k_reset, env_params)

        def step(carry, _):
            obs, state, key, ret, alive = carry
            key, k_act, k_step = jax.random.split(key, 3)
            action = policy(k_act, obs)
            obs, state, reward, terminated, truncated, _ = env.step(k_step, state, action, env_params)
            ret = ret + jnp.where(alive, reward, 0.0)
            alive = jnp.logical_and(alive, jnp.logical_not(jnp.logical_or(terminated, truncated)))
            return (obs, state, key, ret, alive), None

        init = (obs, state, key, jnp.zeros((), jnp.float32), jnp.ones((), bool))
        (_, _, _, ret, _), _ = jax.lax.scan(step, init, None, max_steps)
        return ret

    return jax.vmap(one_episode)(jax.random.split(key, num_episodes))

