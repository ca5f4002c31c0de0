"""FL checks a wrong implementation fails (issue 18): who is sampled, over many keys, against exact
probabilities and an independent NumPy sampler; FedAvg's local steps and deltas against a loop reference."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_attacks import data, fl, models
from fedjax_attacks.fl.simulation import sample_batch, sample_clients

DIGITS = data.load("digits")
MLP = models.get("mlp", 10, DIGITS.input_shape, hidden=(8,))


def _within(counts, probs, draws, sigmas=5.0):
    """Every count within ``sigmas`` binomial standard deviations of ``draws * p``."""
    expected = draws * np.asarray(probs)
    sd = np.sqrt(draws * np.asarray(probs) * (1 - np.asarray(probs))) + 1e-9
    return np.all(np.abs(np.asarray(counts) - expected) <= sigmas * sd + 1e-9)


def test_sample_clients_is_uniform_over_clients_pairs_and_positions():
    K, w, draws = 10, 3, 6000
    ids = np.asarray(jax.vmap(lambda k: sample_clients(k, K, w))(jax.random.split(jax.random.PRNGKey(0), draws)))
    assert all(len(set(row)) == w for row in ids) and ids.min() >= 0 and ids.max() < K
    inclusion = np.bincount(ids.ravel(), minlength=K)
    assert _within(inclusion, [w / K] * K, draws), inclusion
    member = np.zeros((draws, K), int)
    np.put_along_axis(member, ids, 1, axis=1)
    pairs = member.T @ member  # co-inclusion counts
    off = pairs[~np.eye(K, dtype=bool)]
    assert _within(off, [w * (w - 1) / (K * (K - 1))] * off.size, draws), off  # no favoured neighbours
    first = np.bincount(ids[:, 0], minlength=K)
    assert _within(first, [1 / K] * K, draws), first  # the order is random too (slot 0 is any client)


def _hypergeometric(K, M, w):
    return np.array([math.comb(M, j) * math.comb(K - M, w - j) / math.comb(K, w) for j in range(w + 1)])


def test_malicious_per_round_follows_hypergeometric_like_an_independent_sampler():
    """The run's sampled malicious count per round, over 1200 rounds (seeds x rounds), against the exact
    hypergeometric law and against a NumPy sampler that knows nothing of the library."""
    config = fl.FLConfig(num_clients=12, num_malicious=4, clients_per_round=5, batch_size=2, rounds=4, eval_every=1)
    sim = fl.make_simulation(config, DIGITS, MLP)
    params = sim.default_params()

    def counts(key):
        state = sim.init(key)

        def body(state, _):
            rin = sim.client_updates(state, params)
            return state.replace(key=jax.random.split(state.key, 7)[0]), jnp.sum(rin.malicious_mask)

        return jax.lax.scan(body, state, None, length=4)[1]

    seen = np.asarray(jax.jit(jax.vmap(counts))(jax.random.split(jax.random.PRNGKey(5), 300))).ravel()
    pmf = _hypergeometric(12, 4, 5)
    hist = np.bincount(seen, minlength=6)
    assert _within(hist, pmf, seen.size), (hist, seen.size * pmf)
    rng = np.random.default_rng(0)
    independent = np.bincount([np.sum(rng.choice(12, 5, replace=False) < 4) for _ in range(seen.size)], minlength=6)
    assert np.abs(hist / seen.size - independent / seen.size).sum() < 0.12  # total variation, both ~ pmf


def test_fedavg_local_steps_and_deltas_match_a_loop_reference():
    """FedAvg with 3 local steps: each sampled client's update is (theta after 3 SGD steps on its own batches)
    minus theta, computed here one client and one step at a time; the server adds server_lr times their mean."""
    config = fl.FLConfig(num_clients=8, num_malicious=0, clients_per_round=3, batch_size=4, local_steps=3,
                         lr=0.3, server_lr=0.7, rounds=1, eval_every=1, mode="fedavg")
    sim = fl.make_simulation(config, DIGITS, MLP)
    state = sim.init(jax.random.PRNGKey(2))
    state = state.replace(params=state.params + 0.05 * jax.random.normal(jax.random.PRNGKey(9), state.params.shape))
    rin = jax.jit(sim.client_updates)(state, sim.default_params())
    _, k_sample, k_batch, *_ = jax.random.split(state.key, 7)
    sampled = np.asarray(sample_clients(k_sample, 8, 3))
    np.testing.assert_array_equal(rin.sampled, sampled)
    batch_keys = jax.random.split(k_batch, (3, 3))
    grad = jax.jit(jax.grad(MLP.loss))
    theta = np.asarray(state.params)
    expected, first_steps = [], []
    for i, client in enumerate(sampled):
        p = theta.copy()
        for step in range(3):
            row, size = sim.partition.indices[client], sim.partition.sizes[client]
            idx = np.asarray(sample_batch(batch_keys[i, step], jnp.asarray(row), size, 4))
            assert set(idx) <= set(row[:size])  # a client trains on its own data only
            p = p - 0.3 * np.asarray(grad(jnp.asarray(p), DIGITS.x_train[idx], DIGITS.y_train[idx]))
            if step == 0:
                first_steps.append(p - theta)
        expected.append(p - theta)
    np.testing.assert_allclose(rin.updates, np.stack(expected), rtol=2e-4, atol=1e-6)
    assert not np.allclose(rin.updates, np.stack(first_steps), atol=1e-4)  # the 3 steps matter
    new_state, _ = jax.jit(sim.server_step)(state, rin.updates, sim.default_params())
    np.testing.assert_allclose(new_state.params, theta + 0.7 * np.mean(expected, axis=0), rtol=1e-5, atol=1e-6)
