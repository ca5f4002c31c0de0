"""What every backdoor attack shares: its hyperparameters, the target action, and the reward rule.

SleeperNets (Rathbun et al., NeurIPS 2024) and the inner-loop baselines TrojDRL-W and BadRL-M all teach the agent
to take a target action ``a+`` in triggered states ``delta(s)``, within a poisoning budget ``beta`` (the fraction
of training states poisoned), by giving ``+c`` to ``a+`` and ``-c`` to any other action there.

The target is an action index for a discrete action space, or a sign (``+1`` / ``-1``) of one coordinate of a
continuous action (PPO's unit-box action; its sign is that of the environment's action relative to the midpoint
of the ``Box``).
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp

from fedjax_attacks.rl import env as env_lib


@dataclasses.dataclass(frozen=True)
class BackdoorConfig:
    """Hyperparameters of a backdoor attack (paper symbols in brackets).

    Attributes:
      target: the target action ``a+``: an action index (discrete), or ``+1`` / ``-1``, the sign of coordinate
        ``target_dim`` of the action (continuous).
      budget: ``beta``, the fraction of training states poisoned, in ``(0, 1]`` (paper: 0.5%, as low as 0.03%).
      reward: ``c``, the poisoned reward is ``+c`` for ``a+`` and ``-c`` otherwise (paper default 5).
      alpha: ``alpha`` of SleeperNets' dynamic reward ``r' = +-c - alpha (G_t - r_t)`` (paper default 0.5).
      asr_stop: SleeperNets poisons a rollout only while its training ASR is below this (paper: 1, i.e. stop once
        the agent takes ``a+`` with probability 1 in every triggered state of the rollout).
      target_dim: the action coordinate whose sign is the target (continuous actions only).

    ``budget``, ``reward``, ``alpha`` and ``asr_stop`` may be traced (``dataclasses.replace`` inside ``jax.vmap``
    sweeps them); ``target`` and ``target_dim`` are static.
    """

    target: int = 0
    budget: float = 0.005
    reward: float = 5.0
    alpha: float = 0.5
    asr_stop: float = 1.0
    target_dim: int = 0

    def validate(self, spec: env_lib.EnvSpec | None = None) -> None:
        """Raises ``ValueError`` naming the field: a budget outside ``(0, 1]``, a target outside the action space.

        Float fields are checked only when they are Python numbers (traced values pass through).
        """
        if _is_number(self.budget) and not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget (beta) must lie in (0, 1], got {self.budget}")
        if _is_number(self.reward) and not self.reward > 0.0:
            raise ValueError(f"reward (c) must be > 0, got {self.reward}")
        if _is_number(self.alpha) and not self.alpha >= 0.0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if _is_number(self.asr_stop) and not 0.0 < self.asr_stop <= 1.0:
            raise ValueError(f"asr_stop must lie in (0, 1], got {self.asr_stop}")
        if spec is None:
            return
        if spec.discrete and not (isinstance(self.target, int) and 0 <= self.target < spec.num_actions):
            raise ValueError(f"target action {self.target!r} is outside the action space Discrete({spec.num_actions})")
        if not spec.discrete:
            if self.target not in (-1, 1):
                raise ValueError(f"target must be the sign +1 or -1 of a continuous action, got {self.target!r}")
            if not (isinstance(self.target_dim, int) and 0 <= self.target_dim < spec.num_actions):
                raise ValueError(f"target_dim {self.target_dim!r} is outside the action dimensions "
                                 f"[0, {spec.num_actions})")


def is_target(config: BackdoorConfig, spec: env_lib.EnvSpec, action: chex.Array) -> chex.Array:
    """``a == a+`` for PPO's sampled ``action`` ``[..., ]`` (discrete) or ``[..., d]`` (continuous, unit box)."""
    if spec.discrete:
        return action == config.target
    return jnp.sign(action[..., config.target_dim]) == config.target


def target_probability(config: BackdoorConfig, spec: env_lib.EnvSpec, dist) -> chex.Array:
    """``pi(a+ | s)`` under ``dist`` (a ``Categorical``, or a unit-box ``DiagGaussian``: ``P(sign(a_d) = a+)``)."""
    if spec.discrete:
        return dist.probs()[..., config.target]
    z = dist.mean[..., config.target_dim] * jnp.exp(-dist.log_std[..., config.target_dim])
    return jax.scipy.stats.norm.cdf(config.target * z)


def poisoned_reward(config: BackdoorConfig, spec: env_lib.EnvSpec, action: chex.Array) -> chex.Array:
    """The static poisoned reward of TrojDRL and BadRL (SleeperNets' before its ``alpha`` term): ``+c`` / ``-c``."""
    return jnp.where(is_target(config, spec, action), config.reward, -config.reward).astype(jnp.float32)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
