"""Model zoo and the flat-parameter view."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_attacks import models
from fedjax_attacks.inversion import metrics
from fedjax_attacks.models import accuracy, cross_entropy, flat, zoo


@pytest.mark.parametrize("name,shape", [("mlp", (8, 8, 1)), ("cnn", (8, 8, 1)), ("lenet5", (28, 28, 1)),
                                        ("paper_cnn", (28, 28, 1)),
                                        pytest.param("lenet5", (32, 32, 3), marks=pytest.mark.slow)])
def test_flat_round_trip_and_logits(name, shape):
    model = models.get(name, 10, shape)
    theta = model.init(jax.random.PRNGKey(1))
    assert theta.shape == (model.num_params,)
    np.testing.assert_array_equal(model.ravel(model.unravel(theta)), theta)
    x = jnp.ones((3, *shape))
    assert model.apply(theta, x).shape == (3, 10)


def test_paper_cnn_layer_shapes():
    model = models.get("paper_cnn", 10, (28, 28, 1))
    p = model.unravel(model.init(jax.random.PRNGKey(0)))
    kernels = [p[f"Conv_{i}"]["kernel"].shape for i in range(3)]
    assert kernels == [(8, 8, 1, 64), (6, 6, 64, 128), (5, 5, 128, 128)]
    assert p["Dense_0"]["kernel"].shape == (128, 10)


def test_loss_and_accuracy_match_optax():
    model = models.get("mlp", 4, (2, 2, 1))
    theta = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 2, 1))
    y = jnp.array([0, 1, 2, 3, 0])
    logits = model.apply(theta, x)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    np.testing.assert_allclose(model.loss(theta, x, y), expected, rtol=1e-6)
    np.testing.assert_allclose(model.loss(theta, x, jax.nn.one_hot(y, 4)), expected, rtol=1e-6)
    np.testing.assert_allclose(model.accuracy(theta, x, y), np.mean(np.argmax(logits, 1) == np.asarray(y)))


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        models.get("resnet1000", 10, (8, 8, 1))
    for name, side in (("paper_cnn", 26), ("lenet5", 11), ("cnn", 1)):  # one below each smallest usable side
        with pytest.raises(ValueError, match="at least"):
            models.get(name, 10, (side, side, 1))
        models.get(name, 10, (side + 1, side + 1, 1))
    with pytest.raises(ValueError, match="num_classes"):
        models.get("mlp", 1, (8, 8, 1))

# ----------------------------------------------------------------------------------------------------
# Strengthened: tests that fail on plausible wrong models
# Forward passes of every zoo model against a hand-written NumPy forward (issue 18), and the loss helpers
# (cross_entropy, accuracy) against their formulas.


def _conv(x, w, b, stride, padding):
    """NumPy NHWC convolution (cross-correlation, as flax/XLA), SAME padding as XLA pads (extra on the high
    side), an explicit sum over kernel offsets."""
    n, h, wd, _ = x.shape
    kh, kw, _, cout = w.shape
    if padding == "SAME":
        out_h, out_w = -(-h // stride), -(-wd // stride)
        ph, pw = max((out_h - 1) * stride + kh - h, 0), max((out_w - 1) * stride + kw - wd, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        out_h, out_w = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, out_h, out_w, cout))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride, :]  # [n, out_h, out_w, cin]
            out += patch @ w[i, j]
    return out + b


def _avg_pool(x):
    n, h, w, c = x.shape
    h, w = h // 2 * 2, w // 2 * 2
    return x[:, :h, :w].reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _relu(x):
    return np.maximum(x, 0.0)


def _reference(name, p, x):
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    x = np.asarray(x, np.float64)
    if name == "mlp":
        h = x.reshape(len(x), -1)
        for i in range(len(p) - 1):
            h = _relu(_dense(h, p[f"Dense_{i}"]))
        return _dense(h, p[f"Dense_{len(p) - 1}"])
    conv = lambda h, k, s, pad: _conv(h, p[k]["kernel"], p[k]["bias"], s, pad)
    if name == "cnn":
        h = _relu(conv(x, "Conv_0", 1, "SAME"))
        h = _relu(conv(h, "Conv_1", 2, "SAME"))
        h = _relu(_dense(h.reshape(len(h), -1), p["Dense_0"]))
        return _dense(h, p["Dense_1"])
    if name == "lenet5":
        h = _avg_pool(np.tanh(conv(x, "Conv_0", 1, "SAME")))
        h = _avg_pool(np.tanh(conv(h, "Conv_1", 1, "VALID")))
        h = np.tanh(_dense(h.reshape(len(h), -1), p["Dense_0"]))
        h = np.tanh(_dense(h, p["Dense_1"]))
        return _dense(h, p["Dense_2"])
    assert name == "paper_cnn"
    h = _relu(conv(x, "Conv_0", 2, "SAME"))
    h = _relu(conv(h, "Conv_1", 2, "VALID"))
    h = _relu(conv(h, "Conv_2", 1, "VALID"))
    return _dense(h.reshape(len(h), -1), p["Dense_0"])


@pytest.mark.parametrize("name, shape, kwargs", [
    ("mlp", (8, 8, 1), {"hidden": (7, 5)}), ("cnn", (8, 8, 1), {}), ("cnn", (7, 9, 2), {}),
    pytest.param("lenet5", (14, 14, 1), {}, marks=pytest.mark.slow),  # bigger convolutions: `make test-slow`
    pytest.param("paper_cnn", (28, 28, 1), {}, marks=pytest.mark.slow),
])
def test_forward_matches_numpy_reference(name, shape, kwargs):
    model = models.get(name, 3, shape, **kwargs)
    theta = model.init(jax.random.PRNGKey(1))
    # biases are initialised to zero: perturb everything so a dropped bias or a swapped layer shows
    theta = theta + 0.1 * jax.random.normal(jax.random.PRNGKey(2), theta.shape)
    x = 0.5 + jax.random.uniform(jax.random.PRNGKey(3), (2, *shape))
    with jax.default_matmul_precision("highest"):  # the wiring is under test, not a TF32 device's rounding
        logits = jax.jit(model.apply)(theta, x)
    assert logits.shape == (2, 3)
    np.testing.assert_allclose(logits, _reference(name, model.unravel(theta), x), rtol=2e-4, atol=2e-4)


def test_cross_entropy_and_accuracy_match_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32) * 3
    labels = np.array([0, 3, 1, 1, 2, 0])
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
                               -log_softmax[np.arange(6), labels].mean(), rtol=1e-5)
    soft = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(soft)),
                               -(soft * log_softmax).sum(1).mean(), rtol=1e-5)
    logits[:, :] = 0.0
    logits[np.arange(6), [0, 3, 2, 1, 0, 0]] = 1.0  # 4 of 6 right
    assert float(accuracy(jnp.asarray(logits), jnp.asarray(labels))) == pytest.approx(4 / 6)

# ----------------------------------------------------------------------------------------------------
# Written for mutants of models/zoo.py, flat.py and inversion/metrics.py
# Tests added to kill the mutants of ``make mutation`` that survived the model and reconstruction-metric tests
# (issue 18). Every zoo model is rebuilt here from the architecture in its docstring (layer widths, kernel sizes,
# strides, paddings, pooling, activations) and checked against a NumPy forward on small non-square inputs; the
# metrics against NumPy formulas on data offset away from zero.


# ---------------------------------------------------------------- the zoo against its docstrings

# (kind, features, kernel, stride, padding, activation); "pool" is a 2x2 average pool with stride 2, "flat" flattens
SPECS = {
    "mlp": [("flat",), ("dense", 64, "relu"), ("dense", "C", None)],
    "cnn": [("conv", 16, 3, 1, "SAME", "relu"), ("conv", 32, 3, 2, "SAME", "relu"), ("flat",),
            ("dense", 64, "relu"), ("dense", "C", None)],
    "lenet5": [("conv", 6, 5, 1, "SAME", "tanh"), ("pool",), ("conv", 16, 5, 1, "VALID", "tanh"), ("pool",),
               ("flat",), ("dense", 120, "tanh"), ("dense", 84, "tanh"), ("dense", "C", None)],
    "paper_cnn": [("conv", 64, 8, 2, "SAME", "relu"), ("conv", 128, 6, 2, "VALID", "relu"),
                  ("conv", 128, 5, 1, "VALID", "relu"), ("flat",), ("dense", "C", None)],
}
ACT = {"relu": lambda h: np.maximum(h, 0.0), "tanh": np.tanh, None: lambda h: h}


def _np_conv(x, w, b, stride, padding):
    """NHWC cross-correlation as XLA computes it (SAME pads ``max((out - 1) s + k - in, 0)``, the extra on the high
    side), as an explicit sum over kernel offsets."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    if padding == "SAME":
        oh, ow = -(-h // stride), -(-wd // stride)
        ph, pw = max((oh - 1) * stride + k - h, 0), max((ow - 1) * stride + k - wd, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, oh, ow, w.shape[-1]))
    for i in range(k):
        for j in range(k):
            out += x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :] @ w[i, j]
    return out + b


