"""DecByzPG / ByzPG figures (Jordan et al., AAMAS 2024, Fig. 1-3 and App. E, Fig. 4-6).

For each environment (CartPole-v1; Acrobot-v1 stands in for LunarLander, which has no JAX version;
brax:inverted_pendulum, continuous control with a Gaussian policy, on request) and each algorithm (``dec`` =
DecByzPG against Dec-PAGE-PG, ``byz`` = ByzPG against Fed-PAGE-PG):

1. speed-up without Byzantines: the robust method with K in {1, 5, 13} (K = 1 is PAGE-PG), and plain averaging
   with K = 13 as the unattacked reference;
2. K = 13, f = 3 under RandomAction, LargeNoise and AvgZero: the robust method against plain averaging, with
   PAGE-PG (K = 1) as reference.

All seeds, each with its own coins, and all variants with the same shapes (the same K) run as one jitted
program (``fedjax_attacks.frl.batch``), in chunks of steps: blocks of B trajectories per agent with the seeds
side by side (``--steps blocks``, the default on GPU/TPU), or whole iterations with the seeds one after another
(``--steps iterations``, the default on CPU, about half the work). With several devices the seeds are split over
them (``--seed-devices``; on a CPU, forced host devices put every core to work:
``XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.decbyzpg``). The x axis is
trajectories per agent, the y axis the honest agents' average return of the sampled (training) episodes (mean
and std over seeds); the greedy policy's return (its most likely action: the argmax, or the Gaussian's mean) is
evaluated at every chunk beside it.

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
from fedjax_attacks import frl, sharding  # noqa: E402

PRESETS = {"CartPole-v1": frl.CARTPOLE, "Acrobot-v1": frl.ACROBOT, "brax:inverted_pendulum": frl.INVERTED_PENDULUM}
BEHAVIOURS = ("random_action", "large_noise", "avg_zero")
NAMES = {"dec": ("DecByzPG", "Dec-PAGE-PG"), "byz": ("ByzPG", "Fed-PAGE-PG")}
GREEDY_POINTS = 25  # greedy evaluations per curve that the default --chunk aims at


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
    p.add_argument("--steps", choices=frl.batch.STEPS, default=frl.batch.default_steps(),
                   help="what one step of the program is (default on this backend: %(default)s)")
    p.add_argument("--seed-devices", type=int, default=0,
                   help="split the seeds over this many devices (0 = every device, if their number divides --seeds)")
    p.add_argument("--chunk", type=int, default=0,
                   help="steps per jitted call, between greedy evaluations (0 = 64 blocks or 16 iterations, fewer "
                        f"on short runs, so that a curve has about {GREEDY_POINTS} greedy evaluations)")
    p.add_argument("--greedy-episodes", type=int, default=2,
                   help="greedy-policy episodes per honest agent at every chunk (0 = no greedy evaluation)")
    p.add_argument("--output-activation", default="",
                   help="override the policy's output activation (the paper's is tanh; identity = unbounded logits)")
    p.add_argument("--paper-dec-baseline", action="store_true",
                   help="Dec-PAGE-PG exactly as Algorithm 2 with averaging (small-batch steps stay local) instead "
                        "of the authors' code (small-batch estimates averaged too)")
    args = p.parse_args(argv)
    if args.quick:
        args.envs, args.algorithms, args.behaviours = "CartPole-v1", "dec", "large_noise"
        args.seeds, args.max_trajectories, args.agents, args.num_byzantine = 2, 40, "1,4", 1
        args.horizon, args.large_batch, args.chunk = 40, 8, 4
    if args.seed_devices < 0:
        raise ValueError(f"--seed-devices must be >= 0, got {args.seed_devices}")
    for name in ("seeds", "max_trajectories"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.chunk < 0:
        raise ValueError(f"--chunk must be >= 0 (0 = chosen from the run's length), got {args.chunk}")
    return args


def default_chunk(args, preset) -> int:
    """Steps per jitted call: 64 blocks or 16 iterations, fewer when the run (``--max-trajectories`` at the
    expected ``p N + (1 - p) B`` trajectories per iteration) is too short for ``GREEDY_POINTS`` evaluations."""
    p, n, b = preset.switch_prob, preset.large_batch, preset.small_batch
    per_step = b if args.steps == "blocks" else p * n + (1 - p) * b
    longest = 64 if args.steps == "blocks" else 16
    return int(max(1, min(longest, args.max_trajectories / per_step // GREEDY_POINTS)))


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


def run_group(configs, algorithm, schedules, seeds, chunk, greedy_episodes, grid, bar, steps, mesh=None):
    """All seeds of the variants ``{label: config}`` (one shape) in one jitted program.

    Returns ``{label: (returns f32[S, P], greedy f32[S, P] or None, final diameter f32[S])}`` on ``grid`` and
    the wall seconds. Each seed's curve is interpolated from its own trajectory counts onto ``grid``.
    """
    variants = frl.batch.make_variants(configs, algorithm, steps=steps, mesh=mesh)
    start = time.perf_counter()
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    init = jax.jit(variants.init)
    iterate = jax.jit(variants.iterate, donate_argnums=0)
    greedy = jax.jit(variants.greedy, static_argnums=2)
    states = init(keys, schedules)
    returns, greedy_at, greedy_returns = [], [], []
    length = schedules.large.shape[1]
    for i in range(0, length, chunk):
        piece = frl.Blocks(*(a[:, i:i + chunk] for a in schedules))
        states, histories = iterate(states, piece)
        returns.append(np.stack([np.asarray(h["returns"]) for h in histories]))  # [V, S, chunk]
        if greedy_episodes:
            greedy_at.append(min(i + chunk, length))
            greedy_returns.append(np.asarray(greedy(jax.random.fold_in(keys[0], i), states, greedy_episodes)))
        bar.update(piece.large.shape[1] * len(configs))
    x = np.cumsum(schedules.count, axis=1)  # [S, M] trajectories per agent after each step
    returns = np.concatenate(returns, axis=2)
    out = {}
    for v, label in enumerate(configs):
        curve = np.stack([np.interp(grid, x[s], returns[v, s]) for s in range(seeds)])
        greedy_curve = None
        if greedy_episodes:
            g = np.stack(greedy_returns)[:, v]  # [points, S]
            greedy_curve = np.stack([np.interp(grid, x[s, np.asarray(greedy_at) - 1], g[:, s])
                                     for s in range(seeds)])
        diameter = np.asarray(histories[v]["diameter"])[:, -1]
        out[label] = (curve, greedy_curve, diameter)
    return out, time.perf_counter() - start


def seed_mesh(args):
    """A ``"seeds"`` mesh over ``--seed-devices`` devices (every device when 0 and their number divides the
    seeds), or None for one device."""
    n = args.seed_devices or (jax.device_count() if args.seeds % jax.device_count() == 0 else 1)
    return sharding.make_mesh(seeds=n) if n > 1 else None


def plot(path, title, curves, labels, max_trajectories):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label in labels:
        c = curves[label]
        x, mean, std = np.asarray(c["trajectories"]), np.asarray(c["mean"]), np.asarray(c["std"])
        line, = ax.plot(x, mean, label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
        if c.get("greedy_mean") is not None:
            ax.plot(x, c["greedy_mean"], ls=":", color=line.get_color())
    ax.set(xlabel="trajectories per agent", ylabel="return of honest agents (dotted: greedy)", title=title,
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
    if args.output_activation:
        changes["output_activation"] = args.output_activation
    return dataclasses.replace(preset, **changes)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = {"config": vars(args), "figures": {}, "wall_s": {}, "load_average_start": os.getloadavg()}
    total_start, cpu_start = time.perf_counter(), time.process_time()
    for env_name in args.envs.split(","):
        if env_name not in PRESETS:
            raise ValueError(f"unknown environment {env_name!r}; known: {', '.join(PRESETS)}")
        preset = overrides(args, PRESETS[env_name])
        stem = env_name.replace(":", "_")  # file names without the brax prefix's colon
        chunk = args.chunk or default_chunk(args, preset)
        results.setdefault("chunk", {})[env_name] = chunk
        schedules = frl.sample_block_schedules(jax.random.PRNGKey(1), preset, args.max_trajectories, args.seeds,
                                               chunk, whole_iterations=args.steps == "iterations")
        grid = np.linspace(preset.large_batch, args.max_trajectories, 250)
        for algorithm in args.algorithms.split(","):
            configs = variants(args, preset, algorithm)
            curves, figure_start = {}, time.perf_counter()
            key = f"{env_name}/{algorithm}"
            results["figures"][key] = curves
            groups = frl.batch.group_by_shape(configs)
            bar = tqdm(total=len(configs) * schedules.large.shape[1], desc=f"{env_name} {algorithm}", unit=args.steps[:-1])
            for group in groups:
                runs, wall = run_group(group, algorithm, schedules, args.seeds, chunk, args.greedy_episodes,
                                       grid, bar, args.steps, seed_mesh(args))
                for label, (returns, greedy, diameter) in runs.items():
                    final = returns[:, -len(grid) // 10:].mean(1)
                    curves[label] = {"trajectories": grid, "mean": returns.mean(0), "std": returns.std(0),
                                     "final_mean": final.mean(), "final_std": final.std(),
                                     "final_per_seed": final, "final_honest_diameter": diameter.mean(),
                                     "group_wall_s": wall, "group": list(group), "config": dataclasses.asdict(
                                         group[label])}
                    text = f"{env_name} {label:32s} final return {final.mean():7.1f} +- {final.std():5.1f}"
                    if greedy is not None:
                        final_greedy = greedy[:, -len(grid) // 10:].mean(1)
                        curves[label].update(greedy_mean=greedy.mean(0), greedy_std=greedy.std(0),
                                             final_greedy_mean=final_greedy.mean(),
                                             final_greedy_std=final_greedy.std())
                        text += f", greedy {final_greedy.mean():7.1f} +- {final_greedy.std():5.1f}"
                    tqdm.write(text + f"  (group of {len(group)}: {wall:6.1f} s)")
                results["wall_s"][key] = time.perf_counter() - figure_start
                results["cpu_s"] = time.process_time() - cpu_start
                results["wall_s"]["total"] = time.perf_counter() - total_start
                results["load_average"] = os.getloadavg()
                path = common.write_results(args.out, results)  # after every group: partial runs keep data
            bar.close()
            robust_name, plain_name = NAMES[algorithm]
            big = max(int(k) for k in args.agents.split(","))
            labels = list(curves)
            speedup = [lb for lb in labels if not any(b in lb for b in BEHAVIOURS)]
            if speedup:
                plot(os.path.join(args.out, f"{stem}_{algorithm}_speedup.png"),
                     f"{env_name}: {robust_name}, no Byzantines", curves, speedup, args.max_trajectories)
            for behaviour in (args.behaviours.split(",") if "attacks" in args.figures else []):
                attack = [lb for lb in labels if lb.endswith(behaviour)] + [
                    lb for lb in speedup if lb.startswith("PAGE-PG") or lb == f"{plain_name} K={big}"]
                plot(os.path.join(args.out, f"{stem}_{algorithm}_{behaviour}.png"),
                     f"{env_name}: {robust_name} under {behaviour}", curves, attack, args.max_trajectories)
    print(f"wrote {path}; total {results['wall_s']['total']:.1f} s on {jax.devices()}")
    return results


if __name__ == "__main__":
    main()
