"""Advantage and return targets over time-major rollouts ``[T, ...]``.

Conventions shared by both functions: ``terminated[t]`` means the step ``t -> t+1`` ended the episode in a
terminal state (no bootstrap); ``dones[t] = terminated[t] | truncated[t]`` means the next entry of the rollout
belongs to a new episode. ``bootstrap_values[t]`` is the value of the true next observation of step ``t``
(before any auto-reset); it is read only where it is needed: at episode boundaries and at the last step.
Elsewhere the next value is ``values[t + 1]``, so a poison that edits ``values`` changes the targets consistently.
"""

import chex
import jax
import jax.numpy as jnp


def next_values(values: chex.Array, bootstrap_values: chex.Array, dones: chex.Array) -> chex.Array:
    """``values[t + 1]`` inside an episode, ``bootstrap_values[t]`` at episode ends and at the last step."""
    shifted = jnp.concatenate([values[1:], bootstrap_values[-1:]], axis=0)
    return jnp.where(dones, bootstrap_values, shifted)


def gae(rewards: chex.Array, values: chex.Array, bootstrap_values: chex.Array, terminated: chex.Array,
        truncated: chex.Array, gamma: float, lam: float) -> tuple[chex.Array, chex.Array]:
    """Generalized advantage estimation (Schulman et al. 2016); returns ``(advantages, value_targets)``.

    ``delta_t = r_t + gamma (1 - terminated_t) V_next_t - V_t`` and
    ``A_t = delta_t + gamma lam (1 - done_t) A_{t+1}``; truncated steps bootstrap from the value of the final
    observation instead of being treated as terminal. Arrays are time-major ``[T, ...]``.
    """
    dones = jnp.logical_or(terminated, truncated)
    v_next = next_values(values, bootstrap_values, dones)
    not_term = 1.0 - terminated.astype(values.dtype)
    not_done = 1.0 - dones.astype(values.dtype)
    deltas = rewards + gamma * not_term * v_next - values

    def body(adv_next, xs):
        delta, cont = xs
        adv = delta + gamma * lam * cont * adv_next
        return adv, adv

    _, advantages = jax.lax.scan(body, jnp.zeros_like(values[0]), (deltas, not_done), reverse=True)
    return advantages, advantages + values


def n_step_targets(rewards: chex.Array, bootstrap_values: chex.Array, terminated: chex.Array,
                   truncated: chex.Array, gamma: float, n: int) -> chex.Array:
    """n-step return targets ``sum_{k<m} gamma^k r_{t+k} + gamma^m V(s_{t+m})`` with ``m <= n``.

    The sum stops early at an episode end (bootstrapping from ``bootstrap_values`` of that step unless it
    terminated) and at the end of the rollout. ``bootstrap_values[t]`` is the value of step ``t``'s true next
    observation. ``n`` is static.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    not_term = 1.0 - terminated.astype(rewards.dtype)
    dones = jnp.logical_or(terminated, truncated)
    one_step = rewards + gamma * not_term * bootstrap_values
    targets = one_step
    for _ in range(n - 1):
        later = jnp.concatenate([targets[1:], one_step[-1:]], axis=0)
        last = jnp.zeros_like(dones).at[-1].set(True)
        targets = jnp.where(jnp.logical_or(dones, last), one_step, rewards + gamma * later)
    return targets
