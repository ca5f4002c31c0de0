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


def ref_geomed(x, iters, nu):
    z = np.zeros(x.shape[1])
    for _ in range(iters):
        w = np.array([1 / max(nu, np.linalg.norm(z - xi)) for xi in x])
        z = (w[:, None] * x).sum(0) / w.sum()
    return z


def ref_cc(x, tau, iters, v):
    for _ in range(iters):
        v = v + np.mean([(xi - v) * min(1, tau / np.linalg.norm(xi - v)) for xi in x], axis=0)
    return v


def ref_fltrust(x, g0):
    ts = [max(0.0, xi @ g0 / (np.linalg.norm(xi) * np.linalg.norm(g0))) for xi in x]
    return sum(t * xi * np.linalg.norm(g0) / np.linalg.norm(xi) for t, xi in zip(ts, x)) / sum(ts)


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
