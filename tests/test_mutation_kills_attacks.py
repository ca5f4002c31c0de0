"""Tests added to kill the mutants of ``make mutation`` that survived the attack tests (issue 18): the masked
statistics shared by the attacks against NumPy on the selected rows, including the empty and one-row masks; the
baseline attacks' scales, defaults and non-finite rows; MinMax / MinSum's search; LMP against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import attacks
from fedjax_attacks.attacks import AttackInput, stats
from fedjax_attacks.attacks.baselines import alie_z

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
