"""Backdoor triggers ``delta(s)``: pure functions ``trigger(obs) -> obs`` over any leading batch axes.

* ``ImagePatch``: a checkerboard patch in a corner of an image observation ``[..., H, W, C]``, on every channel
  (every stacked frame) or on chosen ones: SleeperNets' 8x8 patch on 84x84 Atari frames, a 3x3 patch on 10x10
  MinAtar grids (9% of the grid on every channel), or a less salient single cell on one channel
  (``ImagePatch(size=1, channels=(0,))``: 1% of the grid, one channel).
* ``FeaturePattern``: fixed values on chosen features of a vector observation ``[..., D]``.
* ``TriggerFeature`` (an environment wrapper) appends a feature that is always 0; ``FEATURE_ON`` sets it to 1,
  the reference's trigger for vector observations. ``Flatten`` (a wrapper) turns grid observations that are not
  images ``(H, W, C)`` (e.g. DeepSea's ``(size, size)``) into vectors, for ``TriggerFeature`` and MLP networks.

``check(trigger, obs_shape)`` validates a trigger against an observation shape before anything is traced.
"""

import dataclasses
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces

from fedjax_attacks import validation
from fedjax_attacks.rl import wrappers

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


@dataclasses.dataclass(frozen=True)
class ImagePatch:
    """A ``size x size`` checkerboard (``high`` where row + column is even, else ``low``) in ``corner``, on the
    channels ``channels`` (``None``: every channel)."""

    size: int = 3
    corner: str = "top_left"
    low: float = 0.0
    high: float = 1.0
    channels: tuple | None = None

    def __call__(self, obs: chex.Array) -> chex.Array:
        """Writes the patch into the chosen channels of ``obs[..., H, W, C]``."""
        obs = jnp.asarray(obs)
        height, width = obs.shape[-3], obs.shape[-2]
        parity = (jnp.arange(self.size)[:, None] + jnp.arange(self.size)[None, :]) % 2
        patch = jnp.where(parity == 0, self.high, self.low).astype(obs.dtype)[:, :, None]
        row = 0 if self.corner.startswith("top") else height - self.size
        col = 0 if self.corner.endswith("left") else width - self.size
        channels = slice(None) if self.channels is None else jnp.asarray(self.channels)
        return obs.at[..., row:row + self.size, col:col + self.size, channels].set(patch)

    def validate(self, obs_shape: Sequence[int]) -> None:
        """Raises ``ValueError`` naming the field unless ``obs_shape`` is an image ``(H, W, C)`` that holds the
        patch, ``size`` is an integer, ``low`` and ``high`` are finite numbers and ``channels`` (when given) is a
        non-empty tuple of distinct channel indices in ``[0, C)``."""
        validation.check_count(self, "size")
        for field in ("low", "high"):
            _check_finite_numbers(f"ImagePatch.{field}", (getattr(self, field),))
        if len(obs_shape) != 3:
            raise ValueError(f"an image trigger (ImagePatch) needs image observations (H, W, C), got shape "
                             f"{tuple(obs_shape)}: use FeaturePattern or TriggerFeature for vector observations")
        if self.corner not in CORNERS:
            raise ValueError(f"ImagePatch corner must be one of {CORNERS}, got {self.corner!r}")
        if not 1 <= self.size <= min(obs_shape[0], obs_shape[1]):
            raise ValueError(f"ImagePatch size must lie in [1, {min(obs_shape[0], obs_shape[1])}] for observations "
                             f"of shape {tuple(obs_shape)}, got {self.size}")
        if self.channels is not None:
            channels = self.channels
            if (not isinstance(channels, tuple) or not channels or len(set(channels)) != len(channels)
                    or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < obs_shape[2]
                           for c in channels)):
                raise ValueError(f"ImagePatch channels must be a non-empty tuple of distinct channel indices in "
                                 f"[0, {obs_shape[2]}) for observations of shape {tuple(obs_shape)}, got "
                                 f"{channels!r}")


@dataclasses.dataclass(frozen=True)
class FeaturePattern:
    """Sets ``obs[..., indices[i]] = values[i]`` on a vector observation."""

    indices: tuple = (-1,)
    values: tuple = (1.0,)

    def __call__(self, obs: chex.Array) -> chex.Array:
        """The observation with the pattern written in."""
        obs = jnp.asarray(obs)
        return obs.at[..., jnp.asarray(self.indices)].set(jnp.asarray(self.values, obs.dtype))

    def validate(self, obs_shape: Sequence[int]) -> None:
        """Raises ``ValueError`` unless ``obs_shape`` is a vector with every index in range and every value a
        finite number."""
        if len(obs_shape) != 1:
            raise ValueError(f"a feature trigger (FeaturePattern) needs vector observations (D,), got shape "
                             f"{tuple(obs_shape)}: use ImagePatch for images")
        if len(self.indices) != len(self.values) or not self.indices:
            raise ValueError(f"FeaturePattern needs as many values as indices (at least one), got "
                             f"{len(self.indices)} indices and {len(self.values)} values")
        _check_finite_numbers("FeaturePattern.values", self.values)
        bad = [i for i in self.indices if not -obs_shape[0] <= i < obs_shape[0]]
        if bad:
            raise ValueError(f"FeaturePattern indices {bad} are outside observations of size {obs_shape[0]}")


