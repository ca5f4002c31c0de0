"""Baseline model-poisoning attacks: EB, IPM, ALIE, sign flipping, noise, AvgZero and label flipping.

Sign convention. ``updates`` are gradients in FedSGD mode (the server does ``theta -= lr * aggregate``) and model
deltas in FedAvg mode (``theta += aggregate``). Every attack here is defined relative to the honest updates
(negate them, move against their mean, or replace them by noise), so each one harms training the same way under
both conventions; the docstrings say where a direction matters.

Every ``craft`` returns the full ``f32[w, d]`` array; only the rows where ``malicious_mask`` is true are used.
"""

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from fedjax_attacks.attacks import stats
from fedjax_attacks.attacks.base import Attack, AttackInput, check_positive, register


EB_VARIANTS = ("ascent", "authors")


def eb(variant: str = "ascent") -> Attack:
    """Explicit boosting (EB, Bhagoji et al. 2019, as used by the seed paper 000).

    ``variant="ascent"``: each attacker runs gradient ascent on its own data: its update is its negated honest
    update ``-g_i`` (in both sign conventions), boosted by ``w / m_t`` (#clients sampled / #attackers sampled this
    round) so that under plain averaging the attackers together outweigh their share, ``g_i' = -(w / m_t) g_i``.

    ``variant="authors"``: EB as the seed paper 000's code ran it (a bug kept for comparison, labelled so in every
    table): the result of its gradient ascent is discarded and every attacker sends the last benign client's
    update of the round (here the benign row of highest index), boosted by ``w / m_t``: a helpful update, not an
    attack. It reads a benign update, so it needs full knowledge.
    """
    if variant not in EB_VARIANTS:
        raise ValueError(f"eb: variant must be one of {EB_VARIANTS}, got {variant!r}")

    def craft(key, inp: AttackInput):
        del key
        boost = inp.num_sampled / jnp.maximum(inp.num_malicious, 1).astype(inp.updates.dtype)
        if variant == "ascent":
            return -boost * inp.updates
        benign = ~inp.malicious_mask
        last = jnp.max(jnp.where(benign, jnp.arange(inp.num_sampled), -1))
        sent = jnp.where(last >= 0, inp.updates[jnp.maximum(last, 0)], 0.0)
        return jnp.broadcast_to(boost * sent, inp.updates.shape)

    return Attack(name="eb", craft=craft, needs_full_knowledge=variant == "authors")


def ipm(eps: float = 5.0) -> Attack:
    """Inner product manipulation (IPM, Xie et al. 2020): every attacker sends ``-eps * mean(benign updates)``.

    Full knowledge (the benign mean ``mu``). Under ``mean`` with ``m`` of ``w`` malicious the aggregate is
    ``((w - m) - m eps) / w * mu``: its inner product with ``mu`` is negative once ``eps > (w - m) / m``, in
    both sign conventions. The seed paper's reference uses ``eps = 5``.
    """
    check_positive(eps, "ipm: eps")

    def craft(key, inp: AttackInput):
        del key
        benign_mean = stats.masked_mean(inp.updates, ~inp.malicious_mask)
        return jnp.broadcast_to(-eps * benign_mean, inp.updates.shape)

    return Attack(name="ipm", craft=craft, needs_full_knowledge=True)


def alie(z: float | None = None) -> Attack:
    """A little is enough (ALIE, Baruch et al. 2019): every attacker sends ``mu - z * sigma``.

    ``mu``, ``sigma`` are the coordinate-wise mean and (population) standard deviation of the benign updates
    under full knowledge, or of the attackers' own honest updates under partial knowledge (the paper's setting).
    With ``z=None``, ``z`` follows the paper from the round's ``n = w`` sampled and ``f = m_t`` malicious:
    ``s = floor(n / 2 + 1) - f``, ``z = Phi^{-1}((n - s) / n)``, with the probability clipped to [0.5, 0.999]
    (z in [0, 3.09]) so rounds with few or many attackers stay finite. The shift is ``-z sigma``, direction-free.
    """
    if z is not None:
        check_positive(z, "alie: z", allow_zero=True)

    def craft(key, inp: AttackInput):
        del key
        mask = stats.reference_mask(inp)
        mu = stats.masked_mean(inp.updates, mask)
        sigma = stats.masked_std(inp.updates, mask)
        z_t = alie_z(inp.num_sampled, inp.num_malicious) if z is None else z
        return jnp.broadcast_to(mu - z_t * sigma, inp.updates.shape)

    return Attack(name="alie", craft=craft)


