"""Shared pieces of ByzPG and DecByzPG: the configuration, its validation, the probabilistic switch, the
aggregator built from the ``fedjax_attacks.aggregators`` registry, and batched sampling/estimation per agent.

Symbols (Jordan et al., 2024, Alg. 1 and 2; Table 1): ``K`` agents of which ``f`` are Byzantine, large batch
``N``, small batch ``B``, switching probability ``p``, step size ``eta`` (Adam), discount ``gamma``, horizon ``H``.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_attacks import aggregators
from fedjax_attacks.frl import agreement as agr
from fedjax_attacks.frl import byzantine as byz
from fedjax_attacks.rl import env as rl_env
from fedjax_attacks.rl import policy_gradient as pg


@dataclasses.dataclass(frozen=True)
class Config:
    """Static hyperparameters of ByzPG / DecByzPG; defaults are the paper's CartPole setting (Table 1).

    The step size is Table 1's 5e-3. With it, on CartPole (10 seeds, 5000 trajectories per agent), DecByzPG with
    K = 13 ends at 433 +- 78 and K = 5 at 390 +- 113, while single-agent PAGE-PG (K = 1) is bimodal (184 +- 175):
    its small-batch recursion (B = 4) is noisy, and averaging over the agents (aggregation, then agreement) is
    what steadies it. The authors' script uses 5e-4, stable for K = 1 but slow (~250 by 5000 trajectories).

    Attributes:
      env_name: environment for ``fedjax_attacks.rl.env.make``.
      num_agents, num_byzantine: ``K`` and ``f``.
      behaviour: Byzantine behaviour (``fedjax_attacks.frl.byzantine.BEHAVIOURS``).
      resample_byzantine: draw a new Byzantine set every iteration (allowed by Assumption 1) instead of
        agents ``0..f-1``.
      aggregator, aggregator_hparams: a name in ``fedjax_attacks.aggregators`` and its hyperparameters as
        ``((name, value), ...)``; ``"mean"`` gives the plain-averaging baselines Fed-/Dec-PAGE-PG.
      bucket_size: ``s`` of bucketing (Karimireddy et al., 2022) around the aggregator; 1 = no bucketing.
      agreement, agreement_rounds: DecByzPG's Avg-Agree rule (``"mda"``, ``"gda"``, ``"none"``) and its number
        of rounds; 0 means ``ceil(log2 K)``.
      large_batch, small_batch, switch_prob: ``N``, ``B``, ``p``.
      learning_rate, gamma, horizon: Adam step size ``eta``, discount ``gamma``, trajectory horizon ``H``.
      importance_weights: PAGE-PG's ``g_B^w`` estimator, ``"trajectory"`` or ``"per_step"``
        (``fedjax_attacks.rl.policy_gradient.page_pg_estimate``).
      aggregate_every_iteration: DecByzPG only: also aggregate the small-batch estimates, as the authors' code
        does (``fedjax_attacks.frl.decbyzpg``); False is Algorithm 2.
      hidden, activation, output_activation: the MLP policy.
      noise_scale: LargeNoise sends ``U[-noise_scale, noise_scale]``.
    """

    env_name: str = "CartPole-v1"
    num_agents: int = 13
    num_byzantine: int = 0
    behaviour: str = "none"
    resample_byzantine: bool = False
    aggregator: str = "rfa"
    aggregator_hparams: tuple = ()
    bucket_size: int = 1
    agreement: str = "mda"
    agreement_rounds: int = 0
    large_batch: int = 50
    small_batch: int = 4
    switch_prob: float = 0.2
    learning_rate: float = 5e-3
    importance_weights: str = "trajectory"
    aggregate_every_iteration: bool = False
    gamma: float = 0.999
    horizon: int = 500
    hidden: tuple = (16, 16)
    activation: str = "relu"
    output_activation: str = "tanh"
    noise_scale: float = 1000.0

    @property
    def num_rounds(self) -> int:
        """Avg-Agree rounds: ``agreement_rounds`` or ``ceil(log2 K)`` (at least 1)."""
        return self.agreement_rounds or max(1, math.ceil(math.log2(self.num_agents)))


CARTPOLE = Config()
# Acrobot-v1 stands in for LunarLander (no JAX version) with the paper's LunarLander hyperparameters; gymnax's
# Acrobot has a 500-step limit, so the horizon is 500 instead of 1000.
ACROBOT = Config(env_name="Acrobot-v1", hidden=(64, 64), activation="tanh", large_batch=96, small_batch=32,
                 learning_rate=1e-3, horizon=500)


def validate(config: Config, centralized: bool) -> None:
    """``ValueError`` for inconsistent settings, before anything is traced.

    Assumption 1 needs ``f < K / 2`` (ByzPG) or ``f < K / 3`` (DecByzPG) for the guarantees; larger ``f`` is
    allowed (it is an experiment), but ``f < K`` is required.
    """
    byz.check_behaviour(config.behaviour)
    if config.num_agents < 1:
        raise ValueError(f"num_agents must be >= 1, got {config.num_agents}")
    if not 0 <= config.num_byzantine < config.num_agents:
        raise ValueError(f"need 0 <= num_byzantine < num_agents, got f={config.num_byzantine}, "
                         f"K={config.num_agents}")
    if (config.num_byzantine > 0) != (config.behaviour != "none"):
        raise ValueError(f"behaviour {config.behaviour!r} needs num_byzantine > 0 exactly when it is not 'none'")
    for name in ("large_batch", "small_batch", "horizon"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not 0.0 < config.switch_prob <= 1.0:
        raise ValueError(f"switch_prob must be in (0, 1], got {config.switch_prob}")
    if not 0.0 < config.gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {config.gamma}")
    if config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {config.learning_rate}")
    if config.importance_weights not in pg.IMPORTANCE_WEIGHTS:
        raise ValueError(f"importance_weights must be one of {pg.IMPORTANCE_WEIGHTS}, "
                         f"got {config.importance_weights!r}")
    if config.bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {config.bucket_size}")
    if centralized and config.aggregate_every_iteration:
        raise ValueError("aggregate_every_iteration is a DecByzPG option: ByzPG's small batches are sampled at "
                         "the server")
    if not centralized:
        agr.check_rule(config.agreement, config.num_agents, config.num_byzantine)


def make_aggregator(config: Config):
    """``aggregate(updates f32[K, d], key) -> f32[d]``: the configured rule, with bucketing if ``s > 1``."""
    rule = aggregators.get(config.aggregator, **dict(config.aggregator_hparams))
    if config.bucket_size > 1:
        rule = aggregators.get("bucketing", aggregator=rule, bucket_size=config.bucket_size)
    if config.num_agents == 1:
        return lambda updates, key: updates[0]
    return lambda updates, key: rule(updates, key=key)


def sample_switches(key, config: Config, max_trajectories: int, multiple_of: int = 1) -> np.ndarray:
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


def trajectories_per_iteration(switches, config: Config) -> np.ndarray:
    """Trajectories sampled per agent at each iteration: ``N`` where ``c_t = 1``, else ``B``."""
    return np.where(np.asarray(switches), config.large_batch, config.small_batch)


def make_env_and_policy(config: Config, env=None, env_params=None):
    """``(env, env_params, policy)`` for ``config`` (``env`` overrides ``config.env_name``)."""
    if env is None:
        env, env_params = rl_env.make(config.env_name)
    policy = pg.make_policy(env, env_params, config.hidden, config.activation, config.output_activation)
    return env, env_params, policy


def _axis(random_actions):
    return None if random_actions is False else 0


def batch_gradients(keys, policy, thetas, random_actions, env, env_params, config: Config, num_episodes: int):
    """Every agent samples ``num_episodes`` trajectories at its ``theta_i``; GPOMDP estimates and returns.

    Returns ``(grads f32[K, d], mean undiscounted return f32[K])`` (vmapped over agents).
    """
    def one(key, theta, random):
        traj = pg.sample_trajectories(key, policy, theta, env, env_params, num_episodes=num_episodes,
                                      horizon=config.horizon, random_actions=random)
        return pg.gpomdp(policy, theta, traj, config.gamma), jnp.mean(pg.episode_returns(traj))

    return jax.vmap(one, in_axes=(0, 0, _axis(random_actions)))(keys, thetas, random_actions)


def page_steps(keys, policy, thetas, thetas_prev, v_prev, random_actions, env, env_params, config: Config):
    """Small-batch PAGE-PG steps of every agent (``B`` trajectories at ``theta_i``); ``(v f32[K, d], returns)``."""
    def one(key, theta, theta_prev, v, random):
        traj = pg.sample_trajectories(key, policy, theta, env, env_params, num_episodes=config.small_batch,
                                      horizon=config.horizon, random_actions=random)
        v_new = pg.page_pg_estimate(policy, theta, theta_prev, v, traj, config.gamma, config.importance_weights)
        return v_new, jnp.mean(pg.episode_returns(traj))

    return jax.vmap(one, in_axes=(0, 0, 0, 0, _axis(random_actions)))(keys, thetas, thetas_prev, v_prev,
                                                                      random_actions)
