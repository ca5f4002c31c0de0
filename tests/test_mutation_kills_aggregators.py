"""Tests added to kill the mutants of ``make mutation`` that survived the aggregator tests (issue 18): the
pre-aggregators' defaults and edge cases against NumPy (norm clipping below norm 1, zero and non-finite rows,
``f = n - 1`` for NNM)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import aggregators as agg


def _clip_ref(x, c):
    x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, c / np.where(norms > 0, norms, 1.0))


def _rows():
    """Rows of norm 0, 0.3, 0.7, 0.95, 1.5, 4 and 40 (offset from zero, different directions)."""
    rng = np.random.default_rng(7)
    directions = rng.normal(size=(7, 5)) + 3.0
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return (directions * np.array([0.0, 0.3, 0.7, 0.95, 1.5, 4.0, 40.0])[:, None]).astype(np.float32)


@pytest.mark.parametrize("max_norm", [0.5, 2.0])
def test_norm_clip_matches_numpy_below_and_above_norm_one(max_norm):
    x = _rows()
    np.testing.assert_allclose(agg.norm_clip(max_norm)(jnp.asarray(x)), _clip_ref(x, max_norm), rtol=1e-6,
                               atol=1e-7)


def test_norm_clip_zeroes_non_finite_rows_and_keeps_the_others():
    x = _rows()
    x[2, 1], x[4, 0] = np.nan, np.inf
    got = np.asarray(agg.norm_clip(0.5)(jnp.asarray(x)))
    np.testing.assert_array_equal(got[[2, 4]], 0.0)
    keep = [0, 1, 3, 5, 6]
    np.testing.assert_allclose(got[keep], _clip_ref(x[keep], 0.5), rtol=1e-6, atol=1e-7)


def test_pre_aggregator_defaults():
    """norm_clip, clipped_mean and clipped_median clip to norm 2; NNM drops f = 1 neighbour; buckets hold 2."""
    x = _rows()
    clipped = _clip_ref(x, 2.0)
    np.testing.assert_allclose(agg.norm_clip()(jnp.asarray(x)), clipped, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(agg.clipped_mean()(jnp.asarray(x)), clipped.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(agg.clipped_median()(jnp.asarray(x)), np.median(clipped, 0), rtol=1e-5, atol=1e-6)
    big = 10 * x  # norms 0 to 400: the median comes from clipped rows
    np.testing.assert_allclose(agg.clipped_median()(jnp.asarray(big)), np.median(_clip_ref(big, 2.0), 0), rtol=1e-5,
                               atol=1e-6)
    dist = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    nnm_ref = np.stack([x[np.argsort(dist[i], kind="stable")[:6]].mean(0) for i in range(7)])
    np.testing.assert_allclose(agg.nnm()(jnp.asarray(x)), nnm_ref, rtol=1e-5, atol=1e-6)
    key = jax.random.key(0)
    assert agg.bucketing()(jnp.asarray(x), key=key).shape == (4, 5)  # ceil(7 / 2) buckets


def test_nnm_with_f_up_to_n_minus_one():
    x = _rows()
    np.testing.assert_allclose(agg.nnm(6)(jnp.asarray(x)), x, rtol=1e-6)  # each row's only neighbour is itself
    np.testing.assert_allclose(agg.nnm(0)(jnp.asarray(x)), np.broadcast_to(x.mean(0), x.shape), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="nnm needs f < n"):
        agg.nnm(7)(jnp.asarray(x))


def test_pre_aggregator_counts_refuse_below_their_minimum():
    agg.nnm(0), agg.bucketing(bucket_size=1)
    with pytest.raises(ValueError, match="num_byzantine"):
        agg.nnm(-1)
    with pytest.raises(ValueError, match="bucket_size"):
        agg.bucketing(bucket_size=0)


def test_norm_clip_keeps_a_row_whose_squared_norm_underflows():
    """Entries of 1e-30: the squared norm is 0 in float32 but the row is far shorter than C = 0.5, so it stays
    (it was once scaled by C: the fallback for a zero norm was read as norm 1)."""
    x = np.array([[1e-30] * 5, [0.1] * 5, [3.0] * 5], np.float32)
    got = np.asarray(agg.norm_clip(0.5)(jnp.asarray(x)))
    np.testing.assert_array_equal(got[:2], x[:2])
    np.testing.assert_allclose(got[2], _clip_ref(x[2:], 0.5)[0], rtol=1e-6)


def test_nnm_drops_a_non_finite_row_from_every_mix():
    """A NaN row is nobody's neighbour (each finite row's n - f = 6 nearest are the 6 finite rows) and is replaced
    by the mean of the finite rows' mixes."""
    x = _rows() + 10.0
    x[0, 1] = np.nan
    got = np.asarray(agg.nnm(1)(jnp.asarray(x)))
    np.testing.assert_allclose(got, np.broadcast_to(x[1:].mean(0), (7, 5)), rtol=1e-5)


def test_nnm_divides_each_mix_by_its_own_count_when_overflowing_distances_tie_with_a_nan_row():
    """Rows 0 and 2 are finite but 3e19 apart, so their squared distance overflows float32 to inf and ties with the
    NaN row 1. Ties go to the lowest index: row 0's n - f = 2 nearest are itself and the NaN row (its mix is row 0
    alone, count 1), row 2's are itself and row 0 (count 2). Each mix divides by its own row's count (a division by
    the neighbours' counts, ``keepdims=False``, gives row 2 the mix x0 / 1 + x2 / 2). NumPy reference in float64
    with float32's overflow."""
    x = np.zeros((3, 4), np.float32)
    x[0, :2], x[1], x[2, :2] = (1.5e19, 2.0), np.nan, (-1.5e19, 4.0)
    x64 = x.astype(np.float64)
    good = np.isfinite((x * x).sum(1))
    dist = ((x64[:, None] - x64[None]) ** 2).sum(-1)
    dist[(dist > np.finfo(np.float32).max) | ~(good[:, None] & good[None, :])] = np.inf
    np.fill_diagonal(dist, 0.0)
    mixes = np.stack([x64[[j for j in np.argsort(dist[i], kind="stable")[:2] if good[j]]].mean(0) for i in range(3)])
    mixes[~good] = mixes[good].mean(0)
    np.testing.assert_allclose(agg.nnm(1)(jnp.asarray(x)), mixes, rtol=1e-6)
    np.testing.assert_allclose(mixes[:, :2], [[1.5e19, 2.0], [7.5e18, 2.5], [0.0, 3.0]], rtol=1e-7)  # the tie as read