FEATURE_ON = FeaturePattern(indices=(-1,), values=(1.0,))


class TriggerFeature(wrappers.Wrapper):
    """Appends one feature, always 0, to a vector environment's observations (``FEATURE_ON`` sets it to 1).

    The clean agent sees the same (constant) feature, so clean and poisoned runs train on one environment.
    """

    def reset(self, key, params=None):
        """Reset of the wrapped environment, observation extended by a 0."""
        obs, state = self._env.reset(key, params)
        return _append_zero(obs), state

    def step(self, key, state, action, params=None):
        """Step of the wrapped environment; ``obs`` and ``info["final_observation"]`` extended by a 0."""
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        info = dict(info)
        if "final_observation" in info:
            info["final_observation"] = _append_zero(info["final_observation"])
        return _append_zero(obs), state, reward, terminated, truncated, info

    def observation_space(self, params=None):
        """The wrapped ``Box`` with one more dimension, bounded by [0, 1] there."""
        space = self._env.observation_space(params)
        if len(space.shape) != 1:
            raise ValueError(f"TriggerFeature needs vector observations, got shape {tuple(space.shape)}")
        low = jnp.append(jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), space.shape), 0.0)
        high = jnp.append(jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), space.shape), 1.0)
        return spaces.Box(low, high, (space.shape[0] + 1,), jnp.float32)


class Flatten(wrappers.Wrapper):
    """Flattens the observations (and ``info["final_observation"]``) of ``env`` to vectors ``[..., prod(shape)]``
    of float32, e.g. DeepSea's ``(size, size)`` grid for ``TriggerFeature``, an MLP or ``rl.dqn``."""

    def _flat(self, obs, params):
        shape = tuple(self._env.observation_space(params).shape)
        return obs.reshape(obs.shape[:obs.ndim - len(shape)] + (-1,)).astype(jnp.float32)

    def reset(self, key, params=None):
        """Reset of the wrapped environment with a flat observation."""
        obs, state = self._env.reset(key, params)
        return self._flat(obs, params), state

    def step(self, key, state, action, params=None):
        """Step of the wrapped environment with flat observations."""
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        info = dict(info)
        if "final_observation" in info:
            info["final_observation"] = self._flat(info["final_observation"], params)
        return self._flat(obs, params), state, reward, terminated, truncated, info

    def observation_space(self, params=None):
        """An unbounded ``Box`` of the flattened size."""
        shape = tuple(self._env.observation_space(params).shape)
        return spaces.Box(-jnp.inf, jnp.inf, (int(np.prod(shape)),), jnp.float32)


def check(trigger: Callable[[chex.Array], chex.Array], obs_shape: Sequence[int]) -> None:
    """Raises ``ValueError`` if ``trigger`` does not fit observations of shape ``obs_shape``.

    Calls ``trigger.validate(obs_shape)`` when it has one (an image trigger on a vector environment fails
    there), then checks with ``jax.eval_shape`` (nothing is computed) that the output has the observation's
    shape and dtype, for one observation and for a batch of them.
    """
    if hasattr(trigger, "validate"):
        trigger.validate(tuple(obs_shape))
    for shape in (tuple(obs_shape), (2, *obs_shape)):
        obs = jax.ShapeDtypeStruct(shape, jnp.float32)
        try:
            out = jax.eval_shape(trigger, obs)
        except Exception as err:  # a trigger that cannot even run on this shape
            raise ValueError(f"trigger fails on observations of shape {shape}: {err}") from err
        if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != shape or out.dtype != obs.dtype:
            got = (out.shape, out.dtype) if isinstance(out, jax.ShapeDtypeStruct) else type(out)
            raise ValueError(f"trigger output {got} differs from the observation {(shape, obs.dtype)}")


def _check_finite_numbers(name: str, values) -> None:
    """``ValueError`` naming ``name`` unless every entry of ``values`` is a finite number (not a bool or string)."""
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
           or not np.isfinite(v)]
    if bad:
        raise ValueError(f"{name} must be finite numbers, got {bad!r}")


def _append_zero(obs: chex.Array) -> chex.Array:
    return jnp.concatenate([obs, jnp.zeros(obs.shape[:-1] + (1,), obs.dtype)], axis=-1)
