"""What ``fedjax-attacks run`` runs: one function per experiment kind, each ``run_*(config, folder, logger)``.

* ``fl``: one FL run (an attack against a defense) for ``seeds`` seeds, in chunks with a progress bar and
  orbax checkpoints in ``checkpoints/`` (a rerun in the same folder resumes); the final parameters are exported.
* ``fl_sweep``: every attack against every defense (``fl.make_attack_sweep``: one program per defense), as
  ``benchmarks.quickstart`` and ``benchmarks.attack_matrix`` compute them; a heatmap and accuracy curves.
* ``rl_attack``, ``rgia``, ``decbyzpg``, ``sleepernets``: the benchmark script of that name with the config's
  ``args`` (its own figures and ``results.json`` land in the run folder; its numbers in the metrics).
"""

import dataclasses
import importlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from fedjax_attacks import aggregators, attacks, data, fl, models
from fedjax_attacks.cli import plots


def members(section: DictConfig, kind: str, where: str) -> Dict[str, Tuple[str, dict]]:
    """``{label: (name, hparams)}`` of an ``attacks`` / ``defenses`` section, each built once to check it
    (``ValueError`` naming the field and the file ``where``)."""
    registry = attacks if kind == "attacks" else aggregators
    out = {}
    for label, member in section.items():
        name, hparams = member.name, OmegaConf.to_container(member.hparams)
        try:
            registry.get(name, **hparams)
        except ValueError as error:
            raise ValueError(f"{where}: field '{kind}.{label}': {error}") from None
        out[str(label)] = (name, hparams)
    if not out:
        raise ValueError(f"{where}: field '{kind}' is empty")
    return out


def fl_config(config: DictConfig, defense: Tuple[str, dict], where: str, attack=("none", {})) -> fl.FLConfig:
    """The ``FLConfig`` of the ``fl`` section with ``defense`` and ``attack`` ((name, hparams) pairs), validated
    (``ValueError`` naming the field and the file ``where``)."""
    out = fl.FLConfig(**OmegaConf.to_container(config.fl), aggregator=defense[0], aggregator_hparams=defense[1],
                      attack=attack[0], attack_hparams=attack[1])
    try:
        out.validate()
    except ValueError as error:
        raise ValueError(f"{where}: section 'fl': {error}") from None
    return out


def load_data_and_model(config: DictConfig, dataset: str, where: str):
    """``(dataset, model)`` of a config's ``data_dir`` and ``model`` (``ValueError`` naming the file)."""
    try:
        ds = data.load(dataset, config.data_dir)
        return ds, models.get(config.model, ds.num_classes, ds.input_shape)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def run_fl(config: DictConfig, folder, logger, where: str) -> Dict[str, Any]:
    """One FL run for ``config.seeds`` seeds with a progress bar and checkpoints; returns the summary."""
    attack = members({"attack": config.attack}, "attacks", where)["attack"]
    defense = members({"defense": config.defense}, "defenses", where)["defense"]
    flc = fl_config(config, defense, where, attack)
    ds, model = load_data_and_model(config, config.dataset, where)
    sim = fl.make_simulation(flc, ds, model)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), config.seeds)
    start = time.perf_counter()
    params, history = fl.run_with_progress(
        sim, keys, config.chunk_blocks, desc=f"FL {attack[0]} vs {defense[0]}",
        checkpoint_dir=folder.checkpoints, checkpoint_every=config.checkpoint_every,
        on_chunk=lambda blocks, state: logger.log({"rounds_done": blocks * flc.eval_every}, blocks * flc.eval_every))
    wall = time.perf_counter() - start
    fl.export_params(f"{folder.path}/final_params.npz", params)
    folder.save_metrics(history, config=dataclasses.asdict(flc))
    accuracy = np.asarray(history.test_accuracy)
    rounds = np.asarray(history.round[0])
    for r, mean in zip(rounds, accuracy.mean(0)):
        logger.log({"test_accuracy": mean}, r)
    plots.curves(f"{folder.plots}/accuracy.png", rounds, {f"{attack[0]} vs {defense[0]}": accuracy},
                 "test accuracy (mean +- std over seeds)")
    return {"final_accuracy_mean": accuracy[:, -1].mean(), "final_accuracy_std": accuracy[:, -1].std(),
            "wall_time_s": wall}


