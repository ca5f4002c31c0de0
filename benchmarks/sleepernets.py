"""SleeperNets against TrojDRL-W, BadRL-M and no poisoning (Rathbun et al., NeurIPS 2024; issues 14 and 28).

For each environment, every attack and seed (and, on the ablation environment, every poisoned-state count and
reward of the ablation) trains in ONE vmapped PPO program (``backdoor.make_comparison``), so each environment
compiles once. Then, per run, on the trained agent acting without the trigger:

* ASR: mean ``pi(a+ | delta(s))`` over the states it visits; BRR: its return over that of the clean agent
  trained with the same seed, printed beside the clean agent's return and a uniformly random policy's; the
  poisoning rate (per update and cumulated) and the reward perturbation (mean ``|r' - r|`` on poisoned states);
* curves: training ASR, episode return and poisoning rate against environment steps;
* speed: env steps/s of plain PPO and of PPO under SleeperNets (same seeds and PPO config, calls of a few updates
  interleaved in the same run, fastest call of each).

Every attack stops poisoning once the training ASR reaches 1 (``BackdoorConfig.asr_stop``), as in the reference.

The poisoned reward is relative to each task's return scale R: ``c = k R`` with ``k = --reward-scale`` (0.25),
where R is the largest discounted return-to-go the task's rewards give: ``r_max (1 - gamma^H) / (1 - gamma)`` for
a reward every step (CartPole: 99.3, inverted_pendulum: 86.6, horizon H) and ``r_max`` for sparse rewards
(MinAtar: 1 per brick or alien; DeepSea: 1, the treasure). ``--reward C`` sets one absolute ``c`` for every task.

Environments: DeepSea-bsuite (size 6, fixed action map, a feature set to 1; the target is LEFT, which forfeits
the treasure: a costly target, SleeperNets at every alpha of ``--alphas``), Breakout-MinAtar and
SpaceInvaders-MinAtar (3x3 checkerboard on every channel, or ``--trigger-size 1 --trigger-channels 0``: one cell
of one channel, 1% of the grid; MinAtar's conv network), CartPole-v1 (an extra feature set to 1), brax
inverted_pendulum (extra feature; the target is the sign +1 of the continuous action; BadRL-M needs discrete
actions and is not run). On the ablation environment (DeepSea) the budget is also set by the number of poisoned
states over the run (``--ablation-counts``) and by other reward scales k (``--ablation-rewards``). Claims
checked: SleeperNets' ASR >= 0.99 with BRR >= 0.9, its ASR above both baselines' at the same budget (on the
costly target by a wide margin; there also the seeds backdoored with ASR >= 0.99 AND BRR >= 0.9, since an ASR of 1
can also come from the clean policy collapsing onto the target), its poisoning rate falling.

    python -m benchmarks.sleepernets                  # default table (5 seeds, short runs) + DeepSea ablation
    python -m benchmarks.sleepernets --write-readme   # ... and render README.md's SleeperNets section from it
    python -m benchmarks.sleepernets --render-from a/results.json,b/results.json   # only render the README
    python -m benchmarks.sleepernets --paper          # the reference's PPO and 10M-step MinAtar runs (days on a CPU)
"""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import scipy.stats
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
    return_scale: float  # R of c = k R (module docstring)
    image: bool = False
    costly: bool = False  # the target forfeits the task's reward: SleeperNets at every --alphas
    make_kwargs: tuple = ()
    env_params: tuple = ()  # fields of the environment's params replaced
    flatten: bool = False  # grid observations made vectors (triggers.Flatten) for the feature trigger


def _dense_scale(horizon, gamma=0.99):
    """``(1 - gamma^H) / (1 - gamma)``: R of a reward of 1 every step over ``horizon`` steps."""
    return (1.0 - gamma ** horizon) / (1.0 - gamma)


