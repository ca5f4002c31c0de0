"""PPO runs under the attacks, in the project's run protocol (``runner.Trainer``).

* ``make_trainer`` / ``make_train``: PPO under one attack, ``train(key) -> ppo.TrainOutput``.
* ``make_comparison`` + ``run_comparison``: every attack in ONE program whose attack, budget ``beta``, reward
  ``c`` and ``alpha`` are traced per run (``RunSettings``, built by ``run_settings``), so a table of attacks x seeds
  (and budget / reward / alpha ablations) is one ``jax.vmap`` with one compilation, run in jitted chunks under a
  progress bar.
"""

import dataclasses
from typing import Callable, NamedTuple, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_attacks import runner
from fedjax_attacks.backdoor import base, inner_loop, metrics, sleepernets, triggers
from fedjax_attacks.rl import env as env_lib
from fedjax_attacks.rl import ppo

ATTACKS = ("none", "sleepernets", "trojdrl", "badrl")


def make_trainer(ppo_config: ppo.PPOConfig, env, env_params, attack: str, config: base.BackdoorConfig,
                 trigger: Callable, network: nn.Module | None = None, q: inner_loop.QFunction | None = None,
                 track_asr: bool = True) -> runner.Trainer:
    """PPO under ``attack`` (``"none"`` trains the clean agent) as a ``Trainer``: ``run(key) -> ppo.TrainOutput``.

    Args:
      ppo_config, env, env_params, network: as for ``ppo.make_trainer``.
      attack: one of ``ATTACKS``: ``"sleepernets"`` (outer loop), ``"trojdrl"`` (TrojDRL-W) or ``"badrl"``
        (BadRL-M, needs ``q`` from ``inner_loop.train_q``), or ``"none"``.
      config: target, budget ``beta``, reward ``c``, ``alpha``, ``asr_stop``.
      trigger: ``delta``, e.g. ``triggers.ImagePatch()`` or ``triggers.FEATURE_ON`` (with ``TriggerFeature``).
      track_asr: also record the training ASR of every rollout for attacks other than SleeperNets (one more
        forward pass per rollout; SleeperNets always computes it for its stop rule).

    ``TrainOutput.metrics`` holds PPO's per-update metrics plus ``poisoned`` (states poisoned in each update),
    ``reward_change`` (sum of ``|r' - r|`` over them; ``metrics.perturbation`` gives the mean), ``train_asr``
    (when tracked) and, for SleeperNets, ``compensation_change``.

    Raises:
      ValueError: before tracing, for an unknown attack, a budget outside (0, 1], a target outside the action
        space, a trigger whose output differs from the observation (or an image trigger on vector
        observations), BadRL-M without ``q`` or on continuous actions, or a bad PPO config.
    """
    spec = _validate(ppo_config, env, env_params, (attack,), config, trigger, q)
    poison, hooks = ppo.no_poison, []
    if attack == "sleepernets":
        poison = sleepernets.make_poison(config, trigger, spec, ppo_config.gamma)
    elif track_asr:
        poison = metrics.asr_monitor(config, trigger, spec)
    if attack == "trojdrl":
        hooks.append(inner_loop.trojdrl(config, trigger, spec, ppo_config))
    elif attack == "badrl":
        hooks.append(inner_loop.badrl(config, trigger, spec, ppo_config, q))
    return _trainer(ppo_config, env, env_params, poison, hooks, network)


def make_train(*args, **kwargs) -> Callable[[chex.PRNGKey], ppo.TrainOutput]:
    """``train(key) -> ppo.TrainOutput``: ``make_trainer(...).run`` (same arguments); ``jax.vmap`` it for seeds."""
    return make_trainer(*args, **kwargs).run


class RunSettings(NamedTuple):
    """What ``make_comparison``'s runs may differ in (arrays with a leading run axis, or scalars for one run):
    the attack (index into its ``attacks``), the budget ``beta``, the reward ``c`` and SleeperNets' ``alpha``."""

    which: chex.Array
    budget: chex.Array
    reward: chex.Array
    alpha: chex.Array


def run_settings(attacks: Sequence[str], rows: Sequence[tuple]) -> RunSettings:
    """``RunSettings`` of ``rows`` ``(attack name, budget, reward, alpha)``, one per run.

    Raises ``ValueError`` naming the row and the field for an attack not in ``attacks``, a row without four
    entries, no rows, or a concrete value ``BackdoorConfig.validate`` refuses (a budget outside ``(0, 1]``, a
    reward not finite and ``> 0``, an alpha not finite and ``>= 0``, a string or a bool). Traced values pass
    unchecked (they were checked where they were made).
    """
    attacks = tuple(attacks)
    rows = list(rows)
    if not rows:
        raise ValueError("run_settings needs at least one row (attack name, budget, reward, alpha)")
    for i, row in enumerate(rows):
        if len(row) != 4:
            raise ValueError(f"run_settings: row {i} {row!r} must have 4 entries (attack name, budget, reward, "
                             f"alpha)")
    unknown = [row[0] for row in rows if row[0] not in attacks]
    if unknown:
        raise ValueError(f"attacks {unknown} are not among {attacks}")
    for i, (_, *values) in enumerate(rows):
        fields = {name: _concrete(value) for name, value in zip(("budget", "reward", "alpha"), values)}
        try:
            base.BackdoorConfig(**fields).validate()
        except ValueError as err:
            raise ValueError(f"run_settings: row {i} {rows[i]!r}: {err}") from None
    which, budget, reward, alpha = zip(*rows)
    return RunSettings(jnp.array([attacks.index(a) for a in which]), jnp.array(budget, jnp.float32),
                       jnp.array(reward, jnp.float32), jnp.array(alpha, jnp.float32))


