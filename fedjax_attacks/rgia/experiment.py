"""The RGIA experiment (seed paper 001) behind ``benchmarks/rgia.py``: victims at several training stages, the
attacker's priors, GIA against RGIA with the RA floors, the batch-size sweep and the DP-noise sweep.

* ``prepare(key, name, settings) -> Setup``: ``settings.victim_seeds`` victims trained at once (vmapped) with the
  RL engine (``train_config``: DQN on FrozenLake / CartPole / Pong, TD3 on brax), their networks kept after each
  fraction ``settings.stages`` of training (``victims.train_victims``; 0: the untrained networks), each victim's
  attacker prior fitted on ``settings.prior_samples`` transitions of that victim's replay buffer
  (``priors.fit_prior``), the rest its pool of targets, and each stage's greedy return.
* ``evaluate_table(key, setup, settings)``: per training stage, every variant of ``VARIANTS`` (GIA = RGIA with
  its weights at 0, each regularizer alone, RGIA), the ``RGIA on noise`` floor and the other distance as an
  ablation on the same ``settings.targets`` batches (paired comparisons), all in one jitted, vmapped call,
  with the ``prior mean`` floor and the paired RGIA - GIA differences.
* ``batch_sweep``: GIA and RGIA at every batch size; ``noise_sweep``: RGIA under DP noise on the shared
  gradient, by absolute variance and by relative noise ``||noise|| / ||g||`` (``relative_noise_std``);
  ``victim_returns_under_noise``: the defense's cost, the return of victims that train under that noise.
* ``claims(tables, batch_rows, noise_rows)``: the verdicts on those figures.

Metrics (MSE, RA and its per-field parts, GME, TE, ED, SS, CD) come from ``rgia.metrics``; intervals are 95%
cluster-bootstrap intervals (``cluster_ci``: victim seeds resampled, then targets within each seed). RA has two
floors: ``prior mean`` (the guess that ignores the gradient: the prior's mean state, mid reward, most common
action) and ``RGIA on noise`` (RGIA given a pure-noise gradient of the true gradient's norm, ``noise_like``).
``settings`` is a ``Settings`` (or any object with its fields, such as the benchmark's parsed arguments).
"""

import dataclasses
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from tqdm import tqdm

