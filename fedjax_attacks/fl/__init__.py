"""Federated learning as one jitted function: ``make_run(config, dataset, model) -> run(key)``.

``make_simulation`` exposes the round split gymnax-style (``init``, ``client_updates``, ``server_step``,
``round_step``, ``step``, ``run``) with static ``FLConfig`` and traced ``FLParams``.
"""

from fedjax_attacks.fl.config import FLConfig
from fedjax_attacks.fl.simulation import (
    FLParams,
    FLState,
    History,
    RoundInput,
    Simulation,
    make_attack_sweep,
    make_run,
    make_simulation,
    run_with_progress,
)
from fedjax_attacks.runner import export_params, import_params

__all__ = ["FLConfig", "FLParams", "FLState", "History", "RoundInput", "Simulation", "make_attack_sweep", "make_run",
           "make_simulation", "run_with_progress", "export_params", "import_params"]
