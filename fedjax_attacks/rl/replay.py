"""Uniform replay buffer as a pytree ring buffer, usable inside ``lax.scan`` (TD3, DQN)."""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct


class Transition(NamedTuple):
    """One stored transition: ``obs``, ``action`` (int for DQN, unit-box float for TD3), ``reward``, the true
    ``next_obs`` (before any auto-reset) and ``terminated``."""

    obs: chex.Array
    action: chex.Array
    reward: chex.Array
    next_obs: chex.Array
    terminated: chex.Array


def validate_off_policy(config, positive: tuple) -> None:
    """Checks shared by off-policy configs (DQN, TD3): the ``positive`` fields >= 1, at least one vectorized
    step (``total_timesteps >= num_envs``) and a buffer holding one step of every env; ``ValueError`` otherwise."""
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.total_timesteps // config.num_envs < 1:
        raise ValueError(f"total_timesteps={config.total_timesteps} < num_envs={config.num_envs}")
    if config.buffer_size < config.num_envs:
        raise ValueError("buffer_size must be >= num_envs")


@struct.dataclass
class ReplayBuffer:
    """Ring buffer of transitions.

    Attributes:
      data: pytree of arrays ``[capacity, ...]`` (one entry per stored transition).
      position: index where the next transition is written.
      size: number of valid entries (``<= capacity``).
    """

    data: Any
    position: chex.Array
    size: chex.Array

    @property
    def capacity(self) -> int:
        """Static number of slots."""
        return jax.tree.leaves(self.data)[0].shape[0]


def init(capacity: int, example: Any) -> ReplayBuffer:
    """An empty buffer of ``capacity`` slots shaped like the single transition ``example``."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    data = jax.tree.map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype), example)
    return ReplayBuffer(data=data, position=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def add(buffer: ReplayBuffer, transitions: Any) -> ReplayBuffer:
    """Writes a batch of ``k`` transitions (leading axis ``k``, static) at the ring position, wrapping around."""
    k = jax.tree.leaves(transitions)[0].shape[0]
    capacity = buffer.capacity
    if k > capacity:
        raise ValueError(f"cannot add {k} transitions to a buffer of capacity {capacity}")
    idx = (buffer.position + jnp.arange(k)) % capacity
    data = jax.tree.map(lambda d, x: d.at[idx].set(x.astype(d.dtype)), buffer.data, transitions)
    return ReplayBuffer(data=data, position=(buffer.position + k) % capacity,
                        size=jnp.minimum(buffer.size + k, capacity))


def sample(key: chex.PRNGKey, buffer: ReplayBuffer, batch_size: int) -> Any:
    """``batch_size`` transitions drawn uniformly with replacement from the valid entries."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda d: d[idx], buffer.data)
