"""Rules that reweight the updates: geometric median (RFA, Pillutla et al., 2022), centered clipping (Karimireddy
et al., 2021) and FLTrust (Cao et al., 2021). A non-finite row gets weight 0 (it never reaches the output).
"""

import jax.numpy as jnp
from jax import lax

from fedjax_attacks.aggregators._common import (
    check_int,
    check_positive,
    check_updates,
    finite_rows,
    hdot,
    sq_norms,
    weighted_row_sum,
)
from fedjax_attacks.aggregators.base import Aggregator, as_float, stateless
from fedjax_attacks.aggregators.registry import register


def geometric_median(num_iters: int = 8, smoothing: float = 0.1) -> Aggregator:
    """RFA: ``argmin_z sum_i alpha_i ||z - x_i||`` by the smoothed Weiszfeld iteration
    ``z <- sum_i beta_i x_i / sum_i beta_i``, ``beta_i = alpha_i / max(nu, ||z - x_i||)`` (nu = ``smoothing``),
    started at ``z = 0`` (as ByzFL; a far outlier then barely moves the first iterate). Optional context
    ``weights`` (alpha, f32[n], default 1).

    Distances use ``||x_i||^2 - 2 <x_i, z> + ||z||^2`` (one matrix-vector product per iteration, at HIGHEST
    precision): rows sharing a component much larger than their spread lose precision here (unlike the
    distance-based selection rules, whose distances are centred).
    """
    num_iters = check_int(num_iters, "geometric_median: num_iters", 1)
    nu = check_positive(smoothing, "geometric_median: smoothing")

    def aggregate(updates, weights=None, **context):
        del context
        n, d = check_updates(updates, "geometric_median")
        norms2 = sq_norms(updates)
        good = jnp.isfinite(norms2)
        alpha = jnp.ones((n,), updates.dtype) if weights is None else jnp.asarray(weights, updates.dtype)
        alpha = jnp.where(good, alpha, 0)

        def step(z):
            dist = _distances_to(updates, norms2, good, z)
            beta = alpha / jnp.maximum(nu, dist)
            beta = jnp.where(good & jnp.isfinite(beta), beta, 0)
            return weighted_row_sum(updates, beta / jnp.sum(beta), good)

        return lax.fori_loop(0, num_iters, lambda _, z: step(z), jnp.zeros((d,), updates.dtype))

    return stateless(aggregate, name="geometric_median")


def centered_clipping(tau: float = 100.0, num_iters: int = 1) -> Aggregator:
    """Centered clipping: ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||)``, ``num_iters`` (L) times,
    starting at the centre kept in the aggregator's state (the previous round's output, the momentum centre;
    ``init(dim)`` gives zero). ``update`` returns the new centre as both output and state. Defaults as ByzFL.
    """
    tau = check_positive(tau, "centered_clipping: tau")
    num_iters = check_int(num_iters, "centered_clipping: num_iters", 1)

    def init(dim):
        return jnp.zeros((dim,), jnp.float32)

    def update(updates, state, **context):
        del context
        updates, dtype = as_float(updates)
        n, d = check_updates(updates, "centered_clipping")
        centre = jnp.asarray(state, updates.dtype)
        if centre.shape != (d,):
            raise ValueError(f"centered_clipping: state (the centre) must have shape ({d},), got {centre.shape}")
        norms2 = sq_norms(updates)
        good = jnp.isfinite(norms2)

        def step(v):
            dist = _distances_to(updates, norms2, good, v)
            scale = jnp.where(good, jnp.minimum(1.0, tau / jnp.maximum(dist, 1e-30)), 0) / n
            return v + weighted_row_sum(updates, scale, good) - jnp.sum(scale) * v

        out = lax.fori_loop(0, num_iters, lambda _, v: step(v), centre)
        return out.astype(dtype), out.astype(jnp.asarray(state).dtype)

    return Aggregator(init, update, name="centered_clipping")


def fltrust() -> Aggregator:
    """FLTrust: trust ``TS_i = ReLU(cos(g_i, g0))``, each ``g_i`` rescaled to ``||g0||``, output
    ``sum_i TS_i ||g0|| / ||g_i|| g_i / sum_i TS_i`` (zero when every trust score is 0). Needs context
    ``server_update`` (g0, the server's update on its root data).
    """

    def aggregate(updates, server_update=None, **context):
        del context
        check_updates(updates, "fltrust")
        if server_update is None:
            raise ValueError("fltrust needs server_update= (g0, f32[d])")
        g0 = jnp.asarray(server_update, updates.dtype)
        if g0.shape != updates.shape[1:]:
            raise ValueError(f"fltrust: server_update must have shape {updates.shape[1:]}, got {g0.shape}")
        good = finite_rows(updates)
        norms = jnp.sqrt(jnp.where(good, sq_norms(updates), 0))
        g0_norm = jnp.sqrt(jnp.sum(g0 * g0))
        dots = jnp.where(good, hdot(updates, g0), 0)  # a NaN row only spoils its own dot product
        ok = good & (norms > 0) & (g0_norm > 0)
        trust = jnp.where(ok, jnp.maximum(dots / jnp.where(ok, norms * g0_norm, 1), 0), 0)
        total = jnp.sum(trust)
        coeff = jnp.where(ok, trust * g0_norm / jnp.where(ok, norms, 1), 0) / jnp.where(total > 0, total, 1)
        return weighted_row_sum(updates, coeff, ok)

    return stateless(aggregate, name="fltrust", needs=("server_update",))


def _distances_to(updates, norms2, good, z):
    """``||x_i - z||`` as ``sqrt(||x_i||^2 - 2 <x_i, z> + ||z||^2)`` (one matrix-vector product; XLA's CPU row
    reduction of ``x_i - z`` is about 5x slower); 0 for rows that are not ``good``."""
    dist2 = jnp.where(good, norms2 - 2 * jnp.where(good, hdot(updates, z), 0) + jnp.sum(z * z), 0)
    return jnp.sqrt(jnp.maximum(dist2, 0))


register("geometric_median", geometric_median)
register("rfa", geometric_median)
register("centered_clipping", centered_clipping)
register("fltrust", fltrust)
