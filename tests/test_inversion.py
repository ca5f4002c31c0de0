"""Tests for fedjax_attacks.inversion: losses, label inference, the optimizer loop, FL view, metrics, defense."""

import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_attacks import data, models
from fedjax_attacks import inversion as inv
from fedjax_attacks.inversion import metrics
from fedjax_attacks.inversion.optimize import step_decay_schedule


def test_importing_inversion_loads_neither_gymnax_nor_sklearn():
    """Image gradient inversion needs no RL environments and no scikit-learn: RGIA, which does, lives in
    ``fedjax_attacks.rgia``; a fresh interpreter importing ``fedjax_attacks.inversion`` leaves both unloaded."""
    code = ("import sys, fedjax_attacks.inversion; "
            "print(sorted(m for m in ('gymnax', 'sklearn') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def mlp(digits):
    return models.get("mlp", digits.num_classes, digits.x_train.shape[1:], hidden=(32,))


# ---------------------------------------------------------------- matching losses


def test_l2_and_cosine_hand_computed():
    g = jnp.array([1.0, 2.0, 2.0])
    t = jnp.array([2.0, 0.0, 2.0])
    assert float(inv.l2_distance(g, t)) == pytest.approx(1.0 + 4.0 + 0.0)
    # <g, t> = 6, ||g|| = 3, ||t|| = sqrt(8)
    assert float(inv.cosine_distance(g, t)) == pytest.approx(1.0 - 6.0 / (3.0 * np.sqrt(8.0)), rel=1e-6)
    assert float(inv.cosine_distance(g, 5.0 * g)) == pytest.approx(0.0, abs=1e-6)
    assert float(inv.cosine_distance(g, -g)) == pytest.approx(2.0, abs=1e-6)
    assert float(inv.cosine_distance(jnp.zeros(3), t)) == pytest.approx(1.0)


def test_total_variation_hand_computed():
    x = np.array([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]], np.float32)[None, :, :, None]  # [1, 2, 3, 1]
    dy = np.mean(np.abs([2.0 - 0.0, 2.0 - 1.0, 2.0 - 3.0]))
    dx = np.mean(np.abs([1.0, 2.0, 0.0, 0.0]))
    np.testing.assert_allclose(inv.total_variation(jnp.asarray(x)), [dx + dy], rtol=1e-6)
    assert float(inv.total_variation(jnp.ones((4, 4, 1)))) == 0.0


def test_soft_label_gradient_one_hot_equals_client_gradient(mlp, digits):
    params = mlp.init(jax.random.PRNGKey(0))
    x, y = digits.x_train[:5], digits.y_train[:5]
    g = inv.soft_label_gradient(mlp, params, x, jax.nn.one_hot(y, 10))
    np.testing.assert_allclose(g, jax.grad(mlp.loss)(params, x, y), atol=1e-6)


# ---------------------------------------------------------------- label inference


def test_output_bias_indices_point_at_last_dense_bias(mlp):
    idx = inv.output_bias_indices(mlp)
    tree = mlp.unravel(jnp.zeros(mlp.num_params).at[idx].set(jnp.arange(1.0, 11.0)))
    np.testing.assert_array_equal(tree["Dense_1"]["bias"], np.arange(1.0, 11.0))


@pytest.mark.parametrize("batch_size", [1, 2, 6, 16])
def test_infer_labels_exact_with_true_mean_probs(mlp, digits, batch_size):
    params = mlp.init(jax.random.PRNGKey(3))
    x, y = digits.x_train[:batch_size], digits.y_train[:batch_size]
    g_b = jax.grad(mlp.loss)(params, x, y)[inv.output_bias_indices(mlp)]
    p_bar = jnp.mean(jax.nn.softmax(mlp.apply(params, x)), axis=0)
    np.testing.assert_array_equal(inv.infer_labels(g_b, batch_size, p_bar), np.sort(np.asarray(y)))
    if batch_size == 1:  # iDLG needs no knowledge of the predictions
        np.testing.assert_array_equal(inv.infer_labels(g_b, 1), np.asarray(y))


# ---------------------------------------------------------------- optimizer loop


def _quadratic_problem():
    def loss(z, aux):
        return jnp.sum(jnp.square(z["a"] - aux)) + 0.1 * jnp.sum(jnp.abs(z["a"]))

    def init(key):
        return {"a": 3.0 * jax.random.normal(key, (4,))}

    return loss, init