from fedjax_attacks.inversion import defense
from fedjax_attacks.rgia import envs as rgia_envs
from fedjax_attacks.rgia import metrics as rgia_metrics
from fedjax_attacks.rgia import priors as rgia_priors
from fedjax_attacks.rgia import victims as rgia_victims
from fedjax_attacks.rgia.attack import REGULARIZERS, RGIA_WEIGHTS, RGIAConfig, Victim, make_rgia
from fedjax_attacks.rl import dqn, evaluate, networks, td3
from fedjax_attacks.rl.replay import Transition

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
HIDDEN = {"Pong-misc": (32, 32)}  # the 3600-pixel input layer dominates the attack's cost; others (64, 64)
TIMESTEPS = {"FrozenLake-misc": 100_000, "CartPole-v1": 300_000, "Pong-misc": 100_000}
BRAX_TIMESTEPS = 100_000
BUFFER_SIZE = 20_000


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the experiment reads (the benchmark's full-size defaults; ``--quick`` shrinks them).

    Attack: ``steps`` Adam steps at ``learning_rate``, ``restarts`` per target, ``distance`` (a name of
    ``attack.DISTANCES``; ``ablation_distance`` GIA and RGIA again with another, ``"none"`` to skip),
    ``variants`` (names of ``VARIANTS``), ``weights`` (every regularizer's weight when it is on),
    ``dynamics_moves_state`` (``R_f``'s gradient also moves ``s`` and ``a``). Victims: ``victim_seeds`` per
    environment, attacked at the training fractions ``stages``, critic ``hidden`` widths (``None``: ``HIDDEN``
    or (64, 64)), training steps ``TIMESTEPS`` x ``timesteps_scale``, ``eval_episodes`` per greedy return.
    Prior: ``prior_samples`` transitions, ``dynamics_steps`` of transition-model training. Targets: ``targets``
    batches per victim. Scores: RA ``tolerance`` (times ``max(1, prior std)``), success at RA ``>= success_ra``,
    ``bootstrap`` resamples. Sweeps: ``batch_sizes`` at the ``batch_stage`` network, ``noise_variances`` and
    ``noise_ratios``.
    """

    steps: int = 500
    learning_rate: float = 0.1
    restarts: int = 8
    targets: int = 32
    victim_seeds: int = 3
    stages: Sequence[float] = (0.0, 0.1, 1.0)
    hidden: Sequence[int] | None = None
    timesteps_scale: float = 1.0
    distance: str = "relative_l2"
    ablation_distance: str = "cosine"
    variants: Sequence[str] = ("GIA", "RGIA")
    dynamics_moves_state: bool = False
    weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"state_gaussian": RGIA_WEIGHTS["state_mixture"], **RGIA_WEIGHTS})
    prior_samples: int = 512
    dynamics_steps: int = 2000
    tolerance: float = 0.1
    success_ra: float = 0.9
    batch_sizes: Sequence[int] = (1, 2, 4)
    batch_stage: float = 0.0
    noise_variances: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    noise_ratios: Sequence[float] = (1.0, 3.0, 10.0, 30.0)
    eval_episodes: int = 16
    bootstrap: int = 2000

    @classmethod
    def from_namespace(cls, namespace) -> "Settings":
        """The settings of an object with (at least) these fields, e.g. the benchmark's parsed arguments."""
        return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})


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
    victim: Victim
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


def greedy_returns(env: rgia_envs.RGIAEnv, victim: Victim, params, key, episodes: int) -> np.ndarray:
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


def prepare(key, name, settings) -> Setup:
    """Trains ``victim_seeds`` victims on ``name`` (vmapped, networks kept at every stage) and fits each one's
    prior on ``prior_samples`` transitions of its buffer."""
    env = rgia_envs.make_env(name)
    config = train_config(name, max(int(TIMESTEPS.get(name, BRAX_TIMESTEPS) * settings.timesteps_scale), 2_000),
                          settings.hidden)
    k_train, k_split, k_prior, k_eval = jax.random.split(key, 4)
    start = time.perf_counter()
    stages = jax.block_until_ready(rgia_victims.train_victims(jax.random.split(k_train, settings.victim_seeds),
                                                              env, config, settings.stages))
    train_s = time.perf_counter() - start
    n = int(stages.replay.reward.shape[1])
    if settings.prior_samples + settings.targets * max(settings.batch_sizes) > n:
        raise ValueError(f"{name}: {n} buffered transitions cannot hold {settings.prior_samples} prior samples and "
                         f"{settings.targets} targets of batch {max(settings.batch_sizes)}")
    victim = rgia_victims.victim_for(env, config)
    priors, prior_data, pools = [], [], []
    for s, (ks, kp) in enumerate(zip(jax.random.split(k_split, settings.victim_seeds),
                                     jax.random.split(k_prior, settings.victim_seeds))):
        prior_idx, pool = rgia_priors.prior_split(ks, n, settings.prior_samples / n)
        data = jax.tree.map(lambda x, i=prior_idx, s=s: x[s][i], stages.replay)
        priors.append(rgia_priors.fit_prior(kp, data, discrete=env.discrete, num_actions=env.num_actions,
                                            dynamics_steps=settings.dynamics_steps))
        prior_data.append(data)
        pools.append(pool)
    stack = lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs)
    prior_data = stack(prior_data)
    states = jnp.concatenate([prior_data.obs, prior_data.next_obs], axis=1)
    returns = greedy_returns(env, victim, stages.params, k_eval, settings.eval_episodes)
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


