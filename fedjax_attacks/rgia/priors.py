"""The RGIA attacker's prior knowledge (seed paper 001, sec. 4.2), fitted on its prior data: a small share of
the victim's replay transitions (0.3% by default, ``prior_split``).

* the state distribution ``mu_s``: a Gaussian and a Gaussian mixture (scikit-learn's ``GaussianMixture``)
  fitted on the standardized states ``s`` and ``s'`` of the prior data, for ``R_s(s) = -log mu_s(s) / D``;
* the reward range ``[r_min, r_max]`` of the prior rewards, for the hinge ``R_r``;
* a transition model ``f(s, a) ~ s'`` (an MLP predicting the standardized change of state) trained with optax
  Adam on the prior transitions, for ``R_f = ||f(s, a) - s'||^2``.

States are compared in standardized units ``u = (s - mean) / scale``, ``scale = max(std, 1e-2)`` per component
of the prior states, so every term is an average over components whatever the environment's units.
"""

import warnings
from typing import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.mixture import GaussianMixture

from fedjax_attacks.rl.replay import Transition

DEFAULT_PRIOR_FRACTION = 0.003
FULL_COVARIANCE_MAX_DIM = 64
SCALE_FLOOR = 1e-2
EMPTY_COMPONENT_SAMPLES = 0.5  # a mixture component with less total responsibility than this is reported empty


@flax.struct.dataclass
class StatePrior:
    """A Gaussian mixture in standardized state coordinates (one component: a Gaussian).

    means: f32[K, D]; prec_chol: Cholesky factors ``L`` of the precisions (``P = L L^T``), f32[K, D, D] for
    full covariances or f32[K, D] for diagonal ones; log_weights: f32[K].
    """

    means: jax.Array
    prec_chol: jax.Array
    log_weights: jax.Array

    def log_prob(self, u: jax.Array) -> jax.Array:
        """``log mu_s(u)`` of one standardized state ``u: f32[D]``."""
        d = u.shape[-1]
        if self.prec_chol.ndim == 3:
            y = jnp.einsum("kd,kde->ke", u[None] - self.means, self.prec_chol,
                           precision=jax.lax.Precision.HIGHEST)
            log_det = jnp.sum(jnp.log(jnp.diagonal(self.prec_chol, axis1=-2, axis2=-1)), axis=-1)
        else:
            y = (u[None] - self.means) * self.prec_chol
            log_det = jnp.sum(jnp.log(self.prec_chol), axis=-1)
        log_comp = -0.5 * (d * jnp.log(2 * jnp.pi) + jnp.sum(jnp.square(y), axis=-1)) + log_det
        return jax.nn.logsumexp(log_comp + self.log_weights)


def fit_state_prior(u: np.ndarray, num_components: int, covariance_type: str = "auto",
                    reg_covar: float = 1e-2, seed: int = 0) -> StatePrior:
    """Fits ``StatePrior`` to standardized states ``u: f32[N, D]`` with scikit-learn's ``GaussianMixture``
    (host code, before any tracing). ``covariance_type``: ``"full"``, ``"diag"`` or ``"auto"`` (full up to
    ``FULL_COVARIANCE_MAX_DIM`` components, diagonal above, e.g. Pong's images); ``reg_covar`` is added to the
    variances.

    Raises ``ValueError`` when ``num_components`` is not an integer ``>= 1`` or exceeds the number of distinct
    states (such a mixture cannot be fitted: scikit-learn would leave the extra components empty); warns
    (``UserWarning``) when EM leaves components with less than ``EMPTY_COMPONENT_SAMPLES`` samples' weight."""
    if covariance_type not in ("auto", "full", "diag"):
        raise ValueError(f"covariance_type must be 'auto', 'full' or 'diag', got {covariance_type!r}")
    _check_count("num_components", num_components)
    u = np.asarray(u, np.float64)
    distinct = np.unique(u, axis=0).shape[0]
    if num_components > distinct:
        raise ValueError(f"num_components={num_components} but the prior has only {distinct} distinct states "
                         f"(of {u.shape[0]}): that many components cannot be fitted, ask for at most {distinct}")
    if covariance_type == "auto":
        covariance_type = "full" if u.shape[1] <= FULL_COVARIANCE_MAX_DIM else "diag"
    gm = GaussianMixture(num_components, covariance_type=covariance_type, reg_covar=reg_covar,
                         random_state=seed).fit(u)
    empty = int(np.sum(gm.weights_ * u.shape[0] < EMPTY_COMPONENT_SAMPLES))
    if empty:
        warnings.warn(f"{empty} of the {num_components} mixture components hold less than "
                      f"{EMPTY_COMPONENT_SAMPLES} of the {u.shape[0]} samples (weights {np.round(gm.weights_, 4)}): "
                      f"the fitted mixture effectively has {num_components - empty}", stacklevel=2)
    return StatePrior(means=jnp.asarray(gm.means_, jnp.float32),
                      prec_chol=jnp.asarray(gm.precisions_cholesky_, jnp.float32),
                      log_weights=jnp.asarray(np.log(gm.weights_), jnp.float32))


