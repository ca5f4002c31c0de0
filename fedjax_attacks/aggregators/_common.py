"""Shared helpers: input validation, non-finite rows, fast reductions over the client axis, pairwise distances.

XLA's CPU reduction over the leading (client) axis of an ``(n, d)`` array is very slow (about 60x slower than a
fused elementwise sum of the ``n`` rows), so sums over clients are unrolled into a balanced tree of row additions,
which XLA fuses into a single pass over the data.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Above this many rows, unrolled row sums make the program too large; fall back to a matrix product.
_MAX_UNROLL = 256


def check_updates(updates, rule: str) -> tuple[int, int]:
    """Validates ``updates`` as a 2-D ``f32[n, d]`` array with ``n >= 1``; returns the static ``(n, d)``."""
    if getattr(updates, "ndim", None) != 2:
        raise ValueError(f"{rule}: updates must be a 2-D array f32[n, d], got shape {getattr(updates, 'shape', None)}")
    n, d = updates.shape
    if n < 1 or d < 1:
        raise ValueError(f"{rule}: updates must have at least one row and one column, got shape {updates.shape}")
    return n, d


def check_int(value, name: str, minimum: int) -> int:
    """Validates a static integer hyperparameter ``value >= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive(value, name: str) -> float:
    """Validates a float hyperparameter ``value > 0`` (finite). A traced value (an ``FLParams`` override inside a
    jitted run) passes unchanged: it was validated where it was made."""
    if isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def hdot(a, b):
    """``a @ b`` at ``precision=HIGHEST``: aggregation statistics must not depend on the device (GPUs default to
    TF32 for float32 products)."""
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)


def sq_norms(updates):
    """Squared row norms ``||x_i||^2`` (``inf``/``nan`` for rows that overflow or are non-finite)."""
    return jnp.sum(updates * updates, axis=1)


def finite_rows(updates):
    """``bool[n]``: rows whose squared norm is finite. NaN, Inf and overflowing rows (e.g. 1e38) are not."""
    return jnp.isfinite(sq_norms(updates))


def sum_rows(terms):
    """Sums a list of equally shaped arrays as a balanced tree (XLA fuses it into one pass)."""
    terms = list(terms)
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def weighted_row_sum(updates, weights, valid=None):
    """``sum_i w_i x_i`` over rows, skipping rows where ``valid`` is False (so a NaN row times 0 stays 0)."""
    n = updates.shape[0]
    weights = jnp.asarray(weights, updates.dtype)
    if valid is not None:
        weights = jnp.where(valid, weights, 0)
    if n > _MAX_UNROLL:
        safe = updates if valid is None else jnp.where(valid[:, None], updates, 0)
        return hdot(weights, safe)
    if valid is None:
        return sum_rows(weights[i] * updates[i] for i in range(n))
    return sum_rows(jnp.where(valid[i], weights[i] * updates[i], 0) for i in range(n))


def pairwise_sq_dists(updates, mask=None):
    """Squared distances ``D_ij = ||x_i - x_j||^2``, ``f32[n, n]``, via one Gram product of centred rows.

    The one pairwise-distance function of the library (aggregators, attacks, FRL agreement). The rows are centred
    on a reference row before the Gram product ``G = (X - r)(X - r)^T`` (asked at ``precision=HIGHEST``, so a GPU
    does not compute it in TF32): the float32 form ``|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>`` loses the answer when the
    rows share a component much larger than their spread. The reference ``r`` is the medoid of the finite rows on
    every (d // 256)-th column (fewer than 512), so a far (Byzantine) row is never the centre.

    Rows that are non-finite (or whose squared norm overflows) are at distance ``+inf`` from every other row,
    i.e. the farthest possible update; the diagonal is 0. Each entry depends only on rows i and j (and ``r``), so
    an outlier, even a NaN row, cannot spoil the distances between honest rows. Integer input is cast to float32.
    ``mask`` (bool[n], optional) keeps only some rows: the others are treated like non-finite rows and never
    chosen as the centre, so the distances among the kept rows do not depend on the others at all.
    """
    x = jnp.asarray(updates)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.float32)
    n, d = x.shape
    good = finite_rows(x) if mask is None else finite_rows(x) & mask
    centred = jnp.where(good[:, None], x - reference_row(x, good), 0)
    gram = hdot(centred, centred.T)
    norms = jnp.diagonal(gram)
    dists = jnp.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0)
    dists = jnp.where(good[:, None] & good[None, :], dists, jnp.inf)
    return jnp.where(jnp.eye(n, dtype=bool), 0, dists)


def reference_row(x, good, max_columns: int = 256):
    """A central finite row of ``x`` (``f32[d]``): among the ``good`` rows, the one whose ``ceil(n / 2)`` nearest
    rows are nearest in total, with Gram distances on every ``d // max_columns``-th column (fewer than
    ``2 max_columns``: cheap; a minority of far or overflowing rows cannot be chosen). No good row: row 0, its
    non-finite entries set to 0."""
    n, d = x.shape
    sample = jnp.where(good[:, None], x[:, :: max(1, d // max_columns)], 0)
    norms = jnp.sum(sample * sample, axis=1)  # Gram form: coarse, but any row near the bulk is a good centre
    sq = norms[:, None] + norms[None, :] - 2 * hdot(sample, sample.T)
    ok = good[:, None] & good[None, :] & jnp.isfinite(sq)
    dist = jnp.where(ok, jnp.sqrt(jnp.maximum(jnp.where(ok, sq, 0), 0)), jnp.inf)
    cost = smallest_sum(dist, (n + 1) // 2)
    ref = x[jnp.argmin(jnp.where(good, cost, jnp.inf))]
    return jnp.where(jnp.isfinite(ref), ref, 0)


def smallest_sum(values, k: int):
    """Per row, the sum of the ``k`` smallest entries of ``values: f32[n, m]`` (``k`` static, tie-invariant)."""
    return -jnp.sum(jax.lax.top_k(-values, k)[0], axis=-1)