def attack_config(settings, batch_size: int, num_restarts: int, distance: str) -> RGIAConfig:
    """The attack's ``RGIAConfig`` from ``settings``, every regularizer enabled (variants set weights to 0)."""
    return RGIAConfig(batch_size=batch_size, num_steps=settings.steps, learning_rate=settings.learning_rate,
                      num_restarts=num_restarts, distance=distance,
                      dynamics_target_only=not settings.dynamics_moves_state,
                      regularizers={n: settings.weights[n] for n in REGULARIZERS})


def weight_table(variants, weights):
    """``{name: f32[V]}``: each variant's weight of every regularizer (0 when it is off; the noise floor has
    RGIA's)."""
    on = lambda v, n: n in VARIANTS["RGIA" if v == NOISE_FLOOR else v]
    return {n: jnp.asarray([weights[n] if on(v, n) else 0.0 for v in variants], jnp.float32)
            for n in REGULARIZERS}


def attack_cells(setup: Setup, settings, batch_size, key, params, g_bar, weights, loss_keys, distance=None):
    """Attacks ``[K, S, Q]`` problems in one jitted call: K stages (``params`` with leading ``[K, S]``), the S
    victims (each with its own prior), Q problems per victim (``g_bar f32[K, S, Q, d]``, ``weights {name:
    f32[Q]}``, ``loss_keys [S, Q]``)."""
    config = attack_config(settings, batch_size, settings.restarts, distance or settings.distance)
    attack = make_rgia(setup.victim, config)
    per_victim = jax.vmap(attack, in_axes=(0, None, 0, None, 0, 0))
    per_stage = jax.vmap(per_victim, in_axes=(0, 0, 0, 0, None, 0))
    many = jax.jit(jax.vmap(per_stage, in_axes=(0, 0, 0, None, None, None)))
    k, s, q = g_bar.shape[:3]
    return jax.block_until_ready(many(jax.random.split(key, (k, s, q)), params, g_bar, setup.prior, weights,
                                      loss_keys))


def make_scorer(setup: Setup, settings):
    """``score(result, truth, params, g_bar, loss_key, state_scale, reward_scale) -> (metrics, matched batch,
    restart vectors f32[R, B, D])`` of one problem (TE comes from ``Setup.te_fn``)."""
    env, victim = setup.env, setup.victim
    disc, n_act = env.discrete, env.num_actions

    def score(result, truth, params, g_bar, loss_key, state_scale, reward_scale):
        rec = rgia_metrics.matched(result.batch, truth, disc, n_act)
        g = ravel_pytree(victim.gradient(params, rec, loss_key))[0]
        out = {"mse": rgia_metrics.mse(rec, truth, disc, n_act),
               **rgia_metrics.reconstruction_accuracy(rec, truth, disc, tol=settings.tolerance, state_scale=state_scale,
                                                      reward_scale=reward_scale),
               "gme": rgia_metrics.gradient_matching_error(g, g_bar)}
        restarts = jax.vmap(rgia_metrics.matched, in_axes=(0, None, None, None))(result.restart_batches, truth, disc,
                                                                                  n_act)
        vec = rgia_metrics.tuple_vectors(restarts, disc, n_act)  # [R, B, D]
        out["ed"] = jnp.mean(jax.vmap(rgia_metrics.euclidean_dispersion, in_axes=1)(vec))
        out["cd"] = jnp.mean(jax.vmap(rgia_metrics.consistency_distance, in_axes=1)(vec))
        return out, rec, vec

    return score


