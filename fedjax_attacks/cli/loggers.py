"""Optional metric loggers for CLI runs: TensorBoard (extra ``tensorboard``) and Weights & Biases (extra ``wandb``).

``make_logger(config.logging, run_dir)`` returns a ``Logger`` whose ``log(metrics, step)`` forwards a dict of
scalars to every enabled backend (none by default). Backends are imported only when enabled; a missing extra
raises ``ImportError`` saying which ``pip install`` to run.
"""

import importlib
from typing import Callable, List, Mapping


def _require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"logging.{extra}=true needs the optional extra: pip install 'fedjax-attacks[{extra}]'") \
            from None


class Logger:
    """Forwards scalar metrics to the enabled backends; ``close()`` flushes them."""

    def __init__(self, sinks: List[Callable], closers: List[Callable]):
        self._sinks, self._closers = sinks, closers

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Logs ``metrics`` (name -> number) at ``step`` to every backend."""
        for sink in self._sinks:
            sink({k: float(v) for k, v in metrics.items()}, int(step))

    def close(self) -> None:
        """Flushes and closes every backend."""
        for close in self._closers:
            close()


def make_logger(logging, run_dir: str, run_name: str = "run") -> Logger:
    """A ``Logger`` for the ``Logging`` section of a config: TensorBoard event files in ``run_dir/tensorboard``
    (``tensorboardX``), a W&B run in project ``logging.wandb_project`` named ``run_name``."""
    sinks, closers = [], []
    if logging.tensorboard:
        writer = _require("tensorboardX", "tensorboard").SummaryWriter(f"{run_dir}/tensorboard")
        sinks.append(lambda metrics, step: [writer.add_scalar(k, v, step) for k, v in metrics.items()])
        closers.append(writer.close)
    if logging.wandb:
        wandb = _require("wandb", "wandb")
        run = wandb.init(project=logging.wandb_project, name=run_name, dir=run_dir)
        sinks.append(lambda metrics, step: run.log({**metrics, "step": step}))  # W&B's own step only increases
        closers.append(run.finish)
    return Logger(sinks, closers)
