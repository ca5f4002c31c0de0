"""RGIA (seed paper 001): gradient inversion of TD-loss gradients in federated RL. GIA against RGIA (and each
regularizer alone, and the cosine distance as an ablation) at several training stages of several victim seeds,
with confidence intervals and the RA floors; a batch-size sweep; the DP noise sweep, by absolute variance and
by relative noise ``||noise|| / ||g||``, with the victim's return when it trains under that noise at the batch
size the attack inverts; the speed of vmapped restarts against a sequential loop.

The experiment itself is ``fedjax_attacks.rgia.experiment`` (victims, priors, targets, the tables, sweeps and
claims; its docstring says how); this script holds the command line, the progress output, the plots,
``results.json`` and the README's tables. Per environment ``--victim-seeds`` victims are trained at once
(vmapped) with the RL engine (DQN on FrozenLake / CartPole / Pong, TD3 on brax) and their networks kept after
each fraction ``--stages`` of training (0: the untrained networks). Each victim's attacker fits its prior on
``--prior-samples`` transitions of that victim's replay buffer, and ``--targets`` batches of the rest are attacked
at every stage (the same batches at every stage: the comparisons between stages and methods are paired).
Metrics (MSE, RA and its per-field parts, GME, TE, ED, SS, CD) are defined in ``fedjax_attacks.rgia.metrics``;
intervals are 95% cluster-bootstrap intervals (victim seeds resampled, then targets within each seed). RA has
two floors: ``prior mean`` (the guess that ignores the gradient) and ``RGIA on noise`` (RGIA given a pure-noise
gradient of the true gradient's norm).

The default (about 20 minutes on a loaded 2-core CPU) runs CartPole with GIA and RGIA; FrozenLake, Pong and
brax by ``--envs``, the regularizers alone by ``--variants`` (``--variants all``), paper-sized critics by
``--hidden 256,256``. ``--write-readme README.md`` renders the tables of ``results.json`` into the
README between ``<!-- rgia:begin -->`` and ``<!-- rgia:end -->``; ``--render-from results.json`` only renders.

    python -m benchmarks.rgia [--quick] [--out DIR] [--envs CartPole-v1,brax:hopper] [--targets 32]
        [--victim-seeds 3] [--stages 0,0.1,1] [--hidden 256,256] [--write-readme README.md]
"""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from tqdm import tqdm

