"""The robustness leaderboard: per defense, its worst case over every attack.

FL: for each dataset of ``datasets`` (digits and mnist5k by default) and each defense, the final test accuracy
under every attack of the registry (``fedjax_attacks.attacks.names()`` less ``switch``; LMP in its median and
Krum variants; hyperparameters of ``benchmarks.attack_matrix``), attacks x seeds from one compiled program per
defense (``fl.make_attack_sweep``, see ``experiments.sweep_accuracy``); a defense's score is its lowest mean
accuracy over the attacks (``none``, the no-attack baseline, is reported beside it). FRL: ByzPG / DecByzPG
(``benchmarks.decbyzpg``) with each aggregator under each behaviour, the score is the lowest final return; plain
averaging (Fed-/Dec-PAGE-PG) is the ``mean`` row. The RL attack is the attack row ``rl_attack`` of the FL part
(``rl_attack.enabled``), on the datasets of ``rl_attack.datasets`` (digits by default: it trains a policy per
defense on top of an FL run, about 20 s each on 2 cores, and the whole default fits 15 minutes only without
mnist5k's); a defense its simulator cannot mirror gets no RL entry (the reason is recorded).
``benchmarks.rl_attack`` (``configs/rl_attack_fig3.yaml``) measures it against Krum, the clipped median, the
median and FLTrust at the paper's setting.

Writes ``leaderboard.md``, ``leaderboard.json``, ``plots/leaderboard_fl.png``, ``plots/leaderboard_frl.png``,
``plots/matrix_<dataset>.png`` and the metrics ``[dataset, attack, defense, seed, eval]`` of the FL part.
"""

import os
import time
from typing import Any, Dict

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from benchmarks import attack_matrix, decbyzpg
from fedjax_attacks import attacks
from fedjax_attacks import rl_attack as ra
from fedjax_attacks.cli import plots
from fedjax_attacks.cli.config import Member
from fedjax_attacks.cli.experiments import fl_config, load_data_and_model, members, sweep_accuracy

NOT_ATTACKS = ("switch",)  # registry entries that are not attacks of their own
RL_ATTACK = "rl_attack"  # the attack row of the RL attack (``rl_attack.enabled``)


def default_attacks() -> Dict[str, dict]:
    """Every registered attack (less ``switch``) as ``{label: {"name", "hparams"}}``, with
    ``benchmarks.attack_matrix``'s hyperparameters (both LMP variants) and defaults for any attack it lacks."""
    table = {label: {"name": name, "hparams": hparams} for label, (name, hparams) in attack_matrix.ATTACKS.items()}
    covered = {entry["name"] for entry in table.values()}
    for name in attacks.names():
        if name not in covered and name not in NOT_ATTACKS:
            table[name] = {"name": name, "hparams": {}}
    return table


def default_defenses() -> Dict[str, dict]:
    """``benchmarks.attack_matrix``'s defenses as ``{label: {"name", "hparams"}}``."""
    return {label: {"name": name, "hparams": hparams} for label, (name, hparams) in attack_matrix.DEFENSES.items()}


def run_leaderboard(config: DictConfig, folder, logger, where: str) -> Dict[str, Any]:
    """Runs the FL and (if ``frl.enabled``) the FRL leaderboard; writes the tables and heatmaps; returns them."""
    for section, default in (("attacks", default_attacks), ("defenses", default_defenses)):
        if not config[section]:
            config[section] = {label: Member(**entry) for label, entry in default().items()}
    start = time.perf_counter()
    board = {"fl": _fl_board(config, folder, logger, where)}
    board["fl_wall_time_s"] = time.perf_counter() - start
    if config.frl.enabled:
        frl_start = time.perf_counter()
        board["frl"] = _frl_board(config.frl, folder, config.logging.progress)
        board["frl_wall_time_s"] = time.perf_counter() - frl_start
    if not config.rl_attack.enabled:
        board["rl_attack"] = ("not included (rl_attack.enabled=false); run with rl_attack.enabled=true, or "
                              "configs/rl_attack_fig3.yaml")
    board["wall_time_s"] = time.perf_counter() - start
    board["load_average"] = os.getloadavg()
    folder.write_json("leaderboard.json", board)
    with open(os.path.join(folder.path, "leaderboard.md"), "w") as f:
        f.write(markdown(board))
    return board


