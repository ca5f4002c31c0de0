"""Experiment configs: YAML or JSON files checked against dataclass schemas with OmegaConf.

A config names its ``experiment`` (one of ``EXPERIMENTS``); its other fields are checked against that
experiment's schema, so an unknown field or a value of the wrong type raises ``ValueError`` naming the field and
the file. ``field=value`` overrides (OmegaConf dot-lists, e.g. ``fl.rounds=20`` or ``attacks.ipm.hparams.eps=3``)
are checked the same way.
"""

import argparse
import contextlib
import dataclasses
import importlib
import io
import os
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedjax_attacks import fl

BENCHMARKS = ("rl_attack", "rgia", "decbyzpg", "sleepernets")
EXPERIMENTS = ("fl", "fl_sweep", "leaderboard") + BENCHMARKS


@dataclasses.dataclass
class Member:
    """An attack or a defense: a registry name and its hyperparameters."""

    name: str = MISSING
    hparams: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Logging:
    """Where a run's metrics go besides its folder: TensorBoard (extra ``tensorboard``) or Weights & Biases
    (extra ``wandb``), both off by default; ``progress`` shows tqdm bars."""

    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "fedjax-attacks"
    progress: bool = True


_SET_BY_MEMBERS = ("aggregator", "aggregator_hparams", "attack", "attack_hparams")


def _fl_fields_schema():
    """A dataclass with the fields of ``fl.FLConfig`` and its defaults, less those a ``Member`` sets."""
    fields = []
    for f in dataclasses.fields(fl.FLConfig):
        if f.name not in _SET_BY_MEMBERS:
            kind = Dict[str, Any] if f.default is dataclasses.MISSING else type(f.default)
            fields.append((f.name, kind, dataclasses.field(default=f.default)))
    return dataclasses.make_dataclass("FLFields", fields)


FLFields = _fl_fields_schema()


@dataclasses.dataclass
class _Common:
    experiment: str = MISSING
    out: Optional[str] = None  # the run folder (default: results/runs/<config file's stem>)
    logging: Logging = dataclasses.field(default_factory=Logging)


@dataclasses.dataclass
class _FLCommon(_Common):
    dataset: str = "digits"
    data_dir: Optional[str] = None
    model: str = "mlp"
    seeds: int = 3
    seed: int = 0
    fl: FLFields = dataclasses.field(default_factory=FLFields)


@dataclasses.dataclass
class FLRunConfig(_FLCommon):
    """``experiment: fl``: one attack against one defense, seeds vmapped, in chunks with checkpoints."""

    attack: Member = dataclasses.field(default_factory=lambda: Member(name="none"))
    defense: Member = dataclasses.field(default_factory=lambda: Member(name="mean"))
    chunk_blocks: Optional[int] = None
    checkpoint_every: int = 1


@dataclasses.dataclass
class FLSweepConfig(_FLCommon):
    """``experiment: fl_sweep``: every attack (rows) against every defense (columns), one program per defense."""

    attacks: Dict[str, Member] = dataclasses.field(default_factory=dict)
    defenses: Dict[str, Member] = dataclasses.field(default_factory=dict)
    vmap_attacks: Optional[bool] = None  # see experiments.sweep_accuracy (None: vmapped on GPU/TPU only)


@dataclasses.dataclass
class FRLBoard:
    """The FRL half of the leaderboard: ByzPG / DecByzPG (``benchmarks.decbyzpg``) for each aggregator under
    each behaviour (the paper's three or any attack name), K agents of which f Byzantine."""

    enabled: bool = True
    env: str = "CartPole-v1"
    algorithms: List[str] = dataclasses.field(default_factory=lambda: ["dec", "byz"])
    aggregators: List[str] = dataclasses.field(default_factory=lambda: ["geometric_median", "median", "krum"])
    behaviours: List[str] = dataclasses.field(
        default_factory=lambda: ["random_action", "large_noise", "avg_zero", "alie", "ipm", "sign_flip"])
    agents: int = 5
    num_byzantine: int = 1
    seeds: int = 2
    max_trajectories: int = 100
    horizon: int = 100
    large_batch: int = 16
    chunk: int = 4


@dataclasses.dataclass
class RLAttackBoard:
    """The RL attack (seed paper 000) as one more attack of the FL leaderboard: it trains a policy per defense
    (about 20 s each on 2 cores at these sizes), so by default it runs on ``datasets`` = digits only (its row
    is NaN, "not run", on the others). It attacks the ``fl`` section's run; defenses the attackers' simulator
    cannot mirror (stateful rules, rules without an action range) are reported as such and left out of its row.
    ``tau_e`` must be a multiple of ``fl.eval_every``; policy learning runs every ``tau_e`` rounds until
    ``2 tau_e``."""

    enabled: bool = True
    datasets: List[str] = dataclasses.field(default_factory=lambda: ["digits"])
    tau_e: int = 50
    policy_iterations: int = 100
    num_envs: int = 8
    horizon: int = 20


