"""RGIA (seed paper 001): gradient inversion of TD-loss gradients in federated RL. GIA against RGIA (and each
regularizer alone, and the cosine distance as an ablation) at several training stages of several victim seeds,
with confidence intervals and the RA floors; a batch-size sweep; the DP noise sweep, by absolute variance and
by relative noise ``||noise|| / ||g||``, with the victim's return when it trains under that noise at the batch
size the attack inverts; the speed of vmapped restarts against a sequential loop.

Per environment ``--victim-seeds`` victims are trained at once (vmapped) with the RL engine (DQN on FrozenLake /
CartPole / Pong, TD3 on brax) and their networks kept after each fraction ``--stages`` of training (0: the
untrained networks). Each victim's attacker fits its prior on ``--prior-samples`` transitions of that victim's
replay buffer, and ``--targets`` batches of the rest are attacked at every stage (the same batches at every
stage: the comparisons between stages and methods are paired). Every variant x target x seed x stage is one
jitted, vmapped call, ``--restarts`` restarts vmapped inside. Metrics (MSE, RA and its per-field parts, GME, TE,
ED, SS, CD) are defined in ``fedjax_attacks.inversion.rgia_metrics``; intervals are 95% cluster-bootstrap
intervals (victim seeds resampled, then targets within each seed). RA has two floors: ``prior mean`` (the guess
that ignores the gradient: the prior's mean state, mid reward, most common action) and ``RGIA on noise``
(RGIA given a pure-noise gradient of the true gradient's norm).

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
from typing import Callable

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from jax.flatten_util import ravel_pytree
from tqdm import tqdm

from benchmarks import common
from fedjax_attacks.inversion import (
    defense,
    rgia,
    rgia_envs,
    rgia_metrics,
    rgia_priors,
    rgia_victims,
)
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
NOISE_FLOOR = "RGIA on noise"  # RGIA's weights, a pure-noise gradient of the true gradient's norm
FIELDS = ("s", "a", "r", "s2")
SCORES = ("mse", "ra", *FIELDS, "gme", "te", "success")
DEFAULT_ENVS = ("CartPole-v1",)  # FrozenLake, Pong and brax by --envs (the 2-core CPU's 20-minute budget)
HIDDEN = {"Pong-misc": (32, 32)}  # the 3600-pixel input layer dominates the attack's cost; others (64, 64)
TIMESTEPS = {"FrozenLake-misc": 100_000, "CartPole-v1": 300_000, "Pong-misc": 100_000}
BRAX_TIMESTEPS = 100_000
BUFFER_SIZE = 20_000
BEGIN, END = "<!-- rgia:begin -->", "<!-- rgia:end -->"


def train_config(name: str, timesteps: int, hidden=None, batch_size: int = 128):
    """The victim's RL-engine config on ``name``: ``timesteps`` environment steps, ``hidden`` widths (default
    ``HIDDEN`` or (64, 64)), a replay buffer of ``BUFFER_SIZE`` transitions and ``batch_size`` per update."""
    hidden = tuple(hidden or HIDDEN.get(name, (64, 64)))
    buffer = min(BUFFER_SIZE, timesteps)
    if name.startswith("brax:"):
        return td3.TD3Config(total_timesteps=timesteps, num_envs=16, learning_starts=min(5_000, timesteps // 4),
                             batch_size=batch_size, buffer_size=buffer, hidden=hidden)
    return dqn.DQNConfig(total_timesteps=timesteps, num_envs=16, learning_rate=1e-3, batch_size=batch_size,
                         buffer_size=buffer, learning_starts=min(5_000, timesteps // 4), train_frequency=16,
                         target_network_frequency=1_000, exploration_fraction=0.2, end_e=0.01, hidden=hidden)


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def _floats(s):
    return [float(v) for v in s.split(",") if v]


def parse_args(argv=None):
    """The benchmark's options (argparse; ``--quick`` shrinks every size). Raises ``ValueError`` on unknown
    environments or regularizers, fewer than 2 targets or 2 victim seeds, bad stages or batch sizes."""
    p = common.parser("rgia", __doc__.split("\n")[0])
    p.add_argument("--envs", default=None, help=f"comma-separated (default {','.join(DEFAULT_ENVS)}; quick: "
                                                f"CartPole-v1; all: {','.join(rgia_envs.ENV_NAMES)})")
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
        if name not in rgia_envs.ENV_NAMES:
            raise ValueError(f"unknown environment {name!r}: choose from {', '.join(rgia_envs.ENV_NAMES)}")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown} in --variants: choose from {list(VARIANTS)}")
    args.weights = _parse_weights(args.weights)
    if args.targets < 2:
        raise ValueError("--targets must be >= 2 (the silhouette score needs two true tuples)")
    if args.victim_seeds < 2:
        raise ValueError("--victim-seeds must be >= 2 (the intervals resample victims)")
    rgia_victims.stage_iterations(100, args.stages)  # ValueError on bad fractions
    markers(args.readme_section)
    if args.batch_stage not in args.stages:
        raise ValueError(f"--batch-stage {args.batch_stage} must be one of --stages {args.stages}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        raise ValueError(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
    if any(v < 0 for v in args.noise_variances) or any(r <= 0 for r in args.noise_ratios):
        raise ValueError("--noise-variances must be >= 0 and --noise-ratios > 0")
    return args


def _parse_weights(text):
    weights = {"state_gaussian": rgia.RGIA_WEIGHTS["state_mixture"], **rgia.RGIA_WEIGHTS}
    for item in (text.split(",") if text else []):
        name, _, value = item.partition("=")
        if name not in rgia.REGULARIZERS:
            raise ValueError(f"unknown regularizer name {name!r} in --weights: choose from {rgia.REGULARIZERS}")
        weights[name] = float(value)
    return weights


def stage_label(fraction: float) -> str:
    """``"untrained"`` (0), ``"trained"`` (1) or ``"10% trained"``."""
    return "untrained" if fraction == 0 else "trained" if fraction == 1 else f"{fraction:.0%} trained"


# ---------------------------------------------------------------- statistics


def cluster_ci(values, num_resamples: int = 2000, seed: int = 0, level: float = 0.95):
    """Mean and ``level`` percentile interval of ``values: f[S, T]`` (S victim seeds x T targets) by a cluster
    bootstrap: resample the seeds with replacement, then the targets within each drawn seed. Seeds that differ
    widen the interval, which a bootstrap over all ``S * T`` values as if independent would hide.

    Raises ``ValueError`` unless ``values`` is a 2-D array with at least one seed and one target."""
    x = np.asarray(values, np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"values must be f[seeds, targets] with at least one of each, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    s, t = x.shape
    seeds = rng.integers(0, s, (num_resamples, s))
    tgts = rng.integers(0, t, (num_resamples, s, t))
    means = x[seeds[..., None], tgts].mean(axis=(1, 2))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return {"mean": float(x.mean()), "lo": float(lo), "hi": float(hi)}


def summarize(scores: dict, num_resamples: int) -> dict:
    """``{metric: cluster_ci(f[S, T])}`` of every metric of ``scores`` (arrays ``[S, T]``)."""
    return {m: cluster_ci(v, num_resamples) for m, v in scores.items()}


# ---------------------------------------------------------------- victims, priors, targets


@dataclasses.dataclass
class Setup:
    """One environment ready to attack: its victims (``VictimStages``, S seeds x K stages), each victim's
    attacker prior (``Prior`` stacked over seeds), prior data and pool of target indices (the rest of its
    buffer), the RA scales (``max(1, std)`` of the prior states and rewards, per seed) and each stage's greedy
    return ``f32[K, S]``."""

    env: rgia_envs.RGIAEnv
    victim: rgia.Victim
    config: object
    stages: rgia_victims.VictimStages
    prior: rgia_priors.Prior
    prior_data: Transition
    pools: np.ndarray
    state_scale: jax.Array
    reward_scale: jax.Array
    returns: np.ndarray
    train_s: float
    te_fn: Callable  # jitted, vmapped TE(key, batch)

    def stage(self, k: int) -> dict:
        """The parameters of stage ``k`` (leading axis S)."""
        return jax.tree.map(lambda x: x[k], self.stages.params)


def greedy_returns(env: rgia_envs.RGIAEnv, victim: rgia.Victim, params, key, episodes: int) -> np.ndarray:
    """Greedy return of each victim in ``params`` (``Victim.init`` layout, any leading axes): ``argmax Q`` for
    DQN, the target actor for TD3; vmapped."""
    value_net, actor = victim.networks()
    max_steps = int(getattr(env.env_params, "max_steps_in_episode", 1000))
    ref = jax.tree.leaves(jax.eval_shape(victim.init, jax.random.PRNGKey(0)))[0]
    leaf = jax.tree.leaves(params)[0]
    lead = leaf.shape[:leaf.ndim - ref.ndim]
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[len(lead):]), params)

    def one(p, k):
        if actor is None:
            policy = lambda _, obs: jnp.argmax(value_net.apply(p["online"], obs), axis=-1)
        else:
            policy = lambda _, obs: actor.apply(p["actor_target"], obs)
        return jnp.mean(evaluate.evaluate(k, policy, env.env, env.env_params, episodes, max_steps))

    n = jax.tree.leaves(flat)[0].shape[0]
    out = jax.jit(jax.vmap(one))(flat, jax.random.split(key, n))
    return np.asarray(out).reshape(lead)


def prepare(key, name, args) -> Setup:
    """Trains ``victim_seeds`` victims on ``name`` (vmapped, networks kept at every stage) and fits each one's
    prior on ``prior_samples`` transitions of its buffer."""
    env = rgia_envs.make_env(name)
    config = train_config(name, max(int(TIMESTEPS.get(name, BRAX_TIMESTEPS) * args.timesteps_scale), 2_000),
                          args.hidden)
    k_train, k_split, k_prior, k_eval = jax.random.split(key, 4)
    start = time.perf_counter()
    stages = jax.block_until_ready(rgia_victims.train_victims(jax.random.split(k_train, args.victim_seeds), env,
                                                              config, args.stages))
    train_s = time.perf_counter() - start
    n = int(stages.replay.reward.shape[1])
    if args.prior_samples + args.targets * max(args.batch_sizes) > n:
        raise ValueError(f"{name}: {n} buffered transitions cannot hold {args.prior_samples} prior samples and "
                         f"{args.targets} targets of batch {max(args.batch_sizes)}")
    victim = rgia_victims.victim_for(env, config)
    priors, prior_data, pools = [], [], []
    for s, (ks, kp) in enumerate(zip(jax.random.split(k_split, args.victim_seeds),
                                     jax.random.split(k_prior, args.victim_seeds))):
        prior_idx, pool = rgia_priors.prior_split(ks, n, args.prior_samples / n)
        data = jax.tree.map(lambda x, i=prior_idx, s=s: x[s][i], stages.replay)
        priors.append(rgia_priors.fit_prior(kp, data, discrete=env.discrete, num_actions=env.num_actions,
                                            dynamics_steps=args.dynamics_steps))
        prior_data.append(data)
        pools.append(pool)
    stack = lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs)
    prior_data = stack(prior_data)
    states = jnp.concatenate([prior_data.obs, prior_data.next_obs], axis=1)
    returns = greedy_returns(env, victim, stages.params, k_eval, args.eval_episodes)
    return Setup(env, victim, config, stages, stack(priors), prior_data, np.stack(pools),
                 jnp.maximum(1.0, jnp.std(states, axis=1)), jnp.maximum(1.0, jnp.std(prior_data.reward, axis=1)),
                 returns, train_s, jax.jit(jax.vmap(lambda k, b: rgia_metrics.transition_error(env.true_step, k, b))))


def targets(key, setup: Setup, num_targets: int, batch_size: int):
    """``num_targets`` disjoint batches from each victim's pool (``Transition`` ``[S, T, B]``) and the keys of
    their TD3 target noise ``[S, T]``."""
    k_idx, k_loss = jax.random.split(key)
    s = setup.pools.shape[0]
    idx = np.stack([np.asarray(jax.random.choice(k, setup.pools[i], (num_targets * batch_size,), replace=False))
                    for i, k in enumerate(jax.random.split(k_idx, s))])
    truth = jax.tree.map(lambda x: jnp.stack([x[i][idx[i]] for i in range(s)]).reshape(
        s, num_targets, batch_size, *x.shape[2:]), setup.stages.replay)
    return truth, jax.random.split(k_loss, (s, num_targets))


def shared_gradients(victim, params, truth, loss_keys):
    """Flat shared gradients ``f32[S, T, d]`` of the targets ``truth [S, T, B]`` at ``params`` (leading S)."""
    flat = lambda p, b, k: ravel_pytree(victim.gradient(p, b, k))[0]
    return jax.jit(jax.vmap(jax.vmap(flat, in_axes=(None, 0, 0))))(params, truth, loss_keys)


def noise_like(key, g):
    """A pure-noise gradient of each gradient's norm: isotropic Gaussian directions scaled to ``||g||`` (the
    attacker's input for the ``RGIA on noise`` floor); ``g: f32[..., d]``."""
    z = jax.random.normal(key, g.shape)
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True) * jnp.linalg.norm(g, axis=-1, keepdims=True)


