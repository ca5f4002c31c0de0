"""Gradient-matching losses, the image prior, the gradient of a model on soft labels, and label inference.

Symbols: ``g`` is the gradient of the dummy data, ``g_bar`` the shared (target) gradient, both flat f32[d].
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def l2_distance(g: jax.Array, g_bar: jax.Array) -> jax.Array:
    """DLG's matching loss (Zhu et al. 2019): ``||g - g_bar||_2^2``."""
    return jnp.sum(jnp.square(g - g_bar))


def cosine_distance(g: jax.Array, g_bar: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Inverting gradients' matching loss (Geiping et al. 2020): ``1 - <g, g_bar> / (||g|| ||g_bar||)``.

    One cosine over the whole flat parameter vector, as in the reference implementation; ``eps`` keeps a
    zero gradient finite (its distance is then 1).
    """
    norms = jnp.maximum(jnp.linalg.norm(g) * jnp.linalg.norm(g_bar), eps)
    return 1.0 - jnp.vdot(g, g_bar, precision=jax.lax.Precision.HIGHEST) / norms


def total_variation(x: jax.Array) -> jax.Array:
    """Anisotropic total variation TV(x) of images ``x: f32[..., H, W, C]`` -> f32[...].

    ``mean |x[i+1, j] - x[i, j]| + mean |x[i, j+1] - x[i, j]|`` per image, as in inverting gradients.
    """
    dy = jnp.mean(jnp.abs(jnp.diff(x, axis=-3)), axis=(-3, -2, -1))
    dx = jnp.mean(jnp.abs(jnp.diff(x, axis=-2)), axis=(-3, -2, -1))
    return dx + dy


def soft_label_gradient(model, params: jax.Array, x: jax.Array, probs: jax.Array) -> jax.Array:
    """``grad_theta F(theta)`` with ``F = mean_i CE(softmax(f_theta(x_i)), probs_i)``; flat f32[d].

    With one-hot ``probs`` this is the gradient a client shares in FedSGD (mean cross-entropy on its batch).
    """

    def loss(p):
        return jnp.mean(optax.softmax_cross_entropy(model.apply(p, x), probs))

    return jax.grad(loss)(params)


def output_bias_indices(model) -> np.ndarray:
    """Positions of the output layer's bias ``b_c`` in the flat parameter vector, int[K] (host, not jittable).

    Found by probing: d logit_k / d theta_j is ``[k == c]`` for the bias of class ``c`` at every input, so
    the columns of the logit Jacobian that are that unit vector at two random inputs are the bias entries.
    Raises ``ValueError`` if the model has no such bias (then optimize the labels jointly instead).
    """
    params = model.init(jax.random.PRNGKey(0))
    xs = jax.random.uniform(jax.random.PRNGKey(1), (2, 1, *model.input_shape))
    jac = np.stack([np.asarray(jax.jacobian(lambda p, x=x: model.apply(p, x)[0])(params)) for x in xs])
    num_classes = jac.shape[1]
    unit = np.all((jac == 0.0) | (jac == 1.0), axis=(0, 1)) & (jac.sum(axis=(0, 1)) == 2.0)
    indices = np.full(num_classes, -1)
    for j in np.flatnonzero(unit):
        indices[int(np.argmax(jac[0, :, j]))] = j
    if np.any(indices < 0):
        raise ValueError("the model's logits have no additive output bias; use labels='joint'")
    return indices


def infer_labels(bias_grad: jax.Array, batch_size: int, mean_probs: jax.Array | None = None) -> jax.Array:
    """Labels of the batch behind a shared gradient, from the output bias gradient ``g_b: f32[K]``.

    For the mean cross-entropy, ``g_b = mean_i (p_i - y_i)``, so the count of class ``c`` is
    ``n_c = B (p_bar_c - g_b,c)``, exact if ``mean_probs = p_bar`` is the batch's mean prediction (default
    ``1/K``: an untrained model). Negative estimates are set to 0, the rest rescaled to sum to ``B`` and
    rounded by largest remainder. For ``B = 1`` this is iDLG's rule (Zhao et al. 2020): the only class with
    a negative bias gradient. Returns int32[B], sorted by class.
    """
    num_classes = bias_grad.shape[-1]
    if mean_probs is None:
        mean_probs = jnp.full((num_classes,), 1.0 / num_classes)
    counts = jnp.maximum(batch_size * (mean_probs - bias_grad), 0.0)
    counts = counts * batch_size / jnp.maximum(jnp.sum(counts), 1e-12)
    floors = jnp.floor(counts)
    remainder = batch_size - jnp.sum(floors).astype(jnp.int32)
    order = jnp.argsort(-(counts - floors))
    bonus = jnp.zeros(num_classes).at[order].set((jnp.arange(num_classes) < remainder).astype(floors.dtype))
    ints = (floors + bonus).astype(jnp.int32)
    return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ints, total_repeat_length=batch_size)
