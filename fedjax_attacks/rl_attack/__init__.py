"""The model-based RL attack on FL (seed paper 000, "Learning to attack federated learning").

Three phases interleaved with a real FL run (``fl.make_simulation``'s ``client_updates`` / ``server_step``):

1. ``distribution``: the attackers invert the aggregated gradients they can estimate from the global models they
   receive during the first ``tau_E`` rounds (inverting gradients + a denoising autoencoder) into ``P~``;
2. ``simulator`` + ``policy``: the FL run simulated from ``P~`` as a gymnax environment, many episodes vmapped,
   on which TD3 (or PPO) learns the attack policy; ``actions`` turns an action into a crafted update;
3. ``execution``: from round ``tau_E`` on, an ``attacks.Attack`` whose ``craft`` calls the latest policy poisons
   the real run, while policy learning continues between chunks of real rounds.

``make_rl_attack(fl_config, RLAttackConfig(...), dataset, model)`` builds it; ``rl.run(key)`` is the whole run as one
pure function; ``run_with_progress(rl, keys)`` runs seeds vmapped with a progress bar and per-phase wall times.
"""

from fedjax_attacks.rl_attack.actions import make_crafter
from fedjax_attacks.rl_attack.config import ACTION_RANGES, ActionSpace, RLAttackConfig
from fedjax_attacks.rl_attack.distribution import DISTRIBUTIONS, LearnedData, OwnData, Snapshots
from fedjax_attacks.rl_attack.execution import (
    AttackPhases,
    Attackers,
    DistributionLearner,
    RLAttack,
    RLState,
    RunReport,
    attacker_rows,
    make_attack_phases,
    make_distribution_learner,
    make_rl_attack,
    run_with_progress,
)
from fedjax_attacks.rl_attack.policy import STATE_DEPENDENCE_TOL, Learner, PolicyLearner, make_learner, state_dependent
from fedjax_attacks.rl_attack.simulator import FLSimulator, SimParams, SimState, last_layer_indices

__all__ = [
    "ACTION_RANGES", "STATE_DEPENDENCE_TOL", "ActionSpace", "AttackPhases", "Attackers", "DISTRIBUTIONS",
    "DistributionLearner", "FLSimulator", "Learner", "LearnedData", "OwnData", "PolicyLearner", "RLAttack",
    "RLAttackConfig", "RLState", "RunReport", "SimParams", "SimState", "Snapshots", "attacker_rows",
    "last_layer_indices", "make_attack_phases", "make_crafter", "make_distribution_learner", "make_learner",
    "make_rl_attack", "run_with_progress", "state_dependent",
]
