"""The jitted FL simulation against a plain Python-loop reference, determinism, vmap, validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import attacks, data, fl, models
from fedjax_attacks.fl.simulation import sample_batch, sample_clients

DIGITS = data.load("digits")
MLP = models.get("mlp", 10, DIGITS.input_shape, hidden=(16,))
SMALL = fl.FLConfig(num_clients=20, num_malicious=4, clients_per_round=5, batch_size=4, lr=0.1, rounds=4,
                    eval_every=2)


def _reference_rounds(config, key, num_rounds):
    """FedSGD with mean aggregation, one client at a time in Python, same key schedule as the simulation."""
    sim = fl.make_simulation(config, DIGITS, MLP)
    state = sim.init(key)
    params, k = np.asarray(state.params), state.key
    grad = jax.grad(MLP.loss)
    counts = []
    for _ in range(num_rounds):
        k, k_sample, k_batch, *_ = jax.random.split(k, 7)
        sampled = np.asarray(sample_clients(k_sample, config.num_clients, config.clients_per_round))
        batch_keys = jax.random.split(k_batch, (config.clients_per_round, 1))
        grads = []
        for i, client in enumerate(sampled):
            row, size = sim.partition.indices[client], sim.partition.sizes[client]
            idx = np.asarray(sample_batch(batch_keys[i, 0], jnp.asarray(row), size, config.batch_size))
            assert len(set(idx)) == config.batch_size and set(idx) <= set(row[:size])
            grads.append(np.asarray(grad(jnp.asarray(params), DIGITS.x_train[idx], DIGITS.y_train[idx])))
        params = params - config.lr * np.mean(grads, axis=0)
        counts.append(int(np.sum(sampled < config.num_malicious)))
    return params, counts


def test_jitted_run_equals_python_loop_reference():
    key = jax.random.PRNGKey(7)
    final, history = jax.jit(fl.make_run(SMALL, DIGITS, MLP))(key)
    expected, counts = _reference_rounds(SMALL, key, SMALL.rounds)
    np.testing.assert_allclose(final, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(history.num_malicious_selected, [counts[1], counts[3]])
    np.testing.assert_array_equal(history.round, [2, 4])
    accuracy = MLP.accuracy(jnp.asarray(expected), DIGITS.x_test, DIGITS.y_test)
    np.testing.assert_allclose(history.test_accuracy[-1], accuracy, atol=1e-6)


def test_sample_clients_is_without_replacement():
    ids = np.asarray(jax.vmap(lambda k: sample_clients(k, 12, 12))(jax.random.split(jax.random.PRNGKey(0), 5)))
    assert all(sorted(row) == list(range(12)) for row in ids)


def test_same_key_same_history_and_vmap_matches_single_runs():
    run = jax.jit(fl.make_run(SMALL, DIGITS, MLP))
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    batched_params, batched_history = jax.jit(jax.vmap(fl.make_run(SMALL, DIGITS, MLP)))(keys)
    for i in range(3):
        params, history = run(keys[i])
        np.testing.assert_allclose(batched_params[i], params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched_history.test_loss[i], history.test_loss, rtol=1e-5)
    again = run(keys[0])[1]
    np.testing.assert_array_equal(again.test_loss, run(keys[0])[1].test_loss)
    assert not np.allclose(batched_history.test_loss[0], batched_history.test_loss[1])


@pytest.mark.slow  # kept out of `make test` for time (10-minute budget); `make test-slow` runs it
def test_run_with_progress_matches_run():
    sim = fl.make_simulation(dataclasses.replace(SMALL, rounds=8), DIGITS, MLP)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    params, history = fl.run_with_progress(sim, keys, chunk_blocks=2)
    expected_params, expected_history = jax.jit(jax.vmap(sim.run))(keys)
    np.testing.assert_allclose(params, expected_params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.test_accuracy, expected_history.test_accuracy)


def _probe_attack():
    """Every malicious row becomes the sum of the benign rows the attacker can see."""

    def craft(key, inp):
        benign_sum = jnp.sum(jnp.where(inp.malicious_mask[:, None], 0.0, inp.updates), axis=0)
        return jnp.broadcast_to(benign_sum, inp.updates.shape)

    return attacks.Attack(name="probe", craft=craft)


def test_partial_knowledge_hides_benign_updates():
    attacks.register("test_probe", _probe_attack)
    # K = w = 4: every client is sampled each round; clients 0, 1 are malicious.
    base = fl.FLConfig(num_clients=4, num_malicious=2, clients_per_round=4, batch_size=4, rounds=1, eval_every=1,
                       attack="test_probe")
    key = jax.random.PRNGKey(0)
    theta0 = fl.make_simulation(base, DIGITS, MLP).init(key).params
    full = jax.jit(fl.make_run(base, DIGITS, MLP))(key)[0] - theta0
    partial = jax.jit(fl.make_run(dataclasses.replace(base, knowledge="partial"), DIGITS, MLP))(key)[0] - theta0
    # partial: mean(0, 0, g2, g3); full: mean(g2+g3, g2+g3, g2, g3) = 3x that.
    np.testing.assert_allclose(full, 3 * partial, rtol=1e-4, atol=1e-6)  # float32 rounding of 3 * x (TF32 on GPU)


def test_fedavg_sends_deltas_and_learns():
    config = fl.FLConfig(num_clients=20, num_malicious=0, clients_per_round=5, batch_size=8, local_steps=3,
                         lr=0.1, rounds=100, eval_every=50, mode="fedavg")
    _, history = jax.jit(fl.make_run(config, DIGITS, MLP))(jax.random.PRNGKey(0))
    assert history.test_accuracy[-1] > 0.8


def test_mean_without_attack_reaches_90_percent_on_digits():
    config = fl.FLConfig(rounds=1000, eval_every=500, lr=0.1)
    model = models.get("mlp", 10, DIGITS.input_shape)
    _, history = jax.jit(fl.make_run(config, DIGITS, model))(jax.random.PRNGKey(0))
    assert history.test_accuracy[-1] >= 0.9


@pytest.mark.parametrize("changes,match", [
    ({"clients_per_round": 101}, "exceeds num_clients"),
    ({"num_malicious": 101}, "num_malicious"),
    ({"batch_size": 50}, "larger than the smallest client"),
    ({"aggregator": "nope"}, "unknown aggregator"),
    ({"attack": "nope"}, "unknown attack"),
    ({"rounds": 10, "eval_every": 3}, "must divide"),
    ({"mode": "fedprox"}, "mode"),
    ({"local_steps": 2}, "local_steps"),
    ({"unroll": 0}, "unroll"),
    ({"partition": "weird"}, "unknown partition"),
])
def test_bad_config_raises_before_tracing(changes, match):
    with pytest.raises(ValueError, match=match):
        fl.make_run(dataclasses.replace(fl.FLConfig(), **changes), DIGITS, MLP)


def test_full_knowledge_attack_refused_under_partial_knowledge():
    attacks.register("test_needs_full", lambda: attacks.Attack("x", lambda k, i: i.updates, needs_full_knowledge=True))
    with pytest.raises(ValueError, match="knowledge"):
        fl.make_run(fl.FLConfig(attack="test_needs_full", knowledge="partial"), DIGITS, MLP)


def test_model_must_match_data():
    with pytest.raises(ValueError, match="input shape"):
        fl.make_run(fl.FLConfig(), DIGITS, models.get("mlp", 10, (28, 28, 1)))


@pytest.mark.slow  # the scalar-index form of test_interfaces' vmapped sweep test
def test_attack_sweep_matches_separate_runs():
    members = [("none", {}), ("ipm", {"eps": 5.0})]
    config = dataclasses.replace(SMALL, aggregator="median")
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    sweep = fl.make_attack_sweep(config, DIGITS, MLP, members)
    for index, (name, hparams) in enumerate(members):
        expected = jax.jit(jax.vmap(fl.make_run(dataclasses.replace(config, attack=name, attack_hparams=hparams),
                                                DIGITS, MLP)))(keys)[1]
        np.testing.assert_allclose(sweep(keys, jnp.int32(index)).test_loss, expected.test_loss, rtol=1e-5)


def test_unrolled_rounds_give_the_same_run():
    key = jax.random.PRNGKey(5)
    rolled = jax.jit(fl.make_run(SMALL, DIGITS, MLP))(key)[0]
    unrolled = jax.jit(fl.make_run(dataclasses.replace(SMALL, unroll=2), DIGITS, MLP))(key)[0]
    np.testing.assert_allclose(unrolled, rolled, rtol=1e-5, atol=1e-6)


def test_attack_sweep_refuses_concrete_indices_outside_its_members():
    """``lax.switch`` clamps: index 5 (or -1) of two members would silently run the last (or first) one. Concrete
    indices, scalar or vector, are refused before anything is traced; traced ones are documented as clamped."""
    sweep = fl.make_attack_sweep(SMALL, DIGITS, MLP, [("none", {}), ("sign_flip", {})])
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    for index in (5, -1, 2, np.int32(2), jnp.int32(-1), jnp.array([0, 2]), np.array([-1, 1])):
        with pytest.raises(ValueError, match=r"attack_index .* \[0, 2\)"):
            sweep(keys, index)
        with pytest.raises(ValueError, match=r"attack_index .* \[0, 2\)"):
            sweep.lower(keys, index)
    for index in (True, 1.0, jnp.array([0.0, 1.0]), "1"):
        with pytest.raises(ValueError, match="attack_index"):
            sweep(keys, index)
    sweep.lower(keys, np.array([1, 0]))  # concrete indices in range pass the check (lowered, not compiled)
    assert jax.eval_shape(lambda i: sweep(keys, i), 5).test_accuracy.shape == (2, 2)  # traced: unchecked
