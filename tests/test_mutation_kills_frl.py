"""Tests added to kill the mutants of ``make mutation`` that survived the FRL agreement tests (issue 18): the rule
checks on both sides of each bound, distances and diameters against NumPy (with and without a mask)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import attacks
from fedjax_attacks.frl import agreement as agr

X = (np.random.default_rng(1).normal(size=(5, 3)) * [1.0, 4.0, 0.5] + 20.0).astype(np.float32)


def test_check_rule_bounds():
    for rule, n, f in (("mda", 5, 0), ("gda", 5, 4), ("none", 2, 1), ("mda", 100_000, 1), ("mda", 17, 4),
                       ("gda", 20, 10)):  # GDA has no subset search
        agr.check_rule(rule, n, f)  # C(100000, 1) = 100000 subsets: exactly the limit
    for rule, n, f, match in (("gda", 5, -1, "num_byzantine"), ("gda", 5, 5, "num_byzantine"),
                              ("mda", 100_001, 1, "too large"), ("mda", 20, 10, "too large"),
                              ("avg", 5, 1, "unknown agreement rule")):
        with pytest.raises(ValueError, match=match):
            agr.check_rule(rule, n, f)


def test_distances_and_diameter_match_numpy():
    x64 = X.astype(np.float64)
    dist = np.linalg.norm(x64[:, None] - x64[None], axis=-1)
    np.testing.assert_allclose(agr.pairwise_distances(jnp.asarray(X)), dist, rtol=1e-5, atol=1e-4)
    assert float(agr.diameter(jnp.asarray(X))) == pytest.approx(dist.max(), rel=1e-5)
    mask = np.array([True, False, True, True, False])
    sub = dist[np.ix_(mask, mask)]
    assert float(agr.diameter(jnp.asarray(X), jnp.asarray(mask))) == pytest.approx(sub.max(), rel=1e-5)
    assert sub.max() < dist.max()  # the mask matters
    for one_or_none in ([False, False, True, False, False], [False] * 5):  # no pair: diameter 0
        assert float(agr.diameter(jnp.asarray(X), jnp.asarray(one_or_none))) == 0.0


def test_agree_once_none_and_one_mda_round():
    byzantine = jnp.asarray([True, False, False, False, False])
    params = jnp.asarray(X)
    assert agr.agree_once(jax.random.key(0), "none", params, byzantine, attacks.get("large_noise"), 1) is params
    got = np.asarray(agr.agree_once(jax.random.key(0), "mda", params, byzantine, attacks.get("none"), 1))
    np.testing.assert_allclose(got, np.broadcast_to(agr.mda(params, 1), X.shape), rtol=1e-6)


def test_agreement_attacks_see_round_zero_by_default():
    """The Byzantine message here is the round index it is shown (``AttackInput.round``); GDA around 0 keeps it,
    so the default ``round_index=0`` of ``agree_once`` and ``average_agreement`` shows in the result."""
    probe = attacks.Attack("round_probe", lambda key, inp: jnp.full_like(inp.updates, inp.round))
    params = jnp.asarray([[50.0], [-10.0], [0.0], [10.0]])
    byzantine = jnp.asarray([True, False, False, False])
    want = (-10.0 + 0.0 + 0.0) / 3  # agent 2 (at 0) keeps itself, the probe's 0 and -10 (lowest index on the tie)
    once = agr.agree_once(jax.random.key(0), "gda", params, byzantine, probe, 1)
    assert float(once[2, 0]) == pytest.approx(want)
    later = agr.agree_once(jax.random.key(0), "gda", params, byzantine, probe, 1, round_index=3)
    assert float(later[2, 0]) == pytest.approx((-10.0 + 0.0 + 3.0) / 3)
    rounds = agr.average_agreement(jax.random.key(0), "gda", params, byzantine, probe, 1, num_rounds=1)
    assert float(rounds[2, 0]) == pytest.approx(want)