def _fl_board(config: DictConfig, folder, logger, where: str) -> Dict[str, Any]:
    attack_table = members(config.attacks, "attacks", where)
    defense_table = members(config.defenses, "defenses", where)
    if "none" not in attack_table:
        raise ValueError(f"{where}: field 'attacks' needs the no-attack baseline 'none'")
    keys = jax.random.split(jax.random.PRNGKey(config.seed), config.seeds)
    names, results, curves = list(attack_table), {}, []
    attacked = [i for i, name in enumerate(names) if name != "none"]
    if config.rl_attack.enabled:
        unknown = [d for d in config.rl_attack.datasets if d not in config.datasets]
        if unknown:
            raise ValueError(f"{where}: field 'rl_attack.datasets' names {unknown}, not in 'datasets' "
                             f"{list(config.datasets)}")
    bar = tqdm(total=len(config.datasets) * len(defense_table), desc="FL leaderboard (dataset x defense)",
               unit="defense", disable=not config.logging.progress)
    for dataset in config.datasets:
        ds, model = load_data_and_model(config, dataset, where)
        columns = []
        skipped = {}
        for label, rule in defense_table.items():
            flc = fl_config(config, rule, where)
            accuracy, _ = sweep_accuracy(flc, ds, model, list(attack_table.values()), keys, config.vmap_attacks)
            if config.rl_attack.enabled:
                if dataset in config.rl_attack.datasets:
                    rl_curve, reason = _rl_attack_accuracy(config.rl_attack, flc, ds, model, keys, where)
                else:
                    rl_curve = np.full(accuracy.shape[1:], np.nan)
                    reason = f"not run on {dataset} (rl_attack.datasets={list(config.rl_attack.datasets)})"
                if reason:
                    skipped[label] = reason
                accuracy = np.concatenate([accuracy, rl_curve[None]], axis=0)
            columns.append(accuracy)
            bar.update(1)
        if config.rl_attack.enabled and dataset == config.datasets[0]:
            names.append(RL_ATTACK)
            attacked.append(len(names) - 1)
        accuracy = np.stack(columns, axis=1)  # [A, D, S, evals]
        curves.append(accuracy)
        mean = accuracy[..., -1].mean(-1)  # [A, D]
        worst = [attacked[int(np.nanargmin(mean[attacked, j]))] for j in range(len(defense_table))]
        results[dataset] = {
            "no_attack": {d: mean[names.index("none"), j] for j, d in enumerate(defense_table)},
            "worst_case": {d: mean[worst[j], j] for j, d in enumerate(defense_table)},
            "worst_attack": {d: names[worst[j]] for j, d in enumerate(defense_table)},
            "matrix": {a: {d: mean[i, j] for j, d in enumerate(defense_table)} for i, a in enumerate(names)},
        }
        if config.rl_attack.enabled:
            results[dataset]["rl_attack_not_run"] = skipped
        logger.log({f"{dataset}/{d}/worst_case": mean[worst[j], j] for j, d in enumerate(defense_table)}, 0)
        plots.heatmap(f"{folder.plots}/matrix_{dataset}.png", mean, accuracy[..., -1].std(-1), names,
                      list(defense_table), f"final test accuracy on {dataset} ({config.seeds} seeds)")
    bar.close()
    folder.save_metrics({"test_accuracy": np.stack(curves)}, axes=("dataset", "attack", "defense", "seed", "eval"))
    worst = np.array([[results[ds]["worst_case"][d] for ds in config.datasets] for d in defense_table])
    label = np.array([[results[ds]["worst_attack"][d] for ds in config.datasets] for d in defense_table])
    plots.heatmap(f"{folder.plots}/leaderboard_fl.png", worst, None, list(defense_table), list(config.datasets),
                  f"worst-case final accuracy over {len(attacked)} attacks", labels=label)
    attack_list = dict(attack_table)
    if config.rl_attack.enabled:
        attack_list[RL_ATTACK] = {"name": RL_ATTACK, "hparams": OmegaConf.to_container(config.rl_attack)}
    return {"datasets": list(config.datasets), "defenses": list(defense_table), "attacks": attack_list,
            "rl_attack_datasets": list(config.rl_attack.datasets) if config.rl_attack.enabled else [],
            "rounds": config.fl.rounds, "seeds": config.seeds, "results": results}


