"""The folder every CLI run writes: resolved config, environment, metrics, plots, checkpoints.

Layout of ``RunFolder(path)``::

    config.yaml         the resolved config (file + overrides + defaults)
    environment.json    package versions, devices, CPU count (``fedjax_attacks.results.environment()``)
    metrics.jsonl/.csv  the metrics (``fedjax_attacks.results.save``; ``metrics.meta.json`` beside them)
    plots/              PNG figures
    checkpoints/        orbax checkpoints, where the experiment's runner takes ``checkpoint_dir``
    summary.json        the experiment's own summary (e.g. final accuracies, wall time)
"""

import json
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedjax_attacks import results


class RunFolder:
    """One run's output folder; creating it writes ``config.yaml`` and ``environment.json``."""

    def __init__(self, config: DictConfig):
        self.path = config.out
        os.makedirs(self.plots, exist_ok=True)
        OmegaConf.save(config, os.path.join(self.path, "config.yaml"), resolve=True)
        self.write_json("environment.json", results.environment())

    @property
    def plots(self) -> str:
        """The folder of the run's PNG figures."""
        return os.path.join(self.path, "plots")

    @property
    def checkpoints(self) -> str:
        """The folder of the run's checkpoints (created by the runner that writes them)."""
        return os.path.join(self.path, "checkpoints")

    def save_metrics(self, metrics: Any, config: Any = None, axes=None, name: str = "metrics") -> dict:
        """Writes ``name.jsonl``, ``name.csv`` and ``name.meta.json`` with ``results.save``; returns the paths."""
        return results.save(self.path, metrics, config=config, name=name, axes=axes)

    def write_json(self, name: str, payload: Any) -> str:
        """Writes ``payload`` (made JSON-able by ``results.to_json``) to ``name`` in the folder; returns the path."""
        path = os.path.join(self.path, name)
        with open(path, "w") as f:
            json.dump(results.to_json(payload), f, indent=2)
        return path
