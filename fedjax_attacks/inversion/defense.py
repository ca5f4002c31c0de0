"""DP-style defenses on the shared gradient against inversion: norm clipping, then Gaussian noise.

``privatize`` takes the noise variance and clipping norm as traced arrays, so a whole sweep is one
``jax.vmap`` (``sweep``). RGIA (seed paper 001) sweeps the variance over 1e-5 .. 1e-1; ``noise_ratio`` gives
the noise relative to the gradient's norm, the scale that carries over between networks. Concrete settings are
checked (``check_defense``): a negative ``max_norm`` would flip the gradient, a negative or NaN variance give NaN.
"""

import jax
import jax.numpy as jnp
import numpy as np


def check_defense(variance, max_norm=jnp.inf) -> None:
    """``ValueError`` naming the argument unless every element of ``variance`` is a finite number ``>= 0`` and of
    ``max_norm`` a number ``>= 0`` (``inf``: no clipping). A traced value passes unread (a cell of a vmapped
    sweep, a ``jax.jit`` argument): check it where it is made, as ``sweep`` checks its whole grid."""
    _check_non_negative("variance", variance, finite=True)
    _check_non_negative("max_norm", max_norm, finite=False)


def _check_non_negative(name: str, value, finite: bool) -> None:
    if isinstance(value, jax.core.Tracer):
        return
    array = np.asarray(value)
    ok = array.dtype.kind in "iuf" and not np.isnan(array).any() and (array >= 0).all() and (
        not finite or np.isfinite(array).all())
    if not ok:
        what = ("{}numbers" if array.ndim else "a {}number").format("finite " if finite else "")
        raise ValueError(f"{name} must be {what} >= 0{'' if finite else ' (inf: no clipping)'}, got {value!r}")


def clip_by_norm(g: jax.Array, max_norm) -> jax.Array:
    """``g * min(1, max_norm / ||g||)``; ``max_norm = inf`` leaves ``g`` unchanged."""
    norm = jnp.linalg.norm(g)
    return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))


def privatize(key: jax.Array, g: jax.Array, variance, max_norm=jnp.inf) -> jax.Array:
    """The shared gradient after the defense: ``clip_by_norm(g, max_norm) + N(0, variance I)``.

    Raises:
      ValueError: on a concrete negative, NaN or infinite ``variance`` or a negative or NaN ``max_norm``
        (``check_defense``; traced values pass).
    """
    check_defense(variance, max_norm)
    noise = jax.random.normal(key, g.shape, g.dtype) * jnp.sqrt(jnp.asarray(variance, g.dtype))
    return clip_by_norm(g, max_norm) + noise


def noise_ratio(g_noisy: jax.Array, g: jax.Array) -> jax.Array:
    """The relative noise ``||g_noisy - g|| / ||g||`` over the last axis (``f32[..., d]`` gradients): how far
    the defense moved the shared gradient, in units of the gradient. Unlike the variance it carries over
    between networks of different sizes and training stages (``N(0, v I)`` noise has norm ``~sqrt(v d)``)."""
    return jnp.linalg.norm(g_noisy - g, axis=-1) / jnp.maximum(jnp.linalg.norm(g, axis=-1), 1e-30)


def sweep(key: jax.Array, g: jax.Array, variances: jax.Array, max_norms: jax.Array) -> jax.Array:
    """All combinations of ``variances: f32[V]`` and ``max_norms: f32[C]`` (use ``inf`` for no clipping):
    f32[V, C, d], with independent noise per cell. Raises ``ValueError`` as ``privatize`` on a bad concrete
    element (naming ``variances`` / ``max_norms``)."""
    _check_non_negative("variances", variances, finite=True)
    _check_non_negative("max_norms", max_norms, finite=False)
    keys = jax.random.split(key, (variances.shape[0], max_norms.shape[0]))
    per_norm = jax.vmap(privatize, in_axes=(0, None, None, 0))
    return jax.vmap(per_norm, in_axes=(0, None, 0, None))(keys, g, variances, max_norms)
