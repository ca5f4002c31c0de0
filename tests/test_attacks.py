"""Tests of the model-poisoning attacks against plain NumPy references and their defining properties."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_attacks import attacks
from fedjax_attacks.aggregators import krum, mean
from fedjax_attacks.attacks import AttackInput, stats
from fedjax_attacks.attacks.baselines import alie_z
from fedjax_attacks.attacks.lmp import krum_lambda_bound

W, D = 10, 12
MASK = np.array([True, False, False, True, False, False, False, False, False, False])


def make_input(seed=0, mask=MASK, full_knowledge=True, aggregate=mean(), shift=0.5):
    rng = np.random.default_rng(seed)
    updates = (shift + rng.normal(size=(len(mask), D))).astype(np.float32)
    if not full_knowledge:
        updates[~mask] = 0.0
    return AttackInput(
        global_params=jnp.zeros(5),
        updates=jnp.asarray(updates),
        malicious_mask=jnp.asarray(mask),
        round=jnp.int32(3),
        aggregator=aggregate,
        full_knowledge=full_knowledge,
    )


def submitted(attack, inp, key=jax.random.PRNGKey(0)):
    crafted = jax.jit(attack.craft)(key, inp)
    return np.asarray(jnp.where(inp.malicious_mask[:, None], crafted, inp.updates))


def np_krum_index(x, f):
    """Krum (Blanchard et al.): the row with the least sum of squared distances to its n - f - 2 nearest."""
    n = len(x)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return int(np.argmin(scores))


# ---------------------------------------------------------------- defining properties


def test_none_submits_honest_updates():
    inp = make_input()
    np.testing.assert_array_equal(submitted(attacks.none, inp), np.asarray(inp.updates))


def test_eb_is_boosted_gradient_ascent():
    inp = make_input()
    out = submitted(attacks.get("eb"), inp)
    u = np.asarray(inp.updates)
    np.testing.assert_allclose(out[MASK], -(W / MASK.sum()) * u[MASK], rtol=1e-6)
    np.testing.assert_array_equal(out[~MASK], u[~MASK])


def test_eb_as_the_authors_ran_it_sends_the_last_benign_update_boosted():
    inp = make_input()
    out = submitted(attacks.get("eb", variant="authors"), inp)
    u = np.asarray(inp.updates)
    last_benign = np.flatnonzero(~MASK)[-1]
    np.testing.assert_allclose(out[MASK], np.broadcast_to((W / MASK.sum()) * u[last_benign], out[MASK].shape),
                               rtol=1e-6)
    np.testing.assert_array_equal(out[~MASK], u[~MASK])
    assert attacks.get("eb", variant="authors").needs_full_knowledge and not attacks.get("eb").needs_full_knowledge
    with pytest.raises(ValueError, match="variant"):
        attacks.get("eb", variant="author")


def test_lmp_krum_as_the_authors_ran_it_shrinks_lambda_below_their_tolerance():
    inp = make_input(seed=1, aggregate=krum(num_byzantine=2))
    out = submitted(attacks.get("lmp", variant="krum_authors"), inp)
    u = np.asarray(inp.updates)
    s = np.sign(u[~MASK].mean(0))
    lam0 = float(krum_lambda_bound(inp.updates, inp.malicious_mask))
    # the authors' loop: their check never accepts, so ub halves until it is <= 1e-5; lambda is its midpoint
    ub = lam0
    while ub > 1e-5:
        ub /= 2
    np.testing.assert_allclose(out[MASK], np.broadcast_to(-(ub / 2) * s, out[MASK].shape), rtol=1e-4)
    correct = submitted(attacks.get("lmp", variant="krum"), inp)
    assert np.linalg.norm(correct[MASK][0]) > 1e4 * np.linalg.norm(out[MASK][0])


def test_ipm_makes_mean_aggregate_point_against_benign_mean():
    inp = make_input()
    out = submitted(attacks.get("ipm", eps=5.0), inp)
    u = np.asarray(inp.updates)
    benign_mean = u[~MASK].mean(0)
    np.testing.assert_allclose(out[MASK], np.broadcast_to(-5.0 * benign_mean, out[MASK].shape), rtol=1e-5)
    assert float(np.dot(out.mean(0), benign_mean)) < 0
    # A small eps (below (w - m) / m = 4) does not flip the mean: the property can fail.
    small = submitted(attacks.get("ipm", eps=1.0), inp)
    assert float(np.dot(small.mean(0), benign_mean)) > 0


def test_avg_zero_zeroes_the_mean():
    out = submitted(attacks.get("avg_zero"), make_input())
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)


def test_sign_flip_and_noise_attacks():
    inp = make_input()
    u = np.asarray(inp.updates)
    np.testing.assert_allclose(submitted(attacks.get("sign_flip", scale=3.0), inp)[MASK], -3.0 * u[MASK], rtol=1e-6)
    big = submitted(attacks.get("large_noise", a=7.0), inp)[MASK]
    assert np.all(np.abs(big) <= 7.0) and np.abs(big).max() > 3.0
    noise = submitted(attacks.get("gaussian", sigma=4.0), make_input(mask=np.ones(W, bool)))
    assert 3.0 < noise.std() < 5.0
    assert not np.allclose(noise[0], noise[1])  # each attacker draws its own noise


def test_label_flip_poisons_labels_only():
    attack = attacks.get("label_flip", num_classes=10)
    x = jnp.ones((4, 3))
    y = jnp.array([0, 3, 9, 5])
    x2, y2 = attack.poison_data(jax.random.PRNGKey(0), x, y)
    np.testing.assert_array_equal(np.asarray(y2), [9, 6, 0, 4])
    np.testing.assert_array_equal(np.asarray(x2), np.asarray(x))
    inp = make_input()
    np.testing.assert_array_equal(submitted(attack, inp), np.asarray(inp.updates))


def test_alie_lies_within_mean_pm_z_std():
    inp = make_input()
    u = np.asarray(inp.updates)
    mu, sigma = u[~MASK].mean(0), u[~MASK].std(0)
    z = float(alie_z(W, 2))
    # Baruch et al.: s = floor(n / 2 + 1) - f = 4, z = Phi^-1((n - s) / n) = Phi^-1(0.6).
    assert z == pytest.approx(scipy.stats.norm.ppf(0.6), rel=1e-5)
    out = submitted(attacks.get("alie"), inp)[MASK]
    assert np.all(np.abs(out - mu) <= z * sigma + 1e-5)
    np.testing.assert_allclose(out[0], mu - z * sigma, rtol=1e-5, atol=1e-6)
    fixed = submitted(attacks.get("alie", z=1.5), inp)[MASK]
    np.testing.assert_allclose(fixed[1], mu - 1.5 * sigma, rtol=1e-5, atol=1e-6)


def test_alie_z_reference_over_attacker_counts():
    for n in (10, 25):
        for f in range(n + 1):
            s = np.floor(n / 2 + 1) - f
            expected = scipy.stats.norm.ppf(np.clip((n - s) / n, 0.5, 0.999))
            assert float(alie_z(n, f)) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def _minmax_gamma_reference(g, p):
    """Exact gamma*: the smallest positive root over i of ||mu + gamma p - g_i||^2 = R^2."""
    mu = g.mean(0)
    r2 = max(float(np.sum((a - b) ** 2)) for a in g for b in g)
    roots = []
    for gi in g:
        a, b, c = float(p @ p), 2.0 * float(p @ (mu - gi)), float(np.sum((mu - gi) ** 2)) - r2
        roots.append((-b + np.sqrt(b * b - 4 * a * c)) / (2 * a))
    return min(roots), r2


@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
def test_minmax_stays_within_benign_spread_and_is_tight(perturbation):
    inp = make_input(seed=1)
    g = np.asarray(inp.updates)[~MASK].astype(np.float64)
    out = submitted(attacks.get("minmax", perturbation=perturbation), inp)[MASK][0]
    max_dist = max(np.linalg.norm(out - gi) for gi in g)
    max_pair = max(np.linalg.norm(a - b) for a in g for b in g)
    assert max_dist <= max_pair * (1 + 1e-4)
    mu = g.mean(0)
    p = {"unit_vec": -mu / np.linalg.norm(mu), "std": -g.std(0), "sign": -np.sign(mu)}[perturbation]
    gamma, _ = _minmax_gamma_reference(g, p)
    np.testing.assert_allclose(out, mu + gamma * p, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
def test_minsum_matches_closed_form(perturbation):
    inp = make_input(seed=2)
    g = np.asarray(inp.updates)[~MASK].astype(np.float64)
    out = submitted(attacks.get("minsum", perturbation=perturbation), inp)[MASK][0]
    mu = g.mean(0)
    p = {"unit_vec": -mu / np.linalg.norm(mu), "std": -g.std(0), "sign": -np.sign(mu)}[perturbation]
    # sum_i ||mu + gamma p - g_i||^2 = n ||gamma p||^2 + S0 (the cross term vanishes at the mean).
    threshold = max(sum(float(np.sum((a - b) ** 2)) for b in g) for a in g)
    s0 = sum(float(np.sum((mu - gi) ** 2)) for gi in g)
    gamma = np.sqrt((threshold - s0) / (len(g) * float(p @ p)))
    np.testing.assert_allclose(out, mu + gamma * p, rtol=1e-3, atol=1e-4)
    assert sum(float(np.sum((out - gi) ** 2)) for gi in g) <= threshold * (1 + 1e-4)


def test_lmp_median_goes_beyond_benign_extremes_against_the_mean():
    b = 3.0
    inp = make_input(seed=3, shift=0.0)
    out = submitted(attacks.get("lmp", variant="median", b=b), inp)[MASK]
    g = np.asarray(inp.updates)[~MASK]
    mu, lo, hi = g.mean(0), g.min(0), g.max(0)
    for j in range(D):
        v = out[:, j]
        if mu[j] > 0:
            assert np.all(v <= lo[j] + 1e-6)
            bound = lo[j] / b if lo[j] > 0 else lo[j] * b
            assert np.all(v >= bound - 1e-5)
        else:
            assert np.all(v >= hi[j] - 1e-6)
            bound = hi[j] * b if hi[j] > 0 else hi[j] / b
            assert np.all(v <= bound + 1e-5)
    # The coordinate-wise median moves against the benign mean.
    full = submitted(attacks.get("lmp", variant="median", b=b), inp)
    shift = np.median(full, 0) - np.median(np.asarray(inp.updates), 0)
    assert np.all(shift * np.sign(mu) <= 1e-6)


def test_lmp_median_partial_knowledge_uses_own_updates():
    inp = make_input(seed=4, mask=np.array([True] * 4 + [False] * 6), full_knowledge=False)
    out = submitted(attacks.get("lmp", b=2.0), inp)[:4]
    own = np.asarray(inp.updates)[:4]
    mu, sigma = own.mean(0), own.std(0)
    dev = (out - mu) * -np.sign(mu)  # deviation against the mean direction
    assert np.all(dev >= 3 * sigma - 1e-5) and np.all(dev <= 4 * sigma + 1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lmp_krum_update_is_the_one_krum_selects(seed):
    f = 2
    inp = make_input(seed=seed, aggregate=krum(num_byzantine=f))
    out = submitted(attacks.get("lmp", variant="krum"), inp)
    assert np.all(out[MASK] == out[MASK][0])
    assert MASK[np_krum_index(out, f)]
    u = np.asarray(inp.updates)
    s = np.sign(u[~MASK].mean(0))
    lam = -out[MASK][0] @ s / D
    np.testing.assert_allclose(out[MASK][0], -lam * s, rtol=1e-5)
    # It is the largest of the halvings Krum accepts (a Python-loop search).
    lam0 = float(krum_lambda_bound(inp.updates, inp.malicious_mask))
    best = None
    for k in range(20):
        cand = u.copy()
        cand[MASK] = -(lam0 * 0.5**k) * s
        if MASK[np_krum_index(cand, f)]:
            best = lam0 * 0.5**k
            break
    assert best is not None and lam == pytest.approx(best, rel=1e-4)


def test_krum_lambda_bound_reference():
    inp = make_input(seed=5)
    u = np.asarray(inp.updates).astype(np.float64)
    benign = u[~MASK]
    n, c = W, int(MASK.sum())
    sums = []
    for i in range(len(benign)):
        d = sorted(np.linalg.norm(benign[i] - benign[j]) for j in range(len(benign)) if j != i)
        sums.append(sum(d[: n - c - 2]))
    expected = min(sums) / ((n - 2 * c - 1) * np.sqrt(D)) + max(np.linalg.norm(benign, axis=1)) / np.sqrt(D)
    assert float(krum_lambda_bound(inp.updates, inp.malicious_mask)) == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- knowledge, jit, vmap, edge cases

ALL = [
    ("none", {}),
    ("eb", {}),
    ("ipm", {}),
    ("lmp", {"variant": "median"}),
    ("lmp", {"variant": "krum"}),
    ("alie", {}),
    ("minmax", {}),
    ("minsum", {"perturbation": "sign"}),
    ("sign_flip", {}),
    ("gaussian", {}),
    ("large_noise", {}),
    ("avg_zero", {}),
    ("label_flip", {}),
]


def test_registry_covers_every_attack():
    assert sorted({name for name, _ in ALL} | {"switch", "non_finite"}) == [
        n for n in attacks.names() if not n.startswith("test_")]
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.get("nope")


@pytest.mark.parametrize(
    "name,hparams",
    [
        ("ipm", {"eps": 0.0}),
        ("lmp", {"variant": "trimmed"}),
        ("lmp", {"b": 0.5}),
        ("lmp", {"num_steps": 0}),
        ("alie", {"z": -1.0}),
        ("minmax", {"perturbation": "cos"}),
        ("minsum", {"num_steps": 0}),
        ("gaussian", {"sigma": -1.0}),
        ("large_noise", {"a": 0.0}),
        ("sign_flip", {"scale": 0.0}),
        ("label_flip", {"num_classes": 1}),
    ],
)
def test_bad_hyperparameters_raise(name, hparams):
    with pytest.raises(ValueError, match=name):
        attacks.get(name, **hparams)


def test_full_knowledge_flags():
    needs = {(n, tuple(h.items())) for n, h in ALL if attacks.get(n, **h).needs_full_knowledge}
    assert needs == {("ipm", ()), ("avg_zero", ()), ("lmp", (("variant", "krum"),))}


def test_jit_vmap_match_single_calls_and_stay_finite():
    """Every attack, vmapped over rounds with 0, 1, 5, all-but-one and all attackers sampled, is finite and equals
    its single (jitted) call. All attacks share one compiled function to keep the test fast."""
    built = [attacks.get(name, **hparams) for name, hparams in ALL]
    masks = np.zeros((5, W), bool)
    masks[1, 4] = True
    masks[2, :5] = True
    masks[3, 1:] = True
    masks[4, :] = True
    rng = np.random.default_rng(0)
    updates = jnp.asarray(rng.normal(size=(5, W, D)).astype(np.float32))
    keys = jax.random.split(jax.random.PRNGKey(1), 5)

    def craft_all(key, u, m):
        inp = AttackInput(u, m, jnp.int32(0), global_params=jnp.zeros(3), aggregator=krum(num_byzantine=2),
                          full_knowledge=True)
        return [attack.craft(key, inp) for attack in built]

    batched = jax.jit(jax.vmap(craft_all))(keys, updates, jnp.asarray(masks))
    singles = [jax.jit(craft_all)(keys[i], updates[i], jnp.asarray(masks[i])) for i in (1, 2)]
    for (name, hparams), out, *single in zip(ALL, batched, *singles):
        out = np.asarray(out)
        assert out.shape == (5, W, D), name
        assert np.all(np.isfinite(out)), (name, hparams)
        for i, one in zip((1, 2), single):
            np.testing.assert_allclose(out[i], one, rtol=1e-5, atol=1e-5, err_msg=f"{name} {hparams}")


@pytest.mark.parametrize("name,hparams", [a for a in ALL if not attacks.get(a[0], **a[1]).needs_full_knowledge])
def test_partial_knowledge_attacks_ignore_benign_rows(name, hparams):
    attack = attacks.get(name, **hparams)
    inp = make_input(seed=6, full_knowledge=False)
    noisy = inp.replace(updates=inp.updates + jnp.asarray(~MASK)[:, None] * 100.0)
    key = jax.random.PRNGKey(2)
    np.testing.assert_allclose(
        np.asarray(attack.craft(key, inp))[MASK], np.asarray(attack.craft(key, noisy))[MASK], rtol=1e-6
    )


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    mask_bits=st.lists(st.booleans(), min_size=W, max_size=W).filter(lambda b: 1 <= sum(b) <= W - 3),
)
def test_minmax_minsum_constraints_hold_property(seed, mask_bits):
    mask = np.array(mask_bits)
    inp = make_input(seed=seed, mask=mask)
    g = np.asarray(inp.updates)[~mask].astype(np.float64)
    max_pair = max(np.linalg.norm(a - b) for a in g for b in g)
    out = _jit_craft("minmax")(jax.random.PRNGKey(0), inp)[mask][0]
    assert max(np.linalg.norm(out - gi) for gi in g) <= max_pair * (1 + 1e-4) + 1e-5
    out = _jit_craft("minsum")(jax.random.PRNGKey(0), inp)[mask][0]
    threshold = max(sum(float(np.sum((a - b) ** 2)) for b in g) for a in g)
    assert sum(float(np.sum((out - gi) ** 2)) for gi in g) <= threshold * (1 + 1e-4) + 1e-5


@functools.cache
def _jit_craft(name):
    craft = jax.jit(attacks.get(name).craft)
    return lambda key, inp: np.asarray(craft(key, inp))

# ----------------------------------------------------------------------------------------------------
# Strengthened: tests that fail on plausible wrong attacks
# Attacks checked so a plausible wrong version fails (issue 18): the noise attacks replace the update (they do
# not add to it), and MinMax / MinSum's gamma is tight on both sides of its constraint (a NumPy root).


W, D = 10, 400
MASK_037 = np.zeros(W, bool)
MASK_037[[0, 3, 7]] = True


def _input(offset=1000.0, seed=0):
    rng = np.random.default_rng(seed)
    updates = (offset + rng.normal(size=(W, D))).astype(np.float32)  # far from zero: added noise would show
    return AttackInput(global_params=jnp.zeros(3), updates=jnp.asarray(updates), malicious_mask=jnp.asarray(MASK_037),
                       round=jnp.int32(0), aggregator=mean(), full_knowledge=True)


@pytest.mark.parametrize("name, hparams, moments", [
    ("gaussian", {"sigma": 3.0}, (0.0, 3.0)),
    ("large_noise", {"a": 6.0}, (0.0, 6.0 / np.sqrt(3.0))),
])
def test_noise_attacks_replace_the_update(name, hparams, moments):
    rows = np.asarray(attacks.get(name, **hparams).craft(jax.random.key(1), _input()))[MASK_037]
    mean_, std = moments
    assert abs(rows.mean() - mean_) < 5 * std / np.sqrt(rows.size)  # centred at 0, not at the update (1000)
    assert abs(rows.std() - std) < 0.1 * std
    if name == "large_noise":
        assert rows.min() >= -6.0 and rows.max() <= 6.0 and rows.min() < -5.5 and rows.max() > 5.5
    other = np.asarray(attacks.get(name, **hparams).craft(jax.random.key(2), _input()))[MASK_037]
    assert not np.allclose(rows, other)  # fresh noise per key


def _np_gamma(updates, mask, objective, perturbation):
    """The largest gamma with the MinMax (max) / MinSum (sum) constraint, in float64: for MinMax the smallest
    root over the reference rows of ``a_i + 2 gamma b_i + gamma^2 |p|^2 = T``; for MinSum the root of the summed
    quadratic."""
    ref = updates[~mask].astype(np.float64)
    mu = ref.mean(0)
    if perturbation == "std":
        p = -ref.std(0, ddof=0)
    elif perturbation == "unit_vec":
        p = -mu / np.linalg.norm(mu)
    else:
        p = -np.sign(mu)
    sq = ((ref[:, None] - ref[None]) ** 2).sum(-1)
    a = ((mu - ref) ** 2).sum(1)
    b = (mu - ref) @ p
    pp = p @ p
    if objective == "max":
        t = sq.max()
        roots = (-b + np.sqrt(b ** 2 - pp * (a - t))) / pp
        return roots.min(), mu, p
    t = sq.sum(1).max()
    A, B, C = len(ref) * pp, 2 * b.sum(), a.sum() - t
    return (-B + np.sqrt(B ** 2 - 4 * A * C)) / (2 * A), mu, p


@pytest.mark.parametrize("name, objective", [("minmax", "max"), ("minsum", "sum")])
@pytest.mark.parametrize("perturbation", ["std", "unit_vec", "sign"])
def test_minmax_minsum_gamma_is_tight_on_both_sides(name, objective, perturbation):
    inp = _input(offset=2.0, seed=4)
    crafted = np.asarray(attacks.get(name, perturbation=perturbation).craft(jax.random.key(0), inp))
    gamma_ref, mu, p = _np_gamma(np.asarray(inp.updates), MASK_037, objective, perturbation)
    assert gamma_ref > 0
    gamma = np.dot(crafted[0] - mu, p) / np.dot(p, p)  # the crafted row is mu + gamma p
    np.testing.assert_allclose(crafted[0], mu + gamma * p, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gamma, gamma_ref, rtol=2e-3)  # not smaller (loose), not larger (violating)
    assert np.all(crafted[MASK_037] == crafted[0])

# ----------------------------------------------------------------------------------------------------
# Written for mutants of attacks/baselines.py, shejwalkar.py, lmp.py and stats.py
# Tests added to kill the mutants of ``make mutation`` that survived the attack tests (issue 18): the masked
# statistics shared by the attacks against NumPy on the selected rows, including the empty and one-row masks; the
# baseline attacks' scales, defaults and non-finite rows; MinMax / MinSum's search; LMP against NumPy references.


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


# ---------------------------------------------------------------- attacks/baselines.py

BW, BD = 7, 5
BASE = (np.random.default_rng(1).normal(size=(BW, BD)) * 2 + np.float32([3, -5, 8, -2, 6])).astype(np.float32)
ONE = np.array([0, 0, 1, 0, 0, 0, 0], bool)
THREE = np.array([1, 0, 0, 1, 0, 1, 0], bool)
KEY = jax.random.PRNGKey(11)


def _submit(attack, mask, full=True):
    """The rows the server receives: ``where(mask, craft, updates)`` as the simulation builds them."""
    inp = AttackInput(updates=jnp.asarray(BASE), malicious_mask=jnp.asarray(mask), round=jnp.int32(0),
                      full_knowledge=full)
    return np.where(mask[:, None], np.asarray(attack.craft(KEY, inp)), BASE)


@pytest.mark.parametrize("mask", [ONE, THREE])
def test_eb_and_avg_zero_scale_by_the_attackers_sampled(mask):
    """Kills ``w / m`` -> ``w * m``, ``max(m, 1)`` -> ``max(m, 2)`` (EB and AvgZero at one attacker) and AvgZero's
    benign sum counting the attackers' rows (``where(mask, 0 -> +-1, u)``) or summing the wrong axis."""
    m = mask.sum()
    eb = _submit(attacks.get("eb"), mask)
    np.testing.assert_allclose(eb[mask], -(BW / m) * BASE[mask], rtol=1e-6)
    zero = _submit(attacks.get("avg_zero"), mask)
    expected = -BASE[~mask].astype(np.float64).sum(0) / m
    np.testing.assert_allclose(zero[mask], np.broadcast_to(expected, (m, BD)), rtol=1e-5)
    np.testing.assert_allclose(zero.astype(np.float64).mean(0), 0.0, atol=1e-5)


