"""Model zoo and the flat-parameter view."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_attacks import models


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
