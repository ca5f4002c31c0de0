"""MDA / GDA and the Byzantine behaviours against brute-force references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_attacks import attacks, frl
from fedjax_attacks.frl import agreement as agr
from fedjax_attacks.frl import byzantine as byz


def brute_mda(x, f):
    n = len(x)
    best, best_diam = None, np.inf
    for subset in itertools.combinations(range(n), n - f):
        diam = max((np.linalg.norm(x[a] - x[b]) for a in subset for b in subset), default=0.0)
        if diam < best_diam - 1e-9:
            best, best_diam = subset, diam
    return x[list(best)].mean(0)


def brute_gda(own, x, f):
    order = np.argsort([np.linalg.norm(v - own) for v in x], kind="stable")
    return x[order[: len(x) - f]].mean(0)


@pytest.mark.slow  # make test: test_frl_coverage checks agreement against brute-force rounds at one size
@settings(max_examples=8, deadline=None)
@given(nf=st.sampled_from([(2, 1), (5, 0), (5, 2), (7, 2)]), seed=st.integers(0, 2**31 - 1))
def test_mda_and_gda_match_brute_force(nf, seed):
    n, f = nf  # few distinct shapes: each (n, f) compiles once
    x = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(agr.mda(jnp.asarray(x), f)), brute_mda(x.astype(np.float64), f),
                               rtol=1e-5, atol=1e-5)
    own = x[0]
    np.testing.assert_allclose(np.asarray(agr.gda(jnp.asarray(own), jnp.asarray(x), f)), brute_gda(own, x, f),
                               rtol=1e-5, atol=1e-5)


def test_mda_ignores_far_and_non_finite_vectors():
    honest = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    x = np.concatenate([honest, [[1e3] * 4, [np.nan] * 4]]).astype(np.float32)
    np.testing.assert_allclose(np.asarray(agr.mda(jnp.asarray(x), 2)), honest.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(agr.gda(jnp.asarray(honest[0]), jnp.asarray(x), 2)), honest.mean(0),
                               rtol=1e-5)


@pytest.mark.parametrize("rule", ["mda", "gda"])
@pytest.mark.parametrize("behaviour", ["large_noise", "avg_zero"])
def test_agreement_shrinks_honest_diameter(rule, behaviour):
    n, f = 7, 2
    params = jax.random.normal(jax.random.PRNGKey(0), (n, 10))
    byzantine = byz.byzantine_mask(jax.random.PRNGKey(1), n, f, resample=True)
    honest = ~byzantine
    before = float(agr.diameter(params, honest))
    honest_hull_max = np.abs(np.asarray(params)[np.asarray(honest)]).max()
    after = agr.average_agreement(jax.random.PRNGKey(2), rule, params, byzantine, attacks.get(behaviour), f,
                                  num_rounds=3)
    assert float(agr.diameter(after, honest)) < 0.5 * before
    # the honest agents stay within the honest inputs' range (the Byzantine vectors were filtered out)
    assert np.abs(np.asarray(after)[np.asarray(honest)]).max() <= honest_hull_max + 1e-5


def test_avg_zero_makes_the_plain_average_zero():
    n, f = 6, 2
    grads = jax.random.normal(jax.random.PRNGKey(0), (n, 5))
    byzantine = jnp.array([False, True, False, False, True, False])
    received = byz.received(jax.random.PRNGKey(1), attacks.get("avg_zero"), grads, byzantine, 0)
    np.testing.assert_allclose(np.asarray(received.mean(0)), 0.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(received)[~np.asarray(byzantine)],
                                  np.asarray(grads)[~np.asarray(byzantine)])
    assert int(byz.byzantine_mask(jax.random.PRNGKey(2), n, f, resample=False).sum()) == f


def test_large_noise_differs_per_recipient_and_keeps_honest_messages():
    n = 5
    vectors = jnp.ones((n, 3))
    byzantine = jnp.array([True, False, False, False, False])
    messages = np.asarray(byz.broadcast(jax.random.PRNGKey(0), attacks.get("large_noise"), vectors, byzantine, 0))
    assert messages.shape == (n, n, 3)
    assert np.all(messages[:, 1:] == 1.0)
    assert np.all(np.abs(messages[:, 0]) <= 1000.0) and np.abs(messages[:, 0]).max() > 100.0
    assert len({tuple(np.round(m, 3)) for m in messages[:, 0]}) == n  # a different vector for each recipient


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown attack"):
        frl.DecByzPGConfig(num_byzantine=1, attack="flip").validate()
    with pytest.raises(ValueError, match="agreement rule"):
        agr.check_rule("median", 5, 1)
    with pytest.raises(ValueError, match="num_byzantine"):
        agr.check_rule("mda", 5, 5)


def test_alie_messages_sit_z_sigma_below_the_honest_mean():
    vectors = jax.random.normal(jax.random.PRNGKey(0), (7, 4)) + 2.0
    byzantine = jnp.array([True, False, False, True, False, False, False])
    received = np.asarray(byz.received(jax.random.PRNGKey(1), attacks.get("alie", z=1.5), vectors, byzantine, 0))
    honest = np.asarray(vectors)[~np.asarray(byzantine)]
    expected = honest.mean(0) - 1.5 * honest.std(0)
    np.testing.assert_allclose(received[np.asarray(byzantine)], np.broadcast_to(expected, (2, 4)), rtol=1e-5)
    np.testing.assert_array_equal(received[~np.asarray(byzantine)], honest)
