"""Inner-loop baselines: TrojDRL-W (Kiourti et al. 2020) and BadRL-M (Cui et al. 2024) as PPO ``RolloutHook``s.

An inner-loop adversary acts step by step during the rollout: it replaces the observation ``s_t`` the agent is
about to act on by ``delta(s_t)`` and then the reward of the agent's action by ``+c`` (target action ``a+``) or
``-c``: a static reward, unlike SleeperNets' dynamic one.

* ``trojdrl``: poisons every ``1 / beta``-th environment step (the reference's ``DeterministicMiddleMan``).
* ``badrl``: poisons the states whose attack value ``max_a Q(s, a) - Q(s, a+)`` is in the running top ``beta``
  fraction of all scores seen so far, never exceeding the budget ``beta`` of steps so far (the reference's
  ``BadRLMiddleMan``); ``Q`` is a DQN trained first on the clean environment (``train_q``). The running top
  fraction is read from a histogram of the scores on 256 log-spaced bins between 1e-6 and 1e3 whose counts decay
  with a memory of ``window`` environment steps (the reference keeps every score since the start in a sorted
  list: as the agent improves, its states' scores drift below the early threshold and it stops poisoning long
  before the budget is spent; the histogram also has the fixed shape a ``lax.scan`` needs); a score in the bin
  that straddles the top-``beta`` quantile counts as top with the probability that makes the top fraction
  exactly ``beta``.

Both hooks stop poisoning once the training ASR reaches ``asr_stop`` (1 by default), as the reference stops
its middlemen and as SleeperNets does: an inner-loop adversary decides online, so each step it also evaluates
``pi(a+ | delta(s_t))`` on the current observations under the acting policy (fixed during a rollout) and
poisons a rollout only while the mean of that probability over the PREVIOUS rollout is below ``asr_stop``
(SleeperNets measures it on the current rollout, which it sees whole before poisoning). Both record, per PPO
update, how many states they poisoned (``state.history``) and the sum of ``|r' - r|`` over those states
(``state.change``).
"""

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fedjax_attacks.backdoor import base, triggers
from fedjax_attacks.rl import dqn, networks, ppo
from fedjax_attacks.rl import env as env_lib

SCORE_EDGES = np.concatenate([[0.0], np.logspace(-6, 3, 256)]).astype(np.float32)  # bin j: [e_j, e_{j+1})


@struct.dataclass
class InnerState:
    """State of an inner-loop hook.

    Attributes:
      steps: environment steps seen so far (all columns).
      poisoned: states poisoned so far.
      mask: bool ``[N]``, which columns' current step is poisoned (read by the reward hook).
      history: i32 ``[num_updates]``, states poisoned during each PPO update.
      change: f32 ``[num_updates]``, sum of ``|r' - r|`` over the states poisoned during each PPO update.
      score_counts: f32 ``[bins]``, decayed histogram of BadRL-M's recent scores (empty for TrojDRL-W).
      asr_sum: sum over the current rollout's steps of the mean ``pi(a+ | delta(s))`` over its columns.
      active: whether the current rollout may be poisoned (the previous rollout's training ASR was below
        ``asr_stop``; True in the first rollout).
    """

    steps: chex.Array
    poisoned: chex.Array
    mask: chex.Array
    history: chex.Array
    change: chex.Array
    score_counts: chex.Array
    asr_sum: chex.Array
    active: chex.Array


class QFunction(NamedTuple):
    """A trained Q-network: ``apply(params, obs[..., *obs_shape]) -> Q[..., num_actions]``."""

    apply: Callable[[Any, chex.Array], chex.Array]
    params: Any


def trojdrl(config: base.BackdoorConfig, trigger: Callable, spec: env_lib.EnvSpec,
            ppo_config: ppo.PPOConfig) -> ppo.RolloutHook:
    """TrojDRL-W: the ``RolloutHook`` poisoning environment step ``i`` (counted over all columns) when
    ``(i + 1)`` is a multiple of ``round(1 / beta)`` (a traced ``beta = 0`` poisons nothing), in the rollouts that
    follow a rollout with training ASR below ``asr_stop``.

    Raises:
      ValueError: on a bad config, a target outside the action space or a trigger that does not fit.
    """
    _validate(config, trigger, spec)

    def choose(key, state, obs, train_state):
        del key, obs, train_state
        period = jnp.clip(jnp.round(1.0 / jnp.maximum(config.budget, 1e-9)), 1, 2**30).astype(jnp.int32)
        index = state.steps + jnp.arange(ppo_config.num_envs)
        return ((index + 1) % period == 0) & (config.budget > 0), state.score_counts

    return _hook(config, trigger, spec, ppo_config, choose, bins=0)