# ---------------------------------------------------------------- attacking and scoring


def attack_config(args, batch_size: int, num_restarts: int, distance: str) -> rgia.RGIAConfig:
    """The attack's settings from the flags, every regularizer enabled (variants set weights to 0)."""
    return rgia.RGIAConfig(batch_size=batch_size, num_steps=args.steps, learning_rate=args.learning_rate,
                           num_restarts=num_restarts, distance=distance,
                           dynamics_target_only=not args.dynamics_moves_state,
                           regularizers={n: args.weights[n] for n in rgia.REGULARIZERS})


def weight_table(variants, weights):
    """``{name: f32[V]}``: each variant's weight of every regularizer (0 when it is off; the noise floor has
    RGIA's)."""
    on = lambda v, n: n in VARIANTS["RGIA" if v == NOISE_FLOOR else v]
    return {n: jnp.asarray([weights[n] if on(v, n) else 0.0 for v in variants], jnp.float32)
            for n in rgia.REGULARIZERS}


def attack_cells(setup: Setup, args, batch_size, key, params, g_bar, weights, loss_keys, distance=None):
    """Attacks ``[K, S, Q]`` problems in one jitted call: K stages (``params`` with leading ``[K, S]``), the S
    victims (each with its own prior), Q problems per victim (``g_bar f32[K, S, Q, d]``, ``weights {name:
    f32[Q]}``, ``loss_keys [S, Q]``)."""
    attack = rgia.make_rgia(setup.victim, attack_config(args, batch_size, args.restarts, distance or args.distance))
    per_victim = jax.vmap(attack, in_axes=(0, None, 0, None, 0, 0))
    per_stage = jax.vmap(per_victim, in_axes=(0, 0, 0, 0, None, 0))
    many = jax.jit(jax.vmap(per_stage, in_axes=(0, 0, 0, None, None, None)))
    k, s, q = g_bar.shape[:3]
    return jax.block_until_ready(many(jax.random.split(key, (k, s, q)), params, g_bar, setup.prior, weights,
                                      loss_keys))