def test_minimizer_matches_python_loop():
    loss, init = _quadratic_problem()
    opt = optax.adam(optax.piecewise_constant_schedule(0.1, {5: 0.1}))
    target = jnp.arange(4.0)
    minimize = jax.jit(inv.make_minimizer(loss, opt, 12, signed_gradients=True, project=lambda z: {"a": jnp.clip(z["a"], -1, 2)}))
    z0 = init(jax.random.PRNGKey(0))
    z_final, hist = minimize(z0, target)
    z, state, ref_hist = z0, opt.init(z0), []
    for _ in range(12):
        value, grads = jax.value_and_grad(loss)(z, target)
        updates, state = opt.update(jax.tree_util.tree_map(jnp.sign, grads), state, z)
        z = {"a": jnp.clip(optax.apply_updates(z, updates)["a"], -1, 2)}
        ref_hist.append(value)
    np.testing.assert_allclose(z_final["a"], z["a"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hist, ref_hist, rtol=1e-5)


def test_restarts_are_independent_and_best_is_kept():
    loss, init = _quadratic_problem()
    minimize = inv.make_minimizer(loss, optax.adam(0.05), 30)
    solve = jax.jit(inv.make_multistart(minimize, init, loss, num_restarts=5))
    key, target = jax.random.PRNGKey(7), jnp.arange(4.0)
    out = solve(key, target)
    for r, k in enumerate(jax.random.split(key, 5)):  # each restart = a lone run from its own start
        alone, hist = minimize(init(k), target)
        np.testing.assert_allclose(out.finals["a"][r], alone["a"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.loss_history[r], hist, rtol=1e-5)
    assert len(np.unique(np.round(np.asarray(out.finals["a"][:, 0]), 4))) > 1
    i = int(np.argmin(out.final_losses))
    np.testing.assert_allclose(out.best["a"], out.finals["a"][i])
    assert float(out.best_loss) == pytest.approx(float(loss(out.best, target)), rel=1e-5)


def test_multistart_ignores_non_finite_restarts():
    def loss(z, aux):
        return jnp.where(z["a"][0] > 0, jnp.nan, jnp.sum(z["a"] ** 2))

    solve = inv.make_multistart(lambda z, aux: (z, jnp.zeros(1)), lambda k: {"a": jax.random.normal(k, (2,))}, loss, 16)
    out = solve(jax.random.PRNGKey(0), None)
    assert float(out.best["a"][0]) <= 0 and np.isfinite(float(out.best_loss))


# ---------------------------------------------------------------- attacks


@pytest.mark.parametrize("labels", ["infer", "joint"])
def test_batch1_inverting_gradients_recovers_input(mlp, digits, labels):
    params = mlp.init(jax.random.PRNGKey(1))
    x, y = digits.x_train[7:8], digits.y_train[7:8]
    g_bar = jax.grad(mlp.loss)(params, x, y)
    attack = inv.inverting_gradients(mlp, batch_size=1, num_steps=300, num_restarts=2, labels=labels)
    rec = attack(jax.random.PRNGKey(0), params, g_bar)
    assert rec.x.shape == (1, 8, 8, 1) and rec.restart_x.shape == (2, 1, 8, 8, 1)
    assert float(jnp.min(rec.x)) >= 0.0 and float(jnp.max(rec.x)) <= 1.0  # boxed
    assert float(inv.mse(rec.x, x)[0]) < 0.01
    assert int(rec.labels[0]) == int(y[0])
    noise_mse = float(inv.mse(jax.random.uniform(jax.random.PRNGKey(5), x.shape), x)[0])
    assert noise_mse > 0.1


def test_batch1_dlg_recovers_input(mlp, digits):
    params = mlp.init(jax.random.PRNGKey(1))
    x, y = digits.x_train[3:4], digits.y_train[3:4]
    g_bar = jax.grad(mlp.loss)(params, x, y)
    rec = inv.dlg(mlp, batch_size=1, num_steps=300, num_restarts=2)(jax.random.PRNGKey(0), params, g_bar)
    assert float(inv.mse(rec.x, x)[0]) < 0.01 and int(rec.labels[0]) == int(y[0])
    np.testing.assert_allclose(jnp.sum(rec.probs, -1), 1.0, rtol=1e-5)


def test_attack_validates_config(mlp):
    with pytest.raises(ValueError, match="labels"):
        inv.inverting_gradients(mlp, batch_size=1, labels="oracle")
    with pytest.raises(ValueError, match="batch_size"):
        inv.dlg(mlp, batch_size=0)
    with pytest.raises(ValueError, match="data_range"):
        inv.inverting_gradients(mlp, batch_size=1, data_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="num_steps"):
        inv.inverting_gradients(mlp, batch_size=1, num_steps=0)
    attack = inv.dlg(mlp, batch_size=1, num_steps=2)
    with pytest.raises(ValueError, match="g_bar"):
        attack(jax.random.PRNGKey(0), jnp.zeros(mlp.num_params), jnp.zeros(3))


# ---------------------------------------------------------------- attacker's view in FL


def test_gradient_estimate_equals_fedsgd_mean_gradient(mlp, digits):
    lr, n_clients, b = 0.05, 4, 3
    xs = digits.x_train[: 3 * n_clients * b].reshape(3, n_clients, b, 8, 8, 1)
    ys = digits.y_train[: 3 * n_clients * b].reshape(3, n_clients, b)
    client_grads = jax.jit(jax.vmap(jax.grad(mlp.loss), in_axes=(None, 0, 0)))

    thetas, means = [mlp.init(jax.random.PRNGKey(2))], []
    for t in range(3):  # FedSGD with mean aggregation, by hand
        mean_g = jnp.mean(client_grads(thetas[-1], xs[t], ys[t]), axis=0)
        means.append(mean_g)
        thetas.append(thetas[-1] - lr * mean_g)
    est = inv.gradient_estimate(thetas[0], thetas[1], lr)
    np.testing.assert_allclose(est, means[0], rtol=2e-3, atol=2e-5)

    # the attacker was sampled at rounds 0, 1 and 3: targets (theta_0, g_0) and (theta_1, mean(g_1, g_2))
    snaps, rounds = jnp.stack([thetas[0], thetas[1], thetas[3]]), jnp.array([0, 1, 3])
    targets = inv.targets_from_snapshots(snaps, rounds, lr)
    np.testing.assert_array_equal(targets.rounds_elapsed, [1, 2])
    np.testing.assert_allclose(targets.params, jnp.stack([thetas[0], thetas[1]]))
    np.testing.assert_allclose(targets.grads[0], means[0], rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(targets.grads[1], (means[1] + means[2]) / 2, rtol=2e-3, atol=2e-5)
    with pytest.raises(ValueError):
        inv.targets_from_snapshots(snaps[:1], rounds[:1], lr)


# ---------------------------------------------------------------- metrics


def _ssim_reference(a, b, win, data_range=1.0):
    """SSIM by explicit loops over windows (Wang et al. 2004), one channel."""
    s = win.shape[0]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(a.shape[0] - s + 1):
        for j in range(a.shape[1] - s + 1):
            pa, pb = a[i : i + s, j : j + s], b[i : i + s, j : j + s]
            ma, mb = np.sum(win * pa), np.sum(win * pb)
            va, vb = np.sum(win * (pa - ma) ** 2), np.sum(win * (pb - mb) ** 2)
            cov = np.sum(win * (pa - ma) * (pb - mb))
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def test_ssim_psnr_mse_against_reference_formulas():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 9, 10, 2)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    win = inv.metrics.gaussian_window(7, 1.5)
    ref_ssim = [np.mean([_ssim_reference(x[i, ..., c], y[i, ..., c], win) for c in range(2)]) for i in range(3)]
    np.testing.assert_allclose(inv.ssim(x, y), ref_ssim, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inv.ssim(x, x), 1.0, rtol=1e-5)
    ref_mse = np.mean((x - y) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(inv.mse(x, y), ref_mse, rtol=1e-5)
    np.testing.assert_allclose(inv.psnr(x, y), 10 * np.log10(1.0 / ref_mse), rtol=1e-5)
    np.testing.assert_allclose(inv.psnr(2 * x, 2 * y, data_range=2.0), 10 * np.log10(1.0 / ref_mse), rtol=1e-4)
    with pytest.raises(ValueError):
        inv.ssim(x[:, :4, :4], y[:, :4, :4])


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_optimal_assignment_matches_exhaustive_python(b, seed):
    cost = np.random.default_rng(seed).uniform(size=(b, b)).astype(np.float32)
    best = min(itertools.permutations(range(b)), key=lambda p: sum(cost[i, p[i]] for i in range(b)))
    got = np.asarray(inv.optimal_assignment(jnp.asarray(cost)))
    assert np.isclose(sum(cost[i, got[i]] for i in range(b)), sum(cost[i, best[i]] for i in range(b)), rtol=1e-6)


def test_match_batch_recovers_shuffle_small_and_large(digits):
    for b in (5, 12):  # exhaustive in JAX, and scipy through a host callback (also under vmap)
        truth = digits.x_train[:b]
        perm = np.random.default_rng(b).permutation(b)
        recon = truth[perm] + 0.01
        idx = inv.match_batch(recon, truth)
        np.testing.assert_array_equal(np.asarray(recon)[np.asarray(idx)], np.asarray(truth) + 0.01)
        scores = jax.jit(jax.vmap(inv.batch_scores))(recon[None], jnp.asarray(digits.y_train[:b][perm])[None],
                                                      truth[None], digits.y_train[:b][None])
        assert float(scores["label_accuracy"][0]) == 1.0
        assert float(scores["psnr"][0]) == pytest.approx(40.0, abs=0.1)


# ---------------------------------------------------------------- defense, denoiser


def test_clip_and_privatize():
    g = jnp.array([3.0, 4.0])
    np.testing.assert_allclose(inv.clip_by_norm(g, 1.0), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(inv.clip_by_norm(g, 10.0), g)
    np.testing.assert_allclose(inv.privatize(jax.random.PRNGKey(0), g, 0.0), g)
    big = inv.privatize(jax.random.PRNGKey(0), jnp.zeros(20_000), 0.04)
    assert float(jnp.var(big)) == pytest.approx(0.04, rel=0.05)
    out = inv.sweep(jax.random.PRNGKey(1), g, jnp.array([0.0, 1e-2, 1.0]), jnp.array([jnp.inf, 1.0]))
    assert out.shape == (3, 2, 2)
    np.testing.assert_allclose(out[0, 0], g)
    np.testing.assert_allclose(out[0, 1], [0.6, 0.8], rtol=1e-6)
    assert not np.allclose(out[2, 0], out[2, 1] / 0.2)  # independent noise per cell


@pytest.mark.parametrize("variance, max_norm, field", [
    (-1e-3, jnp.inf, "variance"), (float("nan"), jnp.inf, "variance"), (jnp.inf, jnp.inf, "variance"),
    ("0.1", jnp.inf, "variance"), (0.0, -1.0, "max_norm"), (0.0, float("nan"), "max_norm"),
    (jnp.array([0.0, -1.0]), jnp.array([jnp.inf]), "variances"),
    (jnp.array([0.0]), jnp.array([jnp.inf, jnp.nan]), "max_norms")])
def test_privatize_and_sweep_refuse_negative_or_nan_settings(variance, max_norm, field):
    """A negative max_norm used to flip the gradient, a negative or NaN variance to give NaN parameters."""
    g, key = jnp.array([3.0, 4.0]), jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=f"^{field} must be"):
        if jnp.ndim(variance) or jnp.ndim(max_norm):
            inv.sweep(key, g, variance, max_norm)
        else:
            inv.privatize(key, g, variance, max_norm)


def test_privatize_checks_only_concrete_settings():
    """Traced settings (a vmapped sweep) are checked where they were made; clipping at 0 zeroes the gradient."""
    g = jnp.array([3.0, 4.0])
    out = jax.jit(inv.privatize)(jax.random.PRNGKey(0), g, 0.0, 5.0)
    np.testing.assert_allclose(out, g)
    np.testing.assert_allclose(inv.privatize(jax.random.PRNGKey(0), g, 0, 0.0), [0.0, 0.0])


def test_denoiser_reduces_noise_and_learned_distribution(digits):
    clean = digits.x_train[:300]
    den = inv.train_denoiser(jax.random.PRNGKey(0), clean, num_steps=150, batch_size=16, learning_rate=3e-3, features=(8, 16))
    test = digits.x_test[:50]
    noisy = jnp.clip(test + 0.3 * jax.random.normal(jax.random.PRNGKey(1), test.shape), 0, 1)
    assert float(jnp.mean(inv.mse(den(noisy), test))) < 0.6 * float(jnp.mean(inv.mse(noisy, test)))
    x, y = inv.learned_distribution(noisy[:4], jnp.arange(4), clean[:6], digits.y_train[:6], denoiser=den)
    assert x.shape == (10, 8, 8, 1) and y.shape == (10,)
    np.testing.assert_allclose(x[4:], clean[:6])
    with pytest.raises(ValueError):
        inv.train_denoiser(jax.random.PRNGKey(0), clean[:, :7, :7])

# ----------------------------------------------------------------------------------------------------
# Strengthened: learned_distribution, step_decay_schedule, PSNR / MSE
# learned_distribution fully checked, step_decay_schedule at its boundaries, PSNR / MSE against formulas
# on batches (issue 18).


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