def badrl(config: base.BackdoorConfig, trigger: Callable, spec: env_lib.EnvSpec, ppo_config: ppo.PPOConfig,
          q: QFunction, window: int = 16_384) -> ppo.RolloutHook:
    """BadRL-M: the ``RolloutHook`` poisoning the states with the highest ``max_a Q(s, a) - Q(s, a+)``.

    A state is poisoned when its score falls in the top ``beta`` fraction of the recent scores (about the last
    ``window`` environment steps, the current ones included) and poisoning it keeps the count within
    ``floor(beta * steps)``; among several such columns in one step the highest scores go first. It poisons only
    in the rollouts that follow a rollout with training ASR below ``asr_stop``.

    Raises:
      ValueError: on a bad config, a continuous action space, a target outside the action space or a trigger
        that does not fit.
    """
    if not spec.discrete:
        raise ValueError("BadRL-M ranks states by a DQN Q-function: it needs a discrete action space")
    if window < 1:
        raise ValueError(f"window must be >= 1 environment step, got {window}")
    _validate(config, trigger, spec)
    edges = jnp.asarray(SCORE_EDGES)
    decay = (1.0 - 1.0 / window) ** ppo_config.num_envs

    def choose(key, state, obs, train_state):
        del train_state
        values = q.apply(q.params, obs)
        scores = jnp.max(values, axis=-1) - values[..., config.target]
        bins = jnp.clip(jnp.searchsorted(edges, scores, side="right") - 1, 0, len(SCORE_EDGES) - 1)
        counts = (decay * state.score_counts).at[bins].add(1.0)
        tail = jnp.cumsum(counts[::-1])[::-1]  # tail[j]: scores in bins >= j
        quota = config.budget * tail[0]
        top = jnp.sum(tail > quota)  # bins >= top hold at most the top beta fraction; bin top - 1 straddles it
        above = jnp.where(top < len(SCORE_EDGES), tail[jnp.minimum(top, len(SCORE_EDGES) - 1)], 0.0)
        straddle = (quota - above) / counts[top - 1]  # chance that a score in bin top - 1 counts as top
        candidate = (bins >= top) | ((bins == top - 1) & (jax.random.uniform(key, bins.shape) < straddle))
        allowed = jnp.floor(config.budget * (state.steps + ppo_config.num_envs)) - state.poisoned
        order = jnp.argsort(jnp.argsort(-jnp.where(candidate, scores, -jnp.inf)))
        return candidate & (order < allowed), counts

    return _hook(config, trigger, spec, ppo_config, choose, bins=len(SCORE_EDGES))


def train_q(key: chex.PRNGKey, config: dqn.DQNConfig, env, env_params) -> QFunction:
    """Trains BadRL-M's Q-network with ``rl.dqn`` on the clean environment (images are flattened for its MLP).

    Returns the ``QFunction`` of the final online network; it accepts observations of the environment's shape.

    Raises:
      ValueError: on an invalid DQN config or a continuous action space (from ``rl.dqn``).
    """
    spec = env_lib.spec(env, env_params)
    shape = spec.obs_shape
    out = jax.jit(dqn.make_train(config, triggers.Flatten(env) if len(shape) > 1 else env, env_params))(key)
    q_net = networks.QNetwork(spec.num_actions, tuple(config.hidden))
    size = int(np.prod(shape))

    def apply(params, obs):
        return q_net.apply(params, obs.reshape(obs.shape[:obs.ndim - len(shape)] + (size,)))

    return QFunction(apply=apply, params=out.q_state.params)


def _validate(config: base.BackdoorConfig, trigger: Callable, spec: env_lib.EnvSpec) -> None:
    config.validate(spec)
    triggers.check(trigger, spec.obs_shape)


def _hook(config, trigger, spec, ppo_config, choose, bins: int) -> ppo.RolloutHook:
    """A ``RolloutHook`` that triggers the observations ``choose`` picks and gives them the static reward, in
    rollouts whose previous rollout's training ASR is below ``config.asr_stop``."""
    num_envs, num_steps, batch_size = ppo_config.num_envs, ppo_config.num_steps, ppo_config.batch_size

    def init():
        return InnerState(steps=jnp.zeros((), jnp.int32), poisoned=jnp.zeros((), jnp.int32),
                          mask=jnp.zeros((num_envs,), bool),
                          history=jnp.zeros((ppo_config.num_updates,), jnp.int32),
                          change=jnp.zeros((ppo_config.num_updates,), jnp.float32),
                          score_counts=jnp.zeros((bins,), jnp.float32), asr_sum=jnp.zeros((), jnp.float32),
                          active=jnp.ones((), bool))

    def observe(key, state, obs, train_state):
        triggered = trigger(obs)
        dist, _ = train_state.apply_fn(train_state.params, triggered)
        step_asr = jnp.mean(base.target_probability(config, spec, dist))
        starts = (state.steps % batch_size == 0) & (state.steps > 0)  # first step of a rollout after the first
        active = jnp.where(starts, state.asr_sum / num_steps < config.asr_stop, state.active)
        asr_sum = jnp.where(starts, 0.0, state.asr_sum) + step_asr
        mask, score_counts = choose(key, state, obs, train_state)
        mask = mask & active
        count = mask.sum().astype(jnp.int32)
        expand = mask.reshape(mask.shape + (1,) * (obs.ndim - 1))
        state = state.replace(steps=state.steps + num_envs, poisoned=state.poisoned + count, mask=mask,
                              history=state.history.at[state.steps // batch_size].add(count),
                              score_counts=score_counts, asr_sum=asr_sum, active=active)
        return jnp.where(expand, triggered, obs), state

    def reward(state, action, reward):
        new = jnp.where(state.mask, base.poisoned_reward(config, spec, action), reward)
        update = (state.steps - num_envs) // batch_size  # observe has counted this step already
        state = state.replace(change=state.change.at[update].add(jnp.abs(new - reward).sum()))
        return new, state

    return ppo.RolloutHook(init=init, observe=observe, reward=reward)
