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
import numpy as np

from fedjax_attacks import validation
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
      asr_stop: every attack poisons a rollout only while the training ASR is below this (paper and reference:
        1, i.e. stop once the agent takes ``a+`` with probability 1 in every triggered state of the rollout);
        SleeperNets measures it on the rollout itself, TrojDRL-W and BadRL-M on the previous one.
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
        """Raises ``ValueError`` naming the field (``fedjax_attacks.validation``'s checks): ``budget`` and
        ``asr_stop`` finite in ``(0, 1]``, ``reward`` finite ``> 0``, ``alpha`` finite ``>= 0`` (strings, bools and
        NaN are refused), ``target`` an integer and ``target_dim`` an integer ``>= 0``; with ``spec``, a target
        outside the action space.

        A float field that is a JAX array passes unchecked: a traced value, or the per-run settings
        ``runs.make_comparison`` writes in (a budget of 0 for the attacks not chosen); ``runs.run_settings`` checks
        the concrete values where the runs are made.
        """
        for field, high in (("budget", 1.0), ("alpha", float("inf")), ("asr_stop", 1.0)):
            if not isinstance(getattr(self, field), jax.Array):
                validation.check_in_range(self, field, 0.0, high, low_open=field != "alpha")
        if not isinstance(self.reward, jax.Array):
            validation.check_rate(self, "reward")
        if isinstance(self.target, bool) or not isinstance(self.target, (int, np.integer)):
            raise ValueError(f"BackdoorConfig.target must be an integer (an action index, or the sign +1 / -1), "
                             f"got {self.target!r}")
        validation.check_count(self, "target_dim", minimum=0)
        if spec is None:
            return
        if spec.discrete and not 0 <= self.target < spec.num_actions:
            raise ValueError(f"BackdoorConfig.target: target action {self.target!r} is outside the action space "
                             f"Discrete({spec.num_actions})")
        if not spec.discrete:
            if self.target not in (-1, 1):
                raise ValueError(f"BackdoorConfig.target must be the sign +1 or -1 of a continuous action, got "
                                 f"{self.target!r}")
            if not self.target_dim < spec.num_actions:
                raise ValueError(f"BackdoorConfig.target_dim {self.target_dim!r} is outside the action dimensions "
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