def _rl_attack_accuracy(section: DictConfig, flc, ds, model, keys, where: str):
    """The RL attack's test-accuracy curves ``f32[S, evals]`` against ``flc``'s defense and ``None``, or NaN curves
    and the reason when its simulator cannot mirror the defense."""
    rl_config = ra.RLAttackConfig(tau_e=section.tau_e, chunk_rounds=section.tau_e, policy_until=2 * section.tau_e,
                                  policy_iterations=section.policy_iterations, num_envs=section.num_envs,
                                  horizon=section.horizon)
    if section.tau_e % flc.eval_every or section.tau_e >= flc.rounds:
        raise ValueError(f"{where}: rl_attack.tau_e={section.tau_e} must be a multiple of fl.eval_every="
                         f"{flc.eval_every} below fl.rounds={flc.rounds}")
    try:
        rl = ra.make_rl_attack(flc, rl_config, ds, model)
    except ValueError as error:
        return np.full((len(keys), flc.rounds // flc.eval_every), np.nan), str(error)
    report = ra.run_with_progress(rl, keys, progress=False)
    return np.asarray(report.history.test_accuracy), None


def _frl_board(frl: DictConfig, folder, progress: bool) -> Dict[str, Any]:
    results = {}
    total = len(frl.aggregators) * len(frl.algorithms)
    with tqdm(total=total, desc="FRL leaderboard (aggregator x algorithm)", disable=not progress) as bar:
        for aggregator in frl.aggregators:
            out = os.path.join(folder.path, "frl", aggregator)
            run = decbyzpg.main(["--envs", frl.env, "--algorithms", ",".join(frl.algorithms),
                                 "--behaviours", ",".join(frl.behaviours), "--figures", "speedup,attacks",
                                 "--agents", str(frl.agents), "--num-byzantine", str(frl.num_byzantine),
                                 "--aggregator", aggregator, "--seeds", str(frl.seeds),
                                 "--max-trajectories", str(frl.max_trajectories), "--horizon", str(frl.horizon),
                                 "--large-batch", str(frl.large_batch), "--chunk", str(frl.chunk),
                                 "--greedy-episodes", "0", "--out", out])
            for algorithm in frl.algorithms:
                curves = run["figures"][f"{frl.env}/{algorithm}"]
                robust, plain = decbyzpg.NAMES[algorithm]
                rows = {aggregator: robust} if "mean" in results.get(algorithm, {}) else {
                    aggregator: robust, "mean": plain}
                for rule, method in rows.items():
                    finals = {b: curves[f"{method} K={frl.agents} {b}"]["final_mean"] for b in frl.behaviours}
                    worst = min(finals, key=finals.get)
                    results.setdefault(algorithm, {})[rule] = {
                        "method": method, "no_attack": curves[f"{method} K={frl.agents}"]["final_mean"],
                        "worst_case": finals[worst], "worst_behaviour": worst, "per_behaviour": finals}
                bar.update(1)
    algorithms, rules = list(frl.algorithms), list(results[frl.algorithms[0]])
    worst = np.array([[results[a][r]["worst_case"] for a in algorithms] for r in rules])
    label = np.array([[results[a][r]["worst_behaviour"] for a in algorithms] for r in rules])
    plots.heatmap(f"{folder.plots}/leaderboard_frl.png", worst, None, rules,
                  [f"{decbyzpg.NAMES[a][0]}" for a in algorithms],
                  f"{frl.env}: worst-case final return over {len(frl.behaviours)} behaviours", labels=label,
                  vmin=float(worst.min()), vmax=float(worst.max()))
    return {"env": frl.env, "agents": frl.agents, "num_byzantine": frl.num_byzantine, "seeds": frl.seeds,
            "max_trajectories": frl.max_trajectories, "behaviours": list(frl.behaviours), "results": results}


def markdown(board: Dict[str, Any]) -> str:
    """The leaderboard as markdown tables, the most robust defense first."""
    fl_part = board["fl"]
    lines = [f"# Robustness leaderboard\n\nFL: worst-case final test accuracy over {len(fl_part['attacks']) - 1} "
             f"attacks (the attack reaching it in brackets), {fl_part['rounds']} rounds, {fl_part['seeds']} seeds; "
             "no attack beside it.\n"]
    header = "| defense | " + " | ".join(f"{d} worst | {d} no attack" for d in fl_part["datasets"]) + " |"
    lines += [header, "|" + " --- |" * (1 + 2 * len(fl_part["datasets"]))]
    score = {d: min(fl_part["results"][ds]["worst_case"][d] for ds in fl_part["datasets"])
             for d in fl_part["defenses"]}
    for d in sorted(score, key=score.get, reverse=True):
        cells = [f"{r['worst_case'][d]:.3f} ({r['worst_attack'][d]}) | {r['no_attack'][d]:.3f}"
                 for r in (fl_part["results"][ds] for ds in fl_part["datasets"])]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    if "frl" in board:
        frl = board["frl"]
        lines += [f"\nFRL ({frl['env']}, K = {frl['agents']}, f = {frl['num_byzantine']}, {frl['seeds']} seeds, "
                  f"{frl['max_trajectories']} trajectories per agent): worst-case final return over "
                  f"{', '.join(frl['behaviours'])}; `mean` is plain averaging (Fed-/Dec-PAGE-PG).\n"]
        for algorithm, rows in frl["results"].items():
            lines += [f"| aggregator ({algorithm}) | method | worst | no attack |", "| --- | --- | --- | --- |"]
            for rule in sorted(rows, key=lambda r: rows[r]["worst_case"], reverse=True):
                row = rows[rule]
                lines.append(f"| {rule} | {row['method']} | {row['worst_case']:.1f} ({row['worst_behaviour']}) | "
                             f"{row['no_attack']:.1f} |")
            lines.append("")
    if "rl_attack" in board:
        lines.append(f"\nRL attack: {board['rl_attack']}.")
    else:
        for ds in (d for d in fl_part["datasets"] if d in fl_part["rl_attack_datasets"]):
            rl_row = fl_part["results"][ds]["matrix"][RL_ATTACK]
            skipped = fl_part["results"][ds].get("rl_attack_not_run", {})
            lines.append(f"\nRL attack on {ds} (final accuracy per defense): " + ", ".join(
                f"{d} {v:.3f}" if d not in skipped else f"{d} not mirrorable" for d, v in rl_row.items()) + ".")
    lines.append(f"\nWall time {board['wall_time_s']:.0f} s "
                 f"(load average {', '.join(f'{x:.1f}' for x in board['load_average'])}).\n")
    return "\n".join(lines)
