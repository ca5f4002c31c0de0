"""DP-style defenses on the shared gradient against inversion: norm clipping, then Gaussian noise.

``privatize`` takes the noise variance and clipping norm as traced arrays, so a whole sweep is one
``jax.vmap`` (``sweep``). RGIA (seed paper 001) sweeps the variance over 1e-5 .. 1e-1.
"""

import jax
import jax.numpy as jnp


def clip_by_norm(g: jax.Array, max_norm) -> jax.Array:
    """``g * min(1, max_norm / ||g||)``; ``max_norm = inf`` leaves ``g`` unchanged."""
    norm = jnp.linalg.norm(g)
    return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))


def privatize(key: jax.Array, g: jax.Array, variance, max_norm=jnp.inf) -> jax.Array:
    """The shared gradient after the defense: ``clip_by_norm(g, max_norm) + N(0, variance I)``."""
    noise = jax.random.normal(key, g.shape, g.dtype) * jnp.sqrt(jnp.asarray(variance, g.dtype))
    return clip_by_norm(g, max_norm) + noise


def sweep(key: jax.Array, g: jax.Array, variances: jax.Array, max_norms: jax.Array) -> jax.Array:
    """All combinations of ``variances: f32[V]`` and ``max_norms: f32[C]`` (use ``inf`` for no clipping):
    f32[V, C, d], with independent noise per cell."""
    keys = jax.random.split(key, (variances.shape[0], max_norms.shape[0]))
    per_norm = jax.vmap(privatize, in_axes=(0, None, None, 0))
    return jax.vmap(per_norm, in_axes=(0, None, 0, None))(keys, g, variances, max_norms)