def make_scorer(setup: Setup, args):
    """``score(result, truth, params, g_bar, loss_key, state_scale, reward_scale) -> (metrics, matched batch,
    restart vectors f32[R, B, D])`` of one problem (TE comes from ``Setup.te_fn``)."""
    env, victim = setup.env, setup.victim
    disc, n_act = env.discrete, env.num_actions

    def score(result, truth, params, g_bar, loss_key, state_scale, reward_scale):
        rec = rgia_metrics.matched(result.batch, truth, disc, n_act)
        g = ravel_pytree(victim.gradient(params, rec, loss_key))[0]
        out = {"mse": rgia_metrics.mse(rec, truth, disc, n_act),
               **rgia_metrics.reconstruction_accuracy(rec, truth, disc, tol=args.tolerance, state_scale=state_scale,
                                                      reward_scale=reward_scale),
               "gme": rgia_metrics.gradient_matching_error(g, g_bar)}
        restarts = jax.vmap(rgia_metrics.matched, in_axes=(0, None, None, None))(result.restart_batches, truth, disc,
                                                                                  n_act)
        vec = rgia_metrics.tuple_vectors(restarts, disc, n_act)  # [R, B, D]
        out["ed"] = jnp.mean(jax.vmap(rgia_metrics.euclidean_dispersion, in_axes=1)(vec))
        out["cd"] = jnp.mean(jax.vmap(rgia_metrics.consistency_distance, in_axes=1)(vec))
        return out, rec, vec

    return score


