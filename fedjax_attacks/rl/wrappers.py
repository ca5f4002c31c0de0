"""Environment wrappers in gymnax's shape: vectorization, episode statistics, observation normalization.

All wrappers keep the ``reset(key, params)`` / ``step(key, state, action, params)`` signatures and forward
``action_space``, ``observation_space``, ``num_actions`` and other attributes to the wrapped environment.
Typical stack for training: ``NormalizeObservation(VecEnv(LogWrapper(env), num_envs))``.
"""

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import struct


class Wrapper:
    """Base wrapper: forwards every attribute it does not define to the wrapped environment."""

    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)


@struct.dataclass
class LogState:
    """State of ``LogWrapper``: the wrapped state plus running and last-finished episode statistics."""

    env_state: Any
    episode_return: chex.Array
    episode_length: chex.Array
    returned_episode_return: chex.Array
    returned_episode_length: chex.Array


class LogWrapper(Wrapper):
    """Tracks undiscounted episode returns and lengths (PureJaxRL's ``LogWrapper``).

    ``step`` adds to ``info``: ``returned_episode`` (bool, an episode ended on this step),
    ``returned_episode_returns`` and ``returned_episode_lengths`` (those of the last finished episode; exact on
    steps where ``returned_episode`` is true).
    """

    def reset(self, key, params=None):
        """Resets the wrapped environment with zeroed statistics."""
        obs, env_state = self._env.reset(key, params)
        zero_f, zero_i = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        return obs, LogState(env_state, zero_f, zero_i, zero_f, zero_i)

    def step(self, key, state, action, params=None):
        """Steps the wrapped environment and updates the episode statistics."""
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params)
        done = jnp.logical_or(terminated, truncated)
        ep_return = state.episode_return + reward.astype(jnp.float32)
        ep_length = state.episode_length + 1
        new_state = LogState(
            env_state=env_state,
            episode_return=jnp.where(done, 0.0, ep_return),
            episode_length=jnp.where(done, 0, ep_length),
            returned_episode_return=jnp.where(done, ep_return, state.returned_episode_return),
            returned_episode_length=jnp.where(done, ep_length, state.returned_episode_length),
        )
        info = {
            **info,
            "returned_episode": done,
            "returned_episode_returns": new_state.returned_episode_return,
            "returned_episode_lengths": new_state.returned_episode_length,
        }
        return obs, new_state, reward, terminated, truncated, info


def episode_stats(info) -> tuple:
    """``(mean return, count)`` of the episodes that finished in ``info`` (a ``LogWrapper`` step's info, any batch
    shape): the mean undiscounted return is NaN when none finished. The one episode-statistics helper of PPO,
    TD3 and DQN."""
    finished = info["returned_episode"]
    count = finished.sum()
    mean = jnp.where(count > 0, jnp.sum(info["returned_episode_returns"] * finished) / jnp.maximum(count, 1),
                     jnp.nan)
    return mean, count


class VecEnv(Wrapper):
    """``num_envs`` copies of an environment stepped with ``jax.vmap``.

    ``reset(key, params)`` and ``step(key, state, action, params)`` take ONE key and split it per copy;
    observations, states, rewards, flags and info gain a leading axis of size ``num_envs``.
    """

    def __init__(self, env, num_envs: int):
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        super().__init__(env)
        self.num_envs = int(num_envs)

    def reset(self, key, params=None):
        """Resets all copies with independent keys."""
        keys = jax.random.split(key, self.num_envs)
        return jax.vmap(self._env.reset, in_axes=(0, None))(keys, params)

    def step(self, key, state, action, params=None):
        """Steps all copies with independent keys; ``action`` has a leading ``num_envs`` axis."""
        keys = jax.random.split(key, self.num_envs)
        return jax.vmap(self._env.step, in_axes=(0, 0, 0, None))(keys, state, action, params)


@struct.dataclass
class RunningMoments:
    """Running mean and variance of observations (parallel Welford / Chan et al. update)."""

    mean: chex.Array
    var: chex.Array
    count: chex.Array

    def update(self, batch: chex.Array) -> "RunningMoments":
        """Merges a batch whose leading axes are samples and trailing axes match ``mean``."""
        axes = tuple(range(batch.ndim - self.mean.ndim))
        batch_count = float(math.prod(batch.shape[: len(axes)]))
        batch_mean = jnp.mean(batch, axis=axes)
        batch_var = jnp.var(batch, axis=axes)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        return RunningMoments(mean=mean, var=m2 / total, count=total)


def normalize(moments: RunningMoments, obs: chex.Array, clip: float = 10.0, eps: float = 1e-8) -> chex.Array:
    """``clip((obs - mean) / sqrt(var + eps), -clip, clip)`` with the given running moments."""
    return jnp.clip((obs - moments.mean) / jnp.sqrt(moments.var + eps), -clip, clip)


@struct.dataclass
class NormalizeState:
    """State of ``NormalizeObservation``: the wrapped state and the running observation moments."""

    env_state: Any
    moments: RunningMoments


class NormalizeObservation(Wrapper):
    """Normalizes observations with running moments carried in the state.

    Works on a single or a vectorized environment: all leading axes beyond the observation shape are pooled
    into one batch, so a ``VecEnv`` underneath shares one set of statistics across copies.
    ``info["final_observation"]`` is normalized with the same moments as the returned observation.
    """

    def __init__(self, env, clip: float = 10.0):
        super().__init__(env)
        self.clip = float(clip)

    def _obs_shape(self, params):
        return tuple(self._env.observation_space(params).shape)

    def reset(self, key, params=None):
        """Resets the wrapped environment and starts the moments from the first observations."""
        obs, env_state = self._env.reset(key, params)
        shape = self._obs_shape(params)
        moments = RunningMoments(jnp.zeros(shape), jnp.ones(shape), jnp.asarray(1e-4)).update(obs)
        return normalize(moments, obs, self.clip), NormalizeState(env_state, moments)

    def step(self, key, state, action, params=None):
        """Steps the wrapped environment, updates the moments and normalizes the observations."""
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params)
        moments = state.moments.update(obs)
        info = dict(info)
        if "final_observation" in info:
            info["final_observation"] = normalize(moments, info["final_observation"], self.clip)
        obs = normalize(moments, obs, self.clip)
        return obs, NormalizeState(env_state, moments), reward, terminated, truncated, info
