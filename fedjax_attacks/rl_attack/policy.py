"""Phase 2's learner: TD3 (the paper's) or PPO on many simulated FL episodes at once, resumable between chunks.

Policy learning is interleaved with the real run (sec. 4.4): the learner's state (networks, optimiser, replay
buffer, the ``num_envs`` vectorized simulator episodes) is kept between chunks, while the simulator's parameters
(the learned distribution and the start model) are an argument of every step, so a new ``P~`` or a newer global
model does not recompile anything. The algorithms are ``fedjax_attacks.rl``'s own (``td3.make_steps``,
``ppo.make_steps``), which take the environment's parameters at every call; PPO's learning rate is constant here
(``anneal_lr`` needs a total length, and policy learning is open-ended).

The policy the attackers deploy in the real run is chosen, after every chunk, on held-out simulated episodes: the
learner's current policy replaces the deployed one only if its mean return (the held-out loss increase) on
``eval_episodes`` fresh episodes is at least the deployed policy's on the same episodes (common random numbers).
The same episodes give the diagnostic of whether the policy is a policy: the standard deviation over the visited
states of its action in the unit box (``action_std``; a state-blind policy that sits on a corner of the box, the
failure the reward normalisation and the actor's pre-``tanh`` penalty of ``RLAttackConfig.td3`` guard against,
has 0) and the share of saturated action coordinates (``action_saturated``).

``make_learner(config, env) -> PolicyLearner``: ``init(key, env_params) -> Learner``, ``step(learner,
env_params) -> (learner, metrics)`` (one TD3 iteration: ``num_envs`` simulated rounds; one PPO update:
``num_steps`` of them), ``select(learner, env_params) -> (learner, metrics)`` (the held-out choice), ``act(params,
obs) -> action`` (the deterministic policy of policy parameters ``params``, in the action box).
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_attacks.rl import env as env_lib
from fedjax_attacks.rl import ppo, td3, wrappers
from fedjax_attacks.rl_attack.config import RLAttackConfig

# a policy whose unit-box action varies less than this (standard deviation over visited states) ignores the state
STATE_DEPENDENCE_TOL = 0.05


@struct.dataclass
class Learner:
    """A learner between steps: the algorithm's ``carry`` (``td3.TD3Steps`` / ``ppo.PPOSteps``: networks,
    optimiser, replay buffer, the vectorized simulator episodes), the ``deployed`` policy parameters (what the
    real run's attackers act with), the PRNG ``key`` of the held-out episodes and ``steps`` (simulated rounds per
    environment so far)."""

    carry: Any
    deployed: Any
    key: jax.Array
    steps: jax.Array


class PolicyLearner(NamedTuple):
    """``init(key, env_params)``, ``step(learner, env_params)``, ``select(learner, env_params)``, ``act(params,
    obs)``, ``reset(learner, env_params)`` (restart every simulated episode, e.g. after ``P~`` or the start model
    changed), ``evaluate(params, key, env_params) -> (mean return, unit actions [episodes, horizon, dim])`` (the
    held-out episodes ``select`` compares on; ``select`` draws their key as ``jax.random.split(learner.key)[1]``)
    and ``rounds_per_step`` (simulated rounds per environment in one ``step``)."""

    init: Callable
    step: Callable
    select: Callable
    act: Callable
    reset: Callable
    evaluate: Callable
    rounds_per_step: int


class _Algorithm(NamedTuple):
    """What differs between TD3 and PPO here: their steps, where the policy parameters, the simulator episodes
    and the learner's key sit in the carry, and simulated rounds per step."""

    steps: Any
    policy_params: Callable  # carry -> policy parameters
    with_episodes: Callable  # (carry, env_state, obs) -> carry
    rounds_per_step: int


