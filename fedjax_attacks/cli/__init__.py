"""Experiments without writing Python: ``fedjax-attacks run CONFIG.yaml [field=value ...]`` and
``fedjax-attacks leaderboard`` (``main(argv)``; ``python -m fedjax_attacks.cli``). See ``configs/`` and the
README section "Running from a config"."""

from fedjax_attacks.cli.main import main, run

__all__ = ["main", "run"]