def score_cells(key, setup: Setup, args, res, truth, params, g_bar, loss_keys):
    """Metrics ``{name: f[K, S, Q]}`` (with TE and success) of ``attack_cells``' result for the true batches
    ``truth [S, Q, B]``, and the matched restart vectors ``f32[K, S, Q, R, B, D]``."""
    score = make_scorer(setup, args)
    per_victim = jax.vmap(score, in_axes=(0, 0, None, 0, 0, None, None))
    per_stage = jax.vmap(per_victim, in_axes=(0, 0, 0, 0, 0, 0, 0))
    run = jax.jit(jax.vmap(per_stage, in_axes=(0, None, 0, 0, None, None, None)))
    scores, rec, vec = run(res, truth, params, g_bar, loss_keys, setup.state_scale, setup.reward_scale)
    shape = g_bar.shape[:3]
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[3:]), rec)
    scores = jax.tree.map(np.asarray, scores)
    scores["te"] = np.asarray(setup.te_fn(jax.random.split(key, int(np.prod(shape))), flat)).reshape(shape)
    scores["success"] = (scores["ra"] >= args.success_ra).astype(np.float64)
    return scores, np.asarray(vec)


def _repeat_truth(truth, times: int):
    """``truth [S, T, ...]`` tiled to ``[S, times * T, ...]`` (variant-major, as the problem axis Q)."""
    return jax.tree.map(lambda x: jnp.concatenate([x] * times, axis=1), truth)


