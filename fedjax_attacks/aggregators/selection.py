"""Distance-based selection rules: Krum, multi-Krum (Blanchard et al., 2017), Bulyan (El Mhamdi et al., 2018),
minimum-diameter averaging (MDA, El-Mhamdi et al., 2021) and divide-and-conquer (DnC, Shejwalkar & Houmansadr, 2021).

Pairwise squared distances come from one Gram-matrix product; a non-finite row is at distance ``+inf`` from every
other row, so it is never selected while enough finite rows remain.
"""

import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_attacks.aggregators._common import (
    check_int,
    check_positive,
    check_updates,
    finite_rows,
    hdot,
    pairwise_sq_dists,
    smallest_sum,
    sum_rows,
    weighted_row_sum,
)
from fedjax_attacks.aggregators.base import Aggregator, as_float, stateless
from fedjax_attacks.aggregators.registry import register
from fedjax_attacks.aggregators.sorting import order_statistic


KRUM_VARIANTS = ("standard", "authors")


def krum_scores(updates, num_byzantine: int):
    """Krum score ``s(i) = sum of ||x_i - x_j||^2 over the n - f - 2 nearest j != i`` -> ``f32[n]``."""
    updates = as_float(updates)[0]
    n = updates.shape[0]
    dists = pairwise_sq_dists(updates)
    dists = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, dists)
    return smallest_sum(dists, n - num_byzantine - 2)


def authors_krum_scores(updates, num_malicious):
    """The RL-attack paper's reference code's Krum score (seed paper 000): ``s(i) = sum of ||x_i - x_j||`` (not
    squared) over the ``n - f - 3`` nearest ``j != i``, with ``f`` the number of attackers the server sampled this
    round (traced; the count is clamped to at least one neighbour) -> ``f32[n]``."""
    updates = as_float(updates)[0]
    n = updates.shape[0]
    dists = jnp.sqrt(jnp.maximum(pairwise_sq_dists(updates), 0.0))
    dists = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, dists)
    k = jnp.clip(n - jnp.asarray(num_malicious, jnp.int32) - 3, 1, n - 1)
    nearest = jnp.sort(dists, axis=1)  # n is a round's w (tens): the sort is cheap
    return jnp.sum(jnp.where(jnp.arange(n) < k, nearest, 0.0), axis=1)


def krum(num_byzantine: int = 1, variant: str = "standard") -> Aggregator:
    """Krum: the update ``x_{i*}``, ``i* = argmin_i s(i)`` (lowest index on ties).

    ``variant="standard"`` (Blanchard et al., 2017): ``krum_scores`` with the fixed ``f = num_byzantine``; needs
    ``n > 2f + 2``. ``variant="authors"``: as the RL-attack paper's server ran it, ``authors_krum_scores`` with
    ``f`` the true number of attackers sampled this round, which the server passes as the context
    ``num_malicious`` (``num_byzantine`` is the fallback when none is passed); needs ``n > f + 3``.
    """
    f = check_int(num_byzantine, "krum: num_byzantine", 0)
    if variant not in KRUM_VARIANTS:
        raise ValueError(f"krum: variant must be one of {KRUM_VARIANTS}, got {variant!r}")

    def aggregate(updates, num_malicious=None, **context):
        del context
        n, _ = check_updates(updates, "krum")
        if variant == "authors":
            if n <= f + 3:
                raise ValueError(f"krum (authors' variant) needs n > f + 3, got n={n}, f={f}")
            scores = authors_krum_scores(updates, f if num_malicious is None else num_malicious)
        else:
            _check_krum_n(n, f, "krum")
            scores = krum_scores(updates, f)
        return updates[jnp.argmin(scores)]

    needs = ("num_malicious",) if variant == "authors" else ()
    return stateless(aggregate, name="krum" if variant == "standard" else "krum_authors", needs=needs)