def test_baseline_defaults_are_the_documented_ones():
    """Kills every default replaced by its neighbour: IPM eps = 5, sign flipping scale = 1, Gaussian sigma = 200,
    LargeNoise a = 1000, label flipping C = 10, ALIE's z from ``alie_z`` (and ``z = 0`` allowed: exactly ``mu``)."""
    benign = BASE[~THREE].astype(np.float64)
    np.testing.assert_allclose(_submit(attacks.get("ipm"), THREE)[THREE][0], -5.0 * benign.mean(0), rtol=1e-5)
    np.testing.assert_array_equal(_submit(attacks.get("sign_flip"), THREE)[THREE], -BASE[THREE])
    shape = (BW, BD)
    np.testing.assert_allclose(_submit(attacks.get("gaussian"), THREE)[THREE],
                               (200.0 * jax.random.normal(KEY, shape))[THREE], rtol=1e-6)
    np.testing.assert_allclose(_submit(attacks.get("large_noise"), THREE)[THREE],
                               jax.random.uniform(KEY, shape, minval=-1000.0, maxval=1000.0)[THREE], rtol=1e-6)
    _, y = attacks.get("label_flip").poison_data(KEY, jnp.zeros((3, 2)), jnp.asarray([0, 4, 9]))
    np.testing.assert_array_equal(y, [9, 5, 0])
    z = float(alie_z(BW, 3))
    np.testing.assert_allclose(_submit(attacks.get("alie"), THREE)[THREE][0], benign.mean(0) - z * benign.std(0),
                               rtol=1e-5)
    np.testing.assert_allclose(_submit(attacks.get("alie", z=0.0), THREE)[THREE][0], benign.mean(0), rtol=1e-5)