def prior_mean_scores(setup: Setup, truth, args) -> dict:
    """``{metric: f[S, T]}`` (MSE, RA and its fields) of the guess that ignores the gradient: each victim's
    prior mean state for ``s`` and ``s'``, the middle of its reward range, its most common action (discrete) or
    mean action."""
    disc, n_act = setup.env.discrete, setup.env.num_actions

    def one(prior, prior_data, truth, state_scale, reward_scale):
        if disc:
            action = jnp.argmax(jnp.bincount(prior_data.action, length=n_act)).astype(truth.action.dtype)
        else:
            action = jnp.mean(prior_data.action, axis=0)
        guess = Transition(jnp.broadcast_to(prior.state_mean, truth.obs.shape),
                           jnp.broadcast_to(action, truth.action.shape),
                           jnp.full(truth.reward.shape, (prior.reward_low + prior.reward_high) / 2),
                           jnp.broadcast_to(prior.state_mean, truth.next_obs.shape), truth.terminated)

        def per_target(g, t):
            ra = rgia_metrics.reconstruction_accuracy(g, t, disc, tol=args.tolerance, state_scale=state_scale,
                                                      reward_scale=reward_scale)
            return {"mse": rgia_metrics.mse(rgia_metrics.matched(g, t, disc, n_act), t, disc, n_act), **ra}

        return jax.vmap(per_target)(guess, truth)

    out = jax.jit(jax.vmap(one))(setup.prior, setup.prior_data, truth, setup.state_scale, setup.reward_scale)
    return {k: np.asarray(v) for k, v in out.items()}


def _silhouette(vec):
    """Mean over victims of SS over ``vec: f32[S, T, R, B, D]``, labelled by true tuple (t, b)."""
    s, t, r, b, d = vec.shape
    labels = np.broadcast_to(np.arange(t)[:, None, None] * b + np.arange(b)[None, None, :], (t, r, b)).reshape(-1)
    values = [rgia_metrics.silhouette(vec[i].reshape(-1, d), labels) for i in range(s)]
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _row(scores, k, sl, args, vec=None) -> dict:
    """One table row: cluster intervals of every ``SCORES`` metric over ``[S, T]`` at stage ``k`` and problem
    slice ``sl``, ED/CD means and SS."""
    row = summarize({m: scores[m][k][:, sl] for m in SCORES if m in scores}, args.bootstrap)
    for m in ("ed", "cd"):
        if m in scores:
            row[m] = float(np.mean(scores[m][k][:, sl]))
    if vec is not None:
        row["ss"] = _silhouette(vec[k][:, sl])
    return row


def _paired(scores, k, sl_a, sl_b, args) -> dict:
    """Cluster intervals of the paired differences (variant b - variant a) of MSE and RA per target."""
    return summarize({m: scores[m][k][:, sl_b] - scores[m][k][:, sl_a] for m in ("mse", "ra")}, args.bootstrap)


