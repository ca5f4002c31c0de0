"""Tests added to kill the mutants of ``make mutation`` that survived the robust-rule tests (issue 18): the sorting
network and the order statistics against ``np.sort`` (odd/even ``n``, ties, ``+-inf``, NaN as ``+inf``), the
reweighting rules (geometric median, centered clipping, FLTrust) and the selection rules (Krum, multi-Krum, Bulyan,
MDA, DnC) against NumPy loops, with their defaults, context arguments and edge cases, on data offset from zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import aggregators as agg

from test_aggregators import _sqdist, ref_bulyan, ref_krum_scores, ref_multi_krum  # shared references


def J(rule, **context):
    """The rule jitted with fixed context: one compile instead of op-by-op dispatch."""
    return jax.jit(lambda x: rule(x, **context))


# ---------------------------------------------------------------- reweighting: NumPy references (float64)
def ref_geomed(x, iters, nu, alpha=None):
    """Smoothed Weiszfeld from z = 0 over the given rows (weights alpha, default 1)."""
    x = x.astype(np.float64)
    alpha = np.ones(len(x)) if alpha is None else np.asarray(alpha, np.float64)
    z = np.zeros(x.shape[1])
    for _ in range(iters):
        w = alpha / np.maximum(nu, np.linalg.norm(x - z, axis=1))
        z = (w[:, None] * x).sum(0) / w.sum()
    return z


def ref_cc(x, tau, iters, v, n=None):
    """Centered clipping over the given rows, dividing by ``n`` (all clients, default ``len(x)``)."""
    x, v = x.astype(np.float64), np.asarray(v, np.float64)
    n = len(x) if n is None else n
    for _ in range(iters):
        dist = np.linalg.norm(x - v, axis=1)
        scale = np.minimum(1.0, tau / np.maximum(dist, 1e-300))
        v = v + ((x - v) * scale[:, None]).sum(0) / n
    return v


def ref_fltrust(x, g0):
    """FLTrust over the given nonzero rows."""
    x, g0 = x.astype(np.float64), np.asarray(g0, np.float64)
    norms, g0n = np.linalg.norm(x, axis=1), np.linalg.norm(g0)
    trust = np.maximum(x @ g0 / (norms * g0n), 0)
    if trust.sum() == 0:
        return np.zeros(x.shape[1])
    return (trust[:, None] * g0n / norms[:, None] * x).sum(0) / trust.sum()


def _spread(seed=17, n=7, d=3):
    """Rows around 3 with two outliers: Weiszfeld has not converged after 8 steps (7, 8 and 9 differ by > 1e-2)."""
    rng = np.random.default_rng(seed)
    x = (3.0 + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    x[0] += 4
    x[1] -= 3
    return x


def test_geometric_median_defaults_are_eight_steps_and_smoothing_0_1():
    """Kills num_iters=8 -> 7/9, smoothing=0.1 -> 1.1, one step fewer in the loop, beta = alpha * max(...)."""
    x = _spread()
    ref = ref_geomed(x, 8, 0.1)
    assert np.abs(ref - ref_geomed(x, 7, 0.1)).max() > 1e-2 and np.abs(ref - ref_geomed(x, 8, 1.1)).max() > 1e-2
    np.testing.assert_allclose(J(agg.geometric_median())(jnp.asarray(x)), ref, atol=1e-4)
    with pytest.raises(ValueError, match="num_iters"):
        agg.geometric_median(0)


def test_geometric_median_weights_and_non_finite_rows():
    """Weights alpha_i enter beta_i; a non-finite row (weight or not) is dropped, not counted in sum beta."""
    x = _spread()
    alpha = np.array([0.5, 2.0, 1.0, 3.0, 1.0, 0.25, 1.5], np.float32)
    rule = jax.jit(lambda u, w: agg.geometric_median(4)(u, weights=w))
    np.testing.assert_allclose(rule(jnp.asarray(x), jnp.asarray(alpha)), ref_geomed(x, 4, 0.1, alpha), atol=1e-4)
    bad = np.concatenate([x, np.full((2, 3), np.nan, np.float32), np.full((1, 3), np.inf, np.float32)])
    bad[7, 0] = 4.0  # a partly finite row
    weights = np.concatenate([alpha, [1.0, 5.0, 2.0]]).astype(np.float32)
    np.testing.assert_allclose(rule(jnp.asarray(bad), jnp.asarray(weights)), ref_geomed(x, 4, 0.1, alpha), atol=1e-4)


def _far_rows():
    """Rows around 60 in 4 dims (norm ~120 > tau = 100 from the zero centre), two of them farther out."""
    rng = np.random.default_rng(5)
    x = (60.0 + rng.normal(size=(6, 4))).astype(np.float32)
    x[0] += 300.0
    x[1] -= 150.0
    return x


def test_centered_clipping_defaults_tau_100_one_step_from_zero():
    """Kills tau=100 -> 101/99, num_iters=1 -> 2, init's zero centre and the clip scale's arithmetic."""
    x = _far_rows()
    rule = agg.centered_clipping()
    np.testing.assert_array_equal(rule.init(4), np.zeros(4, np.float32))
    assert rule.init(4).shape == (4,) and rule.init(4).dtype == jnp.float32
    np.testing.assert_allclose(J(rule)(jnp.asarray(x)), ref_cc(x, 100.0, 1, np.zeros(4)), rtol=1e-5)
    np.testing.assert_allclose(J(agg.centered_clipping(num_iters=2))(jnp.asarray(x)),
                               ref_cc(x, 100.0, 2, np.zeros(4)), rtol=1e-5)
    with pytest.raises(ValueError, match="num_iters"):
        agg.centered_clipping(num_iters=0)
    with pytest.raises(ValueError, match="state"):
        rule.update(jnp.asarray(x), jnp.zeros(3))


def test_centered_clipping_small_tau_and_non_finite_rows_with_a_centre():
    """tau below the distances (all rows clipped, distances < 1): kills max(dist, 1e-30) -> max(dist, 1). A
    non-finite row has scale 0 (not 1/n) but still counts in the 1/n."""
    rng = np.random.default_rng(2)
    centre = np.full(3, 5.0, np.float32)
    x = (centre + 0.2 * rng.normal(size=(6, 3))).astype(np.float32)
    rule = jax.jit(agg.centered_clipping(0.05, 2).update)
    got = rule(jnp.asarray(x), jnp.asarray(centre))
    np.testing.assert_allclose(got[0], ref_cc(x, 0.05, 2, centre), rtol=1e-6)
    np.testing.assert_allclose(got[1], got[0])
    bad = np.concatenate([x, np.full((2, 3), np.nan, np.float32)])
    bad[6, 1] = 1.0
    np.testing.assert_allclose(rule(jnp.asarray(bad), jnp.asarray(centre))[0], ref_cc(x, 0.05, 2, centre, n=8),
                               rtol=1e-6)


def test_fltrust_drops_zero_negative_and_non_finite_rows():
    """Rows: short (norm < 1) and long positively aligned ones, one against g0 (trust 0), a zero row and a NaN row;
    the trust total is below 1 for the short rows alone (kills `total > 0` -> `> 1`, `norms > 0` -> `> 1`,
    ReLU(., 0) -> (., -1)/(., 1), trust of a non-ok row 0 -> 1)."""
    g0 = np.array([1.0, 0.5, 0.2, 0.1], np.float32)
    good = np.array([[0.3, 0.1, 0.0, 0.05], [0.1, 0.6, -0.1, 0.0], [4.0, 3.0, 1.0, -2.0], [-1.0, -0.5, 0.1, 0.0]],
                    np.float32)
    x = np.concatenate([good, np.zeros((1, 4), np.float32), np.full((1, 4), np.nan, np.float32)])
    out = J(agg.fltrust(), server_update=jnp.asarray(g0))(jnp.asarray(x))
    np.testing.assert_allclose(out, ref_fltrust(good, g0), rtol=1e-5, atol=1e-6)
    # only the two short rows with low trust: sum TS_i < 1
    short = np.array([[0.3, -0.8, 0.0, 0.05], [-0.2, 0.9, 0.1, 0.0]], np.float32)
    cos = short @ g0 / (np.linalg.norm(short, axis=1) * np.linalg.norm(g0))
    assert 0 < np.maximum(cos, 0).sum() < 1
    np.testing.assert_allclose(J(agg.fltrust(), server_update=jnp.asarray(g0))(jnp.asarray(short)),
                               ref_fltrust(short, g0), rtol=1e-5, atol=1e-6)
    # every row against g0: all trust 0, output 0 (not NaN)
    against = -good[:3]
    np.testing.assert_array_equal(J(agg.fltrust(), server_update=jnp.asarray(g0))(jnp.asarray(against)), 0.0)
    with pytest.raises(ValueError, match=r"server_update must have shape \(4,\), got \(3,\)"):
        agg.fltrust()(jnp.asarray(good), server_update=jnp.zeros(3))


# ---------------------------------------------------------------- sorting network and order statistics
def _apply_pairs(pairs, columns):
    """The comparators applied with NumPy to the rows of ``columns`` (n, m)."""
    rows = np.array(columns, copy=True)
    for a, b in pairs:
        rows[[a, b]] = np.minimum(rows[a], rows[b]), np.maximum(rows[a], rows[b])
    return rows


def test_batcher_network_sorts_every_zero_one_input_and_has_batchers_size():
    """0-1 principle: a comparator network sorts every input iff it sorts every 0/1 input; checked exhaustively
    up to n = 12, on random data with ties beyond. Power-of-two sizes have Batcher's p log p (log p - 1) / 4 + p - 1
    comparators (no redundant ones), and every comparator is (i, j) with i < j < n."""
    from fedjax_attacks.aggregators.sorting import batcher_pairs

    for n in range(1, 13):
        bits = ((np.arange(2**n)[None, :] >> np.arange(n)[:, None]) & 1).astype(np.int8)
        np.testing.assert_array_equal(_apply_pairs(batcher_pairs(n), bits), np.sort(bits, axis=0), err_msg=str(n))
    rng = np.random.default_rng(0)
    for n in (13, 16, 17, 24, 31, 32, 33, 47, 64, 65, 100, 129):
        x = rng.integers(-5, 6, size=(n, 64)).astype(np.float64)
        np.testing.assert_array_equal(_apply_pairs(batcher_pairs(n), x), np.sort(x, axis=0), err_msg=str(n))
        assert all(0 <= a < b < n for a, b in batcher_pairs(n))
    for log_p in range(1, 8):
        p = 2**log_p
        assert len(batcher_pairs(p)) == p * log_p * (log_p - 1) // 4 + p - 1
    assert batcher_pairs(1) == ()


def _with_extremes(n, d, seed):
    """f32[n, d] around 7 with ties, and +inf, -inf and NaN entries (NaN reads as +inf)."""
    rng = np.random.default_rng(seed)
    x = (7.0 + rng.integers(-3, 4, size=(n, d)) * 0.5).astype(np.float32)
    x[rng.integers(0, n, size=d // 3), np.arange(d // 3)] = np.inf
    x[rng.integers(0, n, size=d // 3), np.arange(d // 3, 2 * (d // 3))] = -np.inf
    x[rng.integers(0, n, size=d - 2 * (d // 3)), np.arange(2 * (d // 3), d)] = np.nan
    if n > 2:
        x[1, : d // 2] = np.nan  # a second bad entry in some columns
    return x


def test_order_statistic_matches_np_sort_with_ties_inf_and_nan():
    """Every position for n = 1, 2, 4, 5 (odd/even), a few for n = 9, against np.sort with NaN as +inf."""
    from fedjax_attacks.aggregators.sorting import order_statistic

    for n, positions in ((1, (0,)), (2, (0, 1)), (4, (0, 1, 2, 3)), (5, (0, 2, 4)), (9, (0, 4, 7, 8))):
        x = _with_extremes(n, 12, seed=n)
        ref = np.sort(np.where(np.isnan(x), np.inf, x), axis=0)
        f = jax.jit(lambda u: [order_statistic(u, p, "network") for p in positions])
        for p, got in zip(positions, f(jnp.asarray(x))):
            np.testing.assert_array_equal(got, ref[p], err_msg=f"n={n} position={p}")


def test_tiled_order_statistic_over_three_tiles_with_an_overlapping_last_one():
    """n = 34 > _TILE_ABOVE_N rows and d = 4100 columns: three tiles of 1367, the last overlapping its neighbour."""
    from fedjax_attacks.aggregators.sorting import order_statistic

    x = _with_extremes(34, 4100, seed=3)
    ref = np.sort(np.where(np.isnan(x), np.inf, x), axis=0)
    got = jax.jit(lambda u: [order_statistic(u, p, "network") for p in (0, 17)])(jnp.asarray(x))
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[17])


def test_order_statistic_method_names():
    from fedjax_attacks.aggregators import sorting

    assert sorting.check_method("network") == "network" and sorting.check_method("sort", 3) == "sort"
    assert sorting.check_method(None) == sorting.check_method(None, sorting._NETWORK_MAX_N) == "network"  # a CPU
    assert sorting.check_method(None, sorting._NETWORK_MAX_N + 1) == "sort"
    with pytest.raises(ValueError, match="method"):
        sorting.check_method("bitonic")
    x = np.array([[1.0, np.nan], [np.nan, -np.inf], [3.0, 2.0]], np.float32)
    np.testing.assert_array_equal(sorting.nan_to_inf(jnp.asarray(x)), np.where(np.isnan(x), np.inf, x))
    np.testing.assert_array_equal(sorting.sort_columns(jnp.asarray(x)), [[1.0, -np.inf], [3.0, 2.0], [np.inf, np.inf]])


# ---------------------------------------------------------------- selection: NumPy references (float64, loops)
def _offset(n, d, seed, ties=False):
    rng = np.random.default_rng(seed)
    if ties:
        return (10.0 + rng.integers(-3, 4, size=(n, d))).astype(np.float32)
    return (10.0 + rng.normal(size=(n, d)) * rng.uniform(0.3, 3.0, size=(n, 1))).astype(np.float32)


def test_krum_and_multi_krum_defaults_and_bounds():
    """Defaults f = 1 and m = n - f against NumPy (the f = 0, 1, 2 choices differ on this data); n = 2f + 3 is the
    smallest n Krum accepts, num_selected runs from 1 to n - f."""
    x = _offset(7, 4, seed=26)
    scores = [ref_krum_scores(x, f) for f in (0, 1, 2)]
    assert len({int(np.argmin(s)) for s in scores}) == 3
    np.testing.assert_array_equal(J(agg.krum())(jnp.asarray(x)), x[np.argmin(scores[1])])
    np.testing.assert_allclose(J(agg.multi_krum())(jnp.asarray(x)), ref_multi_krum(x, 1, 6), rtol=1e-6)
    for bad in (lambda: agg.krum(-1), lambda: agg.krum(3)(jnp.asarray(x)), lambda: agg.krum(2)(jnp.asarray(x[:6])),
                lambda: agg.multi_krum(3)(jnp.asarray(x)), lambda: agg.multi_krum(1, 0)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError, match="n - f = 5, got 6"):
        agg.multi_krum(2, 6)(jnp.asarray(x))


def test_bulyan_even_theta_and_defaults():
    """theta = n - 2f even (the median is the mean of two middle values; ties at the cut-off), default f = 1, and
    n = 4f + 3 accepted, n = 4f + 2 refused."""
    x = _offset(10, 5, seed=8, ties=True)
    np.testing.assert_allclose(J(agg.bulyan())(jnp.asarray(x)), ref_bulyan(x, 1), rtol=1e-6)
    jax.eval_shape(agg.bulyan(1).__call__, jnp.asarray(x[:7]))
    with pytest.raises(ValueError, match="4f \\+ 3"):
        J(agg.bulyan(1))(jnp.asarray(x[:6]))


def test_bulyan_with_non_finite_rows():
    """Two bad rows among n = 12, f = 2: repeated Krum picks theta = 8 finite rows (a remaining bad row scores
    +inf, a removed one must still lose to it)."""
    x = _offset(12, 4, seed=4)
    x[[2, 9]] = np.nan
    x[2, 0] = 10.0
    np.testing.assert_allclose(J(agg.bulyan(2))(jnp.asarray(x)), ref_bulyan(x, 2), rtol=1e-6)


def test_mda_defaults_and_subset_limit(monkeypatch):
    """Default f = 1 against brute force; C(n, f) equal to max_subsets is searched, one more refused (also for the
    default 100_000, with math.comb stubbed); f = n refused, f = n - 1 keeps the first row."""
    import itertools
    import math

    x = _offset(6, 3, seed=5)
    dist = _sqdist(x)
    subsets = list(itertools.combinations(range(6), 5))
    best = subsets[int(np.argmin([max(dist[i, j] for i in s for j in s) for s in subsets]))]
    np.testing.assert_allclose(J(agg.mda())(jnp.asarray(x)), x[list(best)].astype(np.float64).mean(0), rtol=1e-6)
    jax.eval_shape(agg.mda(2, max_subsets=15).__call__, jnp.asarray(x))  # C(6, 2) = 15
    with pytest.raises(ValueError, match="max_subsets"):
        agg.mda(2, max_subsets=14)(jnp.asarray(x))
    jax.eval_shape(agg.mda(5).__call__, jnp.asarray(x))
    with pytest.raises(ValueError, match="f < n"):
        agg.mda(6)(jnp.asarray(x))
    real_comb = math.comb
    monkeypatch.setattr(math, "comb", lambda n, k: 100_000 if (n, k) == (6, 1) else real_comb(n, k))
    jax.eval_shape(agg.mda().__call__, jnp.asarray(x))
    monkeypatch.setattr(math, "comb", lambda n, k: 100_001 if (n, k) == (6, 1) else real_comb(n, k))
    with pytest.raises(ValueError, match="max_subsets"):
        agg.mda()(jnp.asarray(x))


def ref_dnc_keep(x, num_keep):
    """DnC's kept rows over the finite rows of x (scores <x_i - mu, v>^2, v the top right singular vector)."""
    good = np.isfinite(x).all(1)
    xs = x[good].astype(np.float64)
    centred = xs - xs.mean(0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    scores = np.full(len(x), np.inf)
    scores[good] = (centred @ v) ** 2
    return np.argsort(scores, kind="stable")[:num_keep]


def test_dnc_defaults_bounds_and_subsampling():
    """Default f = 1, filter_frac 1 (n - 1 kept); filter_frac * f floored; one row kept at f = n - 1; d equal to
    subsample_dim needs no key (10_000 by default), one more does; with a key each of num_iters draws filters."""
    x = _offset(7, 4, seed=6)
    x[3] += 4.0 * np.array([1.0, -1.0, 0.5, 0.0], np.float32)
    mean_of = lambda rows: x[np.sort(rows)].astype(np.float64).mean(0)
    np.testing.assert_allclose(J(agg.dnc())(jnp.asarray(x)), mean_of(ref_dnc_keep(x, 6)), rtol=1e-6)
    np.testing.assert_allclose(J(agg.dnc(3, filter_frac=1.5))(jnp.asarray(x)), mean_of(ref_dnc_keep(x, 3)), rtol=1e-6)
    jax.eval_shape(agg.dnc(6).__call__, jnp.asarray(x))  # keeps one row
    with pytest.raises(ValueError, match="needs >= 1"):
        agg.dnc(7)(jnp.asarray(x))
    jax.eval_shape(agg.dnc(2, subsample_dim=4).__call__, jnp.asarray(x))  # d = subsample_dim: no key needed
    with pytest.raises(ValueError, match="key"):
        agg.dnc(2, subsample_dim=3)(jnp.asarray(x))
    wide = np.tile(x, (1, 2500))  # d = 10_000
    jax.eval_shape(agg.dnc().__call__, jnp.asarray(wide))
    with pytest.raises(ValueError, match="key"):
        agg.dnc()(jnp.asarray(np.tile(x, (1, 2501))[:, :10_001]))
    key = jax.random.key(4)
    cols = np.asarray(jax.vmap(lambda k: jax.random.choice(k, 4, (2,), replace=False))(jax.random.split(key, 2)))
    keep = set(range(7))
    for c in cols:
        keep &= set(ref_dnc_keep(x[:, c], 5).tolist())
    got = J(agg.dnc(2, num_iters=2, subsample_dim=2), key=key)(jnp.asarray(x))
    np.testing.assert_allclose(got, mean_of(np.array(sorted(keep))), rtol=1e-6)


def test_dnc_centres_on_the_finite_rows_only():
    """Two NaN rows: the mean and the singular vector come from the 6 finite rows alone."""
    x = _offset(8, 3, seed=9)
    x[5] += np.array([3.0, 0.0, -2.0], np.float32)
    x[[1, 6]] = np.nan
    keep = ref_dnc_keep(x, 4)
    np.testing.assert_allclose(J(agg.dnc(4))(jnp.asarray(x)), x[np.sort(keep)].astype(np.float64).mean(0), rtol=1e-6)


def test_centered_clipping_at_a_row_whose_rounded_squared_distance_is_negative():
    """The centre is row 0: ||x_0||^2 - 2 <x_0, v> + ||v||^2 rounds to -6e-5 in float32 here, so the distance must
    be clamped at 0 (not at -1, whose square root is NaN)."""
    x = (np.random.default_rng(3).normal(size=(4, 5)) * 3 + 7).astype(np.float32)
    rule = agg.centered_clipping(1.0)
    got = jax.jit(lambda u, c: rule.update(u, c)[0])(jnp.asarray(x), jnp.asarray(x[0]))
    np.testing.assert_allclose(got, ref_cc(x, 1.0, 1, x[0]), rtol=1e-5)


@pytest.mark.parametrize("factory, field, lowest", [
    (agg.multi_krum, "num_byzantine", 0), (agg.bulyan, "num_byzantine", 0), (agg.mda, "num_byzantine", 0),
    (agg.mda, "max_subsets", 1), (agg.dnc, "num_byzantine", 0), (agg.dnc, "num_iters", 1),
    (agg.dnc, "subsample_dim", 1)])
def test_selection_rules_accept_the_lowest_value_and_refuse_one_below(factory, field, lowest):
    """Each integer hyperparameter's documented floor is accepted and the integer below it refused (by name)."""
    factory(**{field: lowest})
    with pytest.raises(ValueError, match=field):
        factory(**{field: lowest - 1})


def test_dnc_runs_one_iteration_by_default_when_it_subsamples():
    """With d > subsample_dim (random coordinate subsets), the default equals num_iters = 1, not 2: the second
    iteration's subset would filter with other coordinates (here it does: the two outlier columns are sampled by
    different iterations)."""
    rng = np.random.default_rng(0)
    x = (3.0 + 0.1 * rng.normal(size=(6, 20_000))).astype(np.float32)
    x[0, 0] += 50.0  # row 0 is far on column 0 only, row 1 on column 1 only
    x[1, 1] += 40.0
    key = jax.random.key(0)
    one, two = (np.asarray(J(agg.dnc(num_iters=k), key=key)(jnp.asarray(x))) for k in (1, 2))
    np.testing.assert_array_equal(np.asarray(J(agg.dnc(), key=key)(jnp.asarray(x))), one)
    assert not np.allclose(one, two)


@pytest.mark.parametrize("values", [[-1.0, 0.0, 0.0, 1.05], [-1.05, 0.0, 0.0, 1.0]])
def test_dnc_centres_on_the_finite_rows_only(values):
    """One coordinate (rank 1: the second eigenvalue is 0), a NaN row and a near tie between the two extreme rows:
    the mean is over the finite rows (a NaN row counted as +-1 shifts it and flips which extreme is dropped), and
    the scores use the top eigenvalue."""
    x = np.array([[np.nan]] + [[v] for v in values], np.float32)
    keep = ref_dnc_keep(x, 3)
    np.testing.assert_allclose(J(agg.dnc(2))(jnp.asarray(x)), x[np.sort(keep)].astype(np.float64).mean(0),
                               rtol=1e-6)
