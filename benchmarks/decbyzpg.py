"""DecByzPG / ByzPG figures (Jordan et al., AAMAS 2024, Fig. 1-3 and App. E, Fig. 4-6).

For each environment (CartPole-v1; Acrobot-v1 stands in for LunarLander, which has no JAX version) and each
algorithm (``dec`` = DecByzPG against Dec-PAGE-PG, ``byz`` = ByzPG against Fed-PAGE-PG):

1. speed-up without Byzantines: the robust method with K in {1, 5, 13} (K = 1 is PAGE-PG), and plain averaging
   with K = 13 as the unattacked reference;
2. K = 13, f = 3 under RandomAction, LargeNoise and AvgZero: the robust method against plain averaging, with
   PAGE-PG (K = 1) as reference.

Every variant runs all seeds at once (``vmap``) with the same switch sequence, in jitted chunks of iterations.
The x axis is trajectories per agent, the y axis the honest agents' average return (mean and std over seeds).

    python -m benchmarks.decbyzpg                      # the paper's setting: 10 seeds, 5000 trajectories
    python -m benchmarks.decbyzpg --envs CartPole-v1 --algorithms dec   # the main CartPole figure only
"""

import dataclasses
import os
import time

import jax
import matplotlib
import numpy as np
from tqdm import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import common  # noqa: E402
from fedjax_attacks import frl  # noqa: E402

PRESETS = {"CartPole-v1": frl.CARTPOLE, "Acrobot-v1": frl.ACROBOT}
BEHAVIOURS = ("random_action", "large_noise", "avg_zero")
NAMES = {"dec": ("DecByzPG", "Dec-PAGE-PG"), "byz": ("ByzPG", "Fed-PAGE-PG")}


def parse_args(argv=None):
    p = common.parser("decbyzpg", __doc__.split("\n\n")[0])
    p.add_argument("--envs", default="CartPole-v1,Acrobot-v1", help="comma-separated (default: %(default)s)")
    p.add_argument("--algorithms", default="dec,byz", help="dec and/or byz (default: %(default)s)")
    p.add_argument("--behaviours", default=",".join(BEHAVIOURS),
                   help="the paper's behaviours or any FL attack name, e.g. alie,ipm (default: %(default)s)")
    p.add_argument("--figures", default="speedup,attacks", help="speedup and/or attacks (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--max-trajectories", type=int, default=5000, help="per agent")
    p.add_argument("--agents", default="1,5,13", help="federation sizes of the speed-up figure")
    p.add_argument("--num-byzantine", type=int, default=3, help="f, with K = the largest of --agents")
    p.add_argument("--aggregator", default="geometric_median", help="robust aggregator (RFA by default)")
    p.add_argument("--bucket-size", type=int, default=1, help="bucketing s around the aggregator (1 = none)")
    p.add_argument("--agreement", default="mda", help="mda or gda")
    p.add_argument("--horizon", type=int, default=0, help="override the preset's horizon (0 = keep)")
    p.add_argument("--large-batch", type=int, default=0, help="override N (0 = keep)")
    p.add_argument("--learning-rate", type=float, default=0.0, help="override the Adam step size (0 = keep)")
    p.add_argument("--chunk", type=int, default=16, help="iterations per jitted call")
    p.add_argument("--switch-groups", type=int, default=0,
                   help="coin sequences: seeds are split into this many groups, each with its own (0 = one per seed)")
    p.add_argument("--paper-dec-baseline", action="store_true",
                   help="Dec-PAGE-PG exactly as Algorithm 2 with averaging (small-batch steps stay local) instead "
                        "of the authors' code (small-batch estimates averaged too)")
    args = p.parse_args(argv)
    if args.quick:
        args.envs, args.algorithms, args.behaviours = "CartPole-v1", "dec", "large_noise"
        args.seeds, args.max_trajectories, args.agents, args.num_byzantine = 2, 40, "1,4", 1
        args.horizon, args.large_batch, args.chunk = 40, 8, 4
    args.switch_groups = args.switch_groups or args.seeds
    if args.seeds % args.switch_groups:
        raise ValueError(f"--seeds {args.seeds} must be a multiple of --switch-groups {args.switch_groups}")
    return args


def variants(args, preset, algorithm):
    """``{label: DecByzPGConfig}`` of the two figures for one environment and algorithm."""
    robust_name, plain_name = NAMES[algorithm]
    sizes = [int(k) for k in args.agents.split(",")]
    big = max(sizes)
    robust = dict(aggregator=args.aggregator, bucket_size=args.bucket_size, agreement=args.agreement,
                  aggregator_hparams={"num_iters": 8, "smoothing": 0.1} if args.aggregator in
                  ("geometric_median", "rfa") else {})
    plain = dict(aggregator="mean", agreement="none")
    if algorithm == "dec":  # Dec-PAGE-PG as in the authors' code: agents also average small-batch estimates
        plain["aggregate_every_iteration"] = not args.paper_dec_baseline
    out = {}
    figures = args.figures.split(",")
    if "speedup" in figures:  # the paper's Fig. 1 / Fig. 4: the robust method itself at every K
        for k in sizes:
            out["PAGE-PG (K=1)" if k == 1 else f"{robust_name} K={k}"] = dataclasses.replace(
                preset, num_agents=k, **robust)
        out[f"{plain_name} K={big}"] = dataclasses.replace(preset, num_agents=big, **plain)
    for behaviour in (args.behaviours.split(",") if "attacks" in figures else []):
        attacked = dict(num_agents=big, num_byzantine=args.num_byzantine,
                        **frl.BEHAVIOURS.get(behaviour, {"attack": behaviour}))
        out[f"{plain_name} K={big} {behaviour}"] = dataclasses.replace(preset, **attacked, **plain)
        out[f"{robust_name} K={big} {behaviour}"] = dataclasses.replace(preset, **attacked, **robust)
    return out