SETUPS = {
    "DeepSea-bsuite": Setup(245_760, 2_000_000, 1e-3, 4, 0.01, target=0, eval_max_steps=6, return_scale=1.0,
                            costly=True, make_kwargs=(("size", 6),), env_params=(("randomize_actions", False),),
                            flatten=True),
    "Breakout-MinAtar": Setup(61_440, 10_000_000, 1e-3, 2, 0.01, target=1, eval_max_steps=1000, return_scale=1.0,
                              image=True),
    "SpaceInvaders-MinAtar": Setup(61_440, 10_000_000, 1e-3, 2, 0.01, target=1, eval_max_steps=1000,
                                   return_scale=1.0, image=True),
    "CartPole-v1": Setup(245_760, 2_000_000, 1e-3, 4, 0.01, target=0, eval_max_steps=500,
                         return_scale=_dense_scale(500)),
    "brax:inverted_pendulum": Setup(81_920, 5_000_000, 1e-3, 4, 0.0, target=1, eval_max_steps=200,
                                    return_scale=_dense_scale(200),
                                    make_kwargs=(("backend", "positional"), ("episode_length", 200))),
}
DEFAULT_ENVS = ",".join(SETUPS)
QUICK_ENVS = ["DeepSea-bsuite", "CartPole-v1"]


def _floats(text):
    return [float(x) for x in text.split(",") if x]


