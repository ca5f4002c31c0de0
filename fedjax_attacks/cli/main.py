"""``fedjax-attacks``: experiments from config files.

    fedjax-attacks run CONFIG.yaml [field=value ...]      # any experiment (see fedjax_attacks.cli.config)
    fedjax-attacks leaderboard [CONFIG.yaml] [field=value ...]   # the robustness leaderboard (defaults: no file)

Each run writes one folder (``out``, default ``results/runs/<config stem>``; see ``fedjax_attacks.cli.rundir``).
"""

import argparse
import sys
import time
from typing import Optional, Sequence

from fedjax_attacks.cli import config as configs
from fedjax_attacks.cli import experiments
from fedjax_attacks.cli.loggers import make_logger
from fedjax_attacks.cli.rundir import RunFolder


def run(path: Optional[str], overrides: Sequence[str] = (), experiment: Optional[str] = None) -> dict:
    """Loads the config at ``path`` with ``overrides``, runs its experiment into its run folder and returns
    ``{"out": folder, "summary": ...}`` (the summary is also ``summary.json``). ``ValueError`` for a bad config,
    before anything runs."""
    where = path or "<defaults>"
    config = configs.load(path, overrides, experiment)
    argv = configs.benchmark_argv(config, where) if config.experiment in configs.BENCHMARKS else None
    folder = RunFolder(config)
    logger = make_logger(config.logging, folder.path, run_name=folder.path)
    start = time.perf_counter()
    try:
        if config.experiment == "fl":
            summary = experiments.run_fl(config, folder, logger, where)
        elif config.experiment == "fl_sweep":
            summary = experiments.run_fl_sweep(config, folder, logger, where)
        elif config.experiment == "leaderboard":
            from fedjax_attacks.cli.leaderboard import run_leaderboard

            summary = run_leaderboard(config, folder, logger, where)
        else:
            summary = experiments.run_benchmark(config, argv, folder, logger)
    finally:
        logger.close()
    summary = {"experiment": config.experiment, "total_wall_time_s": time.perf_counter() - start, **summary}
    folder.write_json("summary.json", summary)
    print(f"wrote {folder.path}/ (config.yaml, environment.json, metrics.jsonl/.csv, summary.json, plots/)")
    return {"out": folder.path, "summary": summary}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``fedjax-attacks`` command line; returns the exit status (2 with the message for a bad config)."""
    p = argparse.ArgumentParser(prog="fedjax-attacks",
                                description="Attacks and defenses in FL and FRL from config files.")
    commands = p.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run", help="run the experiment of a YAML or JSON config")
    r.add_argument("config", help="path of a .yaml or .json config (see configs/)")
    r.add_argument("overrides", nargs="*", help="field=value (dotted for nested fields, e.g. fl.rounds=20)")
    b = commands.add_parser("leaderboard", help="worst-case accuracy / return of every defense over every attack")
    b.add_argument("config", nargs="?", help="a leaderboard config (default: the built-in default size)")
    b.add_argument("overrides", nargs="*", help="field=value")
    args = p.parse_args(argv)
    if args.command == "leaderboard" and args.config and "=" in args.config:
        args.overrides, args.config = [args.config, *args.overrides], None  # overrides without a file
    try:
        run(args.config, args.overrides, "leaderboard" if args.command == "leaderboard" else None)
    except ValueError as error:
        print(f"fedjax-attacks: error: {error}", file=sys.stderr)
        return 2
    return 0
