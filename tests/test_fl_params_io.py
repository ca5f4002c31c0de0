"""FL's export_params / import_params (shared with RL through fedjax_attacks.runner): a bit-exact round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import data, fl, models, rl, runner

DIGITS = data.load("digits")
MLP = models.get("mlp", 10, DIGITS.input_shape, hidden=(8,))
TINY = fl.FLConfig(num_clients=10, num_malicious=0, clients_per_round=4, batch_size=4, rounds=2, eval_every=1)


def test_one_pair_shared_by_fl_rl_and_runner():
    assert fl.export_params is runner.export_params is rl.export_params
    assert fl.import_params is runner.import_params is rl.import_params


def test_fl_params_round_trip_bit_exact(tmp_path):
    sim = fl.make_simulation(TINY, DIGITS, MLP)
    trained, _ = jax.jit(sim.run)(jax.random.PRNGKey(0))
    params = jnp.stack([trained, sim.init(jax.random.PRNGKey(1)).params])  # f32[2, d], like a batch of seeds
    path = str(tmp_path / "theta.msgpack")
    fl.export_params(path, params)
    back = fl.import_params(path, jnp.zeros_like(params))
    np.testing.assert_array_equal(back, params)
    one = str(tmp_path / "theta0.msgpack")
    fl.export_params(one, params[0])
    theta = fl.import_params(one, MLP.init(jax.random.PRNGKey(1)))  # `like` = a fresh model's flat parameters
    np.testing.assert_array_equal(theta, params[0])
    # the imported model predicts what the trained one does
    np.testing.assert_array_equal(MLP.apply(jnp.asarray(theta), DIGITS.x_test[:16]),
                                  MLP.apply(params[0], DIGITS.x_test[:16]))


def test_import_refuses_other_shapes(tmp_path):
    path = str(tmp_path / "p.msgpack")
    fl.export_params(path, jnp.arange(5.0))
    with pytest.raises(ValueError, match="shapes"):
        fl.import_params(path, jnp.zeros(4))
    with pytest.raises(ValueError, match="shaped like"):
        fl.import_params(path, {"w": jnp.zeros(5)})
