"""Local model poisoning (LMP, Fang et al. 2020, "Local Model Poisoning Attacks to Byzantine-Robust FL").

Fang et al. craft local *models* ``w_i``; with the round's global model ``w_Re`` fixed, a local model is the
global model plus an update, so the attacks are written here on updates ``u_i``. The paper's change direction
``s_j`` is the sign of the benign mean update, and the attack pushes the aggregate against it. In update space
this is the same rule for FedSGD gradients and FedAvg deltas: moving the aggregate against the benign mean
update harms training in both conventions (for gradients, Fang's model-space ``s`` is ``-sign(mean g)`` and the
crafted gradient ``-lambda sign(mean g)`` is what the model-space rule gives).

Two variants: ``"median"`` (the attack on coordinate-wise median and trimmed mean) and ``"krum"``; and
``"krum_authors"``, the Krum variant as the seed paper 000's code ran it (a bug kept for comparison, labelled so in
every table).
"""

import jax
import jax.numpy as jnp

from fedjax_attacks.aggregators import pairwise_sq_dists
from fedjax_attacks.attacks import stats
from fedjax_attacks.attacks.base import Attack, AttackInput, register

VARIANTS = ("median", "krum", "krum_authors")
AUTHORS_TOLERANCE = 1e-5


def lmp(variant: str = "median", b: float = 2.0, num_steps: int = 20) -> Attack:
    """Fang et al.'s local model poisoning attack.

    ``variant="median"`` (full knowledge, Fang Sec. 4.2/4.3): with ``s_j = sign(mean_benign u_j)`` and the benign
    coordinate-wise extremes ``u_max,j``, ``u_min,j``, each attacker sends, per coordinate, a value beyond the
    extreme on the side opposite ``s_j`` by a factor ``r ~ U[1, b]``: for ``s_j > 0`` a value in
    ``[u_min / b, u_min]`` if ``u_min > 0`` else ``[b u_min, u_min]``; otherwise ``[u_max, b u_max]`` if
    ``u_max > 0`` else ``[u_max / b, u_max]``. Under partial knowledge (Fang's partial variant) ``mu``, ``sigma``
    are estimated from the attackers' own honest updates and the value is drawn from ``[mu + 3 sigma,
    mu + 4 sigma]`` (``s_j <= 0``) or ``[mu - 4 sigma, mu - 3 sigma]`` (``s_j > 0``).

    ``variant="krum"`` (full knowledge, Fang Sec. 4.1): every attacker sends ``u' = -lambda s``. ``lambda`` starts
    at Fang's upper bound ``lambda_0 = min_i sum_{l in G_i} ||u_l - u_i|| / ((w - 2c - 1) sqrt(d)) + max_i ||u_i||
    / sqrt(d)`` (``i`` benign, ``G_i`` its ``w - c - 2`` nearest benign neighbours, ``c`` attackers sampled) and is
    halved ``num_steps`` times (fixed length, vmapped). Of these candidates the attack keeps the one maximising
    Fang's objective, the deviation of the server's aggregate against the benign direction ``-<s, agg(lambda)>``
    (ties go to the larger lambda). Under Krum this is the largest lambda whose crafted update Krum selects; under
    any other rule in ``inp.aggregate`` it is the same search, aggregator-aware.

    ``variant="krum_authors"``: the seed paper 000's code binary-searches lambda downward from the same bound,
    but its check aggregates the uncrafted updates, so Krum never "selects" the crafted one: lambda halves until
    the search interval is below ``AUTHORS_TOLERANCE`` (1e-5) and the attackers send ``-lambda s`` with lambda
    below 1e-5, almost no update. The baseline "LMP" of that paper's Fig. 3 under Krum is this one.

    Args:
      variant: ``"median"``, ``"krum"`` or ``"krum_authors"``.
      b: the factor range ``[1, b]`` of the median variant (Fang: 2; the seed paper: 2..5); ``b >= 1``.
      num_steps: how many halvings of lambda the Krum variant tries; ``>= 1``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"lmp: variant must be one of {VARIANTS}, got {variant!r}")
    if not b >= 1:
        raise ValueError(f"lmp: b must be >= 1, got {b}")
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"lmp: num_steps must be an int >= 1, got {num_steps!r}")
    if variant == "median":
        return Attack(name="lmp", craft=lambda key, inp: _craft_median(key, inp, b))
    if variant == "krum_authors":
        return Attack(name="lmp", craft=lambda key, inp: _craft_krum_authors(inp), needs_full_knowledge=True)
    return Attack(name="lmp", craft=lambda key, inp: _craft_krum(inp, num_steps), needs_full_knowledge=True)


def _craft_median(key: jax.Array, inp: AttackInput, b: float) -> jax.Array:
    """Fang's attack on coordinate-wise median / trimmed mean (full or partial knowledge)."""
    mask = stats.reference_mask(inp)
    mu = stats.masked_mean(inp.updates, mask)
    push_down = mu > 0  # s_j > 0: the benign updates move coordinate j up; the attackers push it down.
    r = jax.random.uniform(key, inp.updates.shape, inp.updates.dtype, minval=1.0, maxval=b)
    if inp.full_knowledge:
        u_max = stats.masked_max(inp.updates, mask)
        u_min = stats.masked_min(inp.updates, mask)
        below = jnp.where(u_min > 0, u_min / r, u_min * r)
        above = jnp.where(u_max > 0, u_max * r, u_max / r)
    else:
        sigma = stats.masked_std(inp.updates, mask)
        offset = (2.0 + r) * sigma  # r in [1, b] -> 3..(2 + b) sigma; with b = 2, Fang's [3, 4] sigma.
        below, above = mu - offset, mu + offset
    return jnp.where(push_down, below, above)