def parse_args(argv=None):
    p = common.parser("sleepernets", __doc__.split("\n\n")[0])
    p.add_argument("--envs", default=DEFAULT_ENVS, help="comma-separated (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=float, default=0.005, help="beta, poisoned fraction of states (default 0.5%%)")
    p.add_argument("--reward-scale", type=float, default=0.25,
                   help="k of c = k R, R the task's return scale (module docstring)")
    p.add_argument("--reward", type=float, default=None, help="one absolute c for every task (overrides k)")
    p.add_argument("--alpha", type=float, default=0.5, help="SleeperNets' alpha in the main table")
    p.add_argument("--alphas", default="0,0.5,1", help="SleeperNets' alphas on the costly-target tasks")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every environment's run length")
    p.add_argument("--ent-coef", type=float, default=None,
                   help="PPO's entropy coefficient for every environment (default: each one's, 0.01 but brax 0); "
                        "the victim's exploration: DeepSea's PPO is near-deterministic within ~20 updates at 0.01")
    p.add_argument("--trigger-size", type=int, default=3, help="side of the MinAtar image trigger (cells)")
    p.add_argument("--trigger-channels", default="",
                   help="channels of the MinAtar image trigger, comma-separated ('' = every channel; "
                        "'--trigger-size 1 --trigger-channels 0' is the less salient 1%% one-channel trigger)")
    p.add_argument("--ablation-env", default="DeepSea-bsuite", help="environment of the ablations ('' = none)")
    p.add_argument("--ablation-counts", default="100,300",
                   help="budgets as poisoned states over a whole run (beta = count / run steps)")
    p.add_argument("--ablation-rewards", default="",
                   help="extra reward scales k (c = k R, beta = --budget), e.g. '1' (default none: with it the "
                        "DeepSea program of 75 runs stalled in XLA's CPU compiler here; 60 runs compile)")
    p.add_argument("--speed-envs", default="Breakout-MinAtar,CartPole-v1",
                   help="environments timed with and without poisoning ('' = none)")
    p.add_argument("--speed-updates", type=int, default=2, help="PPO updates per timed call")
    p.add_argument("--speed-repeats", type=int, default=16, help="interleaved timed calls per program (min taken)")
    p.add_argument("--eval-episodes", type=int, default=16)
    p.add_argument("--dqn-steps", type=int, default=50_000, help="BadRL-M's DQN training steps")
    p.add_argument("--paper", action="store_true",
                   help="the reference's PPO (8 envs x 200 steps, lr 2.5e-4, clip 0.1, 4 epochs) and run lengths")
    p.add_argument("--write-readme", action="store_true", help="render README's SleeperNets section from this run")
    p.add_argument("--readme", default="README.md", help="the README --write-readme / --render-from rewrite")
    p.add_argument("--render-from", default="",
                   help="comma-separated results.json files: only render the README section from them, no run")
    args = p.parse_args(argv)
    args.envs = [e for e in args.envs.split(",") if e]
    unknown = [e for e in args.envs if e not in SETUPS]
    if unknown:
        p.error(f"unknown --envs {unknown}: choose from {list(SETUPS)}")
    try:
        args.alphas = _floats(args.alphas)
        args.ablation_counts = [int(n) for n in args.ablation_counts.split(",") if n]
        args.ablation_rewards = _floats(args.ablation_rewards)
        args.trigger_channels = tuple(int(c) for c in args.trigger_channels.split(",") if c)
    except ValueError as err:
        p.error(f"bad number in a comma-separated option: {err}")
    args.speed_envs = [e for e in args.speed_envs.split(",") if e]
    args.render_from = [f for f in args.render_from.split(",") if f]
    if args.quick:
        if ",".join(args.envs) == DEFAULT_ENVS:
            args.envs = list(QUICK_ENVS)
        args.seeds, args.steps_scale = 2, 0.05
        args.ablation_counts, args.ablation_rewards = [50], [1.0]
        args.speed_envs = [e for e in args.speed_envs if e in args.envs][:1]
        args.speed_repeats, args.eval_episodes, args.dqn_steps = 3, 4, 4_000
    if not 0.0 < args.budget <= 1.0:
        p.error(f"--budget must lie in (0, 1], got {args.budget}")
    if args.ent_coef is not None and not 0.0 <= args.ent_coef < float("inf"):
        p.error(f"--ent-coef must be finite and >= 0, got {args.ent_coef}")
    if args.ablation_env and args.ablation_env not in SETUPS:
        p.error(f"unknown --ablation-env {args.ablation_env!r}: choose from {list(SETUPS)}")
    for value, name in ((args.reward_scale, "--reward-scale"), *(((args.reward, "--reward"),) if args.reward
                                                                 is not None else ()),
                        *((k, "--ablation-rewards") for k in args.ablation_rewards)):
        if not value > 0:
            p.error(f"{name} must be > 0, got {value}")
    if any(n < 1 for n in args.ablation_counts):
        p.error(f"--ablation-counts must be >= 1 poisoned states, got {args.ablation_counts}")
    if not args.alphas or any(a < 0 for a in args.alphas):
        p.error(f"--alphas must be >= 0 (at least one), got {args.alphas}")
    if args.seeds < 1 or args.trigger_size < 1:
        p.error("--seeds and --trigger-size must be >= 1")
    return args


def reward_of(args, name, k=None):
    """``c`` on ``name``: ``--reward`` when given, else ``k R`` (``k = --reward-scale`` by default)."""
    if args.reward is not None and k is None:
        return args.reward
    return (args.reward_scale if k is None else k) * SETUPS[name].return_scale


def make_env(name, args=None):
    """``(env, env_params, trigger, network)`` of one benchmark environment (``args``: the image trigger's
    ``--trigger-size`` and ``--trigger-channels``; default the 3x3 patch on every channel)."""
    setup = SETUPS[name]
    env, params = rl.make(name, **dict(setup.make_kwargs))
    if setup.env_params:
        params = params.replace(**dict(setup.env_params))
    if setup.image:
        size, channels = (3, ()) if args is None else (args.trigger_size, args.trigger_channels)
        return env, params, backdoor.ImagePatch(size=size, channels=channels or None), networks.ConvActorCritic(
            env.num_actions, discrete=True, channels=(16,), hidden=(128,))
    if setup.flatten:
        env = backdoor.Flatten(env)
    return backdoor.TriggerFeature(env), params, backdoor.FEATURE_ON, None


def ppo_config(args, name, num_updates=None):
    """The PPO configuration of ``name`` (default table, or the reference's with ``--paper``)."""
    setup = SETUPS[name]
    if args.ent_coef is not None:
        setup = dataclasses.replace(setup, ent_coef=args.ent_coef)
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
    """The configurations of one environment, ``(attack, budget, reward, alpha)``, the table's first; on a
    costly-target task also SleeperNets at every ``--alphas``; on the ablation environment also, for each
    baseline and SleeperNets (at its largest alpha there), every budget of ``--ablation-counts`` (poisoned states over the run)
    and every reward scale of ``--ablation-rewards``."""
    c = reward_of(args, name)
    configs = [(a, args.budget, c, args.alpha) for a in attacks]
    alphas = [args.alpha]
    if SETUPS[name].costly:
        alphas = sorted({args.alpha, *args.alphas})
        configs += [("sleepernets", args.budget, c, al) for al in alphas if al != args.alpha]
    if name != args.ablation_env:
        return configs
    variants = [(a, max(alphas) if a == "sleepernets" else args.alpha) for a in attacks if a != "none"]
    total = ppo_config(args, name).num_updates * ppo_config(args, name).batch_size
    configs += [(a, min(1.0, n / total), c, al) for n in args.ablation_counts for a, al in variants]
    configs += [(a, args.budget, reward_of(args, name, k), al) for k in args.ablation_rewards for a, al in variants]
    return list(dict.fromkeys(configs))


def train_q(args, env, params, key):
    """BadRL-M's Q-network: DQN on the clean environment (50k steps by default)."""
    cfg = dqn.DQNConfig(total_timesteps=args.dqn_steps, num_envs=4, learning_starts=min(5_000, args.dqn_steps // 4),
                        buffer_size=20_000, batch_size=64, train_frequency=4, target_network_frequency=1_000,
                        exploration_fraction=0.3, learning_rate=5e-4)
    return backdoor.train_q(key, cfg, env, params)


def run_env(args, name, key):
    """Trains and evaluates every run of ``name``; returns its results dict."""
    env, params, trigger, network = make_env(name, args)
    spec = rl.spec(env, params)
    attacks = backdoor.ATTACKS if spec.discrete else ("none", "sleepernets", "trojdrl")
    cfg = ppo_config(args, name)
    c = reward_of(args, name)
    config = backdoor.BackdoorConfig(target=SETUPS[name].target, budget=args.budget, reward=c, alpha=args.alpha)
    k_q, k_runs, k_eval = jax.random.split(key, 3)
    start = time.perf_counter()
    q = train_q(args, env, params, k_q) if "badrl" in attacks else None
    dqn_s = time.perf_counter() - start
    configs = grid(args, name, attacks)
    seeds = jax.random.split(k_runs, args.seeds)
    runs = [(cc, s) for cc in configs for s in range(args.seeds)]
    keys = jnp.stack([seeds[s] for _, s in runs])
    trainer = backdoor.make_comparison(cfg, env, params, config, trigger, network=network, q=q, attacks=attacks)
    start = time.perf_counter()
    out = trainer.run_with_progress(keys, backdoor.run_settings(attacks, [cc for cc, _ in runs]), sweep=True,
                                    desc=name)
    train_s = time.perf_counter() - start
    apply_fn = out.train_state.apply_fn
    max_steps = SETUPS[name].eval_max_steps
    start = time.perf_counter()
    evaluation = jax.jit(jax.vmap(lambda k, p: backdoor.evaluate(
        k, apply_fn, p, env, params, trigger, config, args.eval_episodes, max_steps)))(
        jnp.stack([jax.random.fold_in(k_eval, s) for _, s in runs]), out.train_state.params)
    random_ret = float(jax.jit(lambda k: backdoor.random_return(k, env, params, 4 * args.eval_episodes, max_steps))(
        jax.random.fold_in(k_eval, 2**31)))
    eval_s = time.perf_counter() - start
    asr, ret = np.asarray(evaluation["asr"]), np.asarray(evaluation["return"])
    clean = {s: ret[i] for i, (cc, s) in enumerate(runs) if cc[0] == "none"}
    clean_ret = np.array([clean[s] for _, s in runs])
    brr = backdoor.benign_return_ratio(ret, clean_ret)
    logged = jax.tree.map(np.asarray, out.metrics)
    rates = backdoor.poisoning_rate(logged["poisoned"], cfg.batch_size)
    change = backdoor.perturbation(logged["reward_change"], logged["poisoned"])
    steps = (np.arange(cfg.num_updates) + 1) * cfg.batch_size
    by_config = {}
    for cc in configs:
        idx = [i for i, (x, _) in enumerate(runs) if x == cc]
        by_config[cc] = {
            "attack": cc[0], "budget": cc[1], "reward": cc[2], "alpha": cc[3],
            "poisoned_states": _stats(logged["poisoned"][idx].sum(-1)),
            "asr": _stats(asr[idx]), "brr": _stats(brr[idx]), "return": _stats(ret[idx]),
            "clean_return": _stats(clean_ret[idx]), "reward_perturbation": _stats(change[idx]),
            "poisoning_rate": float(rates["cumulative"][idx, -1].mean()),
            "curves": {"steps": steps, "train_asr": logged["train_asr"][idx].mean(0),
                       "episode_return": np.nanmean(logged["episode_return"][idx], 0),
                       "poisoning_rate": rates["cumulative"][idx].mean(0),
                       "poisoning_rate_per_update": rates["per_update"][idx].mean(0)}}
    total_steps = len(runs) * cfg.num_updates * cfg.batch_size
    return {"ppo": dataclasses.asdict(cfg), "attacks": list(attacks), "runs": len(runs), "seeds": args.seeds,
            "reward": c, "return_scale": SETUPS[name].return_scale, "costly": SETUPS[name].costly,
            "trigger": repr(trigger), "random_return": random_ret, "run_steps": cfg.num_updates * cfg.batch_size,
            "configs": by_config, "table": {a: by_config[(a, args.budget, c, args.alpha)] for a in attacks},
            "wall_s": {"dqn": dqn_s, "train": train_s, "eval": eval_s},
            "program_steps_per_s": total_steps / train_s}


def measure_speed(args, name, key):
    """Env steps/s of plain PPO and of PPO under SleeperNets (seeds vmapped): each program runs
    ``--speed-updates`` updates per jitted call from the same state, calls interleaved ``--speed-repeats`` times;
    the fastest call of each counts (the least disturbed by other work on a shared machine), medians are kept."""
    env, params, trigger, network = make_env(name, args)
    cfg = ppo_config(args, name)
    config = backdoor.BackdoorConfig(target=SETUPS[name].target, budget=args.budget, reward=reward_of(args, name),
                                     alpha=args.alpha)
    keys = jax.random.split(key, args.seeds)
    trainers = {"plain PPO": ppo.make_trainer(cfg, env, params, network=network),
                "SleeperNets": backdoor.make_trainer(cfg, env, params, "sleepernets", config, trigger, network)}
    programs = {}
    for label, trainer in tqdm(trainers.items(), desc=f"{name} speed: compile", leave=False):
        run = jax.jit(jax.vmap(lambda c, t=trainer: runner.scan_steps(lambda s: t.step(s, t.params), c,
                                                                       args.speed_updates)))
        carry = jax.jit(jax.vmap(lambda k, t=trainer: t.init(k, t.params)))(keys)
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
    """The paper's claims per environment, with the figures they rest on; on a costly-target task also the ASR
    margin of SleeperNets at its best alpha over the better baseline."""
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
        if res["costly"]:
            same = [v for v in res["configs"].values() if v["attack"] == "sleepernets"
                    and v["budget"] == sn["budget"] and v["reward"] == sn["reward"]]
            best = max(same, key=lambda v: v["asr"]["mean"])
            baseline = max(table[b]["asr"]["mean"] for b in ("trojdrl", "badrl") if b in table)
            row.update({"best_alpha": best["alpha"], "best_alpha_asr": best["asr"]["mean"],
                        "margin_over_baselines": best["asr"]["mean"] - baseline})
            # A seed counts as backdoored only with ASR >= 0.99 AND BRR >= 0.9: on DeepSea an ASR of 1 also comes
            # from PPO's clean policy collapsing onto the target (return 0), which the mean ASR counts as success.
            row["backdoored_seeds"] = {(NAMES[v["attack"]] + (f" alpha={v['alpha']:g}" if v["attack"] ==
                                                              "sleepernets" else "")): backdoored_seeds(v)
                                       for v in same + [table[b] for b in ("trojdrl", "badrl") if b in table]}
        out[name] = row
    return out


def backdoored_seeds(stats):
    """Seeds of one configuration (a ``by_config`` entry) whose agent is backdoored and stealthy: ASR >= 0.99
    and BRR >= 0.9 (a NaN BRR, where the clean return is not positive, does not count)."""
    asr = np.asarray(stats["asr"]["per_seed"], np.float64)
    brr = np.asarray([np.nan if b is None else b for b in stats["brr"]["per_seed"]], np.float64)
    return int(np.sum((asr >= 0.99) & (np.nan_to_num(brr, nan=-np.inf) >= 0.9)))


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


def plot_ablation(res, path):
    """ASR against the poisoned-state budget on the ablation environment, per attack (SleeperNets per alpha)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rows = [v for v in res["configs"].values() if v["attack"] != "none" and v["reward"] == res["reward"]]
    for attack, alpha in dict.fromkeys((v["attack"], v["alpha"]) for v in rows):
        pts = sorted((v["poisoned_states"]["mean"], v["asr"]["mean"], v["asr"]["std"]) for v in rows
                     if (v["attack"], v["alpha"]) == (attack, alpha))
        label = NAMES[attack] + (f" (alpha={alpha:g})" if attack == "sleepernets" else "")
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=label)
    ax.set_xscale("log")
    ax.set_xlabel(f"poisoned states over the run (c = {res['reward']:g})")
    ax.set_ylabel("ASR")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


README_BEGIN, README_END = "<!-- sleepernets:begin -->", "<!-- sleepernets:end -->"


def _ci(stats):
    """``mean ± half-width`` of the 95% Student-t interval over the seeds of a ``_stats`` dict (from JSON)."""
    values = np.asarray([v for v in stats["per_seed"] if v is not None], np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "n/a"
    half = (scipy.stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
            if values.size > 1 else 0.0)
    return f"{values.mean():.2f} ± {half:.2f}"


def _label(payload):
    """How a results.json was run: its size flags and PPO steps."""
    cfg = payload["config"]
    size = "--paper" if cfg.get("paper") else "--quick" if cfg.get("quick") else "default size"
    return f"{size}, {cfg['seeds']} seeds"


def render_markdown(payloads):
    """The README's SleeperNets section (markdown) from loaded ``results.json`` payloads, each labelled by how it
    was run: the main table (ASR and BRR, mean ± 95% t-interval over seeds, beside the clean and random-policy
    returns), the reward perturbation and poisoning rate of every attack, SleeperNets per alpha on the
    costly-target tasks, and the poisoned-state-count and reward ablations."""
    out = ["ASR / BRR per attack: mean ± 95% t-interval over seeds (BRR: return without the trigger over the clean "
           "agent's of the same seed); beta, c = k R as in `benchmarks/sleepernets.py`. Rendered by "
           "`python -m benchmarks.sleepernets --write-readme` (or `--render-from`) from the runs' `results.json`.",
           "", "| environment (run) | steps | c | no poisoning ASR | SleeperNets | TrojDRL-W | BadRL-M | "
           "clean return | random return |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    perturb = ["| environment | attack | alpha | poisoned states | poisoning rate | mean abs(r' - r) on poisoned |",
               "| --- | --- | --- | --- | --- | --- |"]
    costly, ablation = [], []
    for payload in payloads:
        label = _label(payload)
        for name, res in payload["envs"].items():
            table = res["table"]
            cells = [f"{_ci(table[a]['asr'])} / {_ci(table[a]['brr'])}" if a in table else "n/a (continuous)"
                     for a in ("sleepernets", "trojdrl", "badrl")]
            out.append(f"| {name} ({label}) | {res['run_steps']:,} | {res['reward']:.3g} | "
                       f"{_ci(table['none']['asr'])} | {' | '.join(cells)} | {_ci(table['none']['return'])} | "
                       f"{res['random_return']:.2f} |")
            main_rows = [v for v in res["configs"].values() if v["budget"] == table["none"]["budget"]
                         and v["reward"] == res["reward"] and v["attack"] != "none"]
            for v in main_rows:
                perturb.append(f"| {name} | {NAMES[v['attack']]} | {v['alpha']:g} | "
                               f"{v['poisoned_states']['mean']:.0f} | {100 * v['poisoning_rate']:.3f}% | "
                               f"{_ci(v['reward_perturbation'])} |")
            if res["costly"]:
                for v in main_rows:
                    who = NAMES[v["attack"]] + (f", alpha = {v['alpha']:g}" if v["attack"] == "sleepernets" else "")
                    costly.append(f"| {name} ({label}) | {who} | {_ci(v['asr'])} | {_ci(v['brr'])} | "
                                  f"{v['poisoned_states']['mean']:.0f} |")
            extra = [v for v in res["configs"].values() if v["attack"] != "none" and v not in main_rows]
            for v in extra:
                who = NAMES[v["attack"]] + (f", alpha = {v['alpha']:g}" if v["attack"] == "sleepernets" else "")
                ablation.append(f"| {name} ({label}) | {who} | {v['poisoned_states']['mean']:.0f} "
                                f"({100 * v['budget']:.3g}%) | {v['reward']:.3g} | {_ci(v['asr'])} | "
                                f"{_ci(v['brr'])} |")
    out += ["", "Reward perturbation and budget spent, at the main table's beta and c:", "", *perturb]
    if costly:
        out += ["", "Costly target (DeepSea: the target LEFT forfeits the treasure), same budget and c:", "",
                "| environment (run) | attack | ASR | BRR | poisoned states |", "| --- | --- | --- | --- | --- |",
                *costly]
    if ablation:
        out += ["", "Ablations: budget by poisoned states over the run, and reward c:", "",
                "| environment (run) | attack | poisoned states (beta) | c | ASR | BRR |",
                "| --- | --- | --- | --- | --- | --- |", *ablation]
    return "\n".join(out)


def write_readme(readme_path, results_paths):
    """Replaces the text between ``README_BEGIN`` and ``README_END`` in ``readme_path`` by ``render_markdown`` of
    the ``results.json`` files ``results_paths``; returns the rendered section.

    Raises ``ValueError`` if the README lacks the two markers (in that order) or a results file is missing.
    """
    payloads = []
    for path in results_paths:
        if not os.path.isfile(path):
            raise ValueError(f"no results file {path!r}")
        with open(path) as f:
            payloads.append(json.load(f))
    section = render_markdown(payloads)
    common.replace_readme_section(readme_path, "sleepernets", section)
    return section


def main(argv=None):
    args = parse_args(argv)
    if args.render_from:
        print(write_readme(args.readme, args.render_from))
        return args.readme
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
        plot_ablation(results[args.ablation_env], f"{args.out}/ablation.png")
    verdict = claims(results)
    for name, row in verdict.items():
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    path = common.write_results(args.out, {**payload, "envs": _jsonable(results), "speed": speed,
                                           "claims": verdict, "wall_s": time.perf_counter() - started})
    with open(path) as f:
        print(render_markdown([json.load(f)]))
    if args.write_readme:
        write_readme(args.readme, [path])
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