class TransitionModel(nn.Module):
    """``f(u, a) -> u'``: an MLP on the standardized state and the action vector predicting the change."""

    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, u, action):
        h = jnp.concatenate([u, action], axis=-1)
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return u + nn.Dense(u.shape[-1])(h)


@flax.struct.dataclass
class Prior:
    """Everything RGIA's regularizers need (traced arrays; the transition network's shape is static).

    state_mean, state_scale: f32[D] standardization; gaussian, mixture: ``StatePrior``s; reward_low,
    reward_high: the reward range; dynamics_params: parameters of ``dynamics`` (a ``TransitionModel``);
    num_samples: number of prior transitions.
    """

    state_mean: jax.Array
    state_scale: jax.Array
    gaussian: StatePrior
    mixture: StatePrior
    reward_low: jax.Array
    reward_high: jax.Array
    dynamics_params: dict
    dynamics: TransitionModel = flax.struct.field(pytree_node=False)
    num_samples: int = flax.struct.field(pytree_node=False)

    def standardize(self, s: jax.Array) -> jax.Array:
        """``u = (s - mean) / scale``."""
        return (s - self.state_mean) / self.state_scale

    def state_nll(self, which: str, s: jax.Array) -> jax.Array:
        """``R_s``: mean over the states ``s: f32[..., D]`` of ``-log mu_s(u) / D`` (``which``: ``"gaussian"``
        or ``"mixture"``)."""
        prior = self.gaussian if which == "gaussian" else self.mixture
        u = self.standardize(s).reshape(-1, s.shape[-1])
        return -jnp.mean(jax.vmap(prior.log_prob)(u)) / s.shape[-1]

    def reward_hinge(self, r: jax.Array) -> jax.Array:
        """``R_r``: mean of ``max(0, r_min - r) + max(0, r - r_max)``."""
        return jnp.mean(jax.nn.relu(self.reward_low - r) + jax.nn.relu(r - self.reward_high))

    def dynamics_error(self, s: jax.Array, action: jax.Array, s_next: jax.Array) -> jax.Array:
        """``R_f``: mean over transitions and components of ``(f(u, a) - u')^2`` in standardized units;
        ``action`` is the action vector (one-hot or soft for discrete actions)."""
        pred = self.dynamics.apply(self.dynamics_params, self.standardize(s), action)
        return jnp.mean(jnp.square(pred - self.standardize(s_next)))


def action_vector(action: jax.Array, discrete: bool, num_actions: int) -> jax.Array:
    """One-hot ``f32[..., A]`` for integer actions; continuous actions as they are."""
    return jax.nn.one_hot(action, num_actions) if discrete else jnp.asarray(action, jnp.float32)


