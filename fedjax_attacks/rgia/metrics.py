"""RGIA's metrics (seed paper 001, sec. 5): reconstruction quality of one attack and consistency across its
random restarts.

A tuple is compared as the vector ``x = [s, a, r, s']`` (``a`` one-hot for discrete actions). A reconstructed
batch is unordered, so it is first matched to the true batch by the assignment of least total squared error
(``metrics.optimal_assignment``). Definitions, for ``B`` matched tuples:

* ``MSE = mean_i mean_j (x~_ij - x_ij)^2`` over tuples ``i`` and vector components ``j``;
* ``RA`` (reconstruction accuracy) ``= mean`` over the fields ``s, a, r, s'`` of the fraction of their
  components recovered: a state or reward component when ``|x~ - x| <= tol * scale`` (``scale`` of that
  component, ``max(1, std)`` of the prior data by default in the benchmark), a discrete action when it is exactly
  the true one, a continuous action component when ``|a~ - a| <= tol``;
* ``GME`` (gradient matching error) ``= ||g(x~) - g_bar||^2 / ||g_bar||^2`` with ``g(x~)`` the victim's true
  gradient on the decoded reconstruction and ``g_bar`` the gradient the attacker received;
* ``TE`` (transition error) ``= mean_i ||f_true(s~_i, a~_i) - s~'_i||_2`` with ``f_true`` the environment's own
  step started from ``s~_i``: how far the reconstruction is from a transition the environment can make.

Across ``R`` restarts of one target (each restart's batch matched to the truth first), with ``x_r`` the
reconstruction of one true tuple by restart ``r`` and ``x_bar`` their mean:

* ``ED`` (Euclidean dispersion) ``= mean_r ||x_r - x_bar||_2``;
* ``CD`` (consistency distance) ``= mean_{r < r'} ||x_r - x_r'||_2``, the expected distance between the answers
  of two restarts;
* ``SS`` (silhouette score, scikit-learn's ``silhouette_score``) over every restart's reconstruction of every
  true tuple of every target, labelled by the true tuple: near 1 when the restarts of each tuple agree and stay
  apart from those of other tuples, near 0 or below when restarts scatter.
"""

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import silhouette_score

from fedjax_attacks.inversion.metrics import optimal_assignment
from fedjax_attacks.rgia.priors import action_vector
from fedjax_attacks.rl.replay import Transition


def tuple_vectors(batch: Transition, discrete: bool, num_actions: int) -> jax.Array:
    """``[s, a, r, s']`` per tuple: ``f32[..., B, 2 D + A + 1]`` (one-hot ``a`` for discrete actions)."""
    a = action_vector(batch.action, discrete, num_actions)
    return jnp.concatenate([batch.obs, a, batch.reward[..., None], batch.next_obs], axis=-1)


def match(recon: jax.Array, truth: jax.Array) -> jax.Array:
    """``perm`` pairing ``recon[perm]`` (``f32[B, D]`` tuple vectors) with ``truth`` at least total squared error."""
    cost = jnp.sum(jnp.square(truth[:, None] - recon[None]), axis=-1)
    return optimal_assignment(cost)


def matched(batch: Transition, truth: Transition, discrete: bool, num_actions: int) -> Transition:
    """``batch`` reordered to pair with ``truth`` (``match`` on the tuple vectors)."""
    perm = match(tuple_vectors(batch, discrete, num_actions), tuple_vectors(truth, discrete, num_actions))
    return jax.tree.map(lambda x: x[perm], batch)


def mse(recon: Transition, truth: Transition, discrete: bool, num_actions: int) -> jax.Array:
    """``MSE`` of matched batches (see the module docstring)."""
    return jnp.mean(jnp.square(tuple_vectors(recon, discrete, num_actions) - tuple_vectors(truth, discrete, num_actions)))


def reconstruction_accuracy(recon: Transition, truth: Transition, discrete: bool, *, tol: float = 0.1,
                            state_scale=1.0, reward_scale=1.0) -> dict:
    """``RA`` of matched batches and its per-field parts ``{"ra", "s", "a", "r", "s2"}`` (module docstring).
    ``state_scale``: f32[D] or scalar; ``reward_scale``: scalar."""
    within = lambda x, y, scale: jnp.mean((jnp.abs(x - y) <= tol * scale).astype(jnp.float32))
    if discrete:
        a = jnp.mean((recon.action == truth.action).astype(jnp.float32))
    else:
        a = within(recon.action, truth.action, 1.0)
    parts = {"s": within(recon.obs, truth.obs, state_scale), "a": a,
             "r": within(recon.reward, truth.reward, reward_scale),
             "s2": within(recon.next_obs, truth.next_obs, state_scale)}
    return {"ra": (parts["s"] + parts["a"] + parts["r"] + parts["s2"]) / 4.0, **parts}


def gradient_matching_error(g: jax.Array, g_bar: jax.Array) -> jax.Array:
    """``GME = ||g - g_bar||^2 / ||g_bar||^2`` of flat gradients."""
    return jnp.sum(jnp.square(g - g_bar)) / jnp.maximum(jnp.sum(jnp.square(g_bar)), 1e-30)


def transition_error(true_step, key: jax.Array, batch: Transition) -> jax.Array:
    """``TE = mean_i ||f_true(s_i, a_i) - s'_i||_2`` with ``true_step(key, obs, action) -> next_obs``."""
    keys = jax.random.split(key, batch.obs.shape[0])
    predicted = jax.vmap(true_step)(keys, batch.obs, batch.action)
    return jnp.mean(jnp.linalg.norm(predicted - batch.next_obs, axis=-1))


def euclidean_dispersion(x: jax.Array) -> jax.Array:
    """``ED = mean_r ||x_r - x_bar||_2`` of ``x: f32[R, D]`` (one true tuple's reconstructions)."""
    return jnp.mean(jnp.linalg.norm(x - jnp.mean(x, axis=0), axis=-1))


def consistency_distance(x: jax.Array) -> jax.Array:
    """``CD = mean_{r < r'} ||x_r - x_r'||_2`` of ``x: f32[R, D]`` (0 for a single restart)."""
    r = x.shape[0]
    dist = jnp.linalg.norm(x[:, None] - x[None], axis=-1)
    return jnp.sum(dist) / max(r * (r - 1), 1)


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """``SS``: scikit-learn's silhouette score of the points ``x: f32[N, D]`` labelled by their true tuple
    (host code). NaN when there are fewer than 2 labels or no label with 2 points."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return float("nan")
    return float(silhouette_score(np.asarray(x, np.float64), labels))
