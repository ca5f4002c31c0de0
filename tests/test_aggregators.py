"""Aggregators against plain NumPy / Python-loop references, on random inputs with and without ties."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedjax_attacks import aggregators as agg
from fedjax_attacks.aggregators.sorting import batcher_pairs, network_sort


def J(rule, **context):
    """The rule jitted with fixed context (the reference tests compile once instead of dispatching op by op)."""
    return jax.jit(lambda x: rule(x, **context))


def _data(n, d, ties=False, seed=0):
    rng = np.random.default_rng(seed)
    if ties:  # small integers: many exact ties, and Gram-matrix distances are exact
        return rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    return rng.normal(size=(n, d)).astype(np.float32)


def _sqdist(x):
    """Squared distances, ``+inf`` to and from a non-finite row (0 on the diagonal)."""
    x = x.astype(np.float64)
    good = np.isfinite(x).all(1)
    dist = np.array([[np.sum((a - b) ** 2) if ga and gb else np.inf for b, gb in zip(x, good)]
                     for a, ga in zip(x, good)])
    np.fill_diagonal(dist, 0.0)
    return dist


# ---------------------------------------------------------------- references (plain NumPy / loops)
def ref_trimmed(x, t):
    return np.sort(x, axis=0)[t:len(x) - t].mean(axis=0)


def ref_krum_scores(x, f):
    n, dist = len(x), _sqdist(x)
    return np.array([np.sum(np.sort(np.delete(dist[i], i))[: n - f - 2]) for i in range(n)])


def ref_krum(x, f):
    return x[int(np.argmin(ref_krum_scores(x, f)))]


def ref_multi_krum(x, f, m):
    return x[np.argsort(ref_krum_scores(x, f), kind="stable")[:m]].astype(np.float64).mean(0)


def ref_nnm(x, f):
    dist = _sqdist(x)
    return np.stack([x[np.argsort(dist[i], kind="stable")[: len(x) - f]].mean(0) for i in range(len(x))])


def ref_bulyan(x, f):
    n = len(x)
    theta, beta = n - 2 * f, n - 4 * f
    dist, rest, chosen = _sqdist(x), list(range(n)), []
    for _ in range(theta):
        k = max(len(rest) - f - 2, 2)
        scores = [np.sum(np.sort([dist[i, j] for j in rest if j != i])[:k]) for i in rest]
        chosen.append(rest.pop(int(np.argmin(scores))))
    sel = x[chosen].astype(np.float64)
    out = np.zeros(x.shape[1])
    for c in range(x.shape[1]):
        col = sel[:, c]
        gaps = np.abs(col - np.median(col))
        cut = np.sort(gaps)[beta - 1]
        closer, at = col[gaps < cut], col[gaps == cut]
        out[c] = (closer.sum() + (beta - len(closer)) * at.mean()) / beta
    return out


def least_diameter_subsets(x, f):
    """Every subset of ``n - f`` rows of least diameter (ties included, in enumeration order), by brute force."""
    dist = _sqdist(x)
    subsets = list(itertools.combinations(range(len(x)), len(x) - f))
    diam = np.array([max(dist[i, j] for i in s for j in s) for s in subsets])
    return [s for s, d in zip(subsets, diam) if d <= diam.min() * (1 + 1e-6)]


def ref_mda(x, f):
    return x[list(least_diameter_subsets(x, f)[0])].mean(0)


def ref_dnc(x, f, c=1.0):
    mu = x.mean(0)
    v = np.linalg.svd(x - mu, full_matrices=False)[2][0]
    scores = ((x - mu) @ v) ** 2
    keep = np.argsort(scores, kind="stable")[: len(x) - int(c * f)]
    return x[keep].mean(0)


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 10, 13, 17, 33])
def test_sorting_network_sorts(n):
    x = _data(n, 6, ties=n % 2 == 0, seed=n)
    out = np.stack(network_sort(jnp.asarray(x)[i] for i in range(n)))
    np.testing.assert_array_equal(out, np.sort(x, axis=0))
    assert all(a < b < n for a, b in batcher_pairs(n))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [1, 2, 7, 10, 13, 34])
def test_median_and_trimmed_mean(n, ties):
    x = _data(n, 3000, ties, seed=n)  # d > one tile: exercises the tiled loop with an overlapping last tile
    np.testing.assert_allclose(J(agg.median())(jnp.asarray(x)), np.median(x, axis=0), rtol=1e-6, atol=1e-6)
    for t in sorted({0, 1, (n - 1) // 2} & set(range((n - 1) // 2 + 1))):
        got = J(agg.trimmed_mean(t))(jnp.asarray(x))
        np.testing.assert_allclose(got, ref_trimmed(x, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ties", [False, True])
def test_krum_family(ties):
    x = _data(11, 6, ties, seed=1)
    for f in (0, 2, 4):
        np.testing.assert_allclose(agg.krum_scores(jnp.asarray(x), f), ref_krum_scores(x, f), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(J(agg.krum(f))(jnp.asarray(x)), ref_krum(x, f))
        for m in (1, 11 - f):
            np.testing.assert_allclose(J(agg.multi_krum(f, m))(jnp.asarray(x)), ref_multi_krum(x, f, m), atol=1e-5)


def test_geometric_median_and_centered_clipping_and_fltrust():
    x = _data(9, 7, seed=2)
    np.testing.assert_allclose(agg.geometric_median(5, 0.1)(jnp.asarray(x)), ref_geomed(x, 5, 0.1), atol=1e-5)
    prev = _data(1, 7, seed=3)[0]
    for tau, iters in ((0.5, 1), (2.0, 3), (100.0, 1)):
        got = agg.centered_clipping(tau, iters).update(jnp.asarray(x), jnp.asarray(prev))[0]
        np.testing.assert_allclose(got, ref_cc(x, tau, iters, prev.astype(np.float64)), atol=1e-5)
    np.testing.assert_allclose(agg.centered_clipping(1.0)(jnp.asarray(x)), ref_cc(x, 1.0, 1, np.zeros(7)), atol=1e-5)
    g0 = x.mean(0) + 0.1
    np.testing.assert_allclose(agg.fltrust()(jnp.asarray(x), server_update=jnp.asarray(g0)), ref_fltrust(x, g0),
                               atol=1e-5)
    assert np.all(agg.fltrust()(jnp.asarray(x), server_update=jnp.zeros(7)) == 0)


@pytest.mark.parametrize("ties", [False, True])
def test_nnm_mda_bulyan_dnc(ties):
    x = _data(11, 6, ties, seed=4)
    np.testing.assert_allclose(J(agg.nnm(3))(jnp.asarray(x)), ref_nnm(x, 3), atol=1e-5)
    np.testing.assert_allclose(J(agg.mda(3))(jnp.asarray(x)), ref_mda(x, 3), atol=1e-5)
    np.testing.assert_allclose(J(agg.dnc(2, num_iters=2), key=jax.random.key(0))(jnp.asarray(x)), ref_dnc(x, 2),
                               atol=1e-5)
    for f in (0, 1, 2):
        np.testing.assert_allclose(J(agg.bulyan(f))(jnp.asarray(x)), ref_bulyan(x, f), atol=1e-5)


def test_norm_clip_and_clipped_rules():
    x = _data(8, 5, seed=5) * np.array([[0.1], [1], [3], [10], [0], [1], [2], [5]], np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    clipped = x * np.minimum(1, 2.0 / np.where(norms > 0, norms, 1))
    np.testing.assert_allclose(agg.norm_clip(2.0)(jnp.asarray(x)), clipped, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(agg.clipped_mean()(jnp.asarray(x)), clipped.mean(0), atol=1e-6)
    np.testing.assert_allclose(agg.clipped_median(2.0)(jnp.asarray(x)), np.median(clipped, 0), atol=1e-6)


def test_bucketing_matches_reference_and_chain():
    x, key = _data(10, 4, seed=6), jax.random.key(3)
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), 10))
    for s in (1, 3, 10):
        buckets = np.stack([x[perm[i:i + s]].mean(0) for i in range(0, 10, s)])
        got = J(agg.chain(agg.bucketing(bucket_size=s)), key=key)(jnp.asarray(x))
        np.testing.assert_allclose(got, buckets, atol=1e-6)
        np.testing.assert_allclose(J(agg.bucketing(agg.median(), s), key=key)(jnp.asarray(x)), np.median(buckets, 0),
                                   atol=1e-6)
    via_name = agg.get("bucketing", aggregator="krum", bucket_size=2, num_byzantine=1)
    np.testing.assert_allclose(J(via_name, key=key)(jnp.asarray(x)),
                               J(agg.chain(agg.bucketing(bucket_size=2), agg.krum(1)), key=key)(jnp.asarray(x)))


ROBUST = {  # name -> (rule, number of non-finite rows it must tolerate among n = 13)
    "median": (agg.median(), 6),
    "trimmed_mean": (agg.trimmed_mean(3), 3),
    "krum": (agg.krum(3), 3),
    "multi_krum": (agg.multi_krum(3), 3),
    "geometric_median": (agg.geometric_median(), 6),
    "clipped_mean": (agg.clipped_mean(), 12),
    "clipped_median": (agg.clipped_median(), 12),
    "fltrust": (agg.fltrust(), 12),
    "centered_clipping": (agg.centered_clipping(1.0, 3), 12),
    "bucketing_krum": (agg.bucketing(agg.krum(1), 2), 1),
    "nnm_mean": (agg.nnm(3, "mean"), 3),
    "bulyan": (agg.bulyan(2), 2),
    "mda": (agg.mda(3), 3),
    "dnc": (agg.dnc(3), 3),
}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e38])
@pytest.mark.parametrize("name", sorted(ROBUST))
def test_non_finite_rows_never_reach_output(name, bad):
    rule, tolerated = ROBUST[name]
    x = _data(13, 6, seed=7)
    x[1:1 + tolerated] = bad
    x[1, 2] = 1.0  # a partly finite row
    ctx = dict(key=jax.random.key(0), server_update=jnp.asarray(_data(13, 6, seed=7)[0]),
               previous_aggregate=jnp.zeros(6))
    out = jax.jit(lambda u: rule(u, **ctx))(jnp.asarray(x))
    assert out.shape == (6,) and np.all(np.isfinite(out))


def test_mean_is_not_robust():
    x = _data(5, 3)
    np.testing.assert_allclose(agg.mean()(jnp.asarray(x)), x.mean(0), atol=1e-6)
    x[0, 0] = np.nan
    assert np.isnan(agg.mean()(jnp.asarray(x))[0])


@pytest.mark.parametrize("name", ["mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median",
                                  "fltrust", "centered_clipping", "nnm_mean", "mda", "dnc"])
def test_jit_and_vmap_agree_with_eager(name):
    rule = agg.mean() if name == "mean" else ROBUST[name][0]
    xs = jnp.asarray(np.stack([_data(13, 6, seed=s) for s in (8, 9)]))
    keys = jax.random.split(jax.random.key(1), 2)
    g0s = xs[:, 0] + 0.5
    call = lambda u, k, g: rule(u, key=k, server_update=g, previous_aggregate=g, unknown_key=1)
    eager = np.stack([call(xs[i], keys[i], g0s[i]) for i in range(2)])
    np.testing.assert_allclose(jax.jit(call)(xs[0], keys[0], g0s[0]), eager[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(call))(xs, keys, g0s), eager, rtol=1e-5, atol=1e-5)


def test_registry_names_and_errors():
    for name in ("mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median", "rfa", "norm_clip",
                 "clipped_mean", "clipped_median", "fltrust", "centered_clipping", "bucketing", "nnm", "bulyan",
                 "mda", "dnc"):
        assert name in agg.names()
    assert agg.get("rfa", num_iters=2) is not None
    x = jnp.zeros((6, 3))
    cases = [
        lambda: agg.get("nope"),
        lambda: agg.krum(-1),
        lambda: agg.krum(2)(x),  # n = 6 <= 2f + 2
        lambda: agg.multi_krum(1, 6)(x),
        lambda: agg.trimmed_mean(3)(x),
        lambda: agg.bulyan(1)(x),  # n = 6 < 4f + 3
        lambda: agg.bucketing(bucket_size=0),
        lambda: agg.bucketing(bucket_size=2)(x),  # no key
        lambda: agg.fltrust()(x),  # no server_update
        lambda: agg.geometric_median(smoothing=0.0),
        lambda: agg.centered_clipping(tau=-1.0),
        lambda: agg.norm_clip(float("nan")),
        lambda: agg.mda(10)(jnp.zeros((30, 2))),  # C(30, 10) subsets
        lambda: agg.median()(jnp.zeros(3)),  # not 2-D
        lambda: agg.trimmed_mean(1.5),
        lambda: agg.dnc(1)(jnp.zeros((4, 20000))),  # no key with d > subsample_dim
    ]
    for case in cases:
        with pytest.raises(ValueError):
            case()


# ---------------------------------------------------------------- hypothesis properties (fixed shapes: one compile)
N, D = 9, 4
PROPERTY_RULES = {
    "median": agg.median(),
    "trimmed_mean": agg.trimmed_mean(2),
    "krum": agg.krum(2),
    "multi_krum": agg.multi_krum(2),
    "bulyan": agg.bulyan(1),
    "mda": agg.mda(2),
    "nnm_mean": agg.nnm(2, "mean"),
    "geometric_median": agg.geometric_median(200, 1e-6),
}
JITTED = {name: jax.jit(rule.__call__) for name, rule in PROPERTY_RULES.items()}
seeds = st.integers(0, 2**31 - 1)


@settings(max_examples=15, deadline=None)
@given(seed=seeds, name=st.sampled_from(sorted(PROPERTY_RULES)))
@example(seed=265, name="mda")  # two 7-subsets share the least diameter
def test_permutation_invariance_and_translation_equivariance(seed, name):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    shift = rng.normal(size=D).astype(np.float32) * 3
    rule = JITTED[name]
    base = np.asarray(rule(jnp.asarray(x)))
    tol = 2e-3 if name == "geometric_median" else 1e-4
    permuted = np.asarray(rule(jnp.asarray(x[rng.permutation(N)])))
    if name == "mda":  # several subsets may share the least diameter (it is set by one pair): any of them is right
        means = [x[list(s)].mean(0) for s in least_diameter_subsets(x, 2)]
        assert any(np.allclose(permuted, m, atol=tol, rtol=tol) for m in means)
        assert any(np.allclose(base, m, atol=tol, rtol=tol) for m in means)
    else:
        np.testing.assert_allclose(permuted, base, atol=tol, rtol=tol)
    np.testing.assert_allclose(rule(jnp.asarray(x + shift)), base + shift, atol=tol, rtol=tol)



@settings(max_examples=15, deadline=None)
@given(seed=seeds)
def test_krum_returns_an_input_and_geometric_median_minimises(seed):
    x = np.random.default_rng(seed).normal(size=(N, D)).astype(np.float32)
    out = np.asarray(JITTED["krum"](jnp.asarray(x)))
    assert any(np.array_equal(out, row) for row in x)
    cost = lambda z: np.sum(np.linalg.norm(x.astype(np.float64) - z, axis=1))
    gm = np.asarray(JITTED["geometric_median"](jnp.asarray(x)), np.float64)
    assert cost(gm) <= min(cost(x.mean(0)), *(cost(row) for row in x)) + 1e-4


@settings(max_examples=15, deadline=None)
@given(seed=seeds, num_out=st.integers(0, 2),
       value=st.floats(allow_nan=False, allow_infinity=False, width=32) | st.sampled_from([np.nan, np.inf, -np.inf]))
@example(seed=425214656, num_out=2, value=0.0)  # two zero rows beyond bulyan(1)'s tolerance
def test_coordinatewise_rules_stay_in_honest_range(seed, num_out, value):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    outliers = rng.choice(N, num_out, replace=False)
    x[outliers] = np.float32(value) * rng.choice([-1, 1], size=(num_out, D))
    honest = np.delete(x, outliers, axis=0)
    # bulyan(1) tolerates one outlier: two identical zero rows sit inside N(0, 1) data and may both be selected
    for name in ("median", "trimmed_mean") + (("bulyan",) if num_out <= 1 else ()):
        out = np.asarray(JITTED[name](jnp.asarray(x)))
        assert np.all(out >= honest.min(0) - 1e-5) and np.all(out <= honest.max(0) + 1e-5), name


def test_order_statistics_method_follows_the_backend_and_n():
    from fedjax_attacks.aggregators import sorting

    assert sorting.default_method() == sorting.default_method(sorting._NETWORK_MAX_N) == "network"  # a CPU
    assert sorting.default_method(sorting._NETWORK_MAX_N + 1) == "sort"
    x = _data(sorting._NETWORK_MAX_N + 1, 3, seed=2) + 5.0
    x[4] = np.nan  # read as +inf by both methods
    np.testing.assert_allclose(agg.median()(jnp.asarray(x)), np.median(np.where(np.isnan(x), np.inf, x), 0),
                               rtol=1e-6)

# ----------------------------------------------------------------------------------------------------
# Strengthened: tests that fail on plausible wrong rules
# Non-finite rows are the farthest updates (issue 18): on data offset far from zero, coordinate-wise rules equal a
# NumPy reference that reads NaN as +inf, selection rules return an honest row, and every robust rule stays in the
# honest rows' range, so a rule that maps bad rows to zero (or drops them, or lets them through) fails.


N, D, OFFSET = 13, 6, 50.0
BAD = [np.nan, np.inf, -np.inf, 1e38]


def _data_with_bad_rows(bad, count, seed=0):
    rng = np.random.default_rng(seed)
    x = (OFFSET + rng.normal(size=(N, D))).astype(np.float32)
    rows = rng.choice(N, count, replace=False)
    x[rows] = np.float32(bad) if bad != "mixed" else np.array([np.nan, np.inf, -np.inf, 1e38], np.float32)[
        np.arange(count) % 4][:, None]
    return x, np.delete(x, rows, axis=0)


def _as_farthest(x):
    """NumPy: NaN as +inf (the library's reading of a NaN entry)."""
    return np.where(np.isnan(x), np.inf, x.astype(np.float64))


@pytest.mark.parametrize("bad", BAD + ["mixed"])
@pytest.mark.parametrize("count", [1, 3])
def test_median_and_trimmed_mean_read_bad_entries_as_extreme(bad, count):
    x, honest = _data_with_bad_rows(bad, count, seed=count)
    ref = _as_farthest(x)
    for method in ("network", "sort"):
        np.testing.assert_allclose(agg.median(method=method)(jnp.asarray(x)), np.median(ref, axis=0), rtol=1e-6)
        even = np.concatenate([x, x[:1] + 1.0])  # n = 14: the mean of the two middle values
        np.testing.assert_allclose(agg.median(method=method)(jnp.asarray(even)),
                                   np.median(_as_farthest(even), axis=0), rtol=1e-6)
        ordered = np.sort(ref, axis=0)[3:N - 3]
        out = agg.trimmed_mean(3, method=method)(jnp.asarray(x))
        np.testing.assert_allclose(out, ordered.mean(0), rtol=1e-6)
        assert np.all(out >= honest.min(0) - 1e-4) and np.all(out <= honest.max(0) + 1e-4)


def test_large_n_trimmed_mean_path_reads_bad_entries_as_extreme():
    rng = np.random.default_rng(3)
    x = (OFFSET + rng.normal(size=(33, D))).astype(np.float32)
    x[[2, 7, 30]] = np.array([np.nan, -np.inf, 1e38], np.float32)[:, None]
    ref = np.sort(_as_farthest(x), axis=0)[4:29]
    np.testing.assert_allclose(agg.trimmed_mean(4)(jnp.asarray(x)), ref.mean(0), rtol=1e-6)
    np.testing.assert_allclose(agg.median()(jnp.asarray(x)), np.median(_as_farthest(x), axis=0), rtol=1e-6)


SELECTION = {"krum": agg.krum(3), "bulyan": agg.bulyan(2), "mda": agg.mda(3)}
IN_RANGE = {"multi_krum": agg.multi_krum(3), "geometric_median": agg.geometric_median(),
            "nnm_median": agg.nnm(3, "median"), "bucketing_krum": agg.bucketing(agg.krum(1), 2), "dnc": agg.dnc(3),
            **SELECTION}  # not nnm + mean: NNM's documented stand-in for a non-finite row mixes in zeros


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("name", sorted(IN_RANGE))
def test_robust_rules_stay_in_the_honest_range_far_from_zero(name, bad):
    count = 1 if name == "bucketing_krum" else 2
    x, honest = _data_with_bad_rows(bad, count, seed=11)
    out = np.asarray(IN_RANGE[name](jnp.asarray(x), key=jax.random.key(0)))
    assert np.all(np.isfinite(out)), name
    assert np.all(out >= honest.min(0) - 1e-3) and np.all(out <= honest.max(0) + 1e-3), (name, out)
    if name == "krum":  # Krum returns one of the honest rows exactly
        assert np.min(np.abs(honest - out).max(1)) < 1e-5


@pytest.mark.parametrize("method", ["network", "sort"])
def test_trimmed_mean_refuses_trimming_everything(method):
    x = jnp.asarray(_data_with_bad_rows(np.nan, 0)[0][:4])
    with pytest.raises(ValueError, match="2 \\* num_trim < n"):
        agg.trimmed_mean(2, method=method)(x)
    np.testing.assert_allclose(agg.trimmed_mean(1, method=method)(x), np.sort(np.asarray(x), 0)[1:3].mean(0),
                               rtol=1e-6)
    np.testing.assert_allclose(agg.trimmed_mean(method=method)(x), agg.trimmed_mean(1, method=method)(x))  # default
    np.testing.assert_allclose(agg.trimmed_mean(0, method=method)(x), np.asarray(x).mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="num_trim"):
        agg.trimmed_mean(-1, method=method)

# ----------------------------------------------------------------------------------------------------
# Written for mutants of aggregators/coordinatewise.py, sorting.py and pre.py
# Tests added to kill the mutants of ``make mutation`` that survived the aggregator tests (issue 18): the
# pre-aggregators' defaults and edge cases against NumPy (norm clipping below norm 1, zero and non-finite rows,
# ``f = n - 1`` for NNM).


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

# ----------------------------------------------------------------------------------------------------
# Written for mutants of the robust rules (selection.py, reweighting.py, sorting.py)
# Tests added to kill the mutants of ``make mutation`` that survived the robust-rule tests (issue 18): the sorting
# network and the order statistics against ``np.sort`` (odd/even ``n``, ties, ``+-inf``, NaN as ``+inf``), the
# reweighting rules (geometric median, centered clipping, FLTrust) and the selection rules (Krum, multi-Krum, Bulyan,
# MDA, DnC) against NumPy loops, with their defaults, context arguments and edge cases, on data offset from zero.


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
def test_dnc_centres_on_the_finite_rows_only_near_a_tie(values):
    """One coordinate (rank 1: the second eigenvalue is 0), a NaN row and a near tie between the two extreme rows:
    the mean is over the finite rows (a NaN row counted as +-1 shifts it and flips which extreme is dropped), and
    the scores use the top eigenvalue."""
    x = np.array([[np.nan]] + [[v] for v in values], np.float32)
    keep = ref_dnc_keep(x, 3)
    np.testing.assert_allclose(J(agg.dnc(2))(jnp.asarray(x)), x[np.sort(keep)].astype(np.float64).mean(0),
                               rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# The authors' Krum (seed paper 000's server): unsquared distances, n - f - 3 neighbours, f the round's attackers


def ref_authors_krum(x, f):
    x = np.asarray(x, np.float64)
    n = len(x)
    dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    k = min(max(n - f - 3, 1), n - 1)
    scores = [np.sort(np.delete(dist[i], i))[:k].sum() for i in range(n)]
    return x[int(np.argmin(scores))]


@pytest.mark.parametrize("f", [0, 1, 3, 6])
def test_authors_krum_sums_unsquared_distances_to_the_round_count_of_neighbours(f):
    """Against a NumPy loop, for several per-round attacker counts passed as context (traced inside jit). Rows are
    spread so that squared and unsquared sums (and n - f - 2 against n - f - 3 neighbours) pick different rows."""
    rng = np.random.default_rng(f)
    x = (5.0 + rng.standard_t(1.5, size=(10, 3))).astype(np.float32)
    rule = agg.krum(num_byzantine=1, variant="authors")
    assert rule.needs == frozenset({"num_malicious"})
    got = jax.jit(lambda u, m: rule(u, num_malicious=m))(jnp.asarray(x), jnp.int32(f))
    np.testing.assert_allclose(got, ref_authors_krum(x, f), rtol=1e-6)
    np.testing.assert_allclose(rule(jnp.asarray(x)), ref_authors_krum(x, 1), rtol=1e-6)  # no context: num_byzantine


def test_authors_krum_differs_from_the_standard_rule_and_validates():
    """On some draw the two scores choose different rows (else the variant would be a no-op); bad input raises."""
    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(20):
        x = (rng.standard_t(1.5, size=(10, 3))).astype(np.float32)
        differ += not np.allclose(agg.krum(2, variant="authors")(x, num_malicious=2), agg.krum(2)(x))
    assert differ > 0
    with pytest.raises(ValueError, match="variant"):
        agg.krum(1, variant="fang")
    with pytest.raises(ValueError, match="n > f \\+ 3"):
        agg.krum(3, variant="authors")(np.ones((6, 2), np.float32))


def test_the_fl_server_and_aggregator_aware_attacks_pass_the_round_attacker_count():
    """The server gives the authors' Krum the number of attackers sampled in the round, and ``AttackInput.aggregate``
    does the same, so LMP-Krum predicts the server's choice."""
    from fedjax_attacks import data, fl, models
    from fedjax_attacks.attacks import AttackInput

    digits = data.load("digits")
    mlp = models.get("mlp", 10, digits.input_shape, hidden=(8,))
    config = fl.FLConfig(num_clients=20, num_malicious=8, clients_per_round=10, batch_size=4, rounds=2,
                         eval_every=1, aggregator="krum", aggregator_hparams={"num_byzantine": 0,
                                                                              "variant": "authors"})
    sim = fl.make_simulation(config, digits, mlp)
    params = sim.default_params()
    state = sim.init(jax.random.PRNGKey(4))
    rin = sim.client_updates(state, params)
    count = int(np.sum(rin.malicious_mask))
    assert count > 0
    rule = agg.krum(0, variant="authors")
    rng = np.random.default_rng(0)
    for _ in range(50):  # a submission on which the round's count and the fallback f = 0 choose different rows
        submitted = rin.updates + jnp.asarray(rng.standard_t(1.5, size=(10, 1)), jnp.float32)
        if not np.allclose(rule(submitted, num_malicious=count), rule(submitted, num_malicious=0)):
            break
    else:
        raise AssertionError("no submission tells the round's count from f = 0")
    new_state, _ = sim.server_step(state, submitted, params)
    want = state.params - params.lr * rule(submitted, num_malicious=count)
    np.testing.assert_allclose(new_state.params, want, rtol=1e-6, atol=1e-7)
    inp = AttackInput(submitted, rin.malicious_mask, state.round, aggregator=rule)
    np.testing.assert_allclose(inp.aggregate(submitted), rule(submitted, num_malicious=count), rtol=1e-6)