def test_label_flip_accepts_two_classes_and_poisons_data():
    """Kills ``num_classes >= 2`` -> ``> 2`` / ``>= 3`` and ``poisons_data=True`` -> ``False`` (the simulation
    poisons the malicious clients' batches only when the flag is set)."""
    attack = attacks.get("label_flip", num_classes=2)
    assert attack.poisons_data
    np.testing.assert_array_equal(attack.poison_data(KEY, jnp.zeros((3, 1)), jnp.asarray([0, 1, 1]))[1], [1, 0, 0])
    with pytest.raises(ValueError, match="num_classes"):
        attacks.get("label_flip", num_classes=2.0)


@pytest.mark.parametrize("kind, cycle", [("nan", [np.nan]), ("inf", [np.inf]), ("-inf", [-np.inf]),
                                          ("huge", [1e38]), ("mixed", [np.nan, np.inf, -np.inf, 1e38])])
def test_non_finite_rows_cycle_over_the_attackers(kind, cycle):
    """The k-th attacker of the round (in row order) sends ``cycle[k % len(cycle)]`` in every coordinate. Kills the
    rank's ``- 1`` -> ``+ 1`` / ``- 2`` / ``- 0``, ``max(rank, 0)`` -> ``max(rank, 1)``, ``-inf`` -> ``+inf`` and the
    kind check inverted."""
    mask = np.array([0, 1, 0, 1, 1, 1, 1], bool)
    rows = _submit(attacks.get("non_finite", kind=kind), mask)[mask]
    expected = np.array([cycle[k % len(cycle)] for k in range(mask.sum())], np.float32)
    np.testing.assert_array_equal(rows, np.broadcast_to(expected[:, None], rows.shape))