def prior_split(key: jax.Array, num_transitions: int, fraction: float = DEFAULT_PRIOR_FRACTION):
    """A random ``fraction`` of ``num_transitions`` indices for the prior data and the rest (the victims'
    pool), as ``(prior_idx int[P], rest_idx int[N - P])`` with ``P = max(1, round(fraction * N))``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"prior fraction must lie in (0, 1), got {fraction}")
    perm = np.asarray(jax.random.permutation(key, num_transitions))
    p = max(1, int(round(fraction * num_transitions)))
    return perm[:p], perm[p:]


def fit_prior(key: jax.Array, prior_data: Transition, *, discrete: bool, num_actions: int,
              num_components: int = 4, covariance_type: str = "auto", reg_covar: float = 1e-2,
              hidden: Sequence[int] = (64, 64), dynamics_steps: int = 2000, learning_rate: float = 1e-3,
              reward_range: tuple | None = None) -> Prior:
    """Fits the attacker's ``Prior`` on ``prior_data`` (a ``Transition`` of ``N`` prior transitions).

    The Gaussian and the ``num_components`` mixture are fitted on the ``2N`` states ``s`` and ``s'``; the
    reward range is ``[min r, max r]`` of the prior unless ``reward_range=(low, high)`` is given; the
    transition model trains for ``dynamics_steps`` full-batch Adam steps on the mean squared standardized
    error. Host code (scikit-learn) plus one jitted training loop; call it before the attack.

    Raises:
      ValueError: on fewer than 2 prior transitions; non-finite states, rewards or continuous actions; discrete
        actions that are not integers in ``[0, num_actions)``, continuous ones not ``f32[N, num_actions]``; a
        non-finite ``reward_range`` or ``low > high``; ``dynamics_steps`` not an integer ``>= 1`` or
        ``learning_rate`` not a finite number ``> 0``; or bad mixture settings, among them more components than
        distinct prior states (``fit_state_prior``).
    """
    s, s_next = np.asarray(prior_data.obs, np.float32), np.asarray(prior_data.next_obs, np.float32)
    if s.ndim != 2 or s.shape[0] < 2 or s_next.shape != s.shape:
        raise ValueError(f"prior_data needs at least 2 transitions of flat states, got obs shape {s.shape} and "
                         f"next_obs shape {s_next.shape}")
    if not (np.isfinite(s).all() and np.isfinite(s_next).all()):
        raise ValueError("prior_data.obs and prior_data.next_obs: prior states must be finite")
    for name, value in (("num_actions", num_actions), ("num_components", num_components),
                        ("dynamics_steps", dynamics_steps)):
        _check_count(name, value)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.integer, np.floating)) or not (
            np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    _check_actions(np.asarray(prior_data.action), discrete, num_actions, s.shape[0])
    rewards = np.asarray(prior_data.reward)
    if rewards.shape != (s.shape[0],) or rewards.dtype.kind not in "iuf":
        raise ValueError(f"prior_data.reward: prior rewards must be numbers of shape ({s.shape[0]},), got "
                         f"{rewards.dtype}{list(rewards.shape)}")
    if not np.isfinite(rewards).all():
        raise ValueError(f"prior_data.reward: prior rewards must be finite, got {int(np.sum(~np.isfinite(rewards)))}"
                         f" non-finite of {rewards.size}")
    if reward_range is None:
        reward_range = (float(np.min(rewards)), float(np.max(rewards)))
    low, high = (float(v) for v in reward_range)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"reward_range must be finite, got ({low}, {high})")
    if low > high:
        raise ValueError(f"reward_range low > high: ({low}, {high})")
    states = np.concatenate([s, s_next])
    mean, scale = states.mean(0), np.maximum(states.std(0), SCALE_FLOOR)
    u = (states - mean) / scale
    gaussian = fit_state_prior(u, 1, covariance_type, reg_covar)
    mixture = fit_state_prior(u, num_components, covariance_type, reg_covar)
    model = TransitionModel(tuple(hidden))
    actions = action_vector(jnp.asarray(prior_data.action), discrete, num_actions)
    u_s, u_next = jnp.asarray((s - mean) / scale), jnp.asarray((s_next - mean) / scale)
    params = _train_dynamics(key, model, u_s, actions, u_next, dynamics_steps, learning_rate)
    return Prior(state_mean=jnp.asarray(mean), state_scale=jnp.asarray(scale), gaussian=gaussian,
                 mixture=mixture, reward_low=jnp.float32(low), reward_high=jnp.float32(high),
                 dynamics_params=params, dynamics=model, num_samples=int(s.shape[0]))


def _check_count(name: str, value) -> None:
    """``ValueError`` unless ``value`` is an integer (not a bool or a float) ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_actions(a: np.ndarray, discrete: bool, num_actions: int, n: int) -> None:
    """``ValueError`` unless ``a`` holds ``n`` integer actions in ``[0, num_actions)`` (``discrete``) or is a
    finite ``f32[n, num_actions]``."""
    if discrete:
        if a.shape != (n,) or a.dtype.kind not in "iu":
            raise ValueError(f"prior_data.action: discrete actions must be integers of shape ({n},), got "
                             f"{a.dtype}{list(a.shape)}")
        bad = a[(a < 0) | (a >= num_actions)]
        if bad.size:
            raise ValueError(f"prior_data.action: discrete actions must lie in [0, {num_actions}), got {bad[0]} "
                             f"({bad.size} of {n} out of range)")
    elif a.shape != (n, num_actions) or a.dtype.kind not in "iuf":
        raise ValueError(f"prior_data.action: continuous actions must have shape ({n}, {num_actions}), got "
                         f"{a.dtype}{list(a.shape)}")
    elif not np.isfinite(a).all():
        raise ValueError("prior_data.action: continuous actions must be finite")


def _train_dynamics(key, model, u_s, actions, u_next, num_steps, learning_rate):
    """Full-batch Adam on ``mean (f(u, a) - u')^2``; one jitted ``lax.scan``."""
    tx = optax.adam(learning_rate)

    @jax.jit
    def train(key):
        params = model.init(key, u_s[:1], actions[:1])
        loss = lambda p: jnp.mean(jnp.square(model.apply(p, u_s, actions) - u_next))

        def step(carry, _):
            p, opt = carry
            grads = jax.grad(loss)(p)
            updates, opt = tx.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=num_steps)
        return params

    return train(key)