def _np_forward(spec, params, x, num_classes):
    """The NumPy forward of ``spec`` with flax's layer names (Conv_i, Dense_i in order); also checks each layer's
    parameter shapes against the spec. Returns float64 logits."""
    h = np.asarray(x, np.float64)
    counts = {"conv": 0, "dense": 0}
    for layer in spec:
        if layer[0] == "flat":
            h = h.reshape(len(h), -1)
        elif layer[0] == "pool":
            n, hh, ww, c = h.shape
            hh, ww = hh // 2 * 2, ww // 2 * 2
            h = h[:, :hh, :ww].reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))
        else:
            name = f"{layer[0].capitalize()}_{counts[layer[0]]}"
            counts[layer[0]] += 1
            p = {k: np.asarray(v, np.float64) for k, v in params.pop(name).items()}
            features = num_classes if layer[1] == "C" else layer[1]
            if layer[0] == "conv":
                _, features, k, stride, padding, act = layer
                assert p["kernel"].shape == (k, k, h.shape[-1], features), (name, p["kernel"].shape)
                h = ACT[act](_np_conv(h, p["kernel"], p["bias"], stride, padding))
            else:
                assert p["kernel"].shape == (h.shape[-1], features), (name, p["kernel"].shape)
                h = ACT[layer[2]](h @ p["kernel"] + p["bias"])
            assert p["bias"].shape == (features,), (name, p["bias"].shape)
    assert not params, f"layers the docstring does not name: {sorted(params)}"
    return h


