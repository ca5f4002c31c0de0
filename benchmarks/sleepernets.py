"""SleeperNets against TrojDRL-W, BadRL-M and no poisoning (Rathbun et al., NeurIPS 2024; issue 14).

For each environment, every attack and seed (and, on the ablation environment, every budget ``beta`` and reward
``c`` of the ablation) trains in ONE vmapped PPO program (``backdoor.make_comparison``), so each environment
compiles once. Then, per run, on the trained agent acting without the trigger:

* ASR: mean ``pi(a+ | delta(s))`` over the states it visits; BRR: its return over that of the clean agent
  trained with the same seed; the poisoning rate (per update and cumulated) over training;
* curves: training ASR, episode return and poisoning rate against environment steps;
* speed: env steps/s of plain PPO and of PPO under SleeperNets (same seeds and PPO config, calls of a few updates
  interleaved in the same run, fastest call of each).

On the ablation environment (CartPole by default) the one program also holds every extra budget ``beta`` and reward
``c`` for each attack, SleeperNets both at ``--alpha`` (0.5) and at the paper's ablation setting ``alpha = 0``.

Environments: Breakout-MinAtar and SpaceInvaders-MinAtar (3x3 checkerboard on every channel, MinAtar's conv
network), CartPole-v1 (an extra feature set to 1), brax inverted_pendulum (extra feature; the target is the sign
+1 of the continuous action; BadRL-M needs discrete actions and is not run). Claims checked: SleeperNets' ASR
>= 0.99 with BRR >= 0.9 everywhere, its ASR above both baselines' at the same budget, its poisoning rate falling.

    python -m benchmarks.sleepernets                  # default table (3 seeds, short runs) + CartPole ablation
    python -m benchmarks.sleepernets --paper          # the reference's PPO and 10M-step MinAtar runs (days on a CPU)
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from tqdm import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import common  # noqa: E402
from fedjax_attacks import backdoor, rl, runner  # noqa: E402
from fedjax_attacks.rl import dqn, networks, ppo  # noqa: E402

NAMES = {"none": "no poisoning", "sleepernets": "SleeperNets", "trojdrl": "TrojDRL-W", "badrl": "BadRL-M"}
COLORS = {"none": "tab:gray", "sleepernets": "tab:blue", "trojdrl": "tab:orange", "badrl": "tab:green"}


@dataclasses.dataclass(frozen=True)
class Setup:
    """How one environment is trained and evaluated in this benchmark."""

    steps: int  # environment steps per run (default table)
    paper_steps: int  # with --paper
    learning_rate: float
    update_epochs: int
    ent_coef: float
    target: int
    eval_max_steps: int
    image: bool = False
    make_kwargs: tuple = ()


SETUPS = {
    "Breakout-MinAtar": Setup(61_440, 10_000_000, 1e-3, 2, 0.01, target=1, eval_max_steps=1000, image=True),
    "SpaceInvaders-MinAtar": Setup(61_440, 10_000_000, 1e-3, 2, 0.01, target=1, eval_max_steps=1000, image=True),
    "CartPole-v1": Setup(245_760, 2_000_000, 1e-3, 4, 0.01, target=0, eval_max_steps=500),
    "brax:inverted_pendulum": Setup(81_920, 5_000_000, 1e-3, 4, 0.0, target=1, eval_max_steps=200,
                                    make_kwargs=(("backend", "positional"), ("episode_length", 200))),
}


def parse_args(argv=None):
    p = common.parser("sleepernets", __doc__.split("\n\n")[0])
    p.add_argument("--envs", default=",".join(SETUPS), help="comma-separated (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.005, help="beta, poisoned fraction of states (default 0.5%%)")
    p.add_argument("--reward", type=float, default=5.0, help="c, the poisoned reward bound")
    p.add_argument("--alpha", type=float, default=0.5, help="SleeperNets' alpha")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every environment's run length")
    p.add_argument("--ablation-env", default="CartPole-v1", help="environment of the beta / c ablation ('' = none)")
    p.add_argument("--ablation-budgets", default="0.0003,0.001", help="extra budgets (c = --reward)")
    p.add_argument("--ablation-rewards", default="1,20", help="extra rewards c (beta = --budget)")
    p.add_argument("--ablation-alpha", type=float, default=0.0,
                   help="SleeperNets' alpha in the ablation, besides --alpha (the paper's ablations use 0)")
    p.add_argument("--speed-envs", default="Breakout-MinAtar,CartPole-v1",
                   help="environments timed with and without poisoning ('' = none)")
    p.add_argument("--speed-updates", type=int, default=2, help="PPO updates per timed call")
    p.add_argument("--speed-repeats", type=int, default=16, help="interleaved timed calls per program (min taken)")
    p.add_argument("--eval-episodes", type=int, default=16)
    p.add_argument("--dqn-steps", type=int, default=50_000, help="BadRL-M's DQN training steps")
    p.add_argument("--paper", action="store_true",
                   help="the reference's PPO (8 envs x 200 steps, lr 2.5e-4, clip 0.1, 4 epochs) and run lengths")
    args = p.parse_args(argv)
    args.envs = [e for e in args.envs.split(",") if e]
    unknown = [e for e in args.envs if e not in SETUPS]
    if unknown:
        p.error(f"unknown --envs {unknown}: choose from {list(SETUPS)}")
    args.ablation_budgets = [float(b) for b in args.ablation_budgets.split(",") if b]
    args.ablation_rewards = [float(c) for c in args.ablation_rewards.split(",") if c]
    args.speed_envs = [e for e in args.speed_envs.split(",") if e]
    if args.quick:
        args.envs, args.seeds, args.steps_scale = ["CartPole-v1"], 2, 0.05
        args.ablation_budgets, args.ablation_rewards = [0.001], [1.0]
        args.speed_envs, args.speed_repeats, args.eval_episodes, args.dqn_steps = ["CartPole-v1"], 3, 4, 4_000
    for value, name in ((args.budget, "--budget"), *((b, "--ablation-budgets") for b in args.ablation_budgets)):
        if not 0.0 < value <= 1.0:
            p.error(f"{name} must lie in (0, 1], got {value}")
    return args


def make_env(name):
    """``(env, env_params, trigger, network)`` of one benchmark environment."""
    setup = SETUPS[name]
    env, params = rl.make(name, **dict(setup.make_kwargs))
    if setup.image:
        return env, params, backdoor.ImagePatch(size=3), networks.ConvActorCritic(
            env.num_actions, discrete=True, channels=(16,), hidden=(128,))
    return backdoor.TriggerFeature(env), params, backdoor.FEATURE_ON, None


def ppo_config(args, name, num_updates=None):
    """The PPO configuration of ``name`` (default table, or the reference's with ``--paper``)."""
    setup = SETUPS[name]
    if args.paper:
        cfg = ppo.PPOConfig(num_envs=8, num_steps=200, learning_rate=2.5e-4, clip_eps=0.1, update_epochs=4,
                            num_minibatches=4, ent_coef=setup.ent_coef, total_timesteps=setup.paper_steps)
    else:
        cfg = ppo.PPOConfig(num_envs=8, num_steps=128, learning_rate=setup.learning_rate,
                            update_epochs=setup.update_epochs, num_minibatches=4, ent_coef=setup.ent_coef,
                            total_timesteps=max(1024, int(setup.steps * args.steps_scale)))
    if num_updates is not None:
        cfg = dataclasses.replace(cfg, total_timesteps=num_updates * cfg.batch_size)
    return cfg


def grid(args, name, attacks):
    """The configurations of one environment, ``(attack, budget, reward, alpha)``, the table's first; on the
    ablation environment also every extra budget and reward for each attack, SleeperNets at ``--alpha`` and at
    ``--ablation-alpha``."""
    configs = [(a, args.budget, args.reward, args.alpha) for a in attacks]
    if name != args.ablation_env:
        return configs
    variants = [(a, args.alpha) for a in attacks if a != "none"]
    if args.ablation_alpha != args.alpha:
        variants.append(("sleepernets", args.ablation_alpha))
        configs.append(("sleepernets", args.budget, args.reward, args.ablation_alpha))
    configs += [(a, b, args.reward, al) for b in args.ablation_budgets for a, al in variants]
    configs += [(a, args.budget, c, al) for c in args.ablation_rewards for a, al in variants]
    return configs


def train_q(args, env, params, key):
    """BadRL-M's Q-network: DQN on the clean environment (50k steps by default)."""
    cfg = dqn.DQNConfig(total_timesteps=args.dqn_steps, num_envs=4, learning_starts=min(5_000, args.dqn_steps // 4),
                        buffer_size=20_000, batch_size=64, train_frequency=4, target_network_frequency=1_000,
                        exploration_fraction=0.3, learning_rate=5e-4)
    return backdoor.train_q(key, cfg, env, params)


def run_env(args, name, key):
    """Trains and evaluates every run of ``name``; returns its results dict."""
    env, params, trigger, network = make_env(name)
    spec = rl.spec(env, params)
    attacks = backdoor.ATTACKS if spec.discrete else ("none", "sleepernets", "trojdrl")
    cfg = ppo_config(args, name)
    config = backdoor.BackdoorConfig(target=SETUPS[name].target, budget=args.budget, reward=args.reward,
                                     alpha=args.alpha)
    k_q, k_runs, k_eval = jax.random.split(key, 3)
    start = time.perf_counter()
    q = train_q(args, env, params, k_q) if "badrl" in attacks else None
    dqn_s = time.perf_counter() - start
    configs = grid(args, name, attacks)
    seeds = jax.random.split(k_runs, args.seeds)
    runs = [(c, s) for c in configs for s in range(args.seeds)]
    keys = jnp.stack([seeds[s] for _, s in runs])
    trainer = backdoor.make_comparison(cfg, env, params, config, trigger, network=network, q=q, attacks=attacks)
    start = time.perf_counter()
    out = backdoor.run_comparison(trainer, keys, backdoor.run_settings(attacks, [c for c, _ in runs]), desc=name)
    train_s = time.perf_counter() - start
    apply_fn = out.train_state.apply_fn
    start = time.perf_counter()
    evaluation = jax.jit(jax.vmap(lambda k, p: backdoor.evaluate(
        k, apply_fn, p, env, params, trigger, config, args.eval_episodes, SETUPS[name].eval_max_steps)))(
        jnp.stack([jax.random.fold_in(k_eval, s) for _, s in runs]), out.train_state.params)
    eval_s = time.perf_counter() - start
    asr, ret = np.asarray(evaluation["asr"]), np.asarray(evaluation["return"])
    clean = {s: ret[i] for i, (c, s) in enumerate(runs) if c[0] == "none"}
    brr = backdoor.benign_return_ratio(ret, np.array([clean[s] for _, s in runs]))
    logged = jax.tree.map(np.asarray, out.metrics)
    rates = backdoor.poisoning_rate(logged["poisoned"], cfg.batch_size)
    steps = (np.arange(cfg.num_updates) + 1) * cfg.batch_size
    by_config = {}
    for c in configs:
        idx = [i for i, (cc, _) in enumerate(runs) if cc == c]
        by_config[c] = {
            "attack": c[0], "budget": c[1], "reward": c[2], "alpha": c[3],
            "asr": _stats(asr[idx]), "brr": _stats(brr[idx]), "return": _stats(ret[idx]),
            "poisoning_rate": float(rates["cumulative"][idx, -1].mean()),
            "curves": {"steps": steps, "train_asr": logged["train_asr"][idx].mean(0),
                       "episode_return": np.nanmean(logged["episode_return"][idx], 0),
                       "poisoning_rate": rates["cumulative"][idx].mean(0),
                       "poisoning_rate_per_update": rates["per_update"][idx].mean(0)}}
    total_steps = len(runs) * cfg.num_updates * cfg.batch_size
    return {"ppo": dataclasses.asdict(cfg), "attacks": list(attacks), "runs": len(runs), "configs": by_config,
            "table": {a: by_config[(a, args.budget, args.reward, args.alpha)] for a in attacks},
            "wall_s": {"dqn": dqn_s, "train": train_s, "eval": eval_s},
            "program_steps_per_s": total_steps / train_s}


def measure_speed(args, name, key):
    """Env steps/s of plain PPO and of PPO under SleeperNets (seeds vmapped): each program runs
    ``--speed-updates`` updates per jitted call from the same state, calls interleaved ``--speed-repeats`` times;
    the fastest call of each counts (the least disturbed by other work on a shared machine), medians are kept."""
    env, params, trigger, network = make_env(name)
    cfg = ppo_config(args, name)
    config = backdoor.BackdoorConfig(target=SETUPS[name].target, budget=args.budget, reward=args.reward,
                                     alpha=args.alpha)
    keys = jax.random.split(key, args.seeds)
    trainers = {"plain PPO": ppo.make_trainer(cfg, env, params, network=network),
                "SleeperNets": backdoor.make_trainer(cfg, env, params, "sleepernets", config, trigger, network)}
    programs = {}
    for label, trainer in tqdm(trainers.items(), desc=f"{name} speed: compile", leave=False):
        run = jax.jit(jax.vmap(lambda c, t=trainer: runner.scan_steps(t.step, c, args.speed_updates)))
        carry = jax.jit(jax.vmap(trainer.init))(keys)
        jax.block_until_ready(run(carry))
        programs[label] = (run, carry)
    wall = {label: [] for label in programs}
    for _ in tqdm(range(args.speed_repeats), desc=f"{name} speed: time", leave=False):
        for label, (run, carry) in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(run(carry))
            wall[label].append(time.perf_counter() - start)
    steps = args.seeds * args.speed_updates * cfg.batch_size
    sps = {label: steps / min(t) for label, t in wall.items()}
    return {"steps_per_s": sps, "steps_per_s_median": {k: steps / float(np.median(t)) for k, t in wall.items()},
            "poisoning_cost": 1.0 - sps["SleeperNets"] / sps["plain PPO"], "seeds": args.seeds,
            "updates_per_call": args.speed_updates, "wall_s": wall}


def claims(results):
    """The paper's claims per environment, with the figures they rest on."""
    out = {}
    for name, res in results.items():
        table = res["table"]
        sn = table["sleepernets"]
        curve = sn["curves"]["poisoning_rate_per_update"]
        quarter = max(1, len(curve) // 4)
        row = {"asr_ge_0.99": sn["asr"]["mean"] >= 0.99, "brr_ge_0.9": sn["brr"]["mean"] >= 0.9,
               "asr": sn["asr"]["mean"], "brr": sn["brr"]["mean"],
               "rate_first_quarter": float(np.mean(curve[:quarter])),
               "rate_last_quarter": float(np.mean(curve[-quarter:]))}
        row["rate_falls"] = row["rate_last_quarter"] < row["rate_first_quarter"]
        for base in ("trojdrl", "badrl"):
            if base in table:
                row[f"beats_{base}"] = sn["asr"]["mean"] > table[base]["asr"]["mean"]
                row[f"{base}_asr"] = table[base]["asr"]["mean"]
        out[name] = row
    return out


def plot_curves(results, path):
    names = list(results)
    fig, axes = plt.subplots(len(names), 3, figsize=(15, 3.2 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        for attack, res in results[name]["table"].items():
            c, style = res["curves"], {"label": NAMES[attack], "color": COLORS[attack]}
            row[0].plot(c["steps"], c["train_asr"], **style)
            row[1].plot(c["steps"], c["episode_return"], **style)
            if attack != "none":
                row[2].plot(c["steps"], c["poisoning_rate"], **style)
        for ax, title in zip(row, ("training ASR", "episode return", "cumulative poisoning rate")):
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_xlabel("environment steps")
        row[0].legend(fontsize=7)
        row[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_table(results, path):
    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
    width = 0.2
    for k, attack in enumerate(backdoor.ATTACKS):
        for ax, metric in zip(axes, ("asr", "brr")):
            vals = [results[n]["table"][attack][metric] if attack in results[n]["table"] else {"mean": np.nan,
                                                                                            "std": 0.0}
                    for n in names]
            ax.bar(np.arange(len(names)) + (k - 1.5) * width, [v["mean"] for v in vals], width,
                   yerr=[v["std"] for v in vals], label=NAMES[attack], color=COLORS[attack])
    for ax, title in zip(axes, ("ASR (trigger on, mean +- std over seeds)", "BRR (return / clean return)")):
        ax.set_xticks(np.arange(len(names)), names, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.4)
        ax.legend(fontsize=7, ncol=4, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ablation(res, args, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    budgets = sorted({args.budget, *args.ablation_budgets})
    rewards = sorted({args.reward, *args.ablation_rewards})
    variants = [(a, args.alpha) for a in res["attacks"] if a != "none"]
    if args.ablation_alpha != args.alpha:
        variants.append(("sleepernets", args.ablation_alpha))
    for attack, alpha in variants:
        label = NAMES[attack] + (f" (alpha={alpha:g})" if attack == "sleepernets" else "")
        paper_alpha = attack == "sleepernets" and alpha != args.alpha
        style = {"color": "tab:purple" if paper_alpha else COLORS[attack], "linestyle": "--" if paper_alpha else "-"}
        for ax, xs, key in ((axes[0], budgets, lambda b: (attack, b, args.reward, alpha)),
                            (axes[1], rewards, lambda c: (attack, args.budget, c, alpha))):
            stats = [res["configs"][key(x)]["asr"] for x in xs]
            ax.errorbar(xs, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], marker="o",
                        label=label, capsize=3, **style)
    axes[0].set_xscale("log")
    axes[0].set_xticks(budgets, [f"{100 * b:g}%" for b in budgets])
    axes[0].minorticks_off()
    axes[0].set_xlabel(f"budget beta (c = {args.reward:g})")
    axes[1].set_xlabel(f"reward c (beta = {args.budget:g})")
    for ax in axes:
        ax.set_ylabel("ASR")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(results):
    lines = ["| environment | attack | ASR | BRR | return | poisoning rate |", "| --- | --- | --- | --- | --- | --- |"]
    for name, res in results.items():
        for attack in backdoor.ATTACKS:
            if attack not in res["table"]:
                lines.append(f"| {name} | {NAMES[attack]} | n/a (continuous actions) | | | |")
                continue
            r = res["table"][attack]
            lines.append(f"| {name} | {NAMES[attack]} | {r['asr']['mean']:.3f} ± {r['asr']['std']:.3f} | "
                         f"{r['brr']['mean']:.2f} ± {r['brr']['std']:.2f} | {r['return']['mean']:.1f} | "
                         f"{100 * r['poisoning_rate']:.3f}% |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    key = jax.random.key(0)
    results, speed = {}, {}
    payload = {"config": {k: v for k, v in vars(args).items()}, "paper_claims": {
        "asr": ">= 0.99 on every environment", "brr": ">= 0.9", "baselines": "SleeperNets' ASR above TrojDRL-W's "
        "and BadRL-M's at the same budget", "poisoning_rate": "falls over training"}}
    for i, name in enumerate(args.envs):
        results[name] = run_env(args, name, jax.random.fold_in(key, i))
        tqdm.write(f"{name}: " + ", ".join(f"{NAMES[a]} ASR {r['asr']['mean']:.3f} BRR {r['brr']['mean']:.2f}"
                                            for a, r in results[name]["table"].items()))
        common.write_results(args.out, {**payload, "envs": _jsonable(results)})  # partial results kept
    for i, name in enumerate(args.speed_envs):
        speed[name] = measure_speed(args, name, jax.random.fold_in(key, 100 + i))
        tqdm.write(f"{name} speed: " + ", ".join(f"{k} {v:,.0f} steps/s" for k, v in speed[name]["steps_per_s"].items())
                   + f", poisoning cost {100 * speed[name]['poisoning_cost']:.1f}%")
    plot_curves(results, f"{args.out}/curves.png")
    plot_table(results, f"{args.out}/table.png")
    if args.ablation_env in results:
        plot_ablation(results[args.ablation_env], args, f"{args.out}/ablation.png")
    verdict = claims(results)
    table = markdown_table(results)
    print(table)
    for name, row in verdict.items():
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    path = common.write_results(args.out, {**payload, "envs": _jsonable(results), "speed": speed,
                                           "claims": verdict, "markdown_table": table,
                                           "wall_s": time.perf_counter() - started})
    print(f"wrote {path} ({time.perf_counter() - started:.0f} s)")
    return path


def _stats(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values)), "per_seed": values}


def _jsonable(results):
    """``configs`` keyed by strings for JSON."""
    return {name: {**res, "configs": {f"{a} beta={b:g} c={c:g} alpha={al:g}": v
                                      for (a, b, c, al), v in res["configs"].items()}}
            for name, res in results.items()}


if __name__ == "__main__":
    main()
