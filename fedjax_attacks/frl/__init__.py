"""Federated RL with Byzantine agents: ByzPG (centralized) and DecByzPG (decentralized), Jordan et al. 2024.

``ByzPGConfig`` / ``DecByzPGConfig`` hold the hyperparameters (``CARTPOLE`` and ``ACROBOT`` are the paper's
settings, ``INVERTED_PENDULUM`` a brax continuous-control one), ``make_byzpg`` / ``make_decbyzpg`` build
``Algorithm(init, step, iterate, run, policy)`` in the library's run protocol. Byzantine agents send what any
``fedjax_attacks.attacks`` attack crafts (``attack="large_noise"``, ``"avg_zero"``, ``"alie"``, ``"ipm"``,
...); ``random_actions=True`` is RandomAction; ``BEHAVIOURS`` maps the paper's three behaviours to config
changes. Runs follow coins (``sample_switches``, one iteration per step) or ``Blocks``
(``sample_block_schedules``: one block of ``B`` trajectories per step, so seeds with their own coins are one
vmapped program); ``batch.make_variants`` runs a figure's variants and seeds together. ``agreement`` has the
averaging agreement rules (MDA, GDA).
"""

from fedjax_attacks.frl import agreement, base, batch, byzantine, config
from fedjax_attacks.frl.base import Algorithm, State
from fedjax_attacks.frl.byzpg import make_byzpg
from fedjax_attacks.frl.config import (
    ACROBOT,
    BEHAVIOURS,
    CARTPOLE,
    INVERTED_PENDULUM,
    Blocks,
    ByzPGConfig,
    DecByzPGConfig,
    block_schedule,
    iteration_schedule,
    sample_block_schedules,
    sample_switches,
    trajectories_per_iteration,
)
from fedjax_attacks.frl.decbyzpg import make_decbyzpg

__all__ = ["ACROBOT", "Algorithm", "BEHAVIOURS", "Blocks", "ByzPGConfig", "CARTPOLE", "DecByzPGConfig",
           "INVERTED_PENDULUM", "State", "agreement", "base", "batch", "block_schedule", "byzantine", "config",
           "iteration_schedule", "make_byzpg", "make_decbyzpg", "sample_block_schedules", "sample_switches",
           "trajectories_per_iteration"]