def evaluate_table(key, setup: Setup, args):
    """The table of one environment: every variant, the noise floor and the cosine ablation at every stage,
    with the prior-mean floor and the paired RGIA - GIA differences; ``(table, attack seconds)``."""
    k_t, k_noise, k_att, k_te = jax.random.split(key, 4)
    t = args.targets
    truth, loss_keys = targets(k_t, setup, t, 1)
    params = setup.stages.params
    g = jax.vmap(lambda p: shared_gradients(setup.victim, p, truth, loss_keys))(params)  # [K, S, T, d]
    variants = [*args.variants, NOISE_FLOOR]
    sources = [noise_like(k_noise, g) if v == NOISE_FLOOR else g for v in variants]
    g_q = jnp.concatenate(sources, axis=2)
    w = {n: jnp.repeat(x, t) for n, x in weight_table(variants, args.weights).items()}
    lk = jnp.concatenate([loss_keys] * len(variants), axis=1)
    start = time.perf_counter()
    res = attack_cells(setup, args, 1, k_att, params, g_q, w, lk)
    attack_s = time.perf_counter() - start
    scores, vec = score_cells(k_te, setup, args, res, _repeat_truth(truth, len(variants)), params, g_q, lk)
    sl = {v: slice(i * t, (i + 1) * t) for i, v in enumerate(variants)}
    ablation = {}
    if args.ablation_distance != "none":
        pair = ["GIA", "RGIA"]
        g_a = jnp.concatenate([g, g], axis=2)
        w_a = {n: jnp.repeat(x, t) for n, x in weight_table(pair, args.weights).items()}
        lk_a = jnp.concatenate([loss_keys] * 2, axis=1)
        start = time.perf_counter()
        res_a = attack_cells(setup, args, 1, k_att, params, g_a, w_a, lk_a, distance=args.ablation_distance)
        attack_s += time.perf_counter() - start
        ablation = score_cells(k_te, setup, args, res_a, _repeat_truth(truth, 2), params, g_a, lk_a)[0]
    floor = prior_mean_scores(setup, truth, args)
    table = {}
    for k, fraction in enumerate(args.stages):
        rows = {v: _row(scores, k, sl[v], args, vec) for v in variants}
        for i, v in enumerate(("GIA", "RGIA") if ablation else ()):
            rows[f"{v} ({args.ablation_distance})"] = _row(ablation, k, slice(i * t, (i + 1) * t), args)
        rows["prior mean"] = summarize({m: floor[m] for m in ("mse", "ra", *FIELDS)}, args.bootstrap)
        table[stage_label(fraction)] = {
            "fraction": fraction, "iteration": setup.stages.stage_iterations[k],
            "victim_return": cluster_ci(setup.returns[k][:, None], args.bootstrap),
            "grad_norm": float(jnp.mean(jnp.linalg.norm(g[k], axis=-1))), "rows": rows,
            "rgia_minus_gia": _paired(scores, k, sl["GIA"], sl["RGIA"], args)}
    return table, attack_s


def batch_sweep(key, setup: Setup, args):
    """GIA and RGIA at every batch size of ``--batch-sizes`` at the ``--batch-stage`` network: rows with the
    intervals of MSE, RA and success."""
    k = args.stages.index(args.batch_stage)
    params = jax.tree.map(lambda x: x[k:k + 1], setup.stages.params)
    rows = []
    for b in tqdm(args.batch_sizes, desc=f"batch sweep {setup.env.name}", leave=False):
        key, k_t, k_att, k_te = jax.random.split(key, 4)
        truth, loss_keys = targets(k_t, setup, args.targets, b)
        g = shared_gradients(setup.victim, jax.tree.map(lambda x: x[0], params), truth, loss_keys)[None]
        g_q = jnp.concatenate([g, g], axis=2)
        w = {n: jnp.repeat(x, args.targets) for n, x in weight_table(["GIA", "RGIA"], args.weights).items()}
        lk = jnp.concatenate([loss_keys] * 2, axis=1)
        res = attack_cells(setup, args, b, k_att, params, g_q, w, lk)
        scores, _ = score_cells(k_te, setup, args, res, _repeat_truth(truth, 2), params, g_q, lk)
        t = args.targets
        rows.append({"env": setup.env.name, "stage": stage_label(args.batch_stage), "batch_size": b,
                     **{v: _row(scores, 0, slice(i * t, (i + 1) * t), args) for i, v in enumerate(("GIA", "RGIA"))}})
    return rows


def relative_noise_std(g, ratio):
    """Per-component noise std giving ``E ||noise||^2 = ratio^2 ||g||^2``: ``ratio ||g|| / sqrt(d)``."""
    return ratio * jnp.linalg.norm(g, axis=-1) / jnp.sqrt(g.shape[-1])


