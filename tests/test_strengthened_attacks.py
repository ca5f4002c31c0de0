"""Attacks checked so a plausible wrong version fails (issue 18): the noise attacks replace the update (they do
not add to it), and MinMax / MinSum's gamma is tight on both sides of its constraint (a NumPy root)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import attacks
from fedjax_attacks.aggregators import mean
from fedjax_attacks.attacks import AttackInput

W, D = 10, 400
MASK = np.zeros(W, bool)
MASK[[0, 3, 7]] = True


def _input(offset=1000.0, seed=0):
    rng = np.random.default_rng(seed)
    updates = (offset + rng.normal(size=(W, D))).astype(np.float32)  # far from zero: added noise would show
    return AttackInput(global_params=jnp.zeros(3), updates=jnp.asarray(updates), malicious_mask=jnp.asarray(MASK),
                       round=jnp.int32(0), aggregator=mean(), full_knowledge=True)


@pytest.mark.parametrize("name, hparams, moments", [
    ("gaussian", {"sigma": 3.0}, (0.0, 3.0)),
    ("large_noise", {"a": 6.0}, (0.0, 6.0 / np.sqrt(3.0))),
])
def test_noise_attacks_replace_the_update(name, hparams, moments):
    rows = np.asarray(attacks.get(name, **hparams).craft(jax.random.key(1), _input()))[MASK]
    mean_, std = moments
    assert abs(rows.mean() - mean_) < 5 * std / np.sqrt(rows.size)  # centred at 0, not at the update (1000)
    assert abs(rows.std() - std) < 0.1 * std
    if name == "large_noise":
        assert rows.min() >= -6.0 and rows.max() <= 6.0 and rows.min() < -5.5 and rows.max() > 5.5
    other = np.asarray(attacks.get(name, **hparams).craft(jax.random.key(2), _input()))[MASK]
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
    gamma_ref, mu, p = _np_gamma(np.asarray(inp.updates), MASK, objective, perturbation)
    assert gamma_ref > 0
    gamma = np.dot(crafted[0] - mu, p) / np.dot(p, p)  # the crafted row is mu + gamma p
    np.testing.assert_allclose(crafted[0], mu + gamma * p, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gamma, gamma_ref, rtol=2e-3)  # not smaller (loose), not larger (violating)
    assert np.all(crafted[MASK] == crafted[0])