def make_learner(config: RLAttackConfig, env) -> PolicyLearner:
    """The learner ``config.algorithm`` names, over ``config.num_envs`` copies of the simulator ``env``."""
    learner_config = config.learner_config
    if config.algorithm == "td3":
        steps = td3.make_steps(learner_config, env)
        algo = _Algorithm(steps, lambda c: c[0].actor.params,
                          lambda c, env_state, obs: (c[0], c[1], env_state, obs, *c[4:]), 1)
    else:
        steps = ppo.make_steps(dataclasses.replace(learner_config, anneal_lr=False), env)
        algo = _Algorithm(steps, lambda c: c[0].params,
                          lambda c, env_state, obs: (c[0], env_state, obs, *c[3:]), learner_config.num_steps)
    venv_reset = _vectorized_reset(env, config.num_envs)
    evaluate = _make_evaluate(env, steps.act, config.eval_episodes)

    def init(key, env_params) -> Learner:
        k_algo, key = jax.random.split(key)
        carry = steps.init(k_algo, env_params)
        return Learner(carry, algo.policy_params(carry), key, jnp.zeros((), jnp.int32))

    def step(learner: Learner, env_params):
        carry, metrics = steps.step(learner.carry, env_params)
        metrics = {k: metrics[k] for k in ("reward", "episode_return", "episodes", "critic_loss", "loss")
                   if k in metrics}
        return learner.replace(carry=carry, steps=learner.steps + algo.rounds_per_step), metrics

    def select(learner: Learner, env_params):
        key, k_eval = jax.random.split(learner.key)
        candidate = algo.policy_params(learner.carry)
        pair = jax.tree.map(lambda a, b: jnp.stack([a, b]), candidate, learner.deployed)
        returns, unit_actions = jax.vmap(evaluate, in_axes=(0, None, None))(pair, k_eval, env_params)
        better = returns[0] >= returns[1]
        deployed = jax.tree.map(lambda a, b: jnp.where(better, a, b), candidate, learner.deployed)
        chosen = jnp.where(better, unit_actions[0], unit_actions[1])  # [episodes, horizon, action dim]
        flat = chosen.reshape(-1, chosen.shape[-1])
        metrics = {"candidate_return": returns[0], "deployed_return": jnp.maximum(returns[0], returns[1]),
                   "replaced": better, "action_std": jnp.mean(jnp.std(flat, axis=0)),
                   "action_saturated": jnp.mean((jnp.abs(flat) > 0.98).astype(jnp.float32)),
                   "action_mean": jnp.mean(flat, axis=0)}
        return learner.replace(deployed=deployed, key=key), metrics

    def reset(learner: Learner, env_params) -> Learner:
        key, k_env = jax.random.split(learner.key)
        obs, env_state = venv_reset(k_env, env_params)
        return learner.replace(carry=algo.with_episodes(learner.carry, env_state, obs), key=key)

    return PolicyLearner(init, step, select, steps.act, reset, evaluate, algo.rounds_per_step)


def state_dependent(selection_metrics) -> jax.Array:
    """Whether the deployed policy's action varies with the state (``action_std`` above
    ``STATE_DEPENDENCE_TOL``), from ``select``'s metrics."""
    return selection_metrics["action_std"] > STATE_DEPENDENCE_TOL


def _vectorized_reset(env, num_envs: int) -> Callable:
    """``reset(key, env_params) -> (obs, env_state)`` of ``num_envs`` episodes, as the algorithms' ``VecEnv`` of a
    ``LogWrapper`` lays them out."""
    return wrappers.VecEnv(wrappers.LogWrapper(env), num_envs).reset


def _make_evaluate(env, act: Callable, num_episodes: int) -> Callable:
    """``evaluate(policy_params, key, env_params) -> (mean return, unit actions f32[episodes, horizon, dim])``:
    ``num_episodes`` simulated episodes of the deterministic policy, each one horizon long."""
    spec = env_lib.spec(env, None)

    def episode(params, key, env_params):
        k_reset, k_steps = jax.random.split(key)
        obs, state = env.reset(k_reset, env_params)

        def body(carry, k):
            obs, state = carry
            action = act(params, obs)
            unit = 2.0 * (action - spec.action_low) / (spec.action_high - spec.action_low) - 1.0
            obs, state, reward, _, _ = env_lib.step_without_reset(env, k, state, action, env_params)
            return (obs, state), (reward, unit)

        keys = jax.random.split(k_steps, env_params.max_steps_in_episode)
        _, (rewards, units) = jax.lax.scan(body, (obs, state), keys)
        return jnp.sum(rewards), units

    def evaluate(params, key, env_params):
        returns, units = jax.vmap(episode, in_axes=(None, 0, None))(params, jax.random.split(key, num_episodes),
                                                                     env_params)
        return jnp.mean(returns), units

    return evaluate