def noise_sweep(key, setup: Setup, args, floor_ra: dict):
    """RGIA at batch 1 on every stage's gradients plus ``N(0, std^2 I)`` with ``std = sqrt(variance)`` for each
    ``--noise-variances`` and ``std = relative_noise_std(g, ratio)`` for each ``--noise-ratios``: every level
    x target x victim x stage in one call. Rows (per stage and level) give the measured ``||noise|| / ||g||``
    with its interval beside the variance, RGIA's MSE / RA / success intervals and whether RGIA is stopped
    (its mean RA at or below the upper end of the ``RGIA on noise`` floor of ``floor_ra``)."""
    k_t, k_n, k_att, k_te = jax.random.split(key, 4)
    t = args.targets
    truth, loss_keys = targets(k_t, setup, t, 1)
    params = setup.stages.params
    g = jax.vmap(lambda p: shared_gradients(setup.victim, p, truth, loss_keys))(params)  # [K, S, T, d]
    levels = [("variance", v) for v in args.noise_variances] + [("ratio", r) for r in args.noise_ratios]
    std = jnp.stack([jnp.full(g.shape[:3], np.sqrt(v)) if kind == "variance" else relative_noise_std(g, v)
                     for kind, v in levels], axis=2)  # [K, S, L, T]
    noise = jax.random.normal(k_n, (*g.shape[:2], len(levels), *g.shape[2:])) * std[..., None]
    g_q = (g[:, :, None] + noise).reshape(*g.shape[:2], len(levels) * t, -1)
    ratio = np.asarray(defense.noise_ratio(g_q, jnp.repeat(g[:, :, None], len(levels), axis=2).reshape(g_q.shape)))
    w = {n: jnp.repeat(x, len(levels) * t) for n, x in weight_table(["RGIA"], args.weights).items()}
    lk = jnp.concatenate([loss_keys] * len(levels), axis=1)
    res = attack_cells(setup, args, 1, k_att, params, g_q, w, lk)
    scores, _ = score_cells(k_te, setup, args, res, _repeat_truth(truth, len(levels)), params, g_q, lk)
    rows = []
    for k, fraction in enumerate(args.stages):
        label = stage_label(fraction)
        for i, (kind, level) in enumerate(levels):
            sl = slice(i * t, (i + 1) * t)
            row = {"stage": label, "kind": kind, "level": level, "ratio": cluster_ci(ratio[k][:, sl], args.bootstrap),
                   "variance": float(np.mean(np.square(np.asarray(std[k, :, i])))),
                   "RGIA": _row(scores, k, sl, args)}
            row["stopped"] = bool(row["RGIA"]["ra"]["mean"] <= floor_ra[label]["hi"])
            rows.append(row)
    return rows


def victim_returns_under_noise(key, setup: Setup, args, batch_size: int = 1):
    """Greedy return ``f32[V, S]`` of DQN victims trained (``--victim-seeds`` seeds, vmapped with the noise
    levels) at ``batch_size`` (the batch the attack inverts) with the DP noise of every variance (0 first)."""
    if not setup.env.discrete:
        raise ValueError("the DP-noise victim is a DQN: the noise env needs discrete actions")
    config = dataclasses.replace(setup.config, batch_size=batch_size)
    train = rgia_victims.make_noisy_dqn_train(config, setup.env)
    variances = [0.0, *args.noise_variances]
    var = jnp.repeat(jnp.asarray(variances), args.victim_seeds)
    k_train, k_eval = jax.random.split(key)
    keys = jnp.tile(jax.random.split(k_train, args.victim_seeds), (len(variances), 1))
    q_params, _ = jax.jit(jax.vmap(train))(keys, var)
    q_net = networks.QNetwork(setup.env.num_actions, tuple(config.hidden))
    max_steps = int(getattr(setup.env.env_params, "max_steps_in_episode", 500))

    def greedy(params, k):
        policy = lambda _, obs: jnp.argmax(q_net.apply(params, obs), axis=-1)
        return jnp.mean(evaluate.evaluate(k, policy, setup.env.env, setup.env.env_params, args.eval_episodes,
                                          max_steps))

    out = jax.jit(jax.vmap(greedy))(q_params, jax.random.split(k_eval, var.shape[0]))
    returns = np.asarray(out).reshape(len(variances), args.victim_seeds)
    return [{"variance": v, "batch_size": batch_size, "return": cluster_ci(r[:, None], args.bootstrap),
             "per_seed": r.tolist()} for v, r in zip(variances, returns)]


def speed_test(key, setup: Setup, args):
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


# ---------------------------------------------------------------- claims and the README


def floors(rows: dict) -> dict:
    """The RA floors of a stage's rows: ``{"prior mean", "RGIA on noise", "max"}`` (means; max of both)."""
    out = {n: rows[n]["ra"]["mean"] for n in ("prior mean", NOISE_FLOOR)}
    return {**out, "max": max(out.values())}


