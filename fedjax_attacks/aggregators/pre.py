"""Pre-aggregators ``f32[n, d] -> f32[n', d]`` and their composition with a final rule, like ``optax.chain``:
per-client norm clipping, nearest-neighbour mixing (NNM, Allouah et al., 2023) and bucketing (Karimireddy et al.,
2022); ``clipped_mean``/``clipped_median`` (clip to norm 2, then average: the defenses of the learning-to-attack
paper).
"""

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
    sq_norms,
)
from fedjax_attacks.aggregators.base import Aggregator, chain, stateless
from fedjax_attacks.aggregators.coordinatewise import median_of
from fedjax_attacks.aggregators.registry import get, register
from fedjax_attacks.aggregators.sorting import check_method, sort_columns
from fedjax_attacks.aggregators.rules import mean


def norm_clip(max_norm: float = 2.0) -> Aggregator:
    """Per-client norm clipping ``x_i <- x_i min(1, C / ||x_i||)`` (C = ``max_norm``) -> ``f32[n, d]``.

    A non-finite row (or one whose norm overflows) becomes the zero vector: its direction is unknown.
    """
    max_norm = check_positive(max_norm, "norm_clip: max_norm")

    def transform(updates, **context):
        del context
        check_updates(updates, "norm_clip")
        norms2 = sq_norms(updates)
        good = jnp.isfinite(norms2)
        positive = good & (norms2 > 0)  # a nonzero row whose squared norm underflows to 0 is kept, not scaled by C
        scale = jnp.where(positive, jnp.minimum(1.0, max_norm / jnp.sqrt(jnp.where(positive, norms2, 1))), 1.0)
        return jnp.where(good[:, None], updates * scale[:, None], 0)

    return stateless(transform, name="norm_clip", pre=True)


def clipped_mean(max_norm: float = 2.0) -> Aggregator:
    """Norm clipping to ``max_norm`` then the mean."""
    return chain(norm_clip(max_norm), mean())


def clipped_median(max_norm: float = 2.0, method: str | None = None) -> Aggregator:
    """Norm clipping to ``max_norm`` then the coordinate-wise median (the seed paper's strongest defense).

    A row that cannot be clipped (non-finite, or its norm overflows) is dropped: the median is taken over the ``m``
    remaining rows (NaN when ``m = 0``), so a round with many such rows does not pull the median towards zero as
    ``chain(norm_clip(), median())`` does. Rounds without such rows take the plain median (``method`` as in
    ``median``); the others sort the columns.
    """
    clip = norm_clip(max_norm)
    check_method(method)

    def aggregate(updates, **context):
        del context
        check_updates(updates, "clipped_median")
        keep = finite_rows(updates)
        return lax.cond(jnp.all(keep), lambda x: median_of(x, method), lambda x: median_of_kept_rows(x, keep),
                        clip(updates))

    return stateless(aggregate, name="clipped_median")


def median_of_kept_rows(updates, keep):
    """The coordinate-wise median of the rows of ``updates: f32[n, d]`` where ``keep: bool[n]`` (a traced count ``m``
    of them; the mean of the two middle values for even ``m``, NaN for ``m = 0``)."""
    m = jnp.sum(keep)
    ordered = sort_columns(jnp.where(keep[:, None], updates, jnp.inf))
    low = lax.dynamic_index_in_dim(ordered, jnp.maximum(m - 1, 0) // 2, keepdims=False)
    high = lax.dynamic_index_in_dim(ordered, m // 2, keepdims=False)
    return jnp.where(m > 0, 0.5 * (low + high), jnp.nan)


def nnm(num_byzantine: int = 1, aggregator=None, **aggregator_hparams) -> Aggregator:
    """Nearest-neighbour mixing: replace each ``x_i`` by the mean of its ``n - f`` nearest updates (itself
    included; lowest index first on ties) -> ``f32[n, d]``. With ``aggregator`` (a rule or a registry name, built
    with ``aggregator_hparams``), returns ``chain(nnm, aggregator)``. A non-finite (or overflowing) row is nobody's
    neighbour: a row mixes only the finite rows among its ``n - f`` nearest, and a non-finite row is replaced by the
    mean of the finite rows' mixes (NaN when no row is finite).
    """
    f = check_int(num_byzantine, "nnm: num_byzantine", 0)

    def transform(updates, **context):
        del context
        n, _ = check_updates(updates, "nnm")
        if f >= n:
            raise ValueError(f"nnm needs f < n, got n={n}, f={f}")
        good = finite_rows(updates)
        neighbours = lax.top_k(-pairwise_sq_dists(updates), n - f)[1]
        chosen = jnp.zeros((n, n), updates.dtype).at[jnp.arange(n)[:, None], neighbours].set(1.0) * good[None, :]
        counts = jnp.sum(chosen, axis=1, keepdims=True)
        mixes = hdot(chosen / jnp.maximum(counts, 1), jnp.where(good[:, None], updates, 0))
        stand_in = jnp.sum(jnp.where(good[:, None], mixes, 0), axis=0) / jnp.sum(good)  # NaN if no row is finite
        return jnp.where(good[:, None], mixes, stand_in)

    return _maybe_chain(stateless(transform, name="nnm", pre=True), aggregator, aggregator_hparams)


def bucketing(aggregator=None, bucket_size: int = 2, **aggregator_hparams) -> Aggregator:
    """Bucketing: shuffle the ``n`` updates with context ``key``, average consecutive buckets of ``s = bucket_size``
    (the last one smaller when ``s`` does not divide ``n``) -> ``f32[ceil(n / s), d]``. With ``aggregator`` (a rule
    or a registry name, built with ``aggregator_hparams``), aggregates the bucket means. A non-finite (or
    overflowing) row is dropped from its bucket's mean; a bucket of such rows only is a NaN row (the next rule
    treats it as the farthest update).
    """
    s = check_int(bucket_size, "bucketing: bucket_size", 1)

    def transform(updates, key=None, **context):
        del context
        n, _ = check_updates(updates, "bucketing")
        if key is None:
            raise ValueError("bucketing needs key= (a PRNG key for the random buckets)")
        num_buckets = -(-n // s)
        slot = jnp.zeros((n,), jnp.int32).at[jax.random.permutation(key, n)].set(jnp.arange(n)) // s
        member = (slot[None, :] == jnp.arange(num_buckets)[:, None]).astype(updates.dtype)
        good = finite_rows(updates)
        member = member * good[None, :]
        counts = jnp.sum(member, axis=1, keepdims=True)
        means = hdot(member / jnp.maximum(counts, 1), jnp.where(good[:, None], updates, 0))
        return jnp.where(counts > 0, means, jnp.nan)

    return _maybe_chain(stateless(transform, name="bucketing", pre=True, needs=("key",)), aggregator,
                        aggregator_hparams)


def _maybe_chain(transform: Aggregator, aggregator, aggregator_hparams) -> Aggregator:
    if aggregator is None:
        if aggregator_hparams:
            raise ValueError(f"hyperparameters {sorted(aggregator_hparams)} need an aggregator")
        return transform
    if isinstance(aggregator, str):
        aggregator = get(aggregator, **aggregator_hparams)
    elif aggregator_hparams:
        raise ValueError("aggregator hyperparameters only go with an aggregator given by name")
    return chain(transform, aggregator)


register("norm_clip", norm_clip)
register("clipped_mean", clipped_mean)
register("clipped_median", clipped_median)
register("nnm", nnm)
register("bucketing", bucketing)