def _concrete(value):
    """A concrete 0-d array as its Python number (so that ``BackdoorConfig.validate`` checks it); tracers and
    everything else unchanged."""
    if isinstance(value, (jax.Array, np.ndarray)) and not isinstance(value, jax.core.Tracer) and value.ndim == 0:
        return value.item()
    return value


def make_comparison(ppo_config: ppo.PPOConfig, env, env_params, config: base.BackdoorConfig, trigger: Callable,
                    network: nn.Module | None = None, q: inner_loop.QFunction | None = None,
                    attacks: Sequence[str] = ATTACKS) -> runner.Trainer:
    """PPO under ``attacks[run.which]`` as one ``Trainer`` whose ``params`` are a ``RunSettings`` ``run``: its
    budget ``beta``, reward ``c`` and ``alpha``, all traced (the target, trigger and ``asr_stop`` come from
    ``config``; the default ``params`` is ``attacks[0]`` at ``config``'s values).

    Every hook of ``attacks`` is in the program; all but the chosen one get a budget of 0 and poison nothing, so
    ``trainer.run_with_progress(keys, run_settings(...), sweep=True)`` trains all attacks, budgets, rewards and
    seeds under one ``jax.vmap`` after one compilation (each run pays for every hook's computation: SleeperNets'
    forward pass on the triggered rollout, BadRL-M's Q-network at every step). Metrics as in ``make_trainer``
    (``train_asr`` always).

    Raises:
      ValueError: as ``make_trainer``, for each name in ``attacks``.
    """
    attacks = tuple(attacks)
    spec = _validate(ppo_config, env, env_params, attacks, config, trigger, q)

    def build(run: RunSettings) -> runner.Trainer:
        def only(name):
            chosen = jnp.asarray(run.which) == attacks.index(name)
            return dataclasses.replace(config, budget=jnp.where(chosen, run.budget, 0.0), reward=run.reward,
                                       alpha=run.alpha)

        poison = (sleepernets.make_poison(only("sleepernets"), trigger, spec, ppo_config.gamma)
                  if "sleepernets" in attacks else metrics.asr_monitor(config, trigger, spec))
        hooks = []
        if "trojdrl" in attacks:
            hooks.append(inner_loop.trojdrl(only("trojdrl"), trigger, spec, ppo_config))
        if "badrl" in attacks:
            hooks.append(inner_loop.badrl(only("badrl"), trigger, spec, ppo_config, q))
        return _trainer(ppo_config, env, env_params, poison, hooks, network)

    default = run_settings(attacks[:1], [(attacks[0], config.budget, config.reward, config.alpha)])
    default = jax.tree.map(lambda x: x[0], default)
    example = build(default)
    return example._replace(init=lambda key, run: build(run).init(key, env_params),
                            step=lambda carry, run: build(run).step(carry, env_params), params=default)


def _trainer(ppo_config, env, env_params, poison, hooks, network) -> runner.Trainer:
    """PPO's ``Trainer`` with ``poison`` and the chained inner ``hooks``; ``finish`` adds ``metrics["poisoned"]``
    and ``metrics["reward_change"]`` (the outer poison's per-update figure plus every inner hook's)."""
    base_trainer = ppo.make_trainer(ppo_config, env, env_params, poison=poison, rollout_hook=_chain(hooks),
                                    network=network)

    def finish(carry, logged):
        out = base_trainer.finish(carry, logged)
        logged = dict(out.metrics)
        for name, field, dtype in (("poisoned", "history", jnp.int32), ("reward_change", "change", jnp.float32)):
            outer = logged.get(name, jnp.zeros((ppo_config.num_updates,), dtype))
            logged[name] = outer + sum((getattr(state, field) for state in out.hook_state), 0)
        return out.replace(metrics=logged)

    return base_trainer._replace(finish=finish)


def _validate(ppo_config, env, env_params, attacks, config, trigger, q) -> env_lib.EnvSpec:
    """Every check of ``make_trainer`` / ``make_comparison``; returns the environment's spec."""
    unknown = [name for name in attacks if name not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"unknown attack(s) {unknown or attacks!r}: choose from {ATTACKS}")
    ppo_config.validate()
    spec = env_lib.spec(env, env_params)
    config.validate(spec)
    triggers.check(trigger, spec.obs_shape)
    if "badrl" in attacks and q is None:
        raise ValueError("attack 'badrl' needs q, the Q-function of inner_loop.train_q")
    if "badrl" in attacks and not spec.discrete:
        raise ValueError("attack 'badrl' (BadRL-M) ranks states with a DQN: it needs a discrete action space")
    return spec


def _chain(hooks: Sequence[ppo.RolloutHook]) -> ppo.RolloutHook:
    """The ``RolloutHook`` applying ``hooks`` in order (state: the tuple of their states; each gets its own key)."""

    def observe(key, states, obs, train_state):
        new = []
        for hook, state, k in zip(hooks, states, jax.random.split(key, max(len(hooks), 1))):
            obs, state = hook.observe(k, state, obs, train_state)
            new.append(state)
        return obs, tuple(new)

    def reward(states, action, reward):
        new = []
        for hook, state in zip(hooks, states):
            reward, state = hook.reward(state, action, reward)
            new.append(state)
        return reward, tuple(new)

    return ppo.RolloutHook(init=lambda: tuple(hook.init() for hook in hooks), observe=observe, reward=reward)
