"""RGIA: regularized gradient inversion in federated RL (seed paper 001, He 2025, arXiv 2512.00303).

An FRL client (the *victim*) shares ``g_bar = grad_theta L_TD(theta; {(s_i, a_i, r_i, s'_i)}_{i <= B})``, the
gradient of its TD loss on a batch of ``B`` transitions: the double-DQN loss (``rl.dqn.td_loss``) for discrete
actions, the TD3 critic loss (``rl.td3.critic_loss`` on ``rl.td3.td_targets``) for continuous ones. The attacker
knows the network, its target networks and the loss (white box, as in the paper; for TD3 also the key of the
target-smoothing noise). It optimizes fake tuples ``x~ = (s~, a~, r~, s~', d~)`` with Adam from a normal
initialization:

* GIA (the baseline): ``min D(g(x~), g_bar)`` with ``D`` the image attacks' cosine distance (default) or
  squared L2 (``"l2"``, or ``"relative_l2"`` divided by ``||g_bar||^2``); discrete actions are relaxed to
  ``softmax`` probabilities (the loss becomes the expectation over actions) and the termination flag ``d~`` to a
  sigmoid. At batch 1 the gradient is ``2 (Q(s, a) - y) grad Q(s, a)``: its direction gives ``s`` and ``a``, and
  only the scalar TD target ``y = r + gamma (1 - d) Q'(s')`` constrains ``(r, s')`` (the cosine keeps just its
  sign): the pseudo-solutions the regularizers remove. The cosine is ``RGIAConfig``'s default (the L2 costs
  stall more often at trained networks, ``g -> 0`` with wrong states), but it leaves the gradient's magnitude,
  i.e. the TD error, free: reconstructions may be off in gradient magnitude by 10x and more. ``benchmarks/rgia``
  reports ``"relative_l2"``, which pins the magnitude, and the cosine as an ablation;
* RGIA (the paper's eq. 7 with sec. 4.2's regularizers): ``D + alpha R_s + beta R_r + gamma R_f`` with
  ``R_s`` the state prior (``"state_gaussian"`` or ``"state_mixture"``), ``R_r`` the reward hinge
  (``"reward"``) and ``R_f`` the transition-model consistency (``"dynamics"``), see ``rgia.priors``.

``attack = make_rgia(victim, RGIAConfig(...))`` returns ``attack(key, params, g_bar, prior, weights=None,
loss_key=None) -> RGIAResult``; restarts are vmapped inside (``optimize.make_multistart``) and
``jax.vmap(attack)`` attacks many victims at once (targets, networks, and regularizer weights: the weights are
traced, so GIA and every ablation are one vmapped call with some weights at 0).

The RL engine's losses hold their TD target fixed with ``stop_gradient``, which also cuts the attacker's
derivatives with respect to ``r~`` and ``s~'``; the attacker's relaxed losses below hold only ``theta`` fixed
in the target and equal the engine's gradients on real tuples (tested).
"""

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from fedjax_attacks.inversion import matching
from fedjax_attacks.inversion.optimize import make_minimizer, make_multistart, step_decay_schedule
from fedjax_attacks.rgia.priors import Prior
from fedjax_attacks.rl import dqn, networks, td3
from fedjax_attacks.rl.replay import Transition
from fedjax_attacks.validation import check_choice, check_count, check_flag, check_in_range, check_layers, check_rate

VICTIM_KINDS = ("dqn", "td3")
REGULARIZERS = ("state_gaussian", "state_mixture", "reward", "dynamics")


def relative_l2(g: jax.Array, g_bar: jax.Array) -> jax.Array:
    """``||g - g_bar||^2 / ||g_bar||^2``."""
    return matching.l2_distance(g, g_bar) / jnp.maximum(jnp.sum(jnp.square(g_bar)), 1e-30)


DISTANCES = {"cosine": matching.cosine_distance, "l2": matching.l2_distance, "relative_l2": relative_l2}
RGIA_WEIGHTS = {"state_mixture": 1e-3, "reward": 1.0, "dynamics": 0.1}


