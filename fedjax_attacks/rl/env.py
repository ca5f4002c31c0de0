"""One environment interface over gymnax, brax and the project's own simulators.

Every environment here has gymnax 1.0's shape (gymnax's ``Environment`` class is the interface):

* ``env.reset(key, params) -> (obs, state)``
* ``env.step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)``; the step
  auto-resets: when ``terminated | truncated`` the returned ``obs``/``state`` start a new episode and
  ``info["final_observation"]`` holds the last observation of the finished one.
* ``env.action_space(params)`` (``Discrete`` or ``Box``), ``env.observation_space(params)``, ``env.num_actions``.

``make(name, **kwargs)`` builds gymnax environments by their gymnax name (``"CartPole-v1"``, ``"Pendulum-v1"``,
``"Acrobot-v1"``, ...) and brax environments as ``"brax:NAME"`` (``"brax:inverted_pendulum"``; keyword
``backend`` picks the brax pipeline, ``episode_length`` the time limit). The project's own simulators subclass
``gymnax.environments.environment.Environment`` and implement ``reset_env``/``step_env``/``is_truncated``.
``spec(env, params)`` summarises what an agent needs: observation shape, discrete or continuous, number of
actions or action dimension, and the action bounds.
"""

from typing import Any

import chex
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

import gymnax

BRAX_PREFIX = "brax:"


@struct.dataclass
class EnvSpec:
    """Static description of an environment for building agents.

    Attributes:
      obs_shape: shape of one observation.
      discrete: True for a ``Discrete`` action space, False for a ``Box``.
      num_actions: number of discrete actions, or the action dimension of a ``Box``.
      action_low, action_high: f32[num_actions] bounds of a ``Box`` (``None`` for discrete actions).
    """

    obs_shape: tuple = struct.field(pytree_node=False)
    discrete: bool = struct.field(pytree_node=False)
    num_actions: int = struct.field(pytree_node=False)
    action_low: Any = None
    action_high: Any = None


def make(name: str, **kwargs) -> tuple[environment.Environment, Any]:
    """Builds an environment and its default parameters, ``(env, env_params)``, by name.

    Args:
      name: a gymnax id (``gymnax.registered_envs``) or ``"brax:NAME"`` with NAME a brax environment.
      **kwargs: passed to ``gymnax.make`` or, for brax, to ``BraxEnv`` (``backend``, ``episode_length`` and
        constructor keywords of the brax environment).

    Raises:
      ValueError: for an unknown name.
    """
    if name.startswith(BRAX_PREFIX):
        env = BraxEnv(name[len(BRAX_PREFIX):], **kwargs)
        return env, env.default_params
    if name not in gymnax.registered_envs:
        raise ValueError(
            f"unknown environment {name!r}: use a gymnax id ({', '.join(gymnax.registered_envs)}) "
            f"or '{BRAX_PREFIX}NAME' for a brax environment")
    return gymnax.make(name, **kwargs)


def spec(env: environment.Environment, params: Any) -> EnvSpec:
    """Observation shape, action kind, number of actions (or action dimension) and bounds of ``env``.

    Raises:
      ValueError: if the action space is neither ``Discrete`` nor a one-dimensional ``Box``.
    """
    obs_shape = tuple(env.observation_space(params).shape)
    space = env.action_space(params)
    if isinstance(space, spaces.Discrete):
        return EnvSpec(obs_shape=obs_shape, discrete=True, num_actions=int(space.n))
    if isinstance(space, spaces.Box):
        if len(space.shape) > 1:
            raise ValueError(f"Box action spaces must be 0-d or 1-d, got shape {space.shape}")
        dim = int(np.prod(space.shape)) if space.shape else 1
        low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), (dim,))
        high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), (dim,))
        return EnvSpec(obs_shape=obs_shape, discrete=False, num_actions=dim, action_low=low, action_high=high)
    raise ValueError(f"unsupported action space {space!r}: need Discrete or Box")


def step_without_reset(env: environment.Environment, key, state, action, params):
    """One transition with no auto-reset: ``(obs, state, reward, terminated, truncated)``.

    For rollouts that mask every step after an episode ends (policy-gradient batches): it skips the reset
    that ``env.step`` computes (and discards) on every step. ``env`` must implement gymnax's
    ``step_env``/``is_truncated``, as every environment of ``make`` does.
    """
    obs, state, reward, terminated, _ = env.step_env(key, state, action, params)
    return obs, state, reward, terminated, env.is_truncated(state, params)


@struct.dataclass
class BraxParams:
    """Parameters of a wrapped brax environment: the episode time limit."""

    max_steps_in_episode: int = 1000


@struct.dataclass
class BraxState:
    """State of a wrapped brax environment: the brax ``State`` and the step count of the episode."""

    brax_state: Any
    time: chex.Array


class BraxEnv(environment.Environment):
    """A brax environment in gymnax's shape (``make("brax:NAME")``).

    Termination is brax's ``done``; truncation is the step count reaching ``params.max_steps_in_episode``;
    auto-reset, ``final_observation`` and jitting come from gymnax's ``Environment.step``.
    Actions live in ``Box(-1, 1, (action_size,))``.
    """

    def __init__(self, brax_name: str, backend: str = "positional", episode_length: int = 1000, **kwargs):
        from brax import envs as brax_envs  # imported lazily: brax is slow to import

        try:
            self._env = brax_envs.get_environment(brax_name, backend=backend, **kwargs)
        except KeyError as err:
            raise ValueError(f"unknown brax environment {brax_name!r}") from err
        self._brax_name = brax_name
        self._episode_length = int(episode_length)

    @property
    def name(self) -> str:
        """``brax:NAME``."""
        return BRAX_PREFIX + self._brax_name

    @property
    def default_params(self) -> BraxParams:
        """Episode limit given to the constructor."""
        return BraxParams(max_steps_in_episode=self._episode_length)

    @property
    def num_actions(self) -> int:
        """Action dimension."""
        return int(self._env.action_size)

    def reset_env(self, key, params):
        """Brax reset; the step count starts at zero."""
        brax_state = self._env.reset(key)
        return brax_state.obs, BraxState(brax_state=brax_state, time=jnp.zeros((), jnp.int32))

    def step_env(self, key, state, action, params):
        """One brax step: ``(obs, state, reward, terminated, info)``."""
        del key, params
        brax_state = self._env.step(state.brax_state, jnp.asarray(action, jnp.float32))
        state = BraxState(brax_state=brax_state, time=state.time + 1)
        return brax_state.obs, state, brax_state.reward, brax_state.done > 0.5, {}

    def is_truncated(self, state, params):
        """True once the episode reaches ``params.max_steps_in_episode`` steps."""
        return state.time >= params.max_steps_in_episode

    def action_space(self, params=None):
        """``Box(-1, 1, (action_size,))``."""
        return spaces.Box(-1.0, 1.0, (self.num_actions,), jnp.float32)

    def observation_space(self, params=None):
        """Unbounded ``Box`` of the brax observation size."""
        return spaces.Box(-jnp.inf, jnp.inf, (int(self._env.observation_size),), jnp.float32)