@pytest.mark.parametrize("name, shape", [("mlp", (3, 5, 2)), ("cnn", (7, 9, 2)), ("lenet5", (16, 19, 2)),
                                         ("paper_cnn", (27, 30, 1))])
def test_zoo_model_is_its_docstring_architecture(name, shape):
    """Widths, kernel sizes, strides, paddings, pooling and activations: every parameter shape as the docstring
    says, and the logits equal a NumPy forward (random biases, inputs away from 0). The module runs eagerly on
    parameters drawn in NumPy for shapes from ``eval_shape`` (``get`` would compile an init: seconds per model)."""
    module = models.MODELS[name](num_classes=3)
    x = 0.5 + np.random.default_rng(3).uniform(size=(2, *shape)).astype(np.float32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x[:1])["params"]
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes)
    with jax.default_matmul_precision("highest"):
        logits = module.apply({"params": params}, x)
    ref = _np_forward(SPECS[name], dict(params), x, 3)
    assert logits.shape == ref.shape == (2, 3)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_get_validates_its_arguments_at_each_boundary(monkeypatch):
    """Every input side the architecture can take is accepted, one below (in H or in W) is refused; 2 classes and
    any H x W x C input are accepted, 1 class, an unknown name or another rank are refused. (``flat_model`` is
    stubbed: the checks run before it, and the stub records what ``get`` hands it.)"""
    monkeypatch.setattr(zoo, "flat_model", lambda *args: args)
    for name, side in (("mlp", 1), ("cnn", 2), ("lenet5", 12), ("paper_cnn", 27)):
        _, module, shape, classes = models.get(name, 2, np.array([side, side + 3, 1]))
        assert type(module) is models.MODELS[name] and module.num_classes == classes == 2
        assert shape == (side, side + 3, 1) and all(type(s) is int for s in shape)
        for bad in ((side - 1, side + 3, 1), (side + 3, side - 1, 1)):
            with pytest.raises(ValueError, match="at least"):
                models.get(name, 2, bad)
    for bad_shape in ((8, 8), (8, 8, 1, 1)):
        with pytest.raises(ValueError, match=r"\(H, W, C\)"):
            models.get("mlp", 2, bad_shape)
    with pytest.raises(ValueError, match="num_classes"):
        models.get("mlp", 1, (2, 2, 1))
    with pytest.raises(ValueError, match="unknown model"):
        models.get("MLP", 2, (2, 2, 1))
    assert models.get("mlp", 2, (2, 3, 1), hidden=(4,))[1].hidden == (4,)


