"""The configurations of ByzPG and DecByzPG, their validation and the probabilistic switch.

Symbols (Jordan et al., 2024, Alg. 1 and 2; Table 1): ``K`` agents of which ``f`` are Byzantine, large batch
``N``, small batch ``B``, switching probability ``p``, step size ``eta`` (Adam), discount ``gamma``, horizon ``H``.
Measured figures for these settings are in the README.
"""

import dataclasses
import math
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np

from fedjax_attacks import aggregators, attacks, validation
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
      bucket_size: ``s`` of bucketing (Karimireddy et al., 2022) around the aggregator; 1 = no bucketing, else
        ``s < K`` (one bucket of all ``K`` vectors would make any rule the mean).
      large_batch, small_batch, switch_prob: ``N``, ``B``, ``p``.
      learning_rate, gamma, horizon: Adam step size ``eta``, discount ``gamma``, trajectory horizon ``H``.
      importance_weights: PAGE-PG's ``g_B^w`` estimator, ``"trajectory"`` or ``"per_step"``
        (``fedjax_attacks.rl.policy_gradient.page_pg_estimate``).
      hidden, activation, output_activation: the MLP policy. The paper's (Table 1) output activation is
        ``"tanh"``: the logits lie in ``[-1, 1]``, so with two actions no action has probability above
        ``1 / (1 + e^-2) = 0.88`` and the sampled returns level below the greedy ones; ``"identity"`` gives
        unbounded logits (outside the paper's setting).
      allow_byzantine_majority: allow ``2 f >= K`` (no honest majority). This is outside Assumption 1, so it
        is refused unless set, for experiments on the breakdown point.
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
    allow_byzantine_majority: bool = False

    def validate(self) -> None:
        """``ValueError`` naming the first inconsistent field, before anything is traced.

        Assumption 1 needs ``f < K / 2`` (ByzPG) or ``f < K / 3`` (DecByzPG) for the guarantees. A Byzantine
        majority (``2 f >= K``) is refused unless ``allow_byzantine_majority`` is set; ``f < K`` is always required.
        """
        name = type(self).__name__
        for field in ("num_agents", "large_batch", "small_batch", "horizon", "bucket_size"):
            validation.check_count(self, field)
        validation.check_count(self, "num_byzantine", minimum=0)
        if self.bucket_size > 1 and self.bucket_size >= self.num_agents:
            raise ValueError(f"{name}.bucket_size={self.bucket_size} >= num_agents={self.num_agents} puts the K "
                             f"vectors an aggregator receives into one bucket, so any rule returns their mean; use "
                             f"bucket_size < K (or 1: no bucketing)")
        if not self.num_byzantine < self.num_agents:
            raise ValueError(f"{name}: need 0 <= num_byzantine < num_agents, got f={self.num_byzantine}, "
                             f"K={self.num_agents}")
        for flag in ("allow_byzantine_majority", "random_actions", "per_recipient"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{name}.{flag} must be a bool, got {getattr(self, flag)!r}")
        validation.check_layers(self)
        if 2 * self.num_byzantine >= self.num_agents and not self.allow_byzantine_majority:
            raise ValueError(f"{name}: num_byzantine={self.num_byzantine} of num_agents={self.num_agents} leaves no "
                             f"honest majority (2 f >= K), outside the paper's assumptions; set "
                             f"allow_byzantine_majority=True to run it as an experiment")
        byzantine_act = self.attack != "none" or self.random_actions
        if (self.num_byzantine > 0) != byzantine_act:
            raise ValueError(f"{name}: num_byzantine={self.num_byzantine} needs a Byzantine behaviour (attack != "
                             f"'none' or random_actions) exactly when it is > 0; got attack={self.attack!r}, "
                             f"random_actions={self.random_actions}")
        attacks.get(self.attack, **dict(self.attack_hparams))  # unknown names and bad hyperparameters
        validation.check_in_range(self, "switch_prob", 0.0, 1.0, low_open=True)
        validation.check_in_range(self, "gamma", 0.0, 1.0, low_open=True)
        validation.check_rate(self, "learning_rate")
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
# Continuous control (not in the paper): brax's inverted pendulum with a Gaussian policy (tanh-bounded mean in the
# action box [-1, 1], a learned log-std), CartPole's batch sizes and step size, a 200-step horizon.
INVERTED_PENDULUM = DecByzPGConfig(env_name="brax:inverted_pendulum", activation="tanh", horizon=200)


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_switches(switches) -> np.ndarray:
    """The coins ``c_t`` as a non-empty bool[T] array starting with ``c_0 = 1`` (PAGE's first iteration is a large
    batch: there is no ``v_{-1}`` to correct); ``ValueError`` for an empty sequence, non-bool values (floats such as
    ``0.3`` are refused rather than read as ``True``) or ``c_0 = 0``. Traced coins pass unchecked."""
    if isinstance(switches, jax.core.Tracer):
        return switches
    array = np.asarray(switches)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"switches must be a non-empty 1-d sequence of coins, got shape {array.shape}")
    if array.dtype != np.bool_:
        raise ValueError(f"switches must be booleans (the coins c_t), got dtype {array.dtype}")
    if not array[0]:
        raise ValueError("switches must start with c_0 = True: PAGE's first iteration is a large batch")
    return array


def sample_switches(key, config: ByzPGConfig, max_trajectories: int, multiple_of: int = 1) -> np.ndarray:
    """The shared coin flips ``c_t ~ Bernoulli(p)`` (``c_0 = 1``) of a run of ``max_trajectories`` per agent.

    Returns bool[T] with ``T`` the first iteration count whose trajectories per agent (``N`` on a large-batch
    iteration, ``B`` otherwise) reach ``max_trajectories``, rounded up to a multiple of ``multiple_of`` (to run
    in equal chunks). For many seeds, each with its own coins, in one program see ``sample_block_schedules``.
    """
    _check_int("max_trajectories", max_trajectories)
    _check_int("multiple_of", multiple_of)
    upper = -(-max_trajectories // min(config.small_batch, config.large_batch)) + multiple_of  # N < B is allowed
    coins = np.array(jax.random.bernoulli(key, config.switch_prob, (upper,)))
    coins[0] = True
    cumulative = np.cumsum(trajectories_per_iteration(coins, config))
    length = int(np.searchsorted(cumulative, max_trajectories)) + 1
    length = -(-length // multiple_of) * multiple_of
    return coins[:length]


def trajectories_per_iteration(switches, config: ByzPGConfig) -> np.ndarray:
    """Trajectories sampled per agent at each iteration: ``N`` where ``c_t = 1``, else ``B``."""
    return np.where(np.asarray(switches), config.large_batch, config.small_batch)


class Blocks(NamedTuple):
    """A run cut into blocks of ``B`` trajectories per agent, the unit of work that batches over seeds.

    An iteration with ``c_t = 0`` is one block (the small batch); one with ``c_t = 1`` is ``ceil(N / B)``
    blocks whose GPOMDP sums add up to the large-batch estimate (the last block counts only ``N mod B``
    episodes when ``B`` does not divide ``N``). Every block costs the same whatever the coin, so seeds with
    different coins run in lockstep in one vmapped program. Arrays of shape [M] (or [S, M] for S seeds):

    Attributes:
      large: bool, the block belongs to a large-batch iteration (``c_t = 1``).
      index: int32, the block's position ``j`` within its iteration.
      count: int32, the episodes it counts (``<= B``).
      last: bool, it completes its iteration (the parameters step after it).
    """

    large: Any
    index: Any
    count: Any
    last: Any


def blocks_per_large_batch(config: ByzPGConfig) -> int:
    """``ceil(N / B)``: the blocks of a large-batch iteration."""
    return -(-config.large_batch // config.small_batch)


def block_schedule(switches, config: ByzPGConfig) -> Blocks:
    """The ``Blocks`` (numpy, [M]) of the iterations with coins ``switches``, in order."""
    coins = check_switches(switches)
    per_iteration = np.where(coins, blocks_per_large_batch(config), 1)
    starts = np.cumsum(per_iteration) - per_iteration
    large = np.repeat(coins, per_iteration)
    index = (np.arange(per_iteration.sum()) - np.repeat(starts, per_iteration)).astype(np.int32)
    count = np.where(large, np.minimum(config.small_batch, config.large_batch - index * config.small_batch),
                     config.small_batch).astype(np.int32)
    last = index == np.repeat(per_iteration, per_iteration) - 1
    return Blocks(large, index, count, last)


def iteration_schedule(switches, config: ByzPGConfig) -> Blocks:
    """The iterations of coins ``switches`` as ``Blocks`` (numpy, [T]) of one step each: ``index`` 0, ``count``
    ``N`` or ``B``, ``last`` set (what ``frl.batch.make_variants(..., steps="iterations")`` follows)."""
    coins = check_switches(switches)
    count = np.where(coins, config.large_batch, config.small_batch).astype(np.int32)
    return Blocks(coins, np.zeros(coins.shape, np.int32), count, np.ones(coins.shape, bool))


def check_blocks(blocks: Blocks, config: ByzPGConfig, whole_iterations: bool = False) -> Blocks:
    """``ValueError`` unless concrete ``blocks`` ([M], or [S, M] for S seeds) are, for every seed, what
    ``block_schedule`` (with ``whole_iterations``: ``iteration_schedule``) makes of their own coins for
    ``config``'s ``N`` and ``B``, possibly cut at the end (as ``sample_block_schedules`` cuts), starting with
    ``c_0 = 1``. A run follows the blocks' ``count`` and ``last``, so blocks made for another ``N`` or ``B``, or
    for the other kind of steps, would silently override the config. Traced blocks (inside ``jit`` or ``vmap``)
    pass unchecked. Returns ``blocks``."""
    if any(isinstance(a, jax.core.Tracer) for a in blocks):
        return blocks
    arrays = [np.asarray(a) for a in blocks]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim not in (1, 2) or arrays[0].shape[-1] == 0:
        raise ValueError(f"Blocks arrays must share one shape [M] or [S, M] with M >= 1, got "
                         f"{[a.shape for a in arrays]}")
    make, other = (iteration_schedule, block_schedule) if whole_iterations else (block_schedule, iteration_schedule)
    length = arrays[0].shape[-1]
    for seed, row in enumerate(zip(*(a.reshape(-1, length) for a in arrays))):
        large, index, count, last = row
        if not large[0] or index[0] != 0:
            raise ValueError(f"Blocks (seed {seed}) must start with c_0 = True: PAGE's first iteration is a large "
                             f"batch")
        coins = large[index == 0].astype(bool)
        if _follows(row, make(coins, config)):
            continue
        if _follows(row, other(coins, config)):
            raise ValueError(f"Blocks (seed {seed}) were made by {other.__name__} (sample_block_schedules(..., "
                             f"whole_iterations={not whole_iterations})), not {make.__name__}: " + (
                                 "stepping by whole iterations would repeat each large-batch iteration once per "
                                 "block" if whole_iterations else "stepping by blocks would count only B of a "
                                 "large-batch iteration's N episodes"))
        first = count[:int(np.argmax(last)) + 1] if last.any() else count
        raise ValueError(f"Blocks (seed {seed}) do not follow {make.__name__} of their coins for "
                         f"{type(config).__name__}(large_batch={config.large_batch}, "
                         f"small_batch={config.small_batch}): their first iteration counts {int(first.sum())} "
                         f"episodes in blocks of up to {int(count.max())}; blocks made for another large_batch N or "
                         f"small_batch B would override the config's")
    return blocks


def _follows(row, schedule: Blocks) -> bool:
    """Whether the arrays ``row`` (one seed's blocks) are ``schedule``, possibly cut at the end."""
    length = len(row[0])
    return len(schedule.large) >= length and all(np.array_equal(got, want[:length]) for got, want in
                                                  zip(row, schedule))


def sample_block_schedules(key, config: ByzPGConfig, max_trajectories: int, num_seeds: int,
                           multiple_of: int = 1, whole_iterations: bool = False) -> Blocks:
    """One coin sequence ``c_t ~ Bernoulli(p)`` (``c_0 = 1``) per seed, as ``Blocks`` of shape [S, M].

    Seed ``s`` draws its coins from ``fold_in(key, s)``. ``M`` is the fewest steps with which every seed
    reaches ``max_trajectories`` per agent, rounded up to a multiple of ``multiple_of``; a seed's schedule is
    cut there (possibly inside a large-batch iteration, which then never steps). A step is a block of ``B``
    trajectories (``block_schedule``) or, with ``whole_iterations``, an iteration (``iteration_schedule``): the
    same coins either way.
    """
    max_trajectories = _check_int("max_trajectories", max_trajectories)
    num_seeds = _check_int("num_seeds", num_seeds)
    multiple_of = _check_int("multiple_of", multiple_of)
    # every coin is at least one block, and every block counts at least `fewest` episodes
    fewest = min(config.small_batch, config.large_batch - (blocks_per_large_batch(config) - 1) * config.small_batch)
    upper = -(-max_trajectories // fewest) + multiple_of
    schedules = []
    for seed in range(num_seeds):  # host-side numpy: the coins, not the run
        coins = np.array(jax.random.bernoulli(jax.random.fold_in(key, seed), config.switch_prob, (upper,)))
        coins[0] = True
        schedules.append((iteration_schedule if whole_iterations else block_schedule)(coins, config))
    needed = max(int(np.searchsorted(np.cumsum(s.count), max_trajectories)) + 1 for s in schedules)
    length = -(-needed // multiple_of) * multiple_of
    return Blocks(*(np.stack([a[:length] for a in arrays]) for arrays in zip(*schedules)))
