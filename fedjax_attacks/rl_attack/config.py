"""The RL attack's configuration (static) and its validation against the FL run it attacks.

Symbols of the seed paper (000): ``tau_E`` rounds of distribution learning, then the attack; ``(gamma, E, lambda)``
the paper's action, ``(eps, E)`` the reference code's, ``(eta_a, E, alpha)`` the reference code's FLTrust action;
``B~`` the attackers' local-search minibatch; ``G`` the number of local-search trajectories.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_attacks import aggregators
from fedjax_attacks.fl import FLConfig
from fedjax_attacks.rl_attack.distribution import DISTRIBUTIONS
from fedjax_attacks.rl.ppo import PPOConfig
from fedjax_attacks.rl.td3 import TD3Config
from fedjax_attacks.validation import check_choice, check_count, check_flag, check_in_range, check_rate

ACTION_KINDS = ("paper", "reference", "fltrust")
ALGORITHMS = ("td3", "ppo")
EPISODE_STARTS = ("latest", "initial")

# The reference code's action ranges per defense: (kind, low, high). ``reference`` is (eps, E), ``fltrust`` is
# (eta_a, E, alpha). The Krum and clipped-median ranges are the reference's; the others reuse the closest one.
_KRUM = ("reference", (0.1, 1.0), (9.9, 21.0))
_MEDIAN = ("reference", (0.1, 1.0), (29.9, 49.0))
ACTION_RANGES = {
    "krum": _KRUM,
    "multi_krum": _KRUM,
    "mean": _KRUM,
    "geometric_median": _KRUM,
    "rfa": _KRUM,
    "clipped_median": _MEDIAN,
    "median": _MEDIAN,
    "trimmed_mean": _MEDIAN,
    "clipped_mean": _MEDIAN,
    "fltrust": ("fltrust", (0.01, 1.0, 0.0), (0.09, 21.0, 1.0)),
}


@dataclasses.dataclass(frozen=True)
class RLAttackConfig:
    """The model-based RL attack (seed paper 000), its three phases and its policy learner.

    Attributes:
      tau_e: ``tau_E``, the rounds of distribution learning; the attack starts at round ``tau_e``.
      policy_until: the last round before which policy learning runs (the paper: 400 of 1000 rounds); ``None``
        for ``4 * tau_e``.
      chunk_rounds: real FL rounds between two chunks of policy learning.
      policy_iterations: vectorized simulator steps (each ``num_envs`` simulated rounds) of policy learning per
        chunk.
      distribution: ``"learned"`` (reconstructions + the attackers' data, the paper's RL), ``"own"`` (the
        attackers' data only: RL without distribution learning) or ``"unlabeled"`` (RL0: the attackers' images
        only train the denoiser; the simulator sees denoised reconstructions only).
      images_per_round: images reconstructed per selected round (the paper: 32).
      max_targets: at most this many gradient estimates are inverted (the latest ones before ``tau_E``).
      inversion_steps, inversion_restarts, inversion_lr, tv_weight: inverting gradients' optimizer.
      denoiser_steps, denoiser_batch, noise_std: the denoising autoencoder's training steps, minibatch and
        Gaussian noise (0.3).
      heldout_fraction: share of the learned data held out for the reward (the loss increase on it).
      heldout_size: held-out rows (drawn once from that share) the reward's loss is measured on.
      attacker_data: rows the attackers share (the paper: 200 images), drawn once without replacement from the
        malicious clients' shards (``np.random.default_rng(FLConfig.partition_seed)``); ``None`` for all their
        rows. The attackers never see a benign client's rows.
      own_capacity: rows the attackers' own data is padded to (``None``: the next multiple of 128); runs with
        equal capacities share compiled programs (e.g. a sweep over ``M``).
      action: ``"paper"`` ``(gamma, E, lambda)``, ``"reference"`` ``(eps, E)``, ``"fltrust"`` ``(eta_a, E,
        alpha)``; ``None`` picks the aggregator's default from ``ACTION_RANGES``.
      action_low, action_high: the action box; ``None`` takes the aggregator's ranges.
      log_scale: the policy acts on ``log(eps)`` / ``log(gamma)`` (the scale spans two decades; a linear box
        leaves the small scales Krum lets through a sliver of it); the range is the same.
      attack_batch: ``B~``, the minibatch of each local-search step.
      num_trajectories: ``G``, local-search trajectories averaged (paper action only).
      attack_lr: the local-search step size; ``None`` uses the FL learning rate eta (the fltrust action sets its
        own as ``eta_a``).
      root_guess_size: samples of the learned data standing in for FLTrust's unknown root data.
      horizon: simulated rounds per episode.
      num_envs: simulated FL episodes run in parallel (vmapped).
      eval_episodes: held-out simulated episodes, after each chunk, on which the learner's current policy must
        match the deployed one to replace it (``policy.make_learner``); they also give the state-dependence
        diagnostic.
      episode_start: ``"latest"`` (episodes start from the latest global model an attacker received, aggregator
        state from ``init``) or ``"initial"`` (from the initial model theta_0, as the reference code).
      algorithm: ``"td3"`` (the paper's) or ``"ppo"``.
      td3, ppo: learner hyperparameters (``total_timesteps`` and ``num_envs`` there are ignored: the schedule
        above decides). TD3 normalises the rewards by the replay buffer's standard deviation (loss increases are
        heavy-tailed: one diverging round outweighs a hundred) and penalises the actor's pre-``tanh`` outputs,
        which keeps it off the box's corners.
    """

    tau_e: int = 30
    policy_until: Optional[int] = None
    chunk_rounds: int = 30
    policy_iterations: int = 100
    distribution: str = "learned"
    images_per_round: int = 32
    max_targets: int = 16
    inversion_steps: int = 200
    inversion_restarts: int = 2
    inversion_lr: float = 0.05
    tv_weight: float = 2e-2
    denoiser_steps: int = 200
    denoiser_batch: int = 32
    noise_std: float = 0.3
    heldout_fraction: float = 0.2
    heldout_size: int = 128
    attacker_data: Optional[int] = 200
    own_capacity: Optional[int] = None
    action: Optional[str] = None
    action_low: Optional[tuple] = None
    action_high: Optional[tuple] = None
    log_scale: bool = True
    attack_batch: int = 32
    num_trajectories: int = 1
    attack_lr: Optional[float] = None
    root_guess_size: int = 100
    horizon: int = 20
    num_envs: int = 8
    eval_episodes: int = 8
    episode_start: str = "latest"
    algorithm: str = "td3"
    td3: TD3Config = TD3Config(learning_rate=1e-3, batch_size=128, buffer_size=20_000, learning_starts=200,
                               exploration_noise=0.2, hidden=(64, 64), normalize_rewards=True,
                               preactivation_penalty=1e-2)
    ppo: PPOConfig = PPOConfig(num_steps=20, update_epochs=4, num_minibatches=4, learning_rate=3e-4,
                               ent_coef=0.0, hidden=(64, 64))

    @property
    def learner_config(self):
        """``td3`` or ``ppo`` (per ``algorithm``) with ``num_envs`` set to this config's."""
        chosen = self.td3 if self.algorithm == "td3" else self.ppo
        return dataclasses.replace(chosen, num_envs=self.num_envs)

    @property
    def last_policy_round(self) -> int:
        """The round before which policy learning stops (``policy_until`` or ``4 * tau_e``)."""
        return 4 * self.tau_e if self.policy_until is None else self.policy_until

    def validate(self, fl_config: FLConfig) -> "ActionSpace":
        """Checks this config against the FL run; returns the resolved ``ActionSpace``.

        Raises:
          ValueError: naming the field: ``tau_e`` not in [1, rounds), no attackers (``num_malicious``), FedAvg,
            an aggregator the simulator cannot mirror, an unknown option, or an action range with low >= high.
        """
        fl_config.validate()
        for name in ("tau_e", "chunk_rounds", "policy_iterations", "images_per_round", "max_targets",
                     "inversion_steps", "inversion_restarts", "denoiser_steps", "denoiser_batch", "heldout_size",
                     "attack_batch", "num_trajectories", "root_guess_size", "horizon", "num_envs", "eval_episodes"):
            check_count(self, name)
        if self.policy_until is not None:
            check_count(self, "policy_until", 0)
        if self.own_capacity is not None:
            check_count(self, "own_capacity")
        if self.attacker_data is not None:
            check_count(self, "attacker_data")
        if self.tau_e >= fl_config.rounds:
            raise ValueError(f"RLAttackConfig.tau_e (tau_E={self.tau_e}) must be below the number of rounds "
                             f"FLConfig.rounds={fl_config.rounds}: the attack starts at round tau_E")
        if fl_config.num_malicious < 1:
            raise ValueError("FLConfig.num_malicious is 0: the RL attack needs at least one attacker")
        if fl_config.mode != "fedsgd":
            raise ValueError(f"FLConfig.mode={fl_config.mode!r}: the RL attack's simulator mirrors FedSGD "
                             "(mode='fedsgd'), the seed paper's protocol")
        for name, options in (("distribution", DISTRIBUTIONS), ("algorithm", ALGORITHMS),
                              ("episode_start", EPISODE_STARTS)):
            check_choice(self, name, options)
        if self.action is not None:
            check_choice(self, "action", ACTION_KINDS)
        check_flag(self, "log_scale")
        check_in_range(self, "heldout_fraction", 0.0, 1.0, low_open=True)
        if self.heldout_fraction == 1.0:
            raise ValueError("RLAttackConfig.heldout_fraction must lie in (0, 1): 1 leaves no data to simulate with")
        check_rate(self, "inversion_lr")
        for name in ("noise_std", "tv_weight"):
            check_in_range(self, name, 0.0)
        if self.attack_lr is not None:
            check_rate(self, "attack_lr")
        _check_mirrorable(fl_config, self.episode_start)
        space = self._action_space(fl_config.aggregator)
        self.learner_config.validate()
        return space

    def _action_space(self, aggregator: str) -> "ActionSpace":
        default = ACTION_RANGES.get(aggregator)
        kind = self.action or (default[0] if default else None)
        if kind is None:
            raise ValueError(f"RLAttackConfig.action: no default action for aggregator {aggregator!r} (defaults "
                             f"exist for {', '.join(sorted(ACTION_RANGES))}); pass action, action_low and "
                             "action_high")
        if kind not in ACTION_KINDS:
            raise ValueError(f"RLAttackConfig.action must be one of {ACTION_KINDS} or None, got {kind!r}")
        low, high = self.action_low, self.action_high
        if low is None or high is None:
            if default is None:
                raise ValueError(f"RLAttackConfig.action_low/action_high: no default range for aggregator "
                                 f"{aggregator!r}; pass both")
            d_low, d_high = default[1], default[2]
            if kind == "paper":  # (gamma, E, lambda): the reference's scale and E ranges, lambda in [0, 1]
                d_low, d_high = (*d_low[:2], 0.0), (*d_high[:2], 1.0)
            elif kind != default[0]:
                raise ValueError(f"RLAttackConfig.action={kind!r} has no default range under aggregator "
                                 f"{aggregator!r}; pass action_low and action_high")
            low = d_low if low is None else low
            high = d_high if high is None else high
        return ActionSpace.make(kind, low, high, self.log_scale and kind != "fltrust")


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """The attackers' action box: ``kind``, per-dimension ``low < high`` (static tuples of floats) and whether
    the policy acts on the log of dimension 0 (``log_scale``; ``box`` is then ``[log low_0, log high_0]``)."""

    kind: str
    low: tuple
    high: tuple
    log_scale: bool = False

    @staticmethod
    def make(kind: str, low, high, log_scale: bool = False) -> "ActionSpace":
        """Validates the dimensions (3 for ``paper``/``fltrust``, 2 for ``reference``) and ``low < high``."""
        dim = 2 if kind == "reference" else 3
        for name, box in (("action_low", low), ("action_high", high)):
            if not isinstance(box, (tuple, list)) or any(isinstance(v, (bool, str)) or not np.isscalar(v)
                                                         for v in box):
                raise ValueError(f"RLAttackConfig.{name} must be a tuple of numbers, got {box!r}")
        low, high = tuple(float(v) for v in low), tuple(float(v) for v in high)
        if len(low) != dim or len(high) != dim:
            raise ValueError(f"RLAttackConfig.action_low/action_high: action {kind!r} has {dim} dimensions, got "
                             f"low={low}, high={high}")
        for i, (lo, hi) in enumerate(zip(low, high)):
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"RLAttackConfig.action_low/action_high: dimension {i} needs low < high, got "
                                 f"[{lo}, {hi}]")
        if low[1] < 1:
            raise ValueError(f"RLAttackConfig.action_low: E (dimension 1) must be >= 1, got {low[1]}")
        if kind == "paper" and not (0.0 <= low[2] and high[2] <= 1.0):
            raise ValueError(f"RLAttackConfig.action_low/action_high: lambda must lie in [0, 1], got "
                             f"[{low[2]}, {high[2]}]")
        if kind == "fltrust" and not (low[0] > 0 and 0.0 <= low[2] and high[2] <= 1.0):
            raise ValueError(f"RLAttackConfig.action_low/action_high: fltrust needs eta_a > 0 and alpha in [0, 1], "
                             f"got low={low}, high={high}")
        if log_scale and not low[0] > 0:
            raise ValueError(f"RLAttackConfig.action_low: log_scale needs a positive scale, got {low[0]}")
        return ActionSpace(kind, low, high, bool(log_scale))

    @property
    def box(self) -> tuple:
        """``(low, high)`` of the box the policy acts in (dimension 0 in log space under ``log_scale``)."""
        if not self.log_scale:
            return self.low, self.high
        return (np.log(self.low[0]), *self.low[1:]), (np.log(self.high[0]), *self.high[1:])

    def decode(self, action):
        """The policy's action (in ``box``) -> the crafting parameters (``exp`` of dimension 0 under
        ``log_scale``); works on NumPy and JAX arrays with the action on the last axis."""
        if not self.log_scale:
            return action
        xp = jax.numpy if isinstance(action, jax.Array) else np
        return xp.concatenate([xp.exp(action[..., :1]), action[..., 1:]], axis=-1)

    @property
    def max_steps(self) -> int:
        """The largest number of local steps ``E`` an action can ask for."""
        return int(np.floor(self.high[1] + 0.5))


def _check_mirrorable(fl_config: FLConfig, episode_start: str) -> None:
    """The simulator runs the server's own rule; it cannot mirror a rule whose state the attackers never see."""
    rule = aggregators.get(fl_config.aggregator, **dict(fl_config.aggregator_hparams))
    try:  # shapes only: the rule's own checks on w rows (e.g. Krum's n > 2f + 2) run before anything else
        jax.eval_shape(lambda: rule.update(jnp.zeros((fl_config.clients_per_round, 8)), rule.init(8),
                                           key=jax.random.PRNGKey(0), server_update=jnp.ones(8)))
    except ValueError as error:
        raise ValueError(f"FLConfig.aggregator={fl_config.aggregator!r} on w={fl_config.clients_per_round} "
                         f"updates: {error}") from None
    state = jax.eval_shape(lambda: rule.init(8))
    if jax.tree_util.tree_leaves(state) and episode_start == "latest":
        raise ValueError(f"FLConfig.aggregator={fl_config.aggregator!r} keeps a state across rounds that the "
                         "attackers never observe, so a simulator starting from the latest global model cannot "
                         "mirror it; use RLAttackConfig.episode_start='initial' or a stateless rule")
