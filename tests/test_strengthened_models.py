"""Forward passes of every zoo model against a hand-written NumPy forward (issue 18), and the loss helpers
(cross_entropy, accuracy) against their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import models
from fedjax_attacks.models import accuracy, cross_entropy


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