@dataclasses.dataclass(frozen=True)
class Victim:
    """The FRL client whose TD-loss gradient is shared: ``kind`` ``"dqn"`` (double DQN, ``QNetwork``) or
    ``"td3"`` (``TwinCritic`` with a ``DeterministicActor`` target policy), observations ``f32[obs_dim]``,
    ``num_actions`` discrete actions or the action dimension (unit box), MLP ``hidden`` widths, discount
    ``gamma``; ``double_q`` for DQN; ``policy_noise`` and ``noise_clip`` of TD3's target smoothing."""

    kind: str
    obs_dim: int
    num_actions: int
    hidden: Sequence[int] = (64, 64)
    gamma: float = 0.99
    double_q: bool = True
    policy_noise: float = 0.2
    noise_clip: float = 0.5

    def validate(self) -> None:
        """Raises ``ValueError`` naming the bad field (``Victim.<field>``): ``kind`` in ``VICTIM_KINDS``, integer
        ``obs_dim`` and ``num_actions >= 1``, integer ``hidden`` widths, ``gamma`` in ``[0, 1]``, a bool
        ``double_q``, finite ``policy_noise`` and ``noise_clip >= 0`` (tracers pass, as in ``validation``)."""
        check_choice(self, "kind", VICTIM_KINDS)
        for name in ("obs_dim", "num_actions"):
            check_count(self, name)
        check_layers(self)
        check_in_range(self, "gamma", 0.0, 1.0)
        check_flag(self, "double_q")
        for name in ("policy_noise", "noise_clip"):
            check_in_range(self, name, 0.0)

    @property
    def discrete(self) -> bool:
        """DQN victims act in a discrete action set."""
        return self.kind == "dqn"

    def networks(self):
        """``(value network, target actor or None)`` flax modules."""
        if self.kind == "dqn":
            return networks.QNetwork(self.num_actions, tuple(self.hidden)), None
        return networks.TwinCritic(tuple(self.hidden)), networks.DeterministicActor(self.num_actions, tuple(self.hidden))

    def init(self, key: jax.Array) -> dict:
        """Untrained parameters ``{"online", "target"}`` (plus ``"actor_target"`` for TD3); the target network
        starts equal to the online one, as in the RL engine."""
        self.validate()
        value_net, actor = self.networks()
        k_value, k_actor = jax.random.split(key)
        obs = jnp.zeros((1, self.obs_dim))
        if actor is None:
            online = value_net.init(k_value, obs)
            return {"online": online, "target": online}
        online = value_net.init(k_value, obs, jnp.zeros((1, self.num_actions)))
        return {"online": online, "target": online, "actor_target": actor.init(k_actor, obs)}

    def gradient(self, params: dict, batch: Transition, key: jax.Array | None = None):
        """The shared gradient (a pytree like ``params["online"]``) of the RL engine's TD loss on ``batch``:
        ``grad dqn.td_loss`` or ``grad td3.critic_loss`` at ``td3.td_targets(key, ...)``."""
        value_net, actor = self.networks()
        if actor is None:
            return jax.grad(dqn.td_loss)(params["online"], params["target"], value_net.apply, batch,
                                         gamma=self.gamma, double_q=self.double_q)
        targets = td3.td_targets(_td3_key(key), actor.apply, value_net.apply, params["actor_target"],
                                 params["target"], batch, gamma=self.gamma, policy_noise=self.policy_noise,
                                 noise_clip=self.noise_clip)
        return jax.grad(td3.critic_loss)(params["online"], value_net.apply, batch, targets)

    def relaxed_gradient(self, params: dict, fake: Transition, key: jax.Array | None = None) -> jax.Array:
        """The attacker's ``g(x~)``, flat ``f32[d]``, differentiable in every field of ``fake``.

        ``fake.action``: action probabilities ``f32[B, A]`` (DQN; the loss is ``sum_a p_a (Q(s, a) - y)^2``) or
        unit-box actions (TD3); ``fake.terminated``: termination probabilities. On one-hot actions and 0/1
        flags this is ``ravel(gradient(params, batch))``.
        """
        value_net, actor = self.networks()
        if actor is None:
            frozen = jax.lax.stop_gradient(params["online"])

            def loss(online):
                next_q = value_net.apply(params["target"], fake.next_obs)
                select = value_net.apply(frozen, fake.next_obs) if self.double_q else next_q
                best = jnp.take_along_axis(next_q, jnp.argmax(select, axis=-1)[..., None], axis=-1)[..., 0]
                y = fake.reward + self.gamma * (1.0 - fake.terminated) * best
                q = value_net.apply(online, fake.obs)
                return jnp.mean(jnp.sum(fake.action * jnp.square(q - y[..., None]), axis=-1))
        else:
            y = td3.td_targets(_td3_key(key), actor.apply, value_net.apply, params["actor_target"],
                               params["target"], fake, gamma=self.gamma, policy_noise=self.policy_noise,
                               noise_clip=self.noise_clip)

            def loss(online):
                q = value_net.apply(online, fake.obs, fake.action)
                return jnp.sum(jnp.mean(jnp.square(q - y[None]), axis=-1))

        return ravel_pytree(jax.grad(loss)(params["online"]))[0]


def _td3_key(key):
    if key is None:
        raise ValueError("a TD3 victim needs the key of its target-smoothing noise (key / loss_key)")
    return key


