"""learned_distribution fully checked, step_decay_schedule at its boundaries, PSNR / MSE against formulas
on batches (issue 18)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import inversion as inv
from fedjax_attacks.inversion import metrics
from fedjax_attacks.inversion.optimize import step_decay_schedule


def test_learned_distribution_every_row_and_label():
    rng = np.random.default_rng(0)
    recon = jnp.asarray(rng.uniform(size=(3, 4, 4, 1)).astype(np.float32))
    own_x = rng.uniform(size=(2, 4, 4, 1)).astype(np.float64)  # cast to the reconstructions' dtype
    own_y = np.array([7, 2], np.int64)
    denoiser = lambda x: 1.0 - x  # any map: its output must be what lands in P~
    x, y = inv.learned_distribution(recon, jnp.asarray([5.0, 0.0, 9.0]), own_x, own_y, denoiser=denoiser)
    assert x.dtype == jnp.float32 and y.dtype == jnp.int32
    np.testing.assert_allclose(x, np.concatenate([1.0 - np.asarray(recon), own_x]), rtol=1e-6)
    np.testing.assert_array_equal(y, [5, 0, 9, 7, 2])
    x_plain, _ = inv.learned_distribution(recon, jnp.asarray([5, 0, 9]), own_x, own_y)
    np.testing.assert_allclose(x_plain, np.concatenate([np.asarray(recon), own_x]), rtol=1e-6)


def test_step_decay_schedule_boundaries():
    schedule = step_decay_schedule(0.5, 80)  # x0.1 at steps 30, 50, 70
    for step, value in [(0, 0.5), (29, 0.5), (30, 0.05), (49, 0.05), (50, 0.005), (69, 0.005), (70, 5e-4),
                        (79, 5e-4)]:
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5), step


def test_psnr_and_mse_per_image_against_formulas():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(3, 5, 5, 2)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    mse = ((x - y) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(metrics.mse(jnp.asarray(x), jnp.asarray(y)), mse, rtol=1e-5)
    np.testing.assert_allclose(metrics.psnr(jnp.asarray(x), jnp.asarray(y)), 10 * np.log10(1.0 / mse), rtol=1e-5)
    np.testing.assert_allclose(metrics.psnr(jnp.asarray(2 * x), jnp.asarray(2 * y), data_range=2.0),
                               10 * np.log10(1.0 / mse), rtol=1e-5)
    with pytest.raises(ValueError):
        metrics.psnr(jnp.asarray(x), jnp.asarray(y[:1]))