# ---------------------------------------------------------------- attacks/shejwalkar.py

from fedjax_attacks.attacks.shejwalkar import perturbation_vector  # noqa: E402


def _craft_row(name, updates, mask, **hparams):
    inp = AttackInput(updates=jnp.asarray(updates, jnp.float32), malicious_mask=jnp.asarray(mask),
                      round=jnp.int32(0), full_knowledge=True)
    return np.asarray(attacks.get(name, **hparams).craft(KEY, inp))[np.asarray(mask)][0]


def _np_shejwalkar(ref, objective, perturbation):
    """float64 ``mu + gamma* p`` from the closed-form roots: MinMax the smallest root over the reference rows of
    ``|mu + gamma p - g_i|^2 = max_{i,j} |g_i - g_j|^2``, MinSum the root of the summed quadratic."""
    ref = ref.astype(np.float64)
    mu = ref.mean(0)
    p = {"std": -ref.std(0), "unit_vec": -mu / np.linalg.norm(mu), "sign": -np.sign(mu)}[perturbation]
    sq = ((ref[:, None] - ref[None]) ** 2).sum(-1)
    a, b, pp = ((mu - ref) ** 2).sum(1), (mu - ref) @ p, p @ p
    if objective == "max":
        gamma = ((-b + np.sqrt(b ** 2 - pp * (a - sq.max()))) / pp).min()
    else:
        gamma = np.sqrt((sq.sum(1).max() - a.sum()) / (len(ref) * pp))
    return mu + gamma * p