def _craft_krum(inp: AttackInput, num_steps: int) -> jax.Array:
    """Fang's attack on Krum: ``-lambda s`` for the best of ``num_steps`` halvings of Fang's upper bound."""
    benign = ~inp.malicious_mask
    s = jnp.sign(stats.masked_mean(inp.updates, benign))
    lambdas = krum_lambda_bound(inp.updates, inp.malicious_mask) * 0.5 ** jnp.arange(num_steps)

    def deviation(lam):
        submitted = jnp.where(inp.malicious_mask[:, None], -lam * s, inp.updates)
        return -jnp.dot(s, inp.aggregate(submitted), precision=jax.lax.Precision.HIGHEST)

    best = lambdas[jnp.argmax(jax.vmap(deviation)(lambdas))]
    return jnp.broadcast_to(-best * s, inp.updates.shape)


def _craft_krum_authors(inp: AttackInput) -> jax.Array:
    """The seed paper's LMP-Krum: ``-lambda s`` with lambda the bound halved until at most ``AUTHORS_TOLERANCE``,
    then halved once more (the search's last midpoint); the bound itself if it is already that small."""
    s = jnp.sign(stats.masked_mean(inp.updates, ~inp.malicious_mask))
    bound = krum_lambda_bound(inp.updates, inp.malicious_mask)
    halvings = jnp.ceil(jnp.log2(jnp.maximum(bound, AUTHORS_TOLERANCE) / AUTHORS_TOLERANCE))
    lam = jnp.where(bound > AUTHORS_TOLERANCE, bound * 0.5 ** (halvings + 1.0), bound)  # no search: the bound
    return jnp.broadcast_to(-lam * s, inp.updates.shape)


def krum_lambda_bound(updates: jax.Array, malicious_mask: jax.Array) -> jax.Array:
    """Fang et al.'s upper bound ``lambda_0`` on the Krum attack's scale (Sec. 4.1, in update space).

    ``lambda_0 = min_{i benign} sum_{l in G_i} D(u_l, u_i) / ((w - 2c - 1) sqrt(d)) + max_{i benign} ||u_i|| /
    sqrt(d)`` with unsquared distances ``D``, ``c`` the attackers sampled and ``G_i`` the ``w - c - 2`` benign
    updates nearest ``u_i``. The denominator is clamped at 1 (it is <= 0 when attackers are half the round);
    zero when no benign update is sampled.
    """
    w, d = updates.shape
    benign = ~malicious_mask
    n_benign = jnp.sum(benign.astype(jnp.int32))
    c = w - n_benign
    dist = jnp.sqrt(pairwise_sq_dists(updates, benign))
    pair_ok = benign[:, None] & benign[None, :] & ~jnp.eye(w, dtype=bool)
    nearest = jnp.sort(jnp.where(pair_ok, dist, jnp.inf), axis=1)
    take = jnp.arange(w) < n_benign - 2
    neighbour_sums = jnp.sum(jnp.where(take[None, :], nearest, 0.0), axis=1)
    min_sum = jnp.min(jnp.where(benign, neighbour_sums, jnp.inf))
    max_norm = jnp.max(jnp.where(benign, jnp.linalg.norm(updates, axis=1), 0.0))
    denom = jnp.maximum(w - 2 * c - 1, 1).astype(updates.dtype)
    bound = min_sum / (denom * jnp.sqrt(d)) + max_norm / jnp.sqrt(d)
    return jnp.where(n_benign > 0, bound, 0.0)


register("lmp", lmp)
