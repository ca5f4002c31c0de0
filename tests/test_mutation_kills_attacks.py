"""Tests added to kill the mutants of ``make mutation`` that survived the attack tests (issue 18): the masked
statistics shared by the attacks against NumPy on the selected rows, including the empty and one-row masks."""

import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks.attacks import AttackInput, stats

ROWS = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32) * 3 + np.float32([-40, -7, 0, 9, 50])


@pytest.mark.parametrize("mask", [[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1]])
def test_masked_statistics_match_numpy(mask):
    mask = np.asarray(mask, bool)
    rows, m = jnp.asarray(ROWS), jnp.asarray(mask)
    chosen = ROWS[mask].astype(np.float64)
    assert float(stats.masked_count(m)) == mask.sum()
    np.testing.assert_allclose(stats.masked_mean(rows, m), chosen.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.masked_std(rows, m), chosen.std(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats.masked_max(rows, m), chosen.max(0), rtol=1e-6)
    np.testing.assert_allclose(stats.masked_min(rows, m), chosen.min(0), rtol=1e-6)


def test_masked_statistics_of_an_empty_mask_are_zeros():
    m = jnp.zeros(6, bool)
    assert float(stats.masked_count(m)) == 0.0
    for fn in (stats.masked_mean, stats.masked_std, stats.masked_max, stats.masked_min):
        np.testing.assert_array_equal(fn(jnp.asarray(ROWS), m), np.zeros(5, np.float32))


def test_reference_mask_is_the_benign_rows_only_under_full_knowledge():
    malicious = jnp.asarray([True, False, False, True, False, False])
    for full in (True, False):
        inp = AttackInput(updates=jnp.asarray(ROWS), malicious_mask=malicious, round=jnp.int32(0),
                          full_knowledge=full)
        expected = ~np.asarray(malicious) if full else np.asarray(malicious)
        np.testing.assert_array_equal(stats.reference_mask(inp), expected)