SMALL_SPREAD = (np.random.default_rng(2).normal(size=(8, 5)) * 0.1 + 3.0).astype(np.float32)
ATTACKERS = np.array([1, 0, 0, 1, 0, 1, 0, 0], bool)


@pytest.mark.parametrize("name, objective", [("minmax", "max"), ("minsum", "sum")])
@pytest.mark.parametrize("perturbation", ["std", "unit_vec", "sign"])
def test_shejwalkar_matches_numpy_when_distances_are_below_one(name, objective, perturbation):
    """Squared distances ~0.1 and attackers between the reference rows: kills the fallbacks of the non-reference
    entries (pairs, row sums, distances: ``0.0`` -> ``+-1.0``) and an inner ``pp > 1`` (a p shorter than 1)."""
    expected = _np_shejwalkar(SMALL_SPREAD[~ATTACKERS], objective, perturbation)
    np.testing.assert_allclose(_craft_row(name, SMALL_SPREAD, ATTACKERS, perturbation=perturbation), expected,
                               rtol=2e-5)


@pytest.mark.parametrize("name", ["minmax", "minsum"])
def test_shejwalkar_keeps_gamma_where_the_constraint_holds_with_equality(name):
    """References 10 and 12 (mu = 11, p = -1): both constraints hold with equality at gamma = 1 exactly (a midpoint
    of the bisection on [0, 4]), so the crafted value is exactly 10. Kills ``<= threshold`` -> ``< threshold``."""
    rows = np.array([[0.0], [10.0], [12.0]], np.float32)
    mask = np.array([True, False, False])
    for perturbation in ("sign", "std"):
        np.testing.assert_array_equal(_craft_row(name, rows, mask, perturbation=perturbation), [10.0])


