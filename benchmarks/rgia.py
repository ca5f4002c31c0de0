"""RGIA (seed paper 001): gradient inversion of TD-loss gradients in federated RL, GIA against RGIA and each
regularizer alone, per environment; a batch-size sweep; the DP noise sweep with the victim's return; and the
speed of vmapped restarts against a sequential loop.

Per environment a victim is trained with the RL engine (DQN on FrozenLake / CartPole / Pong, TD3 on brax), the
attacker fits its prior on ``--prior-fraction`` (0.3%) of the victim's replay data, and ``--targets`` batches
from the rest are attacked at the trained and at an untrained network: every variant x network x target in
one vmapped call, ``--restarts`` restarts vmapped inside. Metrics (MSE, RA, GME, TE, ED, SS, CD) are defined
in ``fedjax_attacks.inversion.rgia_metrics``; ``prior mean`` is the guess that ignores the gradient (the prior's
mean state and reward, its most common action), and ``true TE`` the transition error of the true tuples.

    python -m benchmarks.rgia [--quick] [--out DIR] [--envs CartPole-v1,brax:hopper] [--steps 500]
        [--restarts 16] [--targets 4] [--replay-scale 1.0] [--batch-sizes 1,...,8] [--noise-seeds 2]
"""

import dataclasses
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from jax.flatten_util import ravel_pytree
from tqdm import tqdm

from benchmarks import common
from fedjax_attacks import inversion as inv
from fedjax_attacks.inversion import rgia, rgia_envs, rgia_metrics, rgia_priors, rgia_victims
from fedjax_attacks.rl import dqn, evaluate, networks, td3
from fedjax_attacks.rl.replay import Transition

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VARIANTS = {
    "GIA": (),
    "GIA+R_s(Gauss)": ("state_gaussian",),
    "GIA+R_s(GMM)": ("state_mixture",),
    "GIA+R_r": ("reward",),
    "GIA+R_f": ("dynamics",),
    "RGIA": ("state_mixture", "reward", "dynamics"),
}
NETS = ("trained", "untrained")
METRICS = ("mse", "ra", "gme", "te", "ed", "ss", "cd")
HIDDEN = {"Pong-misc": (32, 32)}  # the 3600-pixel input layer dominates the attack's cost; others (64, 64)


