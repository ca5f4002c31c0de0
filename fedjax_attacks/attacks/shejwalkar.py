"""MinMax and MinSum (Shejwalkar and Houmansadr, NDSS 2021, "Manipulating the Byzantine"), AGR-agnostic.

Every attacker sends ``g_m = mu + gamma * p``: ``mu`` the mean of the reference updates (the benign ones under
full knowledge, the attackers' own honest ones under the paper's partial-knowledge variant) and ``p`` a
perturbation pointing against it: ``"unit_vec"`` ``-mu / ||mu||``, ``"std"`` ``-sigma`` (coordinate-wise
standard deviation), ``"sign"`` ``-sign(mu)``. ``gamma`` is the largest value that keeps the malicious update
inside the spread of the reference updates:

* MinMax: ``max_i ||g_m - g_i|| <= max_{i,j} ||g_i - g_j||``;
* MinSum: ``sum_i ||g_m - g_i||^2 <= max_i sum_j ||g_i - g_j||^2``.

Both constraints hold on an interval ``[0, gamma*]`` (convex in gamma, true at 0), so ``gamma*`` is found by
a fixed-length bisection on ``[0, 2 max_{i,j} ||g_i - g_j|| / ||p||]`` (an upper bound by the triangle
inequality) — the paper's halving search with a static step count. Moving against ``mu`` harms training for
gradients (FedSGD) and deltas (FedAvg) alike. Neither attack needs the aggregation rule.
"""

import jax
import jax.numpy as jnp

from fedjax_attacks.aggregators import pairwise_sq_dists
from fedjax_attacks.aggregators._common import hdot
from fedjax_attacks.attacks import stats
from fedjax_attacks.attacks.base import Attack, AttackInput, register

PERTURBATIONS = ("unit_vec", "std", "sign")


def minmax(perturbation: str = "std", num_steps: int = 30) -> Attack:
    """MinMax: ``mu + gamma p`` with the largest ``gamma`` such that the malicious update's largest distance to
    a reference update is at most the largest reference pairwise distance."""
    _validate("minmax", perturbation, num_steps)
    return Attack(name="minmax", craft=lambda key, inp: _craft(inp, perturbation, num_steps, "max"))


def minsum(perturbation: str = "std", num_steps: int = 30) -> Attack:
    """MinSum: ``mu + gamma p`` with the largest ``gamma`` such that the malicious update's sum of squared
    distances to the reference updates is at most the largest such sum of a reference update."""
    _validate("minsum", perturbation, num_steps)
    return Attack(name="minsum", craft=lambda key, inp: _craft(inp, perturbation, num_steps, "sum"))


def perturbation_vector(kind: str, updates: jax.Array, mask: jax.Array) -> jax.Array:
    """f32[d]: the perturbation ``p`` (``"unit_vec"``, ``"std"`` or ``"sign"``) of the masked rows."""
    mu = stats.masked_mean(updates, mask)
    if kind == "unit_vec":
        return -mu / jnp.maximum(jnp.linalg.norm(mu), 1e-12)
    if kind == "std":
        return -stats.masked_std(updates, mask)
    return -jnp.sign(mu)


def _validate(name: str, perturbation: str, num_steps: int) -> None:
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"{name}: perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"{name}: num_steps must be an int >= 1, got {num_steps!r}")


def _craft(inp: AttackInput, perturbation: str, num_steps: int, objective: str) -> jax.Array:
    mask = stats.reference_mask(inp)
    mu = stats.masked_mean(inp.updates, mask)
    p = perturbation_vector(perturbation, inp.updates, mask)
    gamma = search_gamma(inp.updates, mask, mu, p, num_steps, objective)
    return jnp.broadcast_to(mu + gamma * p, inp.updates.shape)


def search_gamma(updates, mask, mu, p, num_steps: int, objective: str) -> jax.Array:
    """The largest ``gamma`` in ``[0, 2 R / ||p||]`` (``R`` the largest reference pairwise distance) satisfying the
    MinMax (``objective="max"``) or MinSum (``"sum"``) constraint, by ``num_steps`` bisection steps.

    ``||mu + gamma p - g_i||^2 = a_i + 2 gamma b_i + gamma^2 ||p||^2`` with ``a_i = ||mu - g_i||^2`` and
    ``b_i = <p, mu - g_i>`` is precomputed, so each step costs O(w), not O(w d).
    """
    pair_ok = mask[:, None] & mask[None, :]
    sq = jnp.where(pair_ok, pairwise_sq_dists(updates, mask), 0.0)
    diff = mu[None, :] - updates
    a = jnp.sum(diff * diff, axis=1)
    b = hdot(diff, p)
    pp = hdot(p, p)
    if objective == "max":
        threshold = jnp.max(sq)
    else:
        threshold = jnp.max(jnp.where(mask, jnp.sum(sq, axis=1), 0.0))

    def ok(gamma):
        dist_sq = jnp.where(mask, a + 2.0 * gamma * b + gamma * gamma * pp, 0.0)
        value = jnp.max(dist_sq) if objective == "max" else jnp.sum(dist_sq)
        return value <= threshold

    # the inner where keeps sqrt away from 0 (pp = 0 means p = 0: any gamma gives mu); a clamp such as
    # max(pp, 1e-30) would cap gamma for updates of scale ~1e-17
    hi = jnp.where(pp > 0, 2.0 * jnp.sqrt(jnp.max(sq)) / jnp.sqrt(jnp.where(pp > 0, pp, 1.0)), 0.0)

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        good = ok(mid)
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    lo, _ = jax.lax.fori_loop(0, num_steps, step, (jnp.zeros_like(hi), hi))
    return lo


register("minmax", minmax)
register("minsum", minsum)