@pytest.mark.parametrize("name", ["minmax", "minsum"])
def test_shejwalkar_is_scale_equivariant_down_to_tiny_updates(name):
    """Crafting on ``c U`` gives ``c`` times the crafted row on ``U`` (gamma is scale-free). Kills a real bug
    (fixed): the bracket ``2 R / sqrt(max(|p|^2, 1e-30))`` capped gamma for updates of scale 1e-16."""
    for perturbation in ("std", "unit_vec", "sign"):
        one = _craft_row(name, SMALL_SPREAD - 3.0, ATTACKERS, perturbation=perturbation)
        tiny = _craft_row(name, (SMALL_SPREAD - 3.0) * np.float32(1e-15), ATTACKERS, perturbation=perturbation)
        np.testing.assert_allclose(tiny / np.float32(1e-15), one, rtol=1e-4, err_msg=perturbation)


def test_unit_vec_perturbation_is_unit_and_zero_for_a_zero_mean():
    """``p = -mu / |mu|`` has norm 1 (kills ``-mu * |mu|`` and a clamp ``max(|mu|, 1.0...)`` at |mu| = 0.5); a zero
    mean gives ``p = 0`` and MinMax then sends ``mu`` (kills a clamp that lets ``0 / 0`` through)."""
    rows = jnp.asarray([[0.7, -0.1], [0.1, 0.5], [0.1, 0.2]], jnp.float32)  # mean (0.3, 0.2)... scaled below
    mu = np.asarray(rows).mean(0)
    rows = rows * float(0.5 / np.linalg.norm(mu))
    mu = np.asarray(rows).mean(0)
    p = np.asarray(perturbation_vector("unit_vec", rows, jnp.ones(3, bool)))
    np.testing.assert_allclose(p, -mu / np.linalg.norm(mu), rtol=1e-5)
    symmetric = np.array([[5.0, 5.0], [1.0, -2.0], [-1.0, 2.0]], np.float32)  # references average to exactly 0
    mask = np.array([True, False, False])
    np.testing.assert_array_equal(_craft_row("minmax", symmetric, mask, perturbation="unit_vec"), [0.0, 0.0])