@dataclasses.dataclass(frozen=True)
class RGIAConfig:
    """Attack settings. ``regularizers`` maps names in ``REGULARIZERS`` to default weights (``{}`` is GIA): the
    paper's ``alpha`` (``state_gaussian`` / ``state_mixture``), ``beta`` (``reward``) and ``gamma``
    (``dynamics``). Only the named terms are computed and their weights may be overridden, traced, per call. Adam with
    ``learning_rate`` x0.1 at 3/8, 5/8, 7/8 of ``num_steps``; ``num_restarts`` restarts, the one with the
    lowest total objective kept; ``distance``: a name in ``DISTANCES``. ``dynamics_target_only``: ``R_f`` pulls
    ``s~'`` toward ``f(s~, a~)`` but does not move ``s~`` and ``a~`` (its input is held fixed); ``False`` is the
    plain sum, whose gradient also drags the state toward transitions the (imprecise) model fits."""

    batch_size: int = 1
    num_steps: int = 1000
    learning_rate: float = 0.1
    num_restarts: int = 16
    distance: str = "cosine"
    dynamics_target_only: bool = True
    regularizers: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(RGIA_WEIGHTS))

    def validate(self) -> None:
        """Raises ``ValueError`` naming the bad field (``RGIAConfig.<field>``): integer counts ``>= 1`` (not bools
        or floats), a finite ``learning_rate > 0``, ``distance`` in ``DISTANCES``, a bool ``dynamics_target_only``
        and ``regularizers`` a mapping of names in ``REGULARIZERS`` to finite weights ``>= 0``."""
        for name in ("batch_size", "num_steps", "num_restarts"):
            check_count(self, name)
        check_rate(self, "learning_rate")
        check_choice(self, "distance", sorted(DISTANCES))
        check_flag(self, "dynamics_target_only")
        _check_weights("RGIAConfig.regularizers", self.regularizers)


def _check_weights(label: str, weights: Mapping[str, Any]) -> None:
    """``ValueError`` unless ``weights`` is a mapping of names in ``REGULARIZERS`` to finite scalar weights
    ``>= 0`` (not bools or strings). A traced weight passes unread: one vmapped call sets each problem's weights,
    which were checked where they were made."""
    if not isinstance(weights, Mapping):
        raise ValueError(f"{label} must be a mapping {{name: weight}}, got {weights!r}")
    unknown = sorted(set(weights) - set(REGULARIZERS))
    if unknown:
        raise ValueError(f"{label}: unknown regularizer name(s) {unknown}: choose from {REGULARIZERS}")
    for name, w in weights.items():
        if isinstance(w, jax.core.Tracer):
            continue
        value = np.asarray(w)[()] if isinstance(w, (jax.Array, np.ndarray)) else w  # 0-d arrays as scalars
        number = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
        if not number or not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{label}[{name!r}] must be a finite number >= 0, got {w!r}")


@flax.struct.dataclass
class RGIAResult:
    """One attack: the best restart's decoded ``batch`` (``Transition`` of ``B`` tuples: argmax actions for
    DQN, termination ``d~ > 0.5``), its ``loss``; every restart's decoded ``restart_batches`` (leading axis R)
    and ``restart_losses: f32[R]``; ``loss_history: f32[R, num_steps]``."""

    batch: Transition
    loss: jax.Array
    restart_batches: Transition
    restart_losses: jax.Array
    loss_history: jax.Array


