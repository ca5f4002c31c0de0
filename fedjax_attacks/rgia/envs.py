"""The environments of RGIA (seed paper 001) with flat vector observations, and each one's real transition
``f_true(s, a)`` started from an observation, for the transition error TE.

``make_env(name)`` returns an ``RGIAEnv``: the environment the victim trains on (gymnax-shaped, observations
flattened to ``f32[obs_dim]``), whether actions are discrete, and ``true_step(key, obs, action) -> next_obs``,
the environment's own step (no auto-reset) from the state an observation decodes to:

* ``FrozenLake-misc``: the position is one-hot encoded (``f32[16]``); the decoded state is the argmax position.
  Deterministic moves (``is_slippery=False``) by default, so a true transition has TE 0.
* ``CartPole-v1``: the observation is the state ``(x, x_dot, theta, theta_dot)``.
* ``Pong-misc``: the 30x40x3 image flattened (``f32[3600]``); paddle rows from channel 0, the ball and its
  last position from the argmax of channels 1 and 2, the ball velocity as their difference (exact except just
  after a bounce, so true transitions have a small TE floor there).
* ``brax:hopper``, ``brax:walker2d``, ``brax:ant``, ``brax:halfcheetah``: the observation is the joint
  positions without the root's horizontal coordinates (dynamics are invariant to them) and the velocities;
  ``q``, ``qd`` are rebuilt against a reference reset state and the brax pipeline is re-initialized from them.
  The default backend is brax's ``generalized`` one, whose state is ``(q, qd)``, so a true transition has TE 0
  (``positional`` keeps maximal coordinates that ``q, qd`` do not pin down exactly).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from gymnax.environments import spaces

from fedjax_attacks.rl import env as env_lib
from fedjax_attacks.rl import wrappers

ENV_NAMES = ("FrozenLake-misc", "CartPole-v1", "Pong-misc",
             "brax:hopper", "brax:walker2d", "brax:ant", "brax:halfcheetah")


@dataclasses.dataclass(frozen=True)
class RGIAEnv:
    """An environment prepared for RGIA.

    env, env_params: gymnax-shaped environment with observations ``f32[obs_dim]``;
    discrete: ``Discrete`` actions (DQN victim) or a unit ``Box`` (TD3 victim);
    num_actions: number of discrete actions or the action dimension;
    true_step: ``(key, obs f32[obs_dim], action) -> next_obs f32[obs_dim]``, the real dynamics ``f_true``.
    """

    name: str
    env: Any
    env_params: Any
    discrete: bool
    obs_dim: int
    num_actions: int
    true_step: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def make_env(name: str, **kwargs) -> RGIAEnv:
    """The RGIA environment called ``name`` (one of ``ENV_NAMES``); ``kwargs`` go to the environment.

    Raises:
      ValueError: for a name outside ``ENV_NAMES``.
    """
    if name not in ENV_NAMES:
        raise ValueError(f"unknown RGIA environment {name!r}: choose from {', '.join(ENV_NAMES)}")
    if name == "FrozenLake-misc":
        return _frozen_lake(**{"is_slippery": False, **kwargs})
    if name == "CartPole-v1":
        return _cartpole(**kwargs)
    if name == "Pong-misc":
        return _pong(**kwargs)
    return _brax(name, **kwargs)


class ObservationMap(wrappers.Wrapper):
    """Applies ``fn`` to every observation (also ``info["final_observation"]``); new space ``Box(shape)``."""

    def __init__(self, env, fn: Callable[[jax.Array], jax.Array], shape: tuple, low=-jnp.inf, high=jnp.inf):
        super().__init__(env)
        self._fn, self._shape, self._low, self._high = fn, tuple(shape), low, high

    def reset(self, key, params=None):
        """Resets the wrapped environment and maps the observation."""
        obs, state = self._env.reset(key, params)
        return self._fn(obs), state

    def step(self, key, state, action, params=None):
        """Steps the wrapped environment and maps the observations."""
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        if "final_observation" in info:
            info = {**info, "final_observation": self._fn(info["final_observation"])}
        return self._fn(obs), state, reward, terminated, truncated, info

    def observation_space(self, params=None):
        """``Box(low, high, shape)`` of the mapped observations."""
        return spaces.Box(self._low, self._high, self._shape, jnp.float32)


def _frozen_lake(**kwargs) -> RGIAEnv:
    base, params = env_lib.make("FrozenLake-misc", **kwargs)
    n = base.n_states
    one_hot = lambda obs: jax.nn.one_hot(obs, n, dtype=jnp.float32)
    env = ObservationMap(base, one_hot, (n,), 0.0, 1.0)
    state_cls = type(base.reset(jax.random.PRNGKey(0), params)[1])

    def true_step(key, obs, action):
        state = state_cls(position=jnp.argmax(obs).astype(jnp.int32), time=0)
        next_obs, _, _, _, _ = base.step_env(key, state, action, params)
        return one_hot(next_obs)

    return RGIAEnv("FrozenLake-misc", env, params, True, n, 4, true_step)


def _cartpole(**kwargs) -> RGIAEnv:
    env, params = env_lib.make("CartPole-v1", **kwargs)
    state_cls = type(env.reset(jax.random.PRNGKey(0), params)[1])

    def true_step(key, obs, action):
        state = state_cls(x=obs[0], x_dot=obs[1], theta=obs[2], theta_dot=obs[3], time=0)
        return env.step_env(key, state, action, params)[0]

    return RGIAEnv("CartPole-v1", env, params, True, 4, 2, true_step)


def _pong(**kwargs) -> RGIAEnv:
    base, params = env_lib.make("Pong-misc", **kwargs)
    h, w, c = base.obs_shape
    env = ObservationMap(base, lambda obs: obs.reshape(-1), (h * w * c,), 0.0, 1.0)
    _, ref_state = base.reset(jax.random.PRNGKey(0), params)

    def position(channel):
        flat = jnp.argmax(channel.reshape(-1))
        return jnp.stack([flat // w, flat % w]).astype(jnp.float32)

    def paddle_center(column):
        weights = jnp.clip(column, 0.0, 1.0)
        return jnp.sum(weights * jnp.arange(h)) / jnp.maximum(jnp.sum(weights), 1e-6)

    def true_step(key, obs, action):
        img = obs.reshape(h, w, c)
        ball, last = position(img[..., 1]), position(img[..., 2])
        state = ref_state.replace(
            paddle_centers=jnp.stack([paddle_center(img[:, 0, 0]), paddle_center(img[:, w - 1, 0])]),
            ball_position=ball, last_ball_position=last, ball_velocity=(ball - last).astype(jnp.int32))
        return base.step_env(key, state, action, params)[0].reshape(-1)

    return RGIAEnv("Pong-misc", env, params, True, h * w * c, 3, true_step)


def _brax(name: str, backend: str = "generalized", episode_length: int = 1000, **kwargs) -> RGIAEnv:
    from brax import envs as brax_envs  # imported lazily: brax is slow to import

    env, params = env_lib.make(name, backend=backend, episode_length=episode_length, **kwargs)
    physics = brax_envs.get_environment(name[len(env_lib.BRAX_PREFIX):], backend=backend, **kwargs)
    ref = jax.jit(physics.reset)(jax.random.PRNGKey(0))
    q_ref, qd_ref = ref.pipeline_state.q, ref.pipeline_state.qd
    obs_dim, nv = int(ref.obs.shape[0]), int(qd_ref.shape[0])
    num_pos = obs_dim - nv
    skip = int(q_ref.shape[0]) - num_pos  # root coordinates left out of the observation

    def true_step(key, obs, action):
        del key
        q = q_ref.at[skip:].add(obs[:num_pos] - ref.obs[:num_pos])
        # fresh metrics/info dicts: brax's step updates them in place
        state = ref.replace(pipeline_state=physics.pipeline_init(q, obs[num_pos:]), obs=obs,
                            metrics=dict(ref.metrics), info=dict(ref.info))
        return physics.step(state, action).obs

    return RGIAEnv(name, env, params, False, obs_dim, physics.action_size, true_step)