def alie_z(num_sampled: int, num_malicious: jax.Array) -> jax.Array:
    """ALIE's ``z_max = Phi^{-1}((n - s) / n)`` with ``s = floor(n / 2 + 1) - f``; probability clipped to
    [0.5, 0.999]."""
    s = jnp.floor(num_sampled / 2 + 1) - num_malicious
    prob = jnp.clip((num_sampled - s) / num_sampled, 0.5, 0.999)
    return norm.ppf(prob)


def sign_flip(scale: float = 1.0) -> Attack:
    """Sign flipping: each attacker sends its honest update negated and scaled, ``-scale * g_i``."""
    check_positive(scale, "sign_flip: scale")

    def craft(key, inp: AttackInput):
        del key
        return -scale * inp.updates

    return Attack(name="sign_flip", craft=craft)


def gaussian(sigma: float = 200.0) -> Attack:
    """Gaussian attack (as in Fang et al. 2020): each attacker sends ``N(0, sigma^2 I)`` noise (default 200)."""
    check_positive(sigma, "gaussian: sigma")

    def craft(key, inp: AttackInput):
        return sigma * jax.random.normal(key, inp.updates.shape, inp.updates.dtype)

    return Attack(name="gaussian", craft=craft)


def large_noise(a: float = 1000.0) -> Attack:
    """LargeNoise (DecByzPG paper 002): each attacker sends ``U[-a, a]^d`` noise (default a = 1000)."""
    check_positive(a, "large_noise: a")

    def craft(key, inp: AttackInput):
        return jax.random.uniform(key, inp.updates.shape, inp.updates.dtype, minval=-a, maxval=a)

    return Attack(name="large_noise", craft=craft)


def avg_zero() -> Attack:
    """AvgZero (DecByzPG paper 002): every attacker sends ``-(sum of benign updates) / m_t``.

    Full knowledge. The plain mean of all ``w`` submitted updates is then exactly zero, so an undefended
    server stops learning (in both sign conventions).
    """

    def craft(key, inp: AttackInput):
        del key
        benign_sum = jnp.sum(jnp.where(inp.malicious_mask[:, None], 0.0, inp.updates), axis=0)
        m = jnp.maximum(inp.num_malicious, 1).astype(inp.updates.dtype)
        return jnp.broadcast_to(-benign_sum / m, inp.updates.shape)

    return Attack(name="avg_zero", craft=craft, needs_full_knowledge=True)


NON_FINITE_KINDS = ("nan", "inf", "-inf", "huge", "mixed")


def non_finite(kind: str = "mixed") -> Attack:
    """Non-finite updates (as ByzFL's Inf attack): every attacker sends a row of NaN (``"nan"``), ``+inf``,
    ``-inf``, or ``1e38`` (``"huge"``: finite, but its squared norm overflows); ``"mixed"`` cycles through the
    four over the attackers' rows. Tests what a server does with an unusable update."""
    if kind not in NON_FINITE_KINDS:
        raise ValueError(f"non_finite: kind must be one of {NON_FINITE_KINDS}, got {kind!r}")
    values = {"nan": [jnp.nan], "inf": [jnp.inf], "-inf": [-jnp.inf], "huge": [1e38],
              "mixed": [jnp.nan, jnp.inf, -jnp.inf, 1e38]}[kind]

    def craft(key, inp: AttackInput):
        del key
        rank = jnp.cumsum(inp.malicious_mask.astype(jnp.int32)) - 1  # the k-th attacker of the round
        row = jnp.asarray(values, inp.updates.dtype)[jnp.maximum(rank, 0) % len(values)]
        return jnp.broadcast_to(row[:, None], inp.updates.shape)

    return Attack(name="non_finite", craft=craft)


def label_flip(num_classes: int = 10) -> Attack:
    """Label flipping (data poisoning, Fang et al. 2020): malicious clients relabel ``y -> C - 1 - y`` and then
    train honestly; ``craft`` submits their honest updates on the flipped data unchanged."""
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"label_flip: num_classes must be an int >= 2, got {num_classes!r}")

    def poison_data(key, x, y):
        del key
        return x, (num_classes - 1 - y).astype(y.dtype)

    return Attack(name="label_flip", craft=lambda key, inp: inp.updates, poison_data=poison_data,
                  poisons_data=True)


register("eb", eb)
register("ipm", ipm)
register("alie", alie)
register("sign_flip", sign_flip)
register("gaussian", gaussian)
register("large_noise", large_noise)
register("avg_zero", avg_zero)
register("label_flip", label_flip)
register("non_finite", non_finite)