def claims(tables, batch_rows, noise_rows):
    """Verdicts on the measured figures: where RGIA beats GIA (the interval of the paired MSE difference below
    0, of the RA difference above 0, and RGIA's RA interval above both floors); at which relative noise RGIA is
    stopped, per stage; whether variance 1e-2 stops it; whether batches above 3 mostly fail."""
    beats = {}
    for env, table in tables.items():
        for stage, cell in table.items():
            d, rg = cell["rgia_minus_gia"], cell["rows"]["RGIA"]
            beats[f"{env}/{stage}"] = {"lower_mse": d["mse"]["hi"] < 0, "higher_ra": d["ra"]["lo"] > 0,
                                       "ra_above_floors": rg["ra"]["lo"] > floors(cell["rows"])["max"],
                                       "rgia_ra": rg["ra"], "gia_ra": cell["rows"]["GIA"]["ra"],
                                       "floors": floors(cell["rows"])}
    out = {"rgia_beats_gia": {"held": {k: v["lower_mse"] and v["higher_ra"] and v["ra_above_floors"]
                                       for k, v in beats.items()}, "per_setting": beats}}
    if noise_rows:
        stopping = {}
        for stage in dict.fromkeys(r["stage"] for r in noise_rows):
            clean = {k.split("/", 1)[1]: v["ra_above_floors"] for k, v in beats.items()}
            if not clean.get(stage, True):  # clean RGIA is already at its floors: there is nothing to stop
                stopping[stage] = {"clean_at_floor": True, "first_stopping_ratio": None,
                                   "variance_1e-2_stops": None, "ratio_at_1e-2": None}
                continue
            ratio_rows = sorted((r for r in noise_rows if r["stage"] == stage and r["kind"] == "ratio"),
                                key=lambda r: r["level"])
            # the smallest ratio from which every larger one stops it
            stopped = [r["level"] for i, r in enumerate(ratio_rows) if all(x["stopped"] for x in ratio_rows[i:])]
            at = {r["level"]: r for r in noise_rows if r["stage"] == stage and r["kind"] == "variance"}
            stopping[stage] = {"clean_at_floor": False, "first_stopping_ratio": stopped[0] if stopped else None,
                               "variance_1e-2_stops": at[1e-2]["stopped"] if 1e-2 in at else None,
                               "ratio_at_1e-2": at[1e-2]["ratio"] if 1e-2 in at else None}
        out["noise_stops_rgia"] = stopping
    if batch_rows:
        small = [r["RGIA"]["success"]["mean"] for r in batch_rows if r["batch_size"] <= 3]
        large = [r["RGIA"]["success"]["mean"] for r in batch_rows if r["batch_size"] > 3]
        out["batch_above_3_mostly_fails"] = {
            "held": bool(large) and float(np.mean(large)) < 0.5 <= float(np.mean(small or [0.0])),
            "rgia_success_b_le_3": float(np.mean(small)) if small else None,
            "rgia_success_b_gt_3": float(np.mean(large)) if large else None}
    return out


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
    key = jax.random.PRNGKey(args.seed)
    setups, tables, wall, victims = {}, {}, {}, {}
    needed = list(dict.fromkeys(args.envs + args.batch_envs + ([args.noise_env] if args.noise_env else [])))
    for name in tqdm(needed, desc="victims"):
        key, k = jax.random.split(key)
        setups[name] = s = prepare(k, name, args)
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
        tables[name], attack_s = evaluate_table(k, setups[name], args)
        wall[f"table/{name}"] = {"total_s": time.perf_counter() - start, "attack_s": attack_s}
        for stage, cell in tables[name].items():
            for variant, row in cell["rows"].items():
                tqdm.write(f"{name:16s} {stage:12s} {variant:18s} MSE {_ci(row['mse'])} RA {_ci(row['ra'], 2)}")
    batch_rows = []
    for name in args.batch_envs:
        key, k = jax.random.split(key)
        start = time.perf_counter()
        batch_rows += batch_sweep(k, setups[name], args)
        wall[f"batch/{name}_s"] = time.perf_counter() - start
    noise_rows, utility = [], []
    if args.noise_env:
        name = args.noise_env
        if name not in tables:
            raise ValueError(f"--noise-env {name} needs its table: add it to --envs (its noise floor)")
        floor_ra = {st: c["rows"][NOISE_FLOOR]["ra"] for st, c in tables[name].items()}
        start = time.perf_counter()
        key, k1, k2 = jax.random.split(key, 3)
        noise_rows = noise_sweep(k1, setups[name], args, floor_ra)
        wall["noise_sweep_s"] = time.perf_counter() - start
        start = time.perf_counter()
        utility = victim_returns_under_noise(k2, setups[name], args)
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