# ---------------------------------------------------------------- FlatModel and the loss helpers


def test_flat_model_contract():
    """``init_pytree`` is the pytree of ``init(PRNGKey(0))`` (the docstring's template), ``ravel`` inverts
    ``unravel``, the dataclass is frozen and its repr leaves the pytree out."""
    model = models.get("mlp", 3, (2, 2, 1), hidden=(3,))
    assert model.num_params == 4 * 3 + 3 + 3 * 3 + 3 and model.input_shape == (2, 2, 1)
    np.testing.assert_array_equal(model.ravel(model.init_pytree), model.init(jax.random.PRNGKey(0)))
    assert not np.array_equal(model.init(jax.random.PRNGKey(0)), model.init(jax.random.PRNGKey(1)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.num_classes = 4
    assert "init_pytree" not in repr(model) and "num_params=27" in repr(model)


def test_accuracy_and_cross_entropy_with_leading_batch_axes():
    """Logits f32[..., C] with two leading axes: the arg max runs over the class axis, soft labels of the same rank
    select the soft branch and integer labels the other."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4)).astype(np.float32) + 1.0
    labels = np.argmax(logits, -1)
    labels[0, 0] = (labels[0, 0] + 1) % 4  # 5 of 6 right
    assert float(flat.accuracy(jnp.asarray(logits), jnp.asarray(labels))) == pytest.approx(5 / 6)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    hard = -np.take_along_axis(log_softmax, labels[..., None], -1).mean()
    np.testing.assert_allclose(flat.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), hard, rtol=1e-5)
    soft = rng.dirichlet(np.ones(4), size=(2, 3)).astype(np.float32)
    np.testing.assert_allclose(flat.cross_entropy(jnp.asarray(logits), jnp.asarray(soft)),
                               -(soft * log_softmax).sum(-1).mean(), rtol=1e-5)


# ---------------------------------------------------------------- inversion.metrics

def _np_ssim(a, b, size, sigma, data_range):
    """Plain SSIM of two [H, W] images: Gaussian-weighted moments over every valid window, then the mean."""
    r = np.arange(size) - (size - 1) / 2
    win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    win /= win.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            pa, pb = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
            ma, mb = np.sum(win * pa), np.sum(win * pb)
            va, vb, cov = np.sum(win * (pa - ma) ** 2), np.sum(win * (pb - mb) ** 2), np.sum(win * (pa - ma) * (pb - mb))
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def test_gaussian_window_formula():
    """w[i, j] proportional to exp(-((i - c)^2 + (j - c)^2) / (2 sigma^2)), c = (size - 1) / 2, summing to 1."""
    for size, sigma in ((5, 1.3), (4, 0.7)):
        r = np.arange(size) - (size - 1) / 2
        ref = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
        np.testing.assert_allclose(metrics.gaussian_window(size, sigma), ref / ref.sum(), rtol=1e-6)


def test_ssim_of_dark_images_single_image_and_data_range():
    """Dark images (the constants C1 = (0.01 L)^2, C2 = (0.03 L)^2 matter there), one unbatched [H, W, C] image
    with C != W, a window as wide as the image, and a data range of 3 against the NumPy SSIM."""
    rng = np.random.default_rng(4)
    x = (0.05 * rng.uniform(size=(7, 8, 2))).astype(np.float32)
    y = np.clip(x + 0.02 * rng.normal(size=x.shape), 0, None).astype(np.float32)
    for data_range, window in ((1.0, 7), (3.0, 5)):
        ref = np.mean([_np_ssim(x[..., c].astype(np.float64), y[..., c].astype(np.float64), window, 1.5, data_range)
                       for c in range(2)])
        got = metrics.ssim(jnp.asarray(x), jnp.asarray(y), data_range=data_range, window_size=window)
        assert got.shape == ()
        np.testing.assert_allclose(got, ref, rtol=1e-4)
    with pytest.raises(ValueError, match="window_size"):
        metrics.ssim(jnp.asarray(x), jnp.asarray(y), window_size=8)


def test_mse_psnr_single_image_rank_checks_and_identical_images():
    """One [H, W, C] image gives a scalar; identical images give the floor's finite 100 dB; [H, W] arrays and
    mismatched shapes are refused."""
    rng = np.random.default_rng(5)
    x = 0.5 + 0.4 * rng.uniform(size=(3, 4, 2)).astype(np.float32)
    y = 0.5 + 0.4 * rng.uniform(size=(3, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(metrics.mse(jnp.asarray(x), jnp.asarray(y)), np.mean((x - y) ** 2), rtol=1e-5)
    assert float(metrics.psnr(jnp.asarray(x), jnp.asarray(x))) == pytest.approx(100.0)
    for a, b in ((x[..., 0], y[..., 0]), (x, y[:2])):
        with pytest.raises(ValueError, match="same shape"):
            metrics.mse(jnp.asarray(a), jnp.asarray(b))


def test_optimal_assignment_both_paths_against_exhaustive():
    """A 4x4 cost (exhaustive path in JAX) and a stack of two 9x9 costs (scipy path, leading axis kept) against
    the brute-force optimum of each (never the identity); a non-square or 1-D cost is refused."""
    rng = np.random.default_rng(6)
    cost4 = rng.uniform(size=(4, 4)).astype(np.float32)
    np.fill_diagonal(cost4, 5.0)
    best = min(itertools.permutations(range(4)), key=lambda p: sum(cost4[i, p[i]] for i in range(4)))
    np.testing.assert_array_equal(metrics.optimal_assignment(jnp.asarray(cost4)), best)
    perms = [rng.permutation(9) for _ in range(2)]
    cost9 = np.stack([np.where(np.arange(9)[None, :] == p[:, None], 0.0, 1.0 + rng.uniform(size=(9, 9)))
                      for p in perms]).astype(np.float32)  # the permutation p costs 0, every other pairing >= 1
    got = metrics.optimal_assignment(jnp.asarray(cost9))
    assert got.shape == (2, 9) and got.dtype == jnp.int32
    np.testing.assert_array_equal(got, np.stack(perms))
    stack4 = np.stack([cost4, cost4[:, ::-1], cost4.T])  # the exhaustive path keeps leading axes too
    want = [min(itertools.permutations(range(4)), key=lambda p: sum(c[i, p[i]] for i in range(4))) for c in stack4]
    np.testing.assert_array_equal(metrics.optimal_assignment(jnp.asarray(stack4)), want)
    for bad in (np.zeros((3, 4), np.float32), np.zeros(3, np.float32)):
        with pytest.raises(ValueError, match="square"):
            metrics.optimal_assignment(jnp.asarray(bad))


def test_batch_scores_against_numpy_with_a_wrong_label():
    """Matched pairs scored with the default data range 1; 3 of 4 labels right gives 0.75."""
    rng = np.random.default_rng(7)
    truth = (0.3 + 0.5 * rng.uniform(size=(4, 7, 7, 1))).astype(np.float32)
    perm = np.array([2, 0, 3, 1])
    recon = (truth + 0.05 * rng.normal(size=truth.shape)).astype(np.float32)[perm]
    labels = np.array([1, 2, 3, 4])
    recon_labels = labels.copy()
    recon_labels[0] = 9
    out = metrics.batch_scores(jnp.asarray(recon), jnp.asarray(recon_labels[perm]), jnp.asarray(truth),
                               jnp.asarray(labels))
    matched = recon[np.argsort(perm)]
    err = ((matched - truth) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(out["mse"], err.mean(), rtol=1e-5)
    np.testing.assert_allclose(out["psnr"], np.mean(10 * np.log10(1.0 / err)), rtol=1e-5)
    ref_ssim = np.mean([_np_ssim(matched[i, ..., 0], truth[i, ..., 0], 7, 1.5, 1.0) for i in range(4)])
    np.testing.assert_allclose(out["ssim"], ref_ssim, rtol=1e-4)
    assert float(out["label_accuracy"]) == pytest.approx(0.75)
