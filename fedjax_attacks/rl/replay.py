"""Uniform replay buffer as a pytree ring buffer, usable inside ``lax.scan`` (TD3, DQN)."""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct

from fedjax_attacks.validation import check_count, check_in_range, check_layers, check_rate


class Transition(NamedTuple):
    """One stored transition: ``obs``, ``action`` (int for DQN, unit-box float for TD3), ``reward``, the true
    ``next_obs`` (before any auto-reset) and ``terminated``."""

    obs: chex.Array
    action: chex.Array
    reward: chex.Array
    next_obs: chex.Array
    terminated: chex.Array


def validate_off_policy(config, positive: tuple) -> None:
    """Checks shared by off-policy configs (DQN, TD3): integer counts (the ``positive`` fields >= 1), a learning
    rate > 0, at least one vectorized step, a buffer holding one step of every env and a batch, and learning that
    starts before the run ends, a discount ``gamma`` in [0, 1], a soft-update rate ``tau`` in (0, 1] and integer
    ``hidden`` widths; ``ValueError`` naming the field otherwise."""
    name = type(config).__name__
    for field in ("total_timesteps",) + tuple(positive):
        check_count(config, field)
    check_count(config, "learning_starts", 0)
    check_rate(config, "learning_rate")
    check_in_range(config, "gamma", 0.0, 1.0)
    check_in_range(config, "tau", 0.0, 1.0, low_open=True)
    check_layers(config)
    if config.total_timesteps // config.num_envs < 1:
        raise ValueError(f"{name}: total_timesteps={config.total_timesteps} < num_envs={config.num_envs}")
    if config.buffer_size < config.num_envs:
        raise ValueError(f"{name}: buffer_size must be >= num_envs")
    if config.learning_starts >= config.total_timesteps:
        raise ValueError(f"{name}.learning_starts={config.learning_starts} must be below total_timesteps="
                         f"{config.total_timesteps}: the agent would never learn")
    if config.batch_size > min(config.buffer_size, config.total_timesteps):
        raise ValueError(f"{name}.batch_size={config.batch_size} exceeds what the buffer can hold "
                         f"(min(buffer_size, total_timesteps) = {min(config.buffer_size, config.total_timesteps)})")


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