def test_minmax_default_is_thirty_halvings():
    """1000 references near 0 and one at 10: gamma* is ~1/2000 of the bracket, so 29, 30 and 31 halvings give
    different float32 rows; the default must be 30 (kills ``num_steps=30`` -> 29 / 31 and the loop's start 0 ->
    1 / -1)."""
    rows = np.zeros((1001, 2), np.float32)
    rows[1:] = 1e-3 * np.random.default_rng(0).normal(size=(1000, 2))
    rows[-1, 0] += 10.0
    mask = np.zeros(1001, bool)
    mask[0] = True
    by_steps = {k: _craft_row("minmax", rows, mask, num_steps=k) for k in (29, 30, 31)}
    assert not np.array_equal(by_steps[29], by_steps[30]) and not np.array_equal(by_steps[31], by_steps[30])
    np.testing.assert_array_equal(_craft_row("minmax", rows, mask), by_steps[30])


def test_one_search_step_is_allowed():
    """Kills ``num_steps >= 1`` -> ``> 1`` / ``>= 2`` (MinMax, MinSum and LMP-Krum accept a single step)."""
    for name in ("minmax", "minsum"):
        assert attacks.get(name, num_steps=1).name == name
    assert attacks.get("lmp", variant="krum", num_steps=1).name == "lmp"


# ---------------------------------------------------------------- LMP (Fang et al.): edges of both variants
def _lmp_input(updates, mask, aggregator=None, full_knowledge=True):
    from fedjax_attacks.aggregators import mean
    return AttackInput(updates=jnp.asarray(updates, jnp.float32), malicious_mask=jnp.asarray(mask, bool),
                       round=jnp.int32(0), aggregator=aggregator or mean(), full_knowledge=full_knowledge)


def _np_lambda_bound(u, mask):
    """Fang's lambda_0 in float64 (denominator clamped at 1; 0 with no benign row)."""
    u = np.asarray(u, np.float64)
    w, d = u.shape
    benign = u[~np.asarray(mask)]
    c = w - len(benign)
    if not len(benign):
        return 0.0
    sums = [sum(sorted(np.linalg.norm(b - o) for j, o in enumerate(benign) if j != i)[: len(benign) - 2])
            for i, b in enumerate(benign)]
    return min(sums) / (max(w - 2 * c - 1, 1) * np.sqrt(d)) + np.linalg.norm(benign, axis=1).max() / np.sqrt(d)


@pytest.mark.parametrize("num_malicious", [0, 1, 2, 3, 5, 6])  # w - 2c - 1 = 5, 3, 1, -1, -5; one benign; none
def test_lmp_krum_bound_at_every_attacker_count_with_small_norms(num_malicious):
    """lambda_0 against NumPy with updates of norm < 1 (the max-norm fallback of a malicious row must not count),
    at denominators w - 2c - 1 of 1 and below 1 (clamped at 1, not 0 or 2), one benign row (no neighbours: only
    the norm term) and none (0, not inf)."""
    rng = np.random.default_rng(11)
    u = (0.05 + 0.1 * rng.normal(size=(6, 4))).astype(np.float32)
    mask = np.arange(6) < num_malicious
    from fedjax_attacks.attacks.lmp import krum_lambda_bound
    got = float(krum_lambda_bound(jnp.asarray(u), jnp.asarray(mask)))
    assert got == pytest.approx(_np_lambda_bound(u, mask), rel=1e-4, abs=1e-7)
    if num_malicious == 6:
        assert got == 0.0