def train_config(name: str, replay_size: int):
    """The victim's RL-engine config on ``name``, ``replay_size`` transitions (its whole replay data).

    64 (DQN) or 32 (TD3) environments step together: few long iterations keep the victim's training short."""
    if name.startswith("brax:"):
        return td3.TD3Config(total_timesteps=replay_size, num_envs=32, learning_starts=min(5_000, replay_size // 4),
                             gradient_steps=2, batch_size=256, hidden=HIDDEN.get(name, (64, 64)))
    return dqn.DQNConfig(total_timesteps=replay_size, num_envs=64, learning_rate=1e-3, batch_size=128,
                         learning_starts=min(5_000, replay_size // 4), train_frequency=64,
                         target_network_frequency=2_000, exploration_fraction=0.3, hidden=HIDDEN.get(name, (64, 64)))


REPLAY_SIZES = {"FrozenLake-misc": 100_000, "CartPole-v1": 160_000, "Pong-misc": 16_000}
BRAX_REPLAY_SIZE = 32_000


def _ints(s):
    return [int(v) for v in s.split(",")]


def _floats(s):
    return [float(v) for v in s.split(",")]


def parse_args(argv=None):
    p = common.parser("rgia", __doc__.split("\n")[0])
    p.add_argument("--envs", default=None, help=f"comma-separated (default all: {','.join(rgia_envs.ENV_NAMES)}; "
                                                "quick: CartPole-v1)")
    p.add_argument("--steps", type=int, default=None, help="Adam steps per restart (default 500; quick 150)")
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--restarts", type=int, default=None, help="restarts per target (default 16; quick 4)")
    p.add_argument("--targets", type=int, default=None, help="target batches per setting (default 4; quick 2)")
    p.add_argument("--distance", default="cosine", choices=sorted(rgia.DISTANCES))
    p.add_argument("--dynamics-moves-state", action="store_true",
                   help="let R_f's gradient move s and a too (default: it only pulls s' toward f(s, a))")
    p.add_argument("--weights", default=None,
                   help="regularizer weights name=w,... (default: state_gaussian and state_mixture "
                        f"{rgia.RGIA_WEIGHTS['state_mixture']}, reward {rgia.RGIA_WEIGHTS['reward']}, "
                        f"dynamics {rgia.RGIA_WEIGHTS['dynamics']})")
    p.add_argument("--replay-scale", type=float, default=None,
                   help="multiplies each victim's replay size (default 1; quick 0.1)")
    p.add_argument("--prior-fraction", type=float, default=rgia_priors.DEFAULT_PRIOR_FRACTION)
    p.add_argument("--dynamics-steps", type=int, default=2000, help="transition-model training steps")
    p.add_argument("--tolerance", type=float, default=0.1, help="RA tolerance (times max(1, prior std))")
    p.add_argument("--success-ra", type=float, default=0.9, help="an attack succeeds when its RA reaches this")
    p.add_argument("--batch-sizes", type=_ints, default=None, help="batch sweep (default 1..8; quick 1,4)")
    p.add_argument("--batch-envs", default="CartPole-v1", help="environments of the batch sweep")
    p.add_argument("--noise-env", default="CartPole-v1", help="environment of the DP noise sweep")
    p.add_argument("--noise-variances", type=_floats, default=[0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0],
                   help="the paper's 1e-5..1e-1, then 1 and 10 (our gradients are larger than the noise there)")
    p.add_argument("--noise-seeds", type=int, default=None, help="victim training seeds per noise level (default 2; quick 1)")
    p.add_argument("--eval-episodes", type=int, default=16)
    p.add_argument("--speed-restarts", type=int, default=None, help="restarts in the speed test (default 16; quick 4)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    quick = args.quick
    args.envs = (args.envs or ("CartPole-v1" if quick else ",".join(rgia_envs.ENV_NAMES))).split(",")
    args.batch_envs = [e for e in args.batch_envs.split(",") if e]
    args.steps = args.steps or (150 if quick else 500)
    args.restarts = args.restarts or (4 if quick else 16)
    args.targets = args.targets or (2 if quick else 4)
    args.replay_scale = args.replay_scale or (0.1 if quick else 1.0)
    args.batch_sizes = args.batch_sizes or ([1, 4] if quick else list(range(1, 9)))
    args.noise_seeds = args.noise_seeds or (1 if quick else 2)
    args.speed_restarts = args.speed_restarts or (4 if quick else 16)
    for name in set(args.envs) | set(args.batch_envs) | {args.noise_env}:
        if name not in rgia_envs.ENV_NAMES:
            raise ValueError(f"unknown environment {name!r}: choose from {', '.join(rgia_envs.ENV_NAMES)}")
    args.weights = _parse_weights(args.weights)
    if args.targets < 2:
        raise ValueError("--targets must be >= 2 (the silhouette score needs two true tuples)")
    if min(args.batch_sizes) < 1:
        raise ValueError(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
    return args


def _parse_weights(text):
    weights = {"state_gaussian": rgia.RGIA_WEIGHTS["state_mixture"], **rgia.RGIA_WEIGHTS}
    for item in (text.split(",") if text else []):
        name, _, value = item.partition("=")
        if name not in rgia.REGULARIZERS:
            raise ValueError(f"unknown regularizer name {name!r} in --weights: choose from {rgia.REGULARIZERS}")
        weights[name] = float(value)
    return weights


@dataclasses.dataclass
class Setup:
    """One environment ready to attack: its victim run, the attacker's prior, the pool of target indices and
    the RA scales (``max(1, std)`` of the prior states and rewards)."""

    env: rgia_envs.RGIAEnv
    victim: rgia.Victim
    run: rgia_victims.VictimRun
    prior: rgia_priors.Prior
    prior_data: Transition
    pool: np.ndarray
    state_scale: jax.Array
    reward_scale: jax.Array
    train_s: float
    final_return: float
    te_fn: Callable  # jitted, vmapped TE(key, batch): one compile of the environment's step per shape

    def transition_errors(self, key, batches: Transition) -> np.ndarray:
        """TE of each batch of ``batches`` (leading axis P) in one call."""
        p = jax.tree.leaves(batches)[0].shape[0]
        return np.asarray(self.te_fn(jax.random.split(key, p), batches))


def prepare(key, name, args) -> Setup:
    """Trains the victim on ``name`` and fits the attacker's prior on ``prior_fraction`` of its replay."""
    env = rgia_envs.make_env(name)
    size = REPLAY_SIZES.get(name, BRAX_REPLAY_SIZE)
    config = train_config(name, max(int(size * args.replay_scale), 2_000))
    k_train, k_split, k_prior = jax.random.split(key, 3)
    start = time.perf_counter()
    run = jax.block_until_ready(rgia_victims.train_victim(k_train, env, config))
    train_s = time.perf_counter() - start
    returns = np.asarray(run.episode_returns)
    tail = returns[-max(len(returns) // 10, 1):]
    final_return = float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan")
    prior_idx, pool = rgia_priors.prior_split(k_split, int(run.replay.reward.shape[0]), args.prior_fraction)
    prior_data = jax.tree.map(lambda x: x[prior_idx], run.replay)
    prior = rgia_priors.fit_prior(k_prior, prior_data, discrete=env.discrete, num_actions=env.num_actions,
                                  dynamics_steps=args.dynamics_steps)
    states = jnp.concatenate([prior_data.obs, prior_data.next_obs])
    return Setup(env, rgia_victims.victim_for(env, config), run, prior, prior_data, pool,
                 jnp.maximum(1.0, jnp.std(states, axis=0)), jnp.maximum(1.0, jnp.std(prior_data.reward)),
                 train_s, final_return,
                 jax.jit(jax.vmap(lambda k, b: rgia_metrics.transition_error(env.true_step, k, b))))


def targets(key, setup: Setup, num_targets: int, batch_size: int):
    """``num_targets`` disjoint batches of the victim's non-prior replay data (``Transition`` [T, B]) and the
    keys of their TD3 target noise."""
    k_idx, k_loss = jax.random.split(key)
    idx = np.asarray(jax.random.choice(k_idx, setup.pool, (num_targets * batch_size,), replace=False))
    truth = jax.tree.map(lambda x: x[idx].reshape(num_targets, batch_size, *x.shape[1:]), setup.run.replay)
    return truth, jax.random.split(k_loss, num_targets)


def shared_gradients(victim, params, truth, loss_keys):
    """Flat shared gradients ``f32[T, d]`` of the T target batches at ``params``."""
    flat = lambda b, k: ravel_pytree(victim.gradient(params, b, k))[0]
    return jax.jit(jax.vmap(flat))(truth, loss_keys)


def weight_table(variants, weights):
    """``{name: f32[V]}``: each variant's weight of every regularizer (0 when it is off)."""
    return {n: jnp.asarray([weights[n] if n in VARIANTS[v] else 0.0 for v in variants], jnp.float32)
            for n in rgia.REGULARIZERS}


def attack_config(args, batch_size: int, num_restarts: int) -> rgia.RGIAConfig:
    """The attack's settings from the flags, every regularizer enabled (variants set weights to 0)."""
    return rgia.RGIAConfig(batch_size=batch_size, num_steps=args.steps, learning_rate=args.learning_rate,
                           num_restarts=num_restarts, distance=args.distance,
                           dynamics_target_only=not args.dynamics_moves_state,
                           regularizers={n: args.weights[n] for n in rgia.REGULARIZERS})


def attack_problems(setup: Setup, args, batch_size, key, params, g_bar, weights, loss_keys, num_restarts=None):
    """Attacks P problems in one jitted, vmapped call (leading axis P on every argument but the prior)."""
    attack = rgia.make_rgia(setup.victim, attack_config(args, batch_size, num_restarts or args.restarts))
    many = jax.jit(jax.vmap(attack, in_axes=(0, 0, 0, None, 0, 0)))
    p = g_bar.shape[0]
    return many(jax.random.split(key, p), params, g_bar, setup.prior, weights, loss_keys)


def make_scorer(setup: Setup, args):
    """``score(result, truth, params, g_bar, loss_key) -> (metrics, matched batch, restart vectors
    f32[R, B, D])``, jitted and vmapped over problems (TE comes from ``Setup.transition_errors``)."""
    env, victim = setup.env, setup.victim
    disc, n_act = env.discrete, env.num_actions

    def score(result, truth, params, g_bar, loss_key):
        rec = rgia_metrics.matched(result.batch, truth, disc, n_act)
        g = ravel_pytree(victim.gradient(params, rec, loss_key))[0]
        out = {"mse": rgia_metrics.mse(rec, truth, disc, n_act),
               **rgia_metrics.reconstruction_accuracy(rec, truth, disc, tol=args.tolerance,
                                                      state_scale=setup.state_scale, reward_scale=setup.reward_scale),
               "gme": rgia_metrics.gradient_matching_error(g, g_bar)}
        restarts = jax.vmap(rgia_metrics.matched, in_axes=(0, None, None, None))(result.restart_batches, truth, disc, n_act)
        vec = rgia_metrics.tuple_vectors(restarts, disc, n_act)  # [R, B, D]
        out["ed"] = jnp.mean(jax.vmap(rgia_metrics.euclidean_dispersion, in_axes=1)(vec))
        out["cd"] = jnp.mean(jax.vmap(rgia_metrics.consistency_distance, in_axes=1)(vec))
        return out, rec, vec

    return jax.jit(jax.vmap(score))


def score_problems(key, setup: Setup, args, res, truth, params, g_bar, loss_keys):
    """Metrics of P attacks (numpy arrays, leading axis P) with TE and the true tuples' TE, and the matched
    restart vectors."""
    scores, rec, vec = make_scorer(setup, args)(res, truth, params, g_bar, loss_keys)
    p = g_bar.shape[0]
    te = setup.transition_errors(key, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), rec, truth))
    scores = {**jax.tree.map(np.asarray, scores), "te": te[:p], "true_te": te[p:]}
    return scores, vec


def prior_mean_scores(setup: Setup, truth, args):
    """MSE and RA of the guess that ignores the gradient: the prior's mean state and reward, its most
    common action (discrete) or mean action, for every tuple; mean over targets."""
    prior_actions = setup.prior_data.action
    if setup.env.discrete:
        action = jnp.argmax(jnp.bincount(prior_actions, length=setup.env.num_actions)).astype(truth.action.dtype)
    else:
        action = jnp.mean(prior_actions, axis=0)
    mean_state = setup.prior.state_mean
    guess = Transition(jnp.broadcast_to(mean_state, truth.obs.shape), jnp.broadcast_to(action, truth.action.shape),
                       jnp.full(truth.reward.shape, (setup.prior.reward_low + setup.prior.reward_high) / 2),
                       jnp.broadcast_to(mean_state, truth.next_obs.shape), truth.terminated)
    disc, n_act = setup.env.discrete, setup.env.num_actions
    mse = jax.vmap(rgia_metrics.mse, in_axes=(0, 0, None, None))(guess, truth, disc, n_act)
    ra = jax.vmap(lambda g, t: rgia_metrics.reconstruction_accuracy(
        g, t, disc, tol=args.tolerance, state_scale=setup.state_scale, reward_scale=setup.reward_scale)["ra"])(guess, truth)
    return {"mse": float(jnp.mean(mse)), "ra": float(jnp.mean(ra))}


def _take(tree, idx):
    return jax.tree.map(lambda x: x[idx], tree)


def _silhouette(vec):
    """SS over ``vec: f32[T, R, B, D]``, labelled by true tuple (t, b)."""
    t, r, b, d = vec.shape
    labels = np.broadcast_to(np.arange(t)[:, None, None] * b + np.arange(b)[None, None, :], (t, r, b))
    return rgia_metrics.silhouette(np.asarray(vec).reshape(-1, d), labels.reshape(-1))


def evaluate_grid(key, setup: Setup, args, batch_size, variants, nets, num_targets):
    """Every variant x network x target at ``batch_size``: mean metrics per (network, variant), the restart
    vectors of the first target and the best reconstructions for the state plot."""
    k_t, k_att, k_te = jax.random.split(key, 3)
    truth, loss_keys = targets(k_t, setup, num_targets, batch_size)
    params = {"trained": setup.run.trained, "untrained": setup.run.untrained}
    grads = {n: shared_gradients(setup.victim, params[n], truth, loss_keys) for n in nets}
    v_idx, n_idx, t_idx = (a.ravel() for a in np.meshgrid(np.arange(len(variants)), np.arange(len(nets)),
                                                          np.arange(num_targets), indexing="ij"))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[params[n] for n in nets])
    g_all = jnp.stack([grads[n] for n in nets])
    w = {k: v[v_idx] for k, v in weight_table(variants, args.weights).items()}
    start = time.perf_counter()
    res = jax.block_until_ready(attack_problems(setup, args, batch_size, k_att, _take(stacked, n_idx),
                                                g_all[n_idx, t_idx], w, loss_keys[t_idx]))
    attack_s = time.perf_counter() - start
    scores, vec = score_problems(k_te, setup, args, res, _take(truth, t_idx), _take(stacked, n_idx),
                                 g_all[n_idx, t_idx], loss_keys[t_idx])
    vec = np.asarray(vec).reshape(len(variants), len(nets), num_targets, *vec.shape[1:])
    table = {}
    for j, net in enumerate(nets):
        table[net] = {}
        for i, variant in enumerate(variants):
            sel = (v_idx == i) & (n_idx == j)
            row = {k: float(np.mean(v[sel])) for k, v in scores.items()}
            row["success"] = float(np.mean(scores["ra"][sel] >= args.success_ra))
            row["ss"] = _silhouette(vec[i, j])
            table[net][variant] = row
    recon = {net: {v: {f: np.asarray(getattr(res.batch, f))[(v_idx == i) & (n_idx == j)] for f in ("obs", "next_obs")}
                   for i, v in enumerate(variants)} for j, net in enumerate(nets)}
    return table, {"truth": {f: np.asarray(getattr(truth, f)) for f in ("obs", "next_obs")}, "recon": recon}, \
        attack_s, truth


def noise_sweep(key, setup: Setup, args):
    """RGIA and GIA at batch 1 on the trained network's gradient plus ``N(0, variance I)``, every variance x
    variant x target in one call; and the victim's return when it trains under that noise."""
    k_t, k_n, k_att, k_te, k_train, k_eval = jax.random.split(key, 6)
    variants = ("GIA", "RGIA")
    truth, loss_keys = targets(k_t, setup, args.targets, 1)
    g = shared_gradients(setup.victim, setup.run.trained, truth, loss_keys)  # [T, d]
    var = jnp.asarray(args.noise_variances)
    noisy = jax.vmap(lambda k, gt: inv.sweep(k, gt, var, jnp.array([jnp.inf]))[:, 0])(
        jax.random.split(k_n, args.targets), g)  # [T, V, d]
    s_idx, v_idx, t_idx = (a.ravel() for a in np.meshgrid(np.arange(len(variants)), np.arange(var.shape[0]),
                                                          np.arange(args.targets), indexing="ij"))
    p = s_idx.shape[0]
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (p, *x.shape)), setup.run.trained)
    w = {k: v[s_idx] for k, v in weight_table(variants, args.weights).items()}
    g_p = noisy[t_idx, v_idx]
    res = attack_problems(setup, args, 1, k_att, params, g_p, w, loss_keys[t_idx])
    scores, _ = score_problems(k_te, setup, args, res, _take(truth, t_idx), params, g_p, loss_keys[t_idx])
    returns = victim_returns_under_noise(k_train, k_eval, setup, args)
    rows = []
    for j, variance in enumerate(args.noise_variances):
        row = {"variance": variance, "noise_std_over_grad_rms": float(np.sqrt(variance) / np.sqrt(np.mean(np.square(g)))),
               "victim_return": float(np.mean(returns[j])), "victim_return_per_seed": returns[j].tolist()}
        for i, variant in enumerate(variants):
            sel = (s_idx == i) & (v_idx == j)
            for m in ("mse", "ra", "gme", "te"):
                row[f"{variant}_{m}"] = float(np.mean(np.asarray(scores[m])[sel]))
            row[f"{variant}_success"] = float(np.mean(np.asarray(scores["ra"])[sel] >= args.success_ra))
        rows.append(row)
    return rows


def victim_returns_under_noise(k_train, k_eval, setup: Setup, args):
    """Greedy return ``f32[V, seeds]`` of DQN victims trained with the DP noise of each variance (vmapped)."""
    name = setup.env.name
    config = train_config(name, max(int(REPLAY_SIZES.get(name, BRAX_REPLAY_SIZE) * args.replay_scale), 2_000))
    config = dataclasses.replace(config, buffer_size=10_000)
    train = rgia_victims.make_noisy_dqn_train(config, setup.env)
    var = jnp.repeat(jnp.asarray(args.noise_variances), args.noise_seeds)
    keys = jax.random.split(k_train, var.shape[0])
    q_params, _ = jax.jit(jax.vmap(train))(keys, var)
    q_net = networks.QNetwork(setup.env.num_actions, tuple(config.hidden))

    def greedy_return(params, key):
        policy = lambda k, obs: jnp.argmax(q_net.apply(params, obs), axis=-1)
        max_steps = int(getattr(setup.env.env_params, "max_steps_in_episode", 500))
        return jnp.mean(evaluate.evaluate(key, policy, setup.env.env, setup.env.env_params, args.eval_episodes,
                                          max_steps))

    out = jax.jit(jax.vmap(greedy_return))(q_params, jax.random.split(k_eval, var.shape[0]))
    return np.asarray(out).reshape(len(args.noise_variances), args.noise_seeds)


def speed_test(key, setup: Setup, args):
    """``speed_restarts`` RGIA restarts vmapped in one call against as many sequential single-restart calls."""
    truth, loss_keys = targets(key, setup, 1, 1)
    params = setup.run.trained
    g = shared_gradients(setup.victim, params, truth, loss_keys)[0]
    r = args.speed_restarts
    weights = {n: jnp.float32(args.weights[n]) for n in rgia.REGULARIZERS}
    vmapped, single = (rgia.make_rgia(setup.victim, attack_config(args, 1, n)) for n in (r, 1))
    keys = jax.random.split(key, r)
    repeats = 1 if args.quick else 3
    call = lambda fn, k: jax.block_until_ready(fn(k, params, g, setup.prior, weights, loss_keys[0]))
    t_vmap = common.median_time(lambda: call(vmapped, keys[0]), repeats=repeats)

    def sequential():
        for k in keys:
            call(single, k)

    t_seq = common.median_time(sequential, repeats=repeats)
    return {"env": setup.env.name, "restarts": r, "steps": args.steps, "vmapped_s": t_vmap, "sequential_s": t_seq,
            "speedup": t_seq / t_vmap}


def claims(tables, batch_rows, noise_rows, args):
    """Checks the paper's claims on the measured figures; each entry says whether it held and the numbers."""
    out = {}
    better = {f"{env}/{net}": (t[net]["RGIA"]["mse"] < t[net]["GIA"]["mse"], t[net]["RGIA"]["ra"] > t[net]["GIA"]["ra"])
              for env, t in tables.items() for net in t}
    out["rgia_lower_mse_higher_ra_everywhere"] = {"held": all(a and b for a, b in better.values()),
                                                  "per_setting": {k: {"lower_mse": a, "higher_ra": b}
                                                                  for k, (a, b) in better.items()}}
    consistency = {}
    for env, t in tables.items():
        for net in t:
            gia, rg = t[net]["GIA"], t[net]["RGIA"]
            consistency[f"{env}/{net}"] = {"ed_reduction": 1.0 - rg["ed"] / max(gia["ed"], 1e-12),
                                           "ss_ratio": rg["ss"] / gia["ss"] if gia["ss"] > 0 else float("nan"),
                                           "ss_gia": gia["ss"], "ss_rgia": rg["ss"]}
    out["ed_falls_60pct_and_ss_doubles"] = {
        "held": all(c["ed_reduction"] > 0.6 and c["ss_ratio"] > 2.0 for c in consistency.values()),
        "per_setting": consistency}
    if batch_rows:
        small = [r["RGIA_success"] for r in batch_rows if r["batch_size"] <= 3]
        large = [r["RGIA_success"] for r in batch_rows if r["batch_size"] > 3]
        out["batch_above_3_mostly_fails"] = {
            "held": bool(large) and float(np.mean(large)) < 0.5 <= float(np.mean(small or [0.0])),
            "rgia_success_b_le_3": float(np.mean(small)) if small else None,
            "rgia_success_b_gt_3": float(np.mean(large)) if large else None}
    if noise_rows:
        at = {r["variance"]: r for r in noise_rows}
        if 1e-2 in at and 0.0 in at:
            out["noise_1e-2_stops_reconstruction"] = {
                "held": at[1e-2]["RGIA_success"] == 0.0 and at[1e-2]["RGIA_ra"] < at[0.0]["RGIA_ra"],
                "rgia_ra_clean": at[0.0]["RGIA_ra"], "rgia_ra_1e-2": at[1e-2]["RGIA_ra"],
                "rgia_success_1e-2": at[1e-2]["RGIA_success"],
                "victim_return_clean": at[0.0]["victim_return"], "victim_return_1e-2": at[1e-2]["victim_return"]}
    return out


def plot(out_dir, batch_rows, noise_rows, states):
    """rgia_batch.png (MSE and success vs batch size), rgia_noise.png (RA and victim return vs noise variance),
    rgia_states.png (reconstructed against true state components, GIA and RGIA, trained network)."""
    if batch_rows:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for env in sorted({r["env"] for r in batch_rows}):
            for net in NETS:
                sel = [r for r in batch_rows if r["env"] == env and r["net"] == net]
                bs = [r["batch_size"] for r in sel]
                for variant, style in (("GIA", "o--"), ("RGIA", "s-")):
                    label = f"{env} {net} {variant}"
                    axes[0].plot(bs, [r[f"{variant}_mse"] for r in sel], style, label=label)
                    axes[1].plot(bs, [r[f"{variant}_success"] for r in sel], style, label=label)
        axes[0].set_yscale("log")
        for ax, ylabel in zip(axes, ["MSE", "success rate (RA >= threshold)"]):
            ax.set_xlabel("batch size B")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "rgia_batch.png"), dpi=120)
        plt.close(fig)
    if noise_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        var = [max(r["variance"], 1e-7) for r in noise_rows]
        for variant, style in (("GIA", "o--"), ("RGIA", "s-")):
            ax.plot(var, [r[f"{variant}_ra"] for r in noise_rows], style, label=f"{variant} RA")
        ax.set_xscale("log")
        ax.set_xlabel("DP noise variance (1e-7 = none)")
        ax.set_ylabel("reconstruction accuracy RA")
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(var, [r["victim_return"] for r in noise_rows], "k^:", label="victim return")
        ax2.set_ylabel("victim's greedy return")
        fig.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "rgia_noise.png"), dpi=120)
        plt.close(fig)
    envs = sorted(states)
    fig, axes = plt.subplots(len(envs), 2, figsize=(8, 3.2 * len(envs)), squeeze=False)
    for i, env in enumerate(envs):
        for j, variant in enumerate(("GIA", "RGIA")):
            ax = axes[i, j]
            for field, style, label in (("obs", ".", "s"), ("next_obs", "x", "s'")):
                truth = states[env]["truth"][field].ravel()
                ax.plot(truth, states[env]["recon"]["trained"][variant][field].ravel(), style, ms=3, alpha=0.6,
                        label=label)
            lo, hi = float(np.min(states[env]["truth"]["obs"])), float(np.max(states[env]["truth"]["obs"]))
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
            ax.set_title(f"{env} {variant} (trained network)", fontsize=8)
            ax.set_xlabel("true state component")
            ax.set_ylabel("reconstructed")
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "rgia_states.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    key = jax.random.PRNGKey(args.seed)
    setups, tables, states, wall, victims = {}, {}, {}, {}, {}
    needed = list(dict.fromkeys(args.envs + args.batch_envs + [args.noise_env]))
    for name in tqdm(needed, desc="victims"):
        key, k = jax.random.split(key)
        setups[name] = prepare(k, name, args)
        s = setups[name]
        victims[name] = {"kind": s.victim.kind, "replay_size": int(s.run.replay.reward.shape[0]),
                         "prior_samples": s.prior.num_samples, "final_training_return": s.final_return,
                         "train_s": s.train_s}
        tqdm.write(f"{name}: {s.victim.kind} victim trained in {s.train_s:.1f}s (return {s.final_return:.1f}), "
                   f"{victims[name]['replay_size']} transitions, prior {s.prior.num_samples}")
    for name in tqdm(args.envs, desc="tables"):
        key, k = jax.random.split(key)
        start = time.perf_counter()
        table, states[name], attack_s, truth = evaluate_grid(k, setups[name], args, 1, tuple(VARIANTS), NETS,
                                                              args.targets)
        table["prior_mean"] = prior_mean_scores(setups[name], truth, args)
        tables[name] = table
        wall[f"table/{name}"] = {"total_s": time.perf_counter() - start, "attack_s": attack_s}
        for net in NETS:
            for variant, row in table[net].items():
                tqdm.write(f"{name:16s} {net:9s} {variant:15s} MSE {row['mse']:.3g} RA {row['ra']:.3f} "
                           f"GME {row['gme']:.3g} TE {row['te']:.3g} (true {row['true_te']:.3g}) ED {row['ed']:.3g} "
                           f"SS {row['ss']:.3f} CD {row['cd']:.3g}")
        tqdm.write(f"{name:16s} prior mean guess: MSE {table['prior_mean']['mse']:.3g} RA {table['prior_mean']['ra']:.3f}")
    batch_rows = []
    jobs = [(e, b) for e in args.batch_envs for b in args.batch_sizes]
    for name, b in tqdm(jobs, desc="batch sweep"):
        key, k = jax.random.split(key)
        table, _, _, _ = evaluate_grid(k, setups[name], args, b, ("GIA", "RGIA"), NETS, args.targets)
        for net in NETS:
            row = {"env": name, "net": net, "batch_size": b}
            for variant in ("GIA", "RGIA"):
                row.update({f"{variant}_{m}": table[net][variant][m] for m in ("mse", "ra", "te", "success")})
            batch_rows.append(row)
            tqdm.write(f"batch {name} {net} B={b}: MSE GIA {row['GIA_mse']:.3g} RGIA {row['RGIA_mse']:.3g}, "
                       f"RA GIA {row['GIA_ra']:.3f} RGIA {row['RGIA_ra']:.3f}, success RGIA {row['RGIA_success']:.2f}")
    start = time.perf_counter()
    key, k = jax.random.split(key)
    noise_rows = noise_sweep(k, setups[args.noise_env], args)
    wall["noise_sweep_s"] = time.perf_counter() - start
    for r in noise_rows:
        print(f"noise var {r['variance']:.0e}: RA GIA {r['GIA_ra']:.3f} RGIA {r['RGIA_ra']:.3f}, MSE RGIA "
              f"{r['RGIA_mse']:.3g}, victim return {r['victim_return']:.1f}")
    key, k = jax.random.split(key)
    speed = speed_test(k, setups[args.noise_env], args)
    print(f"speed ({speed['env']}, RGIA, {speed['steps']} steps): {speed['restarts']} restarts vmapped "
          f"{speed['vmapped_s']:.2f}s, sequential {speed['sequential_s']:.2f}s, speedup x{speed['speedup']:.1f}")
    verdicts = claims({e: {n: tables[e][n] for n in NETS} for e in tables}, batch_rows, noise_rows, args)
    for name, c in verdicts.items():
        print(f"claim {name}: {'held' if c['held'] else 'NOT held'}")
    wall["total_s"] = time.perf_counter() - t0
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config.update(variants={k: list(v) for k, v in VARIANTS.items()},
                  train_configs={n: dataclasses.asdict(train_config(n, victims[n]["replay_size"])) for n in victims})
    path = common.write_results(args.out, {
        "config": config, "victims": victims,
        "figures": {"tables": tables, "batch_sweep": batch_rows, "noise_sweep": noise_rows, "speed": speed},
        "claims": verdicts, "wall_times": wall,
    })
    plot(args.out, batch_rows, noise_rows, states)
    print(f"total {wall['total_s']:.0f}s; wrote {path}")


if __name__ == "__main__":
    main()
