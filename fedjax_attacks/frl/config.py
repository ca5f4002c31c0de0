"""The configurations of ByzPG and DecByzPG, their validation and the probabilistic switch.

Symbols (Jordan et al., 2024, Alg. 1 and 2; Table 1): ``K`` agents of which ``f`` are Byzantine, large batch
``N``, small batch ``B``, switching probability ``p``, step size ``eta`` (Adam), discount ``gamma``, horizon ``H``.
Measured figures for these settings are in the README.
"""

import dataclasses
import math
from typing import Any, Mapping

import jax
import numpy as np

from fedjax_attacks import aggregators, attacks
from fedjax_attacks.frl import agreement as agr
from fedjax_attacks.rl import policy_gradient as pg

# Byzantine behaviours of the paper's experiments (Sec. 6.2) as config changes: RandomAction is a rollout
# behaviour; LargeNoise and AvgZero are the attack registry's ``large_noise`` (U[-1000, 1000]) and ``avg_zero``.
BEHAVIOURS: Mapping[str, Mapping[str, Any]] = {
    "random_action": {"random_actions": True},
    "large_noise": {"attack": "large_noise"},
    "avg_zero": {"attack": "avg_zero"},
}


@dataclasses.dataclass(frozen=True)
class ByzPGConfig:
    """Static hyperparameters of ByzPG; defaults are the paper's CartPole setting (Table 1, Adam 5e-3).

    Attributes:
      env_name: environment for ``fedjax_attacks.rl.env.make``.
      num_agents, num_byzantine: ``K`` and ``f``.
      attack, attack_hparams: what the Byzantine agents send, any name of ``fedjax_attacks.attacks`` (``"none"``,
        ``"large_noise"``, ``"avg_zero"``, ``"ipm"``, ``"alie"``, ...) and its hyperparameters; the honest messages
        are the attack's ``updates`` (full knowledge).
      random_actions: the Byzantine agents act uniformly at random in their environments (RandomAction) and
        otherwise follow the protocol; combinable with an ``attack``.
      per_recipient: the Byzantine agents craft a separate message for every recipient (LargeNoise draws fresh
        noise per recipient); False broadcasts one message to all.
      resample_byzantine: draw a new Byzantine set every iteration (allowed by Assumption 1) instead of
        agents ``0..f-1``.
      aggregator, aggregator_hparams: a name in ``fedjax_attacks.aggregators`` and its hyperparameters (a mapping);
        ``"mean"`` gives the plain-averaging baselines Fed-/Dec-PAGE-PG. Stateful rules keep their state per
        aggregating party. FLTrust needs server data, which FRL has not.
      bucket_size: ``s`` of bucketing (Karimireddy et al., 2022) around the aggregator; 1 = no bucketing.
      large_batch, small_batch, switch_prob: ``N``, ``B``, ``p``.
      learning_rate, gamma, horizon: Adam step size ``eta``, discount ``gamma``, trajectory horizon ``H``.
      importance_weights: PAGE-PG's ``g_B^w`` estimator, ``"trajectory"`` or ``"per_step"``
        (``fedjax_attacks.rl.policy_gradient.page_pg_estimate``).
      hidden, activation, output_activation: the MLP policy.
    """

    env_name: str = "CartPole-v1"
    num_agents: int = 13
    num_byzantine: int = 0
    attack: str = "none"
    attack_hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    random_actions: bool = False
    per_recipient: bool = True
    resample_byzantine: bool = False
    aggregator: str = "rfa"
    aggregator_hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    bucket_size: int = 1
    large_batch: int = 50
    small_batch: int = 4
    switch_prob: float = 0.2
    learning_rate: float = 5e-3
    importance_weights: str = "trajectory"
    gamma: float = 0.999
    horizon: int = 500
    hidden: tuple = (16, 16)
    activation: str = "relu"
    output_activation: str = "tanh"

    def validate(self) -> None:
        """``ValueError`` naming the first inconsistent field, before anything is traced.

        Assumption 1 needs ``f < K / 2`` (ByzPG) or ``f < K / 3`` (DecByzPG) for the guarantees; larger ``f`` is
        allowed (it is an experiment), but ``f < K`` is required.
        """
        name = type(self).__name__
        for field in ("num_agents", "large_batch", "small_batch", "horizon", "bucket_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}.{field} must be an integer >= 1, got {value!r}")
        if not 0 <= self.num_byzantine < self.num_agents:
            raise ValueError(f"{name}: need 0 <= num_byzantine < num_agents, got f={self.num_byzantine}, "
                             f"K={self.num_agents}")
        byzantine_act = self.attack != "none" or self.random_actions
        if (self.num_byzantine > 0) != byzantine_act:
            raise ValueError(f"{name}: num_byzantine={self.num_byzantine} needs a Byzantine behaviour (attack != "
                             f"'none' or random_actions) exactly when it is > 0; got attack={self.attack!r}, "
                             f"random_actions={self.random_actions}")
        attacks.get(self.attack, **dict(self.attack_hparams))  # unknown names and bad hyperparameters
        if not 0.0 < self.switch_prob <= 1.0:
            raise ValueError(f"{name}.switch_prob must be in (0, 1], got {self.switch_prob}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"{name}.gamma must be in (0, 1], got {self.gamma}")
        if not self.learning_rate > 0:
            raise ValueError(f"{name}.learning_rate must be > 0, got {self.learning_rate}")
        if self.importance_weights not in pg.IMPORTANCE_WEIGHTS:
            raise ValueError(f"{name}.importance_weights must be one of {pg.IMPORTANCE_WEIGHTS}, "
                             f"got {self.importance_weights!r}")
        rule = aggregators.check_final(aggregators.get(self.aggregator, **dict(self.aggregator_hparams)),
                                       f"{name}.aggregator={self.aggregator!r}")
        if "server_update" in rule.needs:
            raise ValueError(f"{name}.aggregator={self.aggregator!r} needs the server's root-data update "
                             f"(FLTrust's g0); federated RL has no server data")


@dataclasses.dataclass(frozen=True)
class DecByzPGConfig(ByzPGConfig):
    """DecByzPG's hyperparameters: ByzPG's plus the agreement.

    Attributes:
      agreement, agreement_rounds: Avg-Agree's rule (``"mda"``, ``"gda"``, ``"none"``) and its number of rounds;
        0 means ``ceil(log2 K)``.
      aggregate_every_iteration: also aggregate the small-batch estimates, as the authors' code does
        (``fedjax_attacks.frl.decbyzpg``); False is Algorithm 2.
    """

    agreement: str = "mda"
    agreement_rounds: int = 0
    aggregate_every_iteration: bool = False

    @property
    def num_rounds(self) -> int:
        """Avg-Agree rounds: ``agreement_rounds`` or ``ceil(log2 K)`` (at least 1)."""
        return self.agreement_rounds or max(1, math.ceil(math.log2(self.num_agents)))

    def validate(self) -> None:
        """``ByzPGConfig.validate`` plus the agreement rule (``ValueError`` before tracing)."""
        super().validate()
        if isinstance(self.agreement_rounds, bool) or not isinstance(self.agreement_rounds, int) or \
                self.agreement_rounds < 0:
            raise ValueError(f"DecByzPGConfig.agreement_rounds must be an integer >= 0, got "
                             f"{self.agreement_rounds!r}")
        agr.check_rule(self.agreement, self.num_agents, self.num_byzantine)


CARTPOLE = DecByzPGConfig()
# Acrobot-v1 stands in for LunarLander (no JAX version) with the paper's LunarLander hyperparameters; gymnax's
# Acrobot has a 500-step limit, so the horizon is 500 instead of 1000.
ACROBOT = DecByzPGConfig(env_name="Acrobot-v1", hidden=(64, 64), activation="tanh", large_batch=96, small_batch=32,
                         learning_rate=1e-3, horizon=500)


def sample_switches(key, config: ByzPGConfig, max_trajectories: int, multiple_of: int = 1) -> np.ndarray:
    """The shared coin flips ``c_t ~ Bernoulli(p)`` (``c_0 = 1``) of a run of ``max_trajectories`` per agent.

    Returns bool[T] with ``T`` the first iteration count whose trajectories per agent (``N`` on a large-batch
    iteration, ``B`` otherwise) reach ``max_trajectories``, rounded up to a multiple of ``multiple_of`` (to run
    in equal chunks). Pass the same switches to every seed so ``lax.cond`` stays a branch under ``vmap``.
    """
    upper = -(-max_trajectories // config.small_batch) + multiple_of
    coins = np.array(jax.random.bernoulli(key, config.switch_prob, (upper,)))
    coins[0] = True
    cumulative = np.cumsum(trajectories_per_iteration(coins, config))
    length = int(np.searchsorted(cumulative, max_trajectories)) + 1
    length = -(-length // multiple_of) * multiple_of
    return coins[:length]


def trajectories_per_iteration(switches, config: ByzPGConfig) -> np.ndarray:
    """Trajectories sampled per agent at each iteration: ``N`` where ``c_t = 1``, else ``B``."""
    return np.where(np.asarray(switches), config.large_batch, config.small_batch)