def test_lmp_median_factor_range_signs_and_zero_mean():
    """Full knowledge: per coordinate the value is beyond the benign extreme opposite ``s_j`` by ``r ~ U[1, b]``
    (``b = 2`` by default, ``r`` spread over the whole range), on both sides of 0 with extremes inside (-1, 1) and
    beyond; a coordinate whose benign mean is exactly 0 (``s_j = 0``) is pushed up, beyond ``u_max``."""
    benign = np.array([[0.3, -0.6, 2.0, -3.0, -1.0, 0.2, -0.9, -0.5],
                       [0.5, -0.2, 4.0, -2.0, 1.0, 0.6, -0.4, 1.5]], np.float32)  # means: +, -, +, -, 0, +, -, +
    u = np.concatenate([np.zeros((40, 8), np.float32), benign])
    mask = np.arange(42) < 40
    out = np.asarray(attacks.get("lmp").craft(jax.random.PRNGKey(3), _lmp_input(u, mask)))[:40].astype(np.float64)
    lo, hi = benign.min(0).astype(np.float64), benign.max(0).astype(np.float64)
    push_down = benign.mean(0) > 0
    extreme = np.where(push_down, lo, hi)
    # r = how far beyond the extreme: below a positive u_min is u_min / r, below a negative one u_min * r, etc.
    grows = np.where(push_down, extreme < 0, extreme > 0)
    r = np.where(grows, out / extreme, extreme / out)
    assert np.all(r >= 1 - 1e-6) and np.all(r <= 2 + 1e-6)
    assert r.min() < 1.1 and r.max() > 1.9  # uniform over [1, b], not a point
    assert np.all(np.where(push_down, out <= lo + 1e-7, out >= hi - 1e-7))
    assert np.all(out[:, 4] >= hi[4])  # s_j = 0: the attackers push up


def test_lmp_krum_keeps_zero_where_the_benign_mean_is_zero_and_uses_twenty_halvings():
    """``-lambda s`` is 0 on a coordinate with ``s_j = 0`` (finite, not ``-lambda / s``); with an aggregator whose
    deviation grows as lambda shrinks, the search ends at the last of its 20 default halvings."""
    from fedjax_attacks.aggregators import Aggregator, krum
    rng = np.random.default_rng(5)
    u = (0.5 + rng.normal(size=(8, 5))).astype(np.float32)
    u[2:, 4] = np.array([1, -1, 2, -2, 0.5, -0.5], np.float32)  # benign mean exactly 0 on coordinate 4
    mask = np.arange(8) < 2
    lam0 = _np_lambda_bound(u, mask)
    s = np.sign(u[2:].mean(0))
    assert s[4] == 0
    craft = jax.jit(attacks.get("lmp", variant="krum").craft)
    out = np.asarray(craft(None, _lmp_input(u, mask, krum(num_byzantine=2))))
    assert np.all(np.isfinite(out)) and np.all(out[:, 4] == 0)
    inverse = Aggregator(init=lambda d: (), update=lambda x, state, **_: (1.0 / (x[0] + 1e-3 * (x[0] == 0)), state),
                         pre=False, needs=frozenset(), name="inverse")  # -<s, 1 / (-lam s)> = sum(s^2) / lam
    out = np.asarray(craft(None, _lmp_input(u, mask, inverse)))
    np.testing.assert_allclose(out[0], -(lam0 * 0.5 ** 19) * s, rtol=1e-4)


def test_lmp_krum_search_keeps_the_attack_away_from_zero_mean_coordinates():
    """Against Krum with a coordinate of benign mean exactly 0, the chosen lambda is the largest halving Krum
    selects (a loop over the halvings), and not the first one because rows of ``-lambda / s`` are not finite."""
    from fedjax_attacks.aggregators import krum
    rng = np.random.default_rng(2)
    craft, rule = jax.jit(attacks.get("lmp", variant="krum").craft), krum(num_byzantine=3)
    mask = np.arange(10) < 3
    for _ in range(20):  # a case where Krum rejects lambda_0 but accepts a halving
        u = (0.5 + rng.normal(size=(10, 6))).astype(np.float32)
        u[3:, 5] = np.array([1, -1, 2, -2, 3, -3, 0], np.float32)
        lam0, s = _np_lambda_bound(u, mask), np.sign(u[3:].mean(0))
        out = np.asarray(craft(None, _lmp_input(u, mask, rule)))
        lam = -out[0] @ s / (s @ s)
        if lam < 0.99 * lam0:
            break
    else:
        pytest.fail("no case where Krum rejects lambda_0")
    np.testing.assert_allclose(out[0], -lam * s, rtol=1e-5)
    assert out[0, 5] == 0
    ks = np.log2(lam0 / lam)
    assert abs(ks - round(ks)) < 1e-3 and 1 <= round(ks) < 20


def test_lmp_accepts_b_of_one_and_refuses_below():
    """``b >= 1`` (b = 1: the factor r is exactly 1, the attackers sit on the benign extremes)."""
    u = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, -2.0], [3.0, -1.0]], np.float32)
    out = np.asarray(attacks.get("lmp", b=1.0).craft(jax.random.PRNGKey(0), _lmp_input(u, np.arange(4) < 2)))
    np.testing.assert_allclose(out, [[1.0, -1.0]] * 4)  # s = (+, -): below u_min = 1, above u_max = -1
    with pytest.raises(ValueError, match="b must be"):
        attacks.get("lmp", b=0.99)