def sweep_accuracy(flc: fl.FLConfig, ds, model, attack_members: List[Tuple[str, dict]], keys,
                   vmap_attacks: Optional[bool] = None) -> tuple:
    """Test accuracy ``f32[A, S, evals]`` and eval rounds of every attack of ``attack_members`` for one defense
    (the one in ``flc``), from one compiled ``fl.make_attack_sweep``.

    ``vmap_attacks``: attacks x seeds as one vmapped call (every attack's branch then runs for every member), or
    one call per attack (only its branch runs). None picks the vmapped call on GPU/TPU and the loop on a CPU,
    where it measured 1.6x faster (digits, 14 attacks, 2 seeds, 200 rounds, 2 cores).
    """
    sweep = fl.make_attack_sweep(flc, ds, model, attack_members)
    if vmap_attacks is None:
        vmap_attacks = jax.default_backend() != "cpu"
    if vmap_attacks:
        history = sweep(keys, jnp.arange(len(attack_members)))
    else:
        runs = [sweep(keys, jnp.int32(i)) for i in range(len(attack_members))]
        history = jax.tree_util.tree_map(lambda *parts: jnp.stack(parts), *runs)
    return np.asarray(history.test_accuracy), np.asarray(history.round[0, 0])


def run_fl_sweep(config: DictConfig, folder, logger, where: str) -> Dict[str, Any]:
    """Every attack x defense of the config; writes metrics ``[attack, defense, seed, eval]``, the final
    accuracy heatmap and the curves; returns the summary (final accuracy mean and std per cell)."""
    attack_table = members(config.attacks, "attacks", where)
    defense_table = members(config.defenses, "defenses", where)
    configs = {label: fl_config(config, rule, where) for label, rule in defense_table.items()}
    ds, model = load_data_and_model(config, config.dataset, where)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), config.seeds)
    start, columns = time.perf_counter(), []
    for label in tqdm(configs, desc="defenses (all attacks x seeds in one program each)", unit="defense",
                      disable=not config.logging.progress):
        accuracy, rounds = sweep_accuracy(configs[label], ds, model, list(attack_table.values()), keys,
                                          config.vmap_attacks)
        columns.append(accuracy)
        for attack, curve in zip(attack_table, accuracy.mean(1)):
            for r, value in zip(rounds, curve):
                logger.log({f"{label}/{attack}/test_accuracy": value}, r)
    wall = time.perf_counter() - start
    accuracy = np.stack(columns, axis=1)  # [A, D, S, evals]
    folder.save_metrics({"test_accuracy": accuracy}, config=OmegaConf.to_container(config),
                        axes=("attack", "defense", "seed", "eval"))
    final = accuracy[..., -1]
    names = (list(attack_table), list(defense_table))
    plots.heatmap(f"{folder.plots}/final_accuracy.png", final.mean(-1), final.std(-1), *names,
                  f"final test accuracy ({config.dataset}/{config.model}, {config.seeds} seeds)")
    for j, defense in enumerate(defense_table):
        plots.curves(f"{folder.plots}/curves_{defense}.png", rounds,
                     {attack: accuracy[i, j] for i, attack in enumerate(attack_table)}, f"defense: {defense}")
    return {"attacks": names[0], "defenses": names[1], "eval_rounds": rounds,
            "final_accuracy_mean": final.mean(-1), "final_accuracy_std": final.std(-1), "wall_time_s": wall}


def run_benchmark(config: DictConfig, argv: List[str], folder, logger) -> Dict[str, Any]:
    """``benchmarks.<experiment>.main(argv + --out folder)``: its ``results.json`` and PNGs land in the run
    folder; the numbers of ``results.json`` go to the metrics (one row, a column per path) and to the logger."""
    module = importlib.import_module(f"benchmarks.{config.experiment}")
    start = time.perf_counter()
    module.main(argv + ["--out", folder.path])
    wall = time.perf_counter() - start
    with open(os.path.join(folder.path, "results.json")) as f:
        scalars = dict(_scalars(json.load(f)))
    folder.save_metrics({path: np.array([value]) for path, value in scalars.items()},
                        config=OmegaConf.to_container(config), axes=("run",))
    logger.log(scalars, 0)
    return {"benchmark": config.experiment, "argv": argv, "wall_time_s": wall}


MAX_ENTRIES = 64  # longer numeric lists (the curves) stay in results.json only


def _scalars(tree, prefix=""):
    """``(path, float)`` for every number (not bool) of a JSON tree, and every entry of its numeric lists of at
    most ``MAX_ENTRIES`` entries."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _scalars(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(tree, list):
        try:
            array = np.asarray(tree, dtype=float)
        except (TypeError, ValueError):  # ragged or not numeric: element by element
            for i, value in enumerate(tree):
                yield from _scalars(value, f"{prefix}[{i}]")
            return
        if array.size <= MAX_ENTRIES:
            for index in np.ndindex(*array.shape):
                yield f"{prefix}[{','.join(map(str, index))}]", float(array[index])
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix, float(tree)
