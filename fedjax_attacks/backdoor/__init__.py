"""Backdoor poisoning of RL agents: SleeperNets (outer loop), TrojDRL-W and BadRL-M (inner loop) on PPO.

* ``make_train(ppo_config, env, env_params, attack, config, trigger, network=None, q=None) -> train(key)``: PPO
  under one attack (``jax.vmap(train)`` for seeds); ``make_trainer`` gives the same run as a ``runner.Trainer``.
* ``make_comparison``: all attacks, budgets, rewards, alphas and seeds in one vmapped program, a ``Trainer``
  whose ``params`` are per-run ``RunSettings`` (``run_settings``; ``run_with_progress(keys, runs, sweep=True)``).
* ``evaluate`` (ASR and return of a trained agent), ``benign_return_ratio`` (BRR), ``poisoning_rate``,
  ``perturbation`` (mean ``|r' - r|`` on poisoned states), ``random_return`` (a uniformly random policy's).
* ``triggers`` (``ImagePatch``, ``FeaturePattern``, ``TriggerFeature``, ``Flatten``), the hooks in ``sleepernets`` and
  ``inner_loop`` (with ``train_q``, BadRL-M's DQN), the target and reward rule in ``base``.
"""

from fedjax_attacks.backdoor import base, inner_loop, metrics, runs, sleepernets, triggers
from fedjax_attacks.backdoor.base import BackdoorConfig
from fedjax_attacks.backdoor.inner_loop import QFunction, train_q
from fedjax_attacks.backdoor.metrics import (asr_monitor, benign_return_ratio, evaluate, perturbation, poisoning_rate,
                                             random_return)
from fedjax_attacks.backdoor.runs import (ATTACKS, RunSettings, make_comparison, make_train, make_trainer,
                                          run_settings)
from fedjax_attacks.backdoor.triggers import FEATURE_ON, FeaturePattern, Flatten, ImagePatch, TriggerFeature