def switch_schedules(preset, args):
    """One coin sequence ``c_t`` per group of seeds (``--switch-groups``; default: one per seed).

    Within a run all agents share the coins (Algorithm 1/2); across seeds they must differ, or every seed meets
    the same long stretch of small-batch steps at the same time and the seeds fail together.
    """
    return [frl.sample_switches(jax.random.fold_in(jax.random.PRNGKey(1), g), preset, args.max_trajectories,
                                args.chunk) for g in range(args.switch_groups)]


def run_variant(config, algorithm, schedules, seeds, chunk, grid, bar):
    """All seeds of one variant; returns (returns f32[S, P] on ``grid``, final diameter f32[S], wall seconds).

    Seeds are split into ``len(schedules)`` equal groups, each vmapped under its own coin sequence: the coins
    drive ``lax.cond``, which stays a branch only when they are shared by the whole vmapped batch (under
    per-seed coins both branches would run every iteration). The groups reuse one compiled program. Each
    seed's curve is interpolated from its own trajectory counts onto ``grid`` (trajectories per agent).
    """
    make = frl.make_decbyzpg if algorithm == "dec" else frl.make_byzpg
    alg = make(config)
    start = time.perf_counter()
    init = jax.jit(jax.vmap(alg.init, in_axes=(0, None)))
    iterate = jax.jit(jax.vmap(alg.iterate, in_axes=(0, None)))
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    keys = keys.reshape(len(schedules), seeds // len(schedules), *keys.shape[1:])
    curves, diameters = [], []
    for group_keys, switches in zip(keys, schedules):
        state, returns = init(group_keys, switches), []
        for i in range(0, len(switches), chunk):
            state, history = iterate(state, switches[i:i + chunk])
            returns.append(np.asarray(history["returns"]))
            bar.update(len(switches[i:i + chunk]))
        x = np.cumsum(frl.trajectories_per_iteration(switches, config))
        curves += [np.interp(grid, x, row) for row in np.concatenate(returns, 1)]
        diameters.append(np.asarray(history["diameter"])[:, -1])
    return np.stack(curves), np.concatenate(diameters), time.perf_counter() - start


def plot(path, title, curves, labels, max_trajectories):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label in labels:
        c = curves[label]
        x, mean, std = np.asarray(c["trajectories"]), np.asarray(c["mean"]), np.asarray(c["std"])
        ax.plot(x, mean, label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="trajectories per agent", ylabel="average return (honest agents)", title=title,
           xlim=(0, max_trajectories))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def overrides(args, preset):
    changes = {}
    if args.horizon:
        changes["horizon"] = args.horizon
    if args.large_batch:
        changes["large_batch"] = args.large_batch
    if args.learning_rate:
        changes["learning_rate"] = args.learning_rate
    return dataclasses.replace(preset, **changes)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = {"config": vars(args), "figures": {}, "wall_s": {}}
    total_start = time.perf_counter()
    for env_name in args.envs.split(","):
        if env_name not in PRESETS:
            raise ValueError(f"unknown environment {env_name!r}; known: {', '.join(PRESETS)}")
        preset = overrides(args, PRESETS[env_name])
        schedules = switch_schedules(preset, args)
        grid = np.linspace(preset.large_batch, args.max_trajectories, 250)
        for algorithm in args.algorithms.split(","):
            configs = variants(args, preset, algorithm)
            curves, figure_start = {}, time.perf_counter()
            key = f"{env_name}/{algorithm}"
            results["figures"][key] = curves
            bar = tqdm(total=len(configs) * sum(map(len, schedules)), desc=f"{env_name} {algorithm}", unit="it")
            for label, config in configs.items():
                returns, diameter, wall = run_variant(config, algorithm, schedules, args.seeds, args.chunk, grid,
                                                      bar)
                final = returns[:, -len(grid) // 10:].mean(1)
                curves[label] = {"trajectories": grid, "mean": returns.mean(0), "std": returns.std(0),
                                 "final_mean": final.mean(), "final_std": final.std(),
                                 "final_per_seed": final, "final_honest_diameter": diameter.mean(),
                                 "wall_s": wall, "config": dataclasses.asdict(config)}
                tqdm.write(f"{env_name} {label:32s} final return {final.mean():7.1f} +- {final.std():5.1f}  "
                           f"({wall:6.1f} s)")
                results["wall_s"][key] = time.perf_counter() - figure_start
                results["wall_s"]["total"] = time.perf_counter() - total_start
                path = common.write_results(args.out, results)  # after every variant: partial runs keep data
            bar.close()
            robust_name, plain_name = NAMES[algorithm]
            big = max(int(k) for k in args.agents.split(","))
            labels = list(curves)
            speedup = [lb for lb in labels if not any(b in lb for b in BEHAVIOURS)]
            if speedup:
                plot(os.path.join(args.out, f"{env_name}_{algorithm}_speedup.png"),
                     f"{env_name}: {robust_name}, no Byzantines", curves, speedup, args.max_trajectories)
            for behaviour in (args.behaviours.split(",") if "attacks" in args.figures else []):
                attack = [lb for lb in labels if lb.endswith(behaviour)] + [
                    lb for lb in speedup if lb.startswith("PAGE-PG") or lb == f"{plain_name} K={big}"]
                plot(os.path.join(args.out, f"{env_name}_{algorithm}_{behaviour}.png"),
                     f"{env_name}: {robust_name} under {behaviour}", curves, attack, args.max_trajectories)
    print(f"wrote {path}; total {results['wall_s']['total']:.1f} s on {jax.devices()}")
    return results


if __name__ == "__main__":
    main()
