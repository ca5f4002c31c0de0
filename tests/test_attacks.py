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
from fedjax_attacks.attacks import AttackInput
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