def score_cells(key, setup: Setup, settings, res, truth, params, g_bar, loss_keys):
    """Metrics ``{name: f[K, S, Q]}`` (with TE and success) of ``attack_cells``' result for the true batches
    ``truth [S, Q, B]``, and the matched restart vectors ``f32[K, S, Q, R, B, D]``."""
    score = make_scorer(setup, settings)
    per_victim = jax.vmap(score, in_axes=(0, 0, None, 0, 0, None, None))
    per_stage = jax.vmap(per_victim, in_axes=(0, 0, 0, 0, 0, 0, 0))
    run = jax.jit(jax.vmap(per_stage, in_axes=(0, None, 0, 0, None, None, None)))
    scores, rec, vec = run(res, truth, params, g_bar, loss_keys, setup.state_scale, setup.reward_scale)
    shape = g_bar.shape[:3]
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[3:]), rec)
    scores = jax.tree.map(np.asarray, scores)
    scores["te"] = np.asarray(setup.te_fn(jax.random.split(key, int(np.prod(shape))), flat)).reshape(shape)
    scores["success"] = (scores["ra"] >= settings.success_ra).astype(np.float64)
    return scores, np.asarray(vec)


def _repeat_truth(truth, times: int):
    """``truth [S, T, ...]`` tiled to ``[S, times * T, ...]`` (variant-major, as the problem axis Q)."""
    return jax.tree.map(lambda x: jnp.concatenate([x] * times, axis=1), truth)