from benchmarks import common
from fedjax_attacks import rgia
from fedjax_attacks.rgia import experiment
from fedjax_attacks.rgia.experiment import (
    FIELDS,
    NOISE_FLOOR,
    VARIANTS,
    attack_config,
    claims,
    shared_gradients,
    stage_label,
    targets,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_ENVS = ("CartPole-v1",)  # FrozenLake, Pong and brax by --envs (the 2-core CPU's 20-minute budget)
BEGIN, END = "<!-- rgia:begin -->", "<!-- rgia:end -->"


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def _floats(s):
    return [float(v) for v in s.split(",") if v]


def parse_args(argv=None):
    """The benchmark's options (argparse; ``--quick`` shrinks every size). Raises ``ValueError`` on unknown
    environments or regularizers, fewer than 2 targets or 2 victim seeds, bad stages or batch sizes."""
    p = common.parser("rgia", __doc__.split("\n")[0])
    p.add_argument("--envs", default=None, help=f"comma-separated (default {','.join(DEFAULT_ENVS)}; quick: "
                                                f"CartPole-v1; all: {','.join(rgia.ENV_NAMES)})")
    p.add_argument("--steps", type=int, default=None, help="Adam steps per restart (default 500; quick 150)")
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--restarts", type=int, default=None, help="restarts per target (default 8; quick 4)")
    p.add_argument("--targets", type=int, default=None, help="target batches per victim (default 32; quick 4)")
    p.add_argument("--victim-seeds", type=int, default=None, help="victims per environment (default 3; quick 2)")
    p.add_argument("--stages", type=_floats, default=None,
                   help="training fractions at which the victims are attacked (default 0,0.1,1; quick 0,1)")
    p.add_argument("--hidden", type=_ints, default=None, help="critic widths, e.g. 256,256 (paper-sized; default "
                                                              "64,64, Pong 32,32)")
    p.add_argument("--timesteps-scale", type=float, default=None,
                   help="multiplies each victim's training steps (default 1; quick 0.1)")
    p.add_argument("--distance", default="relative_l2", choices=sorted(rgia.DISTANCES))
    p.add_argument("--ablation-distance", default="cosine", choices=["none", *sorted(rgia.DISTANCES)],
                   help="GIA and RGIA again with this distance ('none': skip)")
    p.add_argument("--variants", default="GIA,RGIA",
                   help=f"the variants of the table, 'all' for {','.join(VARIANTS)} (GIA and RGIA always)")
    p.add_argument("--dynamics-moves-state", action="store_true",
                   help="let R_f's gradient move s and a too (default: it only pulls s' toward f(s, a))")
    p.add_argument("--weights", default=None,
                   help="regularizer weights name=w,... (default: state_gaussian and state_mixture "
                        f"{rgia.RGIA_WEIGHTS['state_mixture']}, reward {rgia.RGIA_WEIGHTS['reward']}, "
                        f"dynamics {rgia.RGIA_WEIGHTS['dynamics']})")
    p.add_argument("--prior-samples", type=int, default=None, help="prior transitions (default 512; quick 64)")
    p.add_argument("--dynamics-steps", type=int, default=2000, help="transition-model training steps")
    p.add_argument("--tolerance", type=float, default=0.1, help="RA tolerance (times max(1, prior std))")
    p.add_argument("--success-ra", type=float, default=0.9, help="an attack succeeds when its RA reaches this")
    p.add_argument("--batch-sizes", type=_ints, default=None, help="batch sweep (default 1,2,4; quick 1,4)")
    p.add_argument("--batch-envs", default="CartPole-v1", help="environments of the batch sweep ('' : none)")
    p.add_argument("--batch-stage", type=float, default=0.0, help="training fraction of the batch sweep")
    p.add_argument("--noise-env", default="CartPole-v1", help="environment of the DP noise sweep ('': none)")
    p.add_argument("--noise-variances", type=_floats, default=[1e-4, 1e-3, 1e-2, 1e-1, 1.0],
                   help="absolute DP noise variances (the paper's 1e-5..1e-1, then 1)")
    p.add_argument("--noise-ratios", type=_floats, default=[1.0, 3.0, 10.0, 30.0],
                   help="relative noise levels ||noise|| / ||g|| (noise std ratio * ||g|| / sqrt(d))")
    p.add_argument("--eval-episodes", type=int, default=16)
    p.add_argument("--speed-restarts", type=int, default=None, help="restarts in the speed test (default 16; quick 4)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the intervals")
    p.add_argument("--write-readme", default=None, help="README to render the tables into (between the markers)")
    p.add_argument("--readme-section", default="", help="render between <!-- rgia-NAME:begin/end --> instead")
    p.add_argument("--render-from", default=None, help="render --write-readme from this results.json, run nothing")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    quick = args.quick
    args.envs = [e for e in (args.envs or ("CartPole-v1" if quick else ",".join(DEFAULT_ENVS))).split(",") if e]
    args.batch_envs = [e for e in args.batch_envs.split(",") if e]
    args.steps = args.steps or (150 if quick else 500)
    args.restarts = args.restarts or (4 if quick else 8)
    args.targets = args.targets or (4 if quick else 32)
    args.victim_seeds = args.victim_seeds or (2 if quick else 3)
    args.stages = args.stages or ([0.0, 1.0] if quick else [0.0, 0.1, 1.0])
    args.timesteps_scale = args.timesteps_scale or (0.1 if quick else 1.0)
    args.prior_samples = args.prior_samples or (64 if quick else 512)
    args.batch_sizes = args.batch_sizes or ([1, 4] if quick else [1, 2, 4])
    args.speed_restarts = args.speed_restarts or (4 if quick else 16)
    chosen = list(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
    args.variants = list(dict.fromkeys(["GIA", *chosen, "RGIA"]))
    for name in set(args.envs) | set(args.batch_envs) | ({args.noise_env} - {""}):
        if name not in rgia.ENV_NAMES:
            raise ValueError(f"unknown environment {name!r}: choose from {', '.join(rgia.ENV_NAMES)}")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown} in --variants: choose from {list(VARIANTS)}")
    args.weights = _parse_weights(args.weights)
    if args.targets < 2:
        raise ValueError("--targets must be >= 2 (the silhouette score needs two true tuples)")
    if args.victim_seeds < 2:
        raise ValueError("--victim-seeds must be >= 2 (the intervals resample victims)")
    rgia.stage_iterations(100, args.stages)  # ValueError on bad fractions
    markers(args.readme_section)
    if args.batch_stage not in args.stages:
        raise ValueError(f"--batch-stage {args.batch_stage} must be one of --stages {args.stages}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        raise ValueError(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
    if any(v < 0 for v in args.noise_variances) or any(r <= 0 for r in args.noise_ratios):
        raise ValueError("--noise-variances must be >= 0 and --noise-ratios > 0")
    return args


def _parse_weights(text):
    weights = dict(experiment.Settings().weights)
    for item in (text.split(",") if text else []):
        name, _, value = item.partition("=")
        if name not in rgia.REGULARIZERS:
            raise ValueError(f"unknown regularizer name {name!r} in --weights: choose from {rgia.REGULARIZERS}")
        weights[name] = float(value)
    return weights


def speed_test(key, setup: experiment.Setup, args):
    """``speed_restarts`` RGIA restarts vmapped in one call against as many sequential single-restart calls."""
    truth, loss_keys = targets(key, setup, 1, 1)
    last = setup.stage(len(setup.stages.stage_iterations) - 1)
    params, prior = jax.tree.map(lambda x: x[0], last), jax.tree.map(lambda x: x[0], setup.prior)
    g = shared_gradients(setup.victim, last, truth, loss_keys)[0, 0]
    r = args.speed_restarts
    weights = {n: jnp.float32(args.weights[n]) for n in rgia.REGULARIZERS}
    vmapped, single = (rgia.make_rgia(setup.victim, attack_config(args, 1, n, args.distance)) for n in (r, 1))
    keys = jax.random.split(key, r)
    repeats = 1 if args.quick else 3
    call = lambda fn, k: jax.block_until_ready(fn(k, params, g, prior, weights, loss_keys[0, 0]))
    t_vmap = common.median_time(lambda: call(vmapped, keys[0]), repeats=repeats)

    def sequential():
        for k in keys:
            call(single, k)

    t_seq = common.median_time(sequential, repeats=repeats)
    return {"env": setup.env.name, "restarts": r, "steps": args.steps, "vmapped_s": t_vmap, "sequential_s": t_seq,
            "speedup": t_seq / t_vmap}


# ---------------------------------------------------------------- the README and the plots


def _num(x, digits=3):
    """A number (or a NaN written as a string by ``results.to_json``) as text."""
    if isinstance(x, str) or x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def _ci(c, digits=3):
    """``mean [lo, hi]`` of a ``cluster_ci`` dict."""
    return f"{_num(c['mean'], digits)} [{_num(c['lo'], digits)}, {_num(c['hi'], digits)}]"


def render_markdown(results: dict) -> str:
    """The README's RGIA figures (between and without the markers, below the section's heading) from a
    ``results.json`` dict: the settings, the table per environment and stage with intervals and floors, the
    ablations, the noise sweep with the victim's return under noise, the batch sweep, the speed test and the
    claims (recomputed from the figures with ``claims``)."""
    cfg, figs, victims = results["config"], results["figures"], results["victims"]
    wall = results.get("wall_times", {}).get("total_s")
    envs = list(figs["tables"])
    hidden = {e: "x".join(str(h) for h in victims[e]["hidden"]) for e in envs}
    lines = [f"**Batch 1, {cfg['targets']} targets x {cfg['victim_seeds']} victim seeds, "
             f"{cfg['restarts']} restarts, {cfg['steps']} Adam steps{', --quick' if cfg.get('quick') else ''}.**", "",
             f"Rendered by `python -m benchmarks.rgia --write-readme README.md` from its `results.json` "
             f"(total {_num(wall, 4)} s). Distance `{cfg['distance']}`; RGIA = GIA + GMM state prior "
             f"(alpha {cfg['weights']['state_mixture']:g}) + reward hinge (beta {cfg['weights']['reward']:g}) + "
             f"dynamics (gamma {cfg['weights']['dynamics']:g}). Victims: "
             + "; ".join(f"{e} {victims[e]['kind'].upper()} {hidden[e]}, {victims[e]['timesteps']} steps, prior "
                         f"{victims[e]['prior_samples']} samples" for e in envs)
             + ". Mean [95% cluster-bootstrap interval over victims, then targets]. RA floors: `prior mean` "
               "(ignores the gradient) and `RGIA on noise` (a pure-noise gradient of the same norm). "
               "Fields: RA of s, a, r, s'.", ""]
    lines += ["| env | stage (return) | method | MSE | RA | RA s / a / r / s' | success | ED | SS |",
              "|---|---|---|---|---|---|---|---|---|"]
    main = ("GIA", "RGIA", NOISE_FLOOR, "prior mean")
    others = [v for v in next(iter(figs["tables"][envs[0]].values()))["rows"] if v not in main]
    verdicts = claims(figs["tables"], figs.get("batch_sweep") or [], figs.get("noise_sweep") or [])
    moot = {st for st, v in verdicts.get("noise_stops_rgia", {}).items() if v["clean_at_floor"]}
    for env in envs:
        for stage, cell in figs["tables"][env].items():
            for method in main:
                row = cell["rows"][method]
                fields = " / ".join(_num(row[f]["mean"], 2) for f in FIELDS)
                extra = [_num(row["success"]["mean"], 2) if "success" in row else "",
                         _num(row.get("ed"), 3) if "ed" in row else "", _num(row.get("ss"), 2) if "ss" in row else ""]
                lines.append(f"| {env} | {stage} ({_num(cell['victim_return']['mean'], 3)}) | {method} | "
                             f"{_ci(row['mse'])} | {_ci(row['ra'], 2)} | {fields} | {' | '.join(extra)} |")
    lines += ["", "Paired RGIA - GIA differences and the ablations (RA; regularizers alone, the other distance):", "",
              "| env | stage | RGIA - GIA MSE | RGIA - GIA RA |" + "".join(f" {v} |" for v in others),
              "|---|---|---|---|" + "---|" * len(others)]
    for env in envs:
        for stage, cell in figs["tables"][env].items():
            d = cell["rgia_minus_gia"]
            lines.append(f"| {env} | {stage} | {_ci(d['mse'])} | {_ci(d['ra'], 2)} |"
                         + "".join(f" {_ci(cell['rows'][v]['ra'], 2)} |" for v in others))
    if figs.get("noise_sweep"):
        noise_env = cfg["noise_env"]
        lines += ["", f"DP noise on the shared gradient ({noise_env}, batch 1, RGIA): absolute variances, then "
                      "relative levels; `||n||/||g||` is measured; stopped = RA at or below the `RGIA on noise` "
                      "floor's upper bound.", "",
                  "| stage | noise | variance | \\|\\|n\\|\\|/\\|\\|g\\|\\| | RGIA MSE | RGIA RA | success | stopped |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in figs["noise_sweep"]:
            level = f"var {r['level']:g}" if r["kind"] == "variance" else f"ratio {r['level']:g}"
            lines.append(f"| {r['stage']} | {level} | {_num(r['variance'])} | {_ci(r['ratio'])} | "
                         f"{_ci(r['RGIA']['mse'])} | {_ci(r['RGIA']['ra'], 2)} | "
                         f"{_num(r['RGIA']['success']['mean'], 2)}"
                         f" | {'n/a (clean at floor)' if r['stage'] in moot else 'yes' if r['stopped'] else 'no'} |")
    if figs.get("utility"):
        u = figs["utility"]
        lines += ["", f"Victim's greedy return when it trains under that noise at batch {u[0]['batch_size']} (the "
                      f"batch the attack inverts; {cfg['victim_seeds']} seeds): "
                  + ", ".join(f"var {r['variance']:g}: {_ci(r['return'], 3)}" for r in u) + "."]
    if figs.get("batch_sweep"):
        lines += ["", "Batch sweep (RA / success of GIA and RGIA):", "",
                  "| env | stage | B | GIA MSE | RGIA MSE | GIA RA | RGIA RA | RGIA success |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in figs["batch_sweep"]:
            lines.append(f"| {r['env']} | {r['stage']} | {r['batch_size']} | {_ci(r['GIA']['mse'])} | "
                         f"{_ci(r['RGIA']['mse'])} | {_ci(r['GIA']['ra'], 2)} | {_ci(r['RGIA']['ra'], 2)} | "
                         f"{_ci(r['RGIA']['success'], 2)} |")
    if "rgia_beats_gia" in verdicts:
        held = verdicts["rgia_beats_gia"]["held"]
        yes = [k for k, v in held.items() if v]
        lines += ["", f"RGIA beats GIA (paired MSE and RA intervals exclude 0, RGIA's RA interval above both floors) "
                      f"in {len(yes)} of {len(held)} settings: {', '.join(yes) or 'none'}."]
    if "noise_stops_rgia" in verdicts:
        parts = []
        for stage, v in verdicts["noise_stops_rgia"].items():
            if v["clean_at_floor"]:
                parts.append(f"{stage}: clean RGIA is already at its floors, nothing to stop")
                continue
            first = v["first_stopping_ratio"]
            parts.append(f"{stage}: stopped from ||n||/||g|| = {first:g}" if first is not None else
                         f"{stage}: not stopped up to the largest ratio")
            if v["variance_1e-2_stops"] is not None:
                parts[-1] += (f", variance 1e-2 (ratio {_num(v['ratio_at_1e-2']['mean'])}) "
                              f"{'stops' if v['variance_1e-2_stops'] else 'does not stop'} it")
        lines += ["", "Noise: " + "; ".join(parts) + "."]
    if figs.get("speed"):
        sp = figs["speed"]
        lines += ["", f"{sp['restarts']} restarts vmapped: {_num(sp['vmapped_s'])} s against {_num(sp['sequential_s'])}"
                      f" s sequential (x{_num(sp['speedup'], 2)})."]
    return "\n".join(lines)


def markers(section: str = "") -> tuple:
    """The README markers of a rendered section: ``BEGIN, END`` (``section ""``, the default run) or
    ``<!-- rgia-NAME:begin -->, <!-- rgia-NAME:end -->`` (e.g. ``"paper"`` for a paper-sized run)."""
    if not section:
        return BEGIN, END
    if not section.replace("_", "").isalnum():
        raise ValueError(f"--readme-section must be letters, digits or '_', got {section!r}")
    return f"<!-- rgia-{section}:begin -->", f"<!-- rgia-{section}:end -->"


def write_readme(results: dict, path: str, section: str = "") -> None:
    """Replaces the text between the ``markers(section)`` in the file ``path`` by ``render_markdown(results)``
    (``common.replace_readme_section``; ``ValueError`` when the file lacks the markers)."""
    markers(section)  # checks the name
    common.replace_readme_section(path, f"rgia-{section}" if section else "rgia", render_markdown(results))


def plot(out_dir, noise_rows, floor_ra, batch_rows):
    """rgia_noise.png (RGIA's RA vs relative noise per stage, with the noise floor) and rgia_batch.png (RA vs
    batch size)."""
    if noise_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for stage in dict.fromkeys(r["stage"] for r in noise_rows):
            sel = sorted((r for r in noise_rows if r["stage"] == stage), key=lambda r: r["ratio"]["mean"])
            x = [r["ratio"]["mean"] for r in sel]
            line, = ax.plot(x, [r["RGIA"]["ra"]["mean"] for r in sel], "o-", label=f"RGIA {stage}")
            ax.fill_between(x, [r["RGIA"]["ra"]["lo"] for r in sel], [r["RGIA"]["ra"]["hi"] for r in sel],
                            color=line.get_color(), alpha=0.2)
            ax.axhline(floor_ra[stage]["mean"], color=line.get_color(), ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("||noise|| / ||g|| (dotted: RGIA on a pure-noise gradient)")
        ax.set_ylabel("reconstruction accuracy RA")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "rgia_noise.png"), dpi=120)
        plt.close(fig)
    if batch_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for env in dict.fromkeys(r["env"] for r in batch_rows):
            sel = [r for r in batch_rows if r["env"] == env]
            for variant, style in (("GIA", "o--"), ("RGIA", "s-")):
                ax.errorbar([r["batch_size"] for r in sel], [r[variant]["ra"]["mean"] for r in sel],
                            yerr=np.array([[r[variant]["ra"]["mean"] - r[variant]["ra"]["lo"],
                                            r[variant]["ra"]["hi"] - r[variant]["ra"]["mean"]] for r in sel]).T,
                            fmt=style, label=f"{env} {variant}", capsize=3)
        ax.set_xlabel("batch size B")
        ax.set_ylabel("RA")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "rgia_batch.png"), dpi=120)
        plt.close(fig)


def main(argv=None):
    """Runs the benchmark (or only renders, with ``--render-from``); returns the results dict."""
    args = parse_args(argv)
    if args.render_from:
        if not args.write_readme:
            raise ValueError("--render-from needs --write-readme PATH")
        with open(args.render_from) as f:
            results = json.load(f)
        write_readme(results, args.write_readme, args.readme_section)
        return results
    t0 = time.perf_counter()
    settings = experiment.Settings.from_namespace(args)
    key = jax.random.PRNGKey(args.seed)
    setups, tables, wall, victims = {}, {}, {}, {}
    needed = list(dict.fromkeys(args.envs + args.batch_envs + ([args.noise_env] if args.noise_env else [])))
    for name in tqdm(needed, desc="victims"):
        key, k = jax.random.split(key)
        setups[name] = s = experiment.prepare(k, name, settings)
        victims[name] = {"kind": s.victim.kind, "hidden": list(s.victim.hidden), "timesteps": s.config.total_timesteps,
                         "buffer": int(s.stages.replay.reward.shape[1]), "prior_samples": s.prior.num_samples,
                         "stage_iterations": list(s.stages.stage_iterations),
                         "greedy_return": {stage_label(f): s.returns[k].tolist() for k, f in enumerate(args.stages)},
                         "train_s": s.train_s}
        tqdm.write(f"{name}: {args.victim_seeds} {s.victim.kind} victims {s.victim.hidden} trained in "
                   f"{s.train_s:.1f}s, "
                   f"greedy returns per stage {np.round(s.returns.mean(1), 1).tolist()}, prior {s.prior.num_samples}")
    for name in tqdm(args.envs, desc="tables"):
        key, k = jax.random.split(key)
        start = time.perf_counter()
        tables[name], attack_s = experiment.evaluate_table(k, setups[name], settings)
        wall[f"table/{name}"] = {"total_s": time.perf_counter() - start, "attack_s": attack_s}
        for stage, cell in tables[name].items():
            for variant, row in cell["rows"].items():
                tqdm.write(f"{name:16s} {stage:12s} {variant:18s} MSE {_ci(row['mse'])} RA {_ci(row['ra'], 2)}")
    batch_rows = []
    for name in args.batch_envs:
        key, k = jax.random.split(key)
        start = time.perf_counter()
        batch_rows += experiment.batch_sweep(k, setups[name], settings)
        wall[f"batch/{name}_s"] = time.perf_counter() - start
    noise_rows, utility = [], []
    if args.noise_env:
        name = args.noise_env
        if name not in tables:
            raise ValueError(f"--noise-env {name} needs its table: add it to --envs (its noise floor)")
        floor_ra = {st: c["rows"][NOISE_FLOOR]["ra"] for st, c in tables[name].items()}
        start = time.perf_counter()
        key, k1, k2 = jax.random.split(key, 3)
        noise_rows = experiment.noise_sweep(k1, setups[name], settings, floor_ra)
        wall["noise_sweep_s"] = time.perf_counter() - start
        start = time.perf_counter()
        utility = experiment.victim_returns_under_noise(k2, setups[name], settings)
        wall["utility_s"] = time.perf_counter() - start
        for r in noise_rows:
            tqdm.write(f"noise {r['stage']:12s} {r['kind']} {r['level']:g}: ratio {_ci(r['ratio'])} RGIA RA "
                       f"{_ci(r['RGIA']['ra'], 2)} stopped {r['stopped']}")
        for r in utility:
            tqdm.write(f"victim under noise var {r['variance']:g} (batch 1): return {_ci(r['return'])}")
    key, k = jax.random.split(key)
    speed = speed_test(k, setups[args.envs[-1]], args)
    verdicts = claims(tables, batch_rows, noise_rows)
    wall["total_s"] = time.perf_counter() - t0
    config = {k: v for k, v in vars(args).items() if k not in ("out", "write_readme", "render_from", "readme_section")}
    config.update(variant_regularizers={k: list(v) for k, v in VARIANTS.items()},
                  train_configs={n: dataclasses.asdict(setups[n].config) for n in setups})
    results = {"config": config, "victims": victims,
               "figures": {"tables": tables, "batch_sweep": batch_rows, "noise_sweep": noise_rows,
                           "utility": utility, "speed": speed},
               "claims": verdicts, "wall_times": wall}
    path = common.write_results(args.out, results)
    with open(path) as f:
        results = json.load(f)  # the JSON form, as --render-from reads it
    plot(args.out, noise_rows, {st: c["rows"][NOISE_FLOOR]["ra"] for st, c in tables.get(args.noise_env, {}).items()},
         batch_rows)
    if args.write_readme:
        write_readme(results, args.write_readme, args.readme_section)
    print(render_markdown(results))
    print(f"total {wall['total_s']:.0f}s; wrote {path}")
    return results


if __name__ == "__main__":
    main()