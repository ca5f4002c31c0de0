"""Federated learning as one jitted function: ``make_run(config, dataset, model) -> run(key)``."""

from fedjax_attacks.fl.config import FLConfig
from fedjax_attacks.fl.simulation import FLState, History, Simulation, make_attack_sweep, make_run, make_simulation, run_with_progress

__all__ = ["FLConfig", "FLState", "History", "Simulation", "make_attack_sweep", "make_run", "make_simulation", "run_with_progress"]
