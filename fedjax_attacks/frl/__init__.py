"""Federated RL with Byzantine agents: ByzPG (centralized) and DecByzPG (decentralized), Jordan et al. 2024.

``common.Config`` holds the hyperparameters (defaults: the paper's CartPole setting), ``make_byzpg`` /
``make_decbyzpg`` build ``Algorithm(init, iterate, run, policy)``, ``byzantine`` has the attack behaviours
(RandomAction, LargeNoise, AvgZero) and ``agreement`` the averaging agreement rules (MDA, GDA).
"""

from fedjax_attacks.frl import agreement, byzantine, common
from fedjax_attacks.frl.byzpg import make_byzpg
from fedjax_attacks.frl.common import ACROBOT, CARTPOLE, Config, sample_switches, trajectories_per_iteration
from fedjax_attacks.frl.decbyzpg import Algorithm, State, make_decbyzpg
