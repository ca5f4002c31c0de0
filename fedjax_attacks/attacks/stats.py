"""Masked statistics of client updates, shared by the attacks.

The number of malicious clients sampled in a round is data, so every statistic over "the benign updates" (or
"the attackers' own updates") is a masked reduction over the full static ``f32[w, d]`` array. Empty sets give
zeros, never NaN.
"""

import jax
import jax.numpy as jnp

from fedjax_attacks.attacks.base import AttackInput


def reference_mask(inp: AttackInput) -> jax.Array:
    """bool[w]: the rows an attack may treat as honest updates.

    The benign rows under full knowledge; under partial knowledge the attackers' own honest updates (the
    estimate of the benign statistics used by the partial-knowledge variants of ALIE, LMP and MinMax/MinSum).
    """
    return ~inp.malicious_mask if inp.full_knowledge else inp.malicious_mask


def masked_count(mask: jax.Array) -> jax.Array:
    """f32 scalar: the number of true entries of ``mask``."""
    return jnp.sum(mask.astype(jnp.float32))


def masked_mean(updates: jax.Array, mask: jax.Array) -> jax.Array:
    """f32[d]: the mean of the rows of ``updates`` where ``mask`` is true (zeros if none)."""
    total = jnp.sum(jnp.where(mask[:, None], updates, 0.0), axis=0)
    return total / jnp.maximum(masked_count(mask), 1.0)


def masked_std(updates: jax.Array, mask: jax.Array) -> jax.Array:
    """f32[d]: the coordinate-wise population standard deviation (ddof 0) of the masked rows (zeros if none)."""
    mu = masked_mean(updates, mask)
    sq = jnp.sum(jnp.where(mask[:, None], (updates - mu) ** 2, 0.0), axis=0)
    return jnp.sqrt(sq / jnp.maximum(masked_count(mask), 1.0))


def masked_max(updates: jax.Array, mask: jax.Array) -> jax.Array:
    """f32[d]: the coordinate-wise maximum of the masked rows (zeros if none)."""
    value = jnp.max(jnp.where(mask[:, None], updates, -jnp.inf), axis=0)
    return jnp.where(jnp.any(mask), value, 0.0)


def masked_min(updates: jax.Array, mask: jax.Array) -> jax.Array:
    """f32[d]: the coordinate-wise minimum of the masked rows (zeros if none)."""
    value = jnp.min(jnp.where(mask[:, None], updates, jnp.inf), axis=0)
    return jnp.where(jnp.any(mask), value, 0.0)