@dataclasses.dataclass
class LeaderboardConfig(_Common):
    """``experiment: leaderboard``: per defense, the worst final accuracy over every attack (FL) and the worst
    final return over every behaviour (FRL). Empty ``attacks`` / ``defenses`` mean the defaults of
    ``fedjax_attacks.cli.leaderboard`` (every registered attack; ``benchmarks.attack_matrix``'s defenses)."""

    experiment: str = "leaderboard"
    datasets: List[str] = dataclasses.field(default_factory=lambda: ["digits", "mnist5k"])
    data_dir: Optional[str] = None
    model: str = "mlp"
    seeds: int = 2
    seed: int = 0
    fl: FLFields = dataclasses.field(default_factory=lambda: FLFields(rounds=100, eval_every=50))
    attacks: Dict[str, Member] = dataclasses.field(default_factory=dict)
    defenses: Dict[str, Member] = dataclasses.field(default_factory=dict)
    vmap_attacks: Optional[bool] = None
    rl_attack: RLAttackBoard = dataclasses.field(default_factory=RLAttackBoard)
    frl: FRLBoard = dataclasses.field(default_factory=FRLBoard)


def _benchmark_schema(name: str):
    """A dataclass of the options of ``benchmarks.<name>`` (from its argument parser): every field defaults to
    None (the benchmark's default); booleans are switches, other values are checked by the benchmark's parser."""
    module = importlib.import_module(f"benchmarks.{name}")
    defaults = vars(module.parse_args([]))
    fields = []
    for key, value in defaults.items():
        if key not in ("out", "quick"):
            kind = Optional[type(value)] if isinstance(value, (bool, int, float, str)) else Optional[Any]
            fields.append((key, kind, dataclasses.field(default=None)))
    args = dataclasses.make_dataclass(f"{name}_args", fields)
    return dataclasses.make_dataclass(
        f"{name}_config", [("quick", bool, dataclasses.field(default=False)),
                           ("args", args, dataclasses.field(default_factory=args))], bases=(_Common,))


def schema(experiment: str):
    """The schema dataclass of ``experiment``; ``ValueError`` for an unknown one."""
    if experiment == "fl":
        return FLRunConfig
    if experiment == "fl_sweep":
        return FLSweepConfig
    if experiment == "leaderboard":
        return LeaderboardConfig
    if experiment in BENCHMARKS:
        return _benchmark_schema(experiment)
    raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")


def load(path: Optional[str], overrides: Sequence[str] = (), experiment: Optional[str] = None) -> DictConfig:
    """The config in ``path`` (YAML or JSON; None for the schema's defaults, then ``experiment`` is needed) with
    ``overrides`` (``field=value`` strings) merged in, checked against its experiment's schema; ``experiment``,
    when given, is the only experiment accepted.

    Raises:
      ValueError: an unreadable file, an unknown experiment, an unknown field or a value of the wrong type,
        naming the field and the file.
    """
    where = path or "<defaults>"
    raw = _read(path) if path else OmegaConf.create({})
    try:
        override = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as error:
        raise ValueError(f"{where}: bad override in {list(overrides)}: {error}") from None
    name = override.get("experiment", raw.get("experiment", experiment))
    if name is None:
        raise ValueError(f"{where}: missing field 'experiment' (one of {', '.join(EXPERIMENTS)})")
    if experiment is not None and name != experiment:
        raise ValueError(f"{where}: field 'experiment' is {name!r}, this command runs {experiment!r}")
    try:
        kind = schema(name)
    except ValueError as error:
        raise ValueError(f"{where}: field 'experiment': {error}") from None
    config = OmegaConf.structured(kind(experiment=name))
    for source, part in (("in the file", raw), ("from an override", override)):
        try:
            config = OmegaConf.merge(config, part)
        except OmegaConfBaseException as error:
            raise ValueError(f"{where}: field {error.full_key!r} {source}: {_message(error)}") from None
    if config.out is None:
        stem = os.path.splitext(os.path.basename(path))[0] if path else name
        config.out = os.path.join("results", "runs", stem)
    return config


def benchmark_argv(config: DictConfig, where: str) -> List[str]:
    """The command line of ``benchmarks.<config.experiment>`` for a benchmark config; checked by the
    benchmark's own parser (``ValueError`` naming the field and the file ``where`` for a value it refuses)."""
    argv = ["--quick"] if config.quick else []
    for key, value in OmegaConf.to_container(config.args).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            argv += [flag, text]
    module = importlib.import_module(f"benchmarks.{config.experiment}")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            module.parse_args(argv)
    except SystemExit:
        raise ValueError(f"{where}: args: {stderr.getvalue().strip().splitlines()[-1]}") from None
    except (ValueError, argparse.ArgumentError) as error:
        raise ValueError(f"{where}: args: {error}") from None
    return argv


def _read(path: str) -> DictConfig:
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such config file")
    try:
        config = OmegaConf.load(path)  # YAML, of which JSON is a subset
    except Exception as error:  # the YAML parser's errors, for a file that is not YAML or JSON
        raise ValueError(f"{path}: not a YAML or JSON config: {error}") from None
    if not isinstance(config, DictConfig):
        raise ValueError(f"{path}: a config must be a mapping of fields, got a list")
    return config


def _message(error: OmegaConfBaseException) -> str:
    return str(error).splitlines()[0]
