"""Reconstruction quality in JAX: MSE, PSNR, SSIM, label accuracy, and optimal matching of batches.

Images are ``f32[..., H, W, C]``; per-image functions return one value per leading index. A reconstructed
batch is unordered, so ``batch_scores`` first matches reconstructions to ground-truth images by the
assignment of least total MSE (Hungarian / exhaustive), then scores the matched pairs.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

BRUTE_FORCE_MAX = 8


def mse(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-image mean squared error ``mean (x - y)^2`` over H, W, C; ``x`` and ``y`` must have the same shape
    (a batch is never broadcast against a batch of another size)."""
    _check_same_shape(x, y, "mse")
    return jnp.mean(jnp.square(x - y), axis=(-3, -2, -1))


def _check_same_shape(x, y, name: str) -> None:
    if jnp.shape(x) != jnp.shape(y) or jnp.ndim(x) < 3:
        raise ValueError(f"{name}: x and y must be images of the same shape [..., H, W, C], got {jnp.shape(x)} "
                         f"and {jnp.shape(y)}")


def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Per-image peak signal-to-noise ratio ``10 log10(L^2 / MSE)`` in dB, ``L = data_range``.

    The MSE is floored at 1e-10 so identical images give a finite 100 dB (for L = 1).
    """
    return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse(x, y), 1e-10))


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """Normalized 2-D Gaussian window f32[size, size] (the SSIM weighting ``w``)."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g)
    return (w / w.sum()).astype(np.float32)


def ssim(
    x: jax.Array, y: jax.Array, data_range: float = 1.0, window_size: int = 7, sigma: float = 1.5
) -> jax.Array:
    """Per-image structural similarity (Wang et al. 2004), mean over valid windows and channels.

    ``SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))``
    with Gaussian-weighted local statistics, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``. The default 7x7 window
    (sigma 1.5) fits 8x8 digits; use 11 for 28x28 images as in the original paper.
    """
    _check_same_shape(x, y, "ssim")
    h, w = x.shape[-3], x.shape[-2]
    if window_size > min(h, w):
        raise ValueError(f"window_size {window_size} larger than the {h}x{w} images")
    win = jnp.asarray(gaussian_window(window_size, sigma))

    def filt(img):  # img: [H, W] -> [H - s + 1, W - s + 1]; full float32 (a metric must not depend on the device)
        return jax.scipy.signal.correlate2d(img, win, mode="valid", precision=jax.lax.Precision.HIGHEST)

    def one_channel(a, b):
        mu_a, mu_b = filt(a), filt(b)
        var_a = filt(a * a) - mu_a**2
        var_b = filt(b * b) - mu_b**2
        cov = filt(a * b) - mu_a * mu_b
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        return jnp.mean(s)

    lead = x.shape[:-3]
    a = jnp.moveaxis(x, -1, -3).reshape(-1, h, w)
    b = jnp.moveaxis(y, -1, -3).reshape(-1, h, w)
    per_channel = jax.vmap(one_channel)(a, b).reshape(*lead, x.shape[-1])
    return jnp.mean(per_channel, axis=-1)


def optimal_assignment(cost: jax.Array) -> jax.Array:
    """Column matched to each row minimizing ``sum_i cost[i, perm[i]]``, for ``cost: f32[..., B, B]``;
    int32[..., B] (leading axes are independent problems).

    Exhaustive over the ``B!`` permutations in JAX for ``B <= 8``; scipy's ``linear_sum_assignment`` via
    ``jax.pure_callback`` (host) above that. Jittable and vmappable either way.
    """
    b = cost.shape[-1]
    if cost.shape[-2:] != (b, b):
        raise ValueError(f"cost must be square, got {cost.shape}")
    if b <= BRUTE_FORCE_MAX:
        perms = jnp.asarray(np.array(list(itertools.permutations(range(b))), dtype=np.int32))
        totals = jnp.sum(cost[..., jnp.arange(b), perms], axis=-1)  # [..., B!]
        return perms[jnp.argmin(totals, axis=-1)]

    def host(c):
        c = np.asarray(c)
        out = np.stack([scipy.optimize.linear_sum_assignment(m)[1] for m in c.reshape(-1, b, b)])
        return out.reshape(c.shape[:-1]).astype(np.int32)

    return jax.pure_callback(
        host, jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32), cost, vmap_method="expand_dims"
    )


def match_batch(recon: jax.Array, truth: jax.Array) -> jax.Array:
    """Indices ``perm`` such that ``recon[perm]`` is paired with ``truth`` (least total per-image MSE)."""
    cost = jax.vmap(lambda t: mse(recon, jnp.broadcast_to(t, recon.shape)))(truth)  # [B_true, B_recon]
    return optimal_assignment(cost)


def label_accuracy(pred: jax.Array, true: jax.Array) -> jax.Array:
    """Fraction of positions where ``pred == true`` (labels already matched)."""
    return jnp.mean((pred == true).astype(jnp.float32))


def batch_scores(
    recon_x: jax.Array, recon_labels: jax.Array, true_x: jax.Array, true_labels: jax.Array,
    data_range: float = 1.0,
) -> dict[str, jax.Array]:
    """Matches the batch (``match_batch``) and returns the mean ``mse``, ``psnr``, ``ssim`` over the pairs and
    the ``label_accuracy`` of the matched labels. Vmappable over targets."""
    perm = match_batch(recon_x, true_x)
    rx, ry = recon_x[perm], recon_labels[perm]
    return {
        "mse": jnp.mean(mse(rx, true_x)),
        "psnr": jnp.mean(psnr(rx, true_x, data_range)),
        "ssim": jnp.mean(ssim(rx, true_x, data_range)),
        "label_accuracy": label_accuracy(ry, true_labels),
    }