def multi_krum(num_byzantine: int = 1, num_selected: int | None = None) -> Aggregator:
    """Multi-Krum: the mean of the ``m`` updates with the lowest Krum scores (``m = n - f`` by default, as ByzFL)."""
    f = check_int(num_byzantine, "multi_krum: num_byzantine", 0)
    if num_selected is not None:
        check_int(num_selected, "multi_krum: num_selected", 1)

    def aggregate(updates, **context):
        del context
        n, _ = check_updates(updates, "multi_krum")
        _check_krum_n(n, f, "multi_krum")
        m = n - f if num_selected is None else num_selected
        if m > n - f:
            raise ValueError(f"multi_krum: num_selected must be <= n - f = {n - f}, got {m}")
        chosen = lax.top_k(-krum_scores(updates, f), m)[1]
        mask = jnp.zeros((n,), bool).at[chosen].set(True)
        return weighted_row_sum(updates, jnp.full((n,), 1.0 / m), mask)

    return stateless(aggregate, name="multi_krum")


def bulyan(num_byzantine: int = 1) -> Aggregator:
    """Bulyan: select ``theta = n - 2f`` updates by repeated Krum (each round removes the Krum winner of the rest,
    Krum's neighbour count ``max(n_rest - f - 2, 2)``: Krum is undefined once ``n_rest <= 2f + 2`` and with a single
    neighbour the closest pair always ties, which would make the selection depend on the client order), then per
    coordinate average the ``beta = theta - 2f`` selected values closest to their median. Needs ``n >= 4f + 3``.

    Values tied at the cut-off distance from the median share the remaining slots equally (permutation invariant).
    """
    f = check_int(num_byzantine, "bulyan: num_byzantine", 0)

    def aggregate(updates, **context):
        del context
        n, _ = check_updates(updates, "bulyan")
        if n < 4 * f + 3:
            raise ValueError(f"bulyan needs n >= 4f + 3, got n={n}, f={f}")
        theta, beta = n - 2 * f, n - 4 * f
        selected = updates[_repeated_krum(pairwise_sq_dists(updates), f, theta)]
        med = order_statistic(selected, theta // 2)
        if theta % 2 == 0:
            med = 0.5 * (med + order_statistic(selected, theta // 2 - 1))
        gaps = jnp.abs(selected - med)
        cutoff = order_statistic(gaps, beta - 1)
        closer = gaps < cutoff
        at_cut = gaps == cutoff
        sum_closer = _masked_sum(selected, closer)
        count_closer = _masked_sum(jnp.ones_like(selected), closer)
        sum_cut = _masked_sum(selected, at_cut)
        count_cut = _masked_sum(jnp.ones_like(selected), at_cut)
        return (sum_closer + (beta - count_closer) * sum_cut / count_cut) / beta

    return stateless(aggregate, name="bulyan")


def mda(num_byzantine: int = 1, max_subsets: int = 100_000) -> Aggregator:
    """Minimum-diameter averaging: the mean of the ``n - f`` updates whose diameter ``max ||x_i - x_j||`` is smallest,
    by exact search over all ``C(n, f)`` subsets (static index array; first subset in lexicographic order on ties).
    Raises ``ValueError`` when ``C(n, f) > max_subsets``.
    """
    f = check_int(num_byzantine, "mda: num_byzantine", 0)
    max_subsets = check_int(max_subsets, "mda: max_subsets", 1)

    def aggregate(updates, **context):
        del context
        n, _ = check_updates(updates, "mda")
        if f >= n:
            raise ValueError(f"mda needs f < n, got n={n}, f={f}")
        if math.comb(n, f) > max_subsets:
            raise ValueError(f"mda: C({n}, {f}) = {math.comb(n, f)} subsets exceeds max_subsets={max_subsets}")
        subsets = jnp.asarray(list(itertools.combinations(range(n), n - f)), jnp.int32)
        dists = pairwise_sq_dists(updates)
        diameters = jnp.max(dists[subsets[:, :, None], subsets[:, None, :]], axis=(1, 2))
        best = subsets[jnp.argmin(diameters)]
        mask = jnp.zeros((n,), bool).at[best].set(True)
        return weighted_row_sum(updates, jnp.full((n,), 1.0 / (n - f)), mask)

    return stateless(aggregate, name="mda")


def dnc(num_byzantine: int = 1, num_iters: int = 1, subsample_dim: int = 10_000,
        filter_frac: float = 1.0) -> Aggregator:
    """Divide-and-conquer (DnC): per iteration, sample ``b = subsample_dim`` coordinates, centre the sampled updates,
    score ``s_i = <x_i - mu, v>^2`` with ``v`` the top right singular vector, keep the ``n - c f`` lowest scores;
    return the mean of the updates kept in every iteration. Needs ``key`` when ``d > subsample_dim``.
    """
    f = check_int(num_byzantine, "dnc: num_byzantine", 0)
    num_iters = check_int(num_iters, "dnc: num_iters", 1)
    subsample_dim = check_int(subsample_dim, "dnc: subsample_dim", 1)
    filter_frac = check_positive(filter_frac, "dnc: filter_frac")

    def aggregate(updates, key=None, **context):
        del context
        n, d = check_updates(updates, "dnc")
        num_keep = n - int(filter_frac * f)
        if num_keep < 1:
            raise ValueError(f"dnc keeps n - filter_frac * f = {num_keep} updates; needs >= 1")
        good = finite_rows(updates)
        if d > subsample_dim:
            if key is None:
                raise ValueError("dnc needs key= when d > subsample_dim (random coordinate subsets)")
            cols = jax.vmap(lambda k: jax.random.choice(k, d, (subsample_dim,), replace=False))(
                jax.random.split(key, num_iters))
        else:
            cols = jnp.broadcast_to(jnp.arange(d), (num_iters, d))
        kept = jax.vmap(lambda c: _dnc_keep(updates[:, c], good, num_keep))(cols)
        mask = jnp.all(kept, axis=0)
        return weighted_row_sum(updates, jnp.ones(n) / jnp.sum(mask), mask)

    return stateless(aggregate, name="dnc")


def _dnc_keep(sub, good, num_keep):
    n = sub.shape[0]
    sub = jnp.where(good[:, None], sub, 0)
    mu = jnp.sum(sub, axis=0) / jnp.maximum(jnp.sum(good), 1)
    centred = jnp.where(good[:, None], sub - mu, 0)
    eigvecs = jnp.linalg.eigh(hdot(centred, centred.T))[1]  # top eigenvector u of Z Z^T: <z_i, v>^2 = lam u_i^2
    scores = eigvecs[:, -1] ** 2  # the factor lam > 0 is common to every score: it cannot change which are kept
    scores = jnp.where(good, scores, jnp.inf)
    chosen = lax.top_k(-scores, num_keep)[1]
    return jnp.zeros((n,), bool).at[chosen].set(True)


def _repeated_krum(dists, f, theta):
    """Indices of the ``theta`` rows picked one by one by Krum over the rows not yet picked. Each row's distances
    are sorted once; a round sums, per row, the first ``k`` entries of its sorted row that are still in play."""
    n = dists.shape[0]
    order_idx = jnp.argsort(jnp.where(jnp.eye(n, dtype=bool), jnp.inf, dists), axis=1)
    sorted_dists = jnp.take_along_axis(dists, order_idx, axis=1)

    def step(t, state):
        removed, order = state
        alive = ~removed[order_idx] & (order_idx != jnp.arange(n)[:, None])
        k = jnp.maximum(n - t - f - 2, 2)
        taken = alive & (jnp.cumsum(alive, axis=1) <= k)
        scores = jnp.sum(jnp.where(taken, sorted_dists, 0), axis=1)
        # a remaining row far from all others (score inf) must still beat the removed ones
        scores = jnp.where(removed, jnp.inf, jnp.minimum(scores, jnp.finfo(dists.dtype).max))
        winner = jnp.argmin(scores)
        return removed.at[winner].set(True), order.at[t].set(winner)

    _, order = lax.fori_loop(0, theta, step, (jnp.zeros((n,), bool), jnp.zeros((theta,), jnp.int32)))
    return order


def _masked_sum(values, mask):
    return sum_rows(jnp.where(mask[i], values[i], 0) for i in range(values.shape[0]))


def _check_krum_n(n, f, rule):
    if n <= 2 * f + 2:
        raise ValueError(f"{rule} needs n > 2f + 2, got n={n}, f={f}")


register("krum", krum)
register("multi_krum", multi_krum)
register("bulyan", bulyan)
register("mda", mda)
register("dnc", dnc)