def make_rgia(victim: Victim, config: RGIAConfig) -> Callable[..., RGIAResult]:
    """Builds ``attack(key, params, g_bar, prior, weights=None, loss_key=None) -> RGIAResult``.

    ``params``: the victim's parameters (``Victim.init`` layout); ``g_bar``: the shared gradient, a pytree like
    ``params["online"]`` (or a flat ``f32[d]``); ``prior``: the attacker's ``priors.Prior``; ``weights``:
    ``{name: weight}`` for exactly the regularizers of ``config`` (scalars, may be traced; default the
    config's); ``loss_key``: the TD3 victim's target-noise key.

    Raises (before tracing):
      ValueError: on a bad config, a gradient or parameters whose tree does not match the victim network, a
        prior with fewer samples than the batch, ``reward_low > reward_high``, unknown or missing weight names,
        or a concrete weight that is not a finite number ``>= 0`` (a traced weight, e.g. under ``jax.vmap``,
        cannot be read and passes: check the weights where they are made).
    """
    victim.validate()
    config.validate()
    names = tuple(n for n in REGULARIZERS if n in config.regularizers)
    expected = jax.eval_shape(victim.init, jax.random.PRNGKey(0))
    distance = DISTANCES[config.distance]
    b, d_obs, n_act = config.batch_size, victim.obs_dim, victim.num_actions

    def soft(z) -> Transition:
        action = jax.nn.softmax(z["a"]) if victim.discrete else z["a"]
        return Transition(z["s"], action, z["r"], z["s2"], jax.nn.sigmoid(z["d"]))

    def decode(z) -> Transition:
        action = jnp.argmax(z["a"], axis=-1).astype(jnp.int32) if victim.discrete else z["a"]
        return Transition(z["s"], action, z["r"], z["s2"], z["d"] > 0.0)

    def regularizer(name, fake, prior):
        if name == "state_gaussian":
            return prior.state_nll("gaussian", jnp.concatenate([fake.obs, fake.next_obs]))
        if name == "state_mixture":
            return prior.state_nll("mixture", jnp.concatenate([fake.obs, fake.next_obs]))
        if name == "reward":
            return prior.reward_hinge(fake.reward)
        s, a = fake.obs, fake.action
        if config.dynamics_target_only:
            s, a = jax.lax.stop_gradient(s), jax.lax.stop_gradient(a)
        return prior.dynamics_error(s, a, fake.next_obs)

    def objective(z, aux):
        params, g_bar, prior, weights, loss_key = aux
        fake = soft(z)
        loss = distance(victim.relaxed_gradient(params, fake, loss_key), g_bar)
        for name in names:
            loss = loss + weights[name] * regularizer(name, fake, prior)
        return loss

    def init(key):
        ks, ka, kr, ks2, kd = jax.random.split(key, 5)
        z = {"s": jax.random.normal(ks, (b, d_obs)), "a": jax.random.normal(ka, (b, n_act)),
             "r": jax.random.normal(kr, (b,)), "s2": jax.random.normal(ks2, (b, d_obs)),
             "d": jax.random.normal(kd, (b,))}
        return project(z)

    def project(z):
        return z if victim.discrete else {**z, "a": jnp.clip(z["a"], -1.0, 1.0)}

    optimizer = optax.adam(step_decay_schedule(config.learning_rate, config.num_steps))
    minimize = make_minimizer(objective, optimizer, config.num_steps, project=project)
    solve = make_multistart(minimize, init, objective, config.num_restarts)

    @jax.jit
    def run(key, params, g_bar, prior, weights, loss_key):
        out = solve(key, (params, g_bar, prior, weights, loss_key))
        return RGIAResult(batch=decode(out.best), loss=out.best_loss, restart_batches=jax.vmap(decode)(out.finals),
                          restart_losses=out.final_losses, loss_history=out.loss_history)

    def attack(key, params, g_bar, prior: Prior, weights: Mapping[str, Any] | None = None, loss_key=None):
        """Reconstructs the batch behind ``g_bar`` (see ``make_rgia``)."""
        _check_tree("params", params, expected)
        g_flat = _flat_gradient(g_bar, expected["online"])
        if prior.num_samples < b:
            raise ValueError(f"prior has {prior.num_samples} samples, fewer than the batch size {b}")
        if prior.state_mean.shape != (d_obs,):
            raise ValueError(f"prior states have shape {prior.state_mean.shape}, the victim's {(d_obs,)}")
        if _concrete(prior.reward_low, prior.reward_high) and float(prior.reward_low) > float(prior.reward_high):
            raise ValueError(f"prior reward range low > high: ({float(prior.reward_low)}, {float(prior.reward_high)})")
        if weights is None:
            weights = {n: config.regularizers[n] for n in names}
        _check_weights("weights", weights)
        if set(weights) != set(names):
            raise ValueError(f"weights must name exactly the config's regularizers {names}, got {sorted(weights)}")
        if not victim.discrete:
            loss_key = _td3_key(loss_key)
        weights = {n: jnp.asarray(w, jnp.float32) for n, w in weights.items()}
        return run(key, params, g_flat, prior, weights, loss_key)

    return attack


def _concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_tree(name: str, tree, expected) -> None:
    """``ValueError`` unless ``tree`` has ``expected``'s structure and leaf shapes."""
    got, want = jax.tree.structure(tree), jax.tree.structure(expected)
    if got != want:
        raise ValueError(f"{name} does not match the victim network: tree {got} != {want}")
    for (path, leaf), ref in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(expected)):
        if jnp.shape(leaf) != ref.shape:
            raise ValueError(f"{name} does not match the victim network at {jax.tree_util.keystr(path)}: "
                             f"shape {jnp.shape(leaf)} != {ref.shape}")


def _flat_gradient(g_bar, expected_online) -> jax.Array:
    """``g_bar`` as the flat ``f32[d]`` of the victim's online network, after checking its tree or size."""
    size = sum(int(x.size) for x in jax.tree.leaves(expected_online))
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(g_bar)):
        if jnp.shape(g_bar) != (size,):
            raise ValueError(f"g_bar does not match the victim network: flat shape {jnp.shape(g_bar)} != ({size},)")
        return g_bar
    _check_tree("g_bar", g_bar, expected_online)
    return ravel_pytree(g_bar)[0]