def prior_mean_scores(setup: Setup, truth, settings) -> dict:
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
            ra = rgia_metrics.reconstruction_accuracy(g, t, disc, tol=settings.tolerance, state_scale=state_scale,
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


def _row(scores, k, sl, settings, vec=None) -> dict:
    """One table row: cluster intervals of every ``SCORES`` metric over ``[S, T]`` at stage ``k`` and problem
    slice ``sl``, ED/CD means and SS."""
    row = summarize({m: scores[m][k][:, sl] for m in SCORES if m in scores}, settings.bootstrap)
    for m in ("ed", "cd"):
        if m in scores:
            row[m] = float(np.mean(scores[m][k][:, sl]))
    if vec is not None:
        row["ss"] = _silhouette(vec[k][:, sl])
    return row


def _paired(scores, k, sl_a, sl_b, settings) -> dict:
    """Cluster intervals of the paired differences (variant b - variant a) of MSE and RA per target."""
    return summarize({m: scores[m][k][:, sl_b] - scores[m][k][:, sl_a] for m in ("mse", "ra")}, settings.bootstrap)


def evaluate_table(key, setup: Setup, settings):
    """The table of one environment: every variant, the noise floor and the cosine ablation at every stage,
    with the prior-mean floor and the paired RGIA - GIA differences; ``(table, attack seconds)``."""
    k_t, k_noise, k_att, k_te = jax.random.split(key, 4)
    t = settings.targets
    truth, loss_keys = targets(k_t, setup, t, 1)
    params = setup.stages.params
    g = jax.vmap(lambda p: shared_gradients(setup.victim, p, truth, loss_keys))(params)  # [K, S, T, d]
    variants = [*settings.variants, NOISE_FLOOR]
    sources = [noise_like(k_noise, g) if v == NOISE_FLOOR else g for v in variants]
    g_q = jnp.concatenate(sources, axis=2)
    w = {n: jnp.repeat(x, t) for n, x in weight_table(variants, settings.weights).items()}
    lk = jnp.concatenate([loss_keys] * len(variants), axis=1)
    start = time.perf_counter()
    res = attack_cells(setup, settings, 1, k_att, params, g_q, w, lk)
    attack_s = time.perf_counter() - start
    scores, vec = score_cells(k_te, setup, settings, res, _repeat_truth(truth, len(variants)), params, g_q, lk)
    sl = {v: slice(i * t, (i + 1) * t) for i, v in enumerate(variants)}
    ablation = {}
    if settings.ablation_distance != "none":
        pair = ["GIA", "RGIA"]
        g_a = jnp.concatenate([g, g], axis=2)
        w_a = {n: jnp.repeat(x, t) for n, x in weight_table(pair, settings.weights).items()}
        lk_a = jnp.concatenate([loss_keys] * 2, axis=1)
        start = time.perf_counter()
        res_a = attack_cells(setup, settings, 1, k_att, params, g_a, w_a, lk_a, distance=settings.ablation_distance)
        attack_s += time.perf_counter() - start
        ablation = score_cells(k_te, setup, settings, res_a, _repeat_truth(truth, 2), params, g_a, lk_a)[0]
    floor = prior_mean_scores(setup, truth, settings)
    table = {}
    for k, fraction in enumerate(settings.stages):
        rows = {v: _row(scores, k, sl[v], settings, vec) for v in variants}
        for i, v in enumerate(("GIA", "RGIA") if ablation else ()):
            rows[f"{v} ({settings.ablation_distance})"] = _row(ablation, k, slice(i * t, (i + 1) * t), settings)
        rows["prior mean"] = summarize({m: floor[m] for m in ("mse", "ra", *FIELDS)}, settings.bootstrap)
        table[stage_label(fraction)] = {
            "fraction": fraction, "iteration": setup.stages.stage_iterations[k],
            "victim_return": cluster_ci(setup.returns[k][:, None], settings.bootstrap),
            "grad_norm": float(jnp.mean(jnp.linalg.norm(g[k], axis=-1))), "rows": rows,
            "rgia_minus_gia": _paired(scores, k, sl["GIA"], sl["RGIA"], settings)}
    return table, attack_s


def batch_sweep(key, setup: Setup, settings):
    """GIA and RGIA at every batch size of ``settings.batch_sizes`` at the ``batch_stage`` network: rows with the
    intervals of MSE, RA and success."""
    k = settings.stages.index(settings.batch_stage)
    params = jax.tree.map(lambda x: x[k:k + 1], setup.stages.params)
    rows = []
    for b in tqdm(settings.batch_sizes, desc=f"batch sweep {setup.env.name}", leave=False):
        key, k_t, k_att, k_te = jax.random.split(key, 4)
        truth, loss_keys = targets(k_t, setup, settings.targets, b)
        g = shared_gradients(setup.victim, jax.tree.map(lambda x: x[0], params), truth, loss_keys)[None]
        g_q = jnp.concatenate([g, g], axis=2)
        w = {n: jnp.repeat(x, settings.targets) for n, x in weight_table(["GIA", "RGIA"], settings.weights).items()}
        lk = jnp.concatenate([loss_keys] * 2, axis=1)
        res = attack_cells(setup, settings, b, k_att, params, g_q, w, lk)
        scores, _ = score_cells(k_te, setup, settings, res, _repeat_truth(truth, 2), params, g_q, lk)
        t = settings.targets
        rows.append({"env": setup.env.name, "stage": stage_label(settings.batch_stage), "batch_size": b,
                     **{v: _row(scores, 0, slice(i * t, (i + 1) * t), settings)
                        for i, v in enumerate(("GIA", "RGIA"))}})
    return rows


def relative_noise_std(g, ratio):
    """Per-component noise std giving ``E ||noise||^2 = ratio^2 ||g||^2``: ``ratio ||g|| / sqrt(d)``."""
    return ratio * jnp.linalg.norm(g, axis=-1) / jnp.sqrt(g.shape[-1])


def noise_sweep(key, setup: Setup, settings, floor_ra: dict):
    """RGIA at batch 1 on every stage's gradients plus ``N(0, std^2 I)`` with ``std = sqrt(variance)`` for each of
    ``noise_variances`` and ``std = relative_noise_std(g, ratio)`` for each of ``noise_ratios``: every level
    x target x victim x stage in one call. Rows (per stage and level) give the measured ``||noise|| / ||g||``
    with its interval beside the variance, RGIA's MSE / RA / success intervals and whether RGIA is stopped
    (its mean RA at or below the upper end of the ``RGIA on noise`` floor of ``floor_ra``)."""
    k_t, k_n, k_att, k_te = jax.random.split(key, 4)
    t = settings.targets
    truth, loss_keys = targets(k_t, setup, t, 1)
    params = setup.stages.params
    g = jax.vmap(lambda p: shared_gradients(setup.victim, p, truth, loss_keys))(params)  # [K, S, T, d]
    levels = [("variance", v) for v in settings.noise_variances] + [("ratio", r) for r in settings.noise_ratios]
    std = jnp.stack([jnp.full(g.shape[:3], np.sqrt(v)) if kind == "variance" else relative_noise_std(g, v)
                     for kind, v in levels], axis=2)  # [K, S, L, T]
    noise = jax.random.normal(k_n, (*g.shape[:2], len(levels), *g.shape[2:])) * std[..., None]
    g_q = (g[:, :, None] + noise).reshape(*g.shape[:2], len(levels) * t, -1)
    ratio = np.asarray(defense.noise_ratio(g_q, jnp.repeat(g[:, :, None], len(levels), axis=2).reshape(g_q.shape)))
    w = {n: jnp.repeat(x, len(levels) * t) for n, x in weight_table(["RGIA"], settings.weights).items()}
    lk = jnp.concatenate([loss_keys] * len(levels), axis=1)
    res = attack_cells(setup, settings, 1, k_att, params, g_q, w, lk)
    scores, _ = score_cells(k_te, setup, settings, res, _repeat_truth(truth, len(levels)), params, g_q, lk)
    rows = []
    for k, fraction in enumerate(settings.stages):
        label = stage_label(fraction)
        for i, (kind, level) in enumerate(levels):
            sl = slice(i * t, (i + 1) * t)
            row = {"stage": label, "kind": kind, "level": level,
                   "ratio": cluster_ci(ratio[k][:, sl], settings.bootstrap),
                   "variance": float(np.mean(np.square(np.asarray(std[k, :, i])))),
                   "RGIA": _row(scores, k, sl, settings)}
            row["stopped"] = bool(row["RGIA"]["ra"]["mean"] <= floor_ra[label]["hi"])
            rows.append(row)
    return rows


def victim_returns_under_noise(key, setup: Setup, settings, batch_size: int = 1):
    """Greedy return ``f32[V, S]`` of DQN victims trained (``victim_seeds`` seeds, vmapped with the noise
    levels) at ``batch_size`` (the batch the attack inverts) with the DP noise of every variance (0 first)."""
    if not setup.env.discrete:
        raise ValueError("the DP-noise victim is a DQN: the noise env needs discrete actions")
    config = dataclasses.replace(setup.config, batch_size=batch_size)
    train = rgia_victims.make_noisy_dqn_train(config, setup.env)
    variances = [0.0, *settings.noise_variances]
    var = jnp.repeat(jnp.asarray(variances), settings.victim_seeds)
    k_train, k_eval = jax.random.split(key)
    keys = jnp.tile(jax.random.split(k_train, settings.victim_seeds), (len(variances), 1))
    q_params, _ = jax.jit(jax.vmap(train))(keys, var)
    q_net = networks.QNetwork(setup.env.num_actions, tuple(config.hidden))
    max_steps = int(getattr(setup.env.env_params, "max_steps_in_episode", 500))

    def greedy(params, k):
        policy = lambda _, obs: jnp.argmax(q_net.apply(params, obs), axis=-1)
        return jnp.mean(evaluate.evaluate(k, policy, setup.env.env, setup.env.env_params, settings.eval_episodes,
                                          max_steps))

    out = jax.jit(jax.vmap(greedy))(q_params, jax.random.split(k_eval, var.shape[0]))
    returns = np.asarray(out).reshape(len(variances), settings.victim_seeds)
    return [{"variance": v, "batch_size": batch_size, "return": cluster_ci(r[:, None], settings.bootstrap),
             "per_seed": r.tolist()} for v, r in zip(variances, returns)]




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
