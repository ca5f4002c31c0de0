"""TF32 emulation on a CPU: what a GPU with TF32 matmuls (an A100 or H100 at JAX's default float32 precision)
does to matrix products, so the suite can check on any machine that no result depends on the device's precision.

TF32 keeps float32's exponent and 10 of its 23 mantissa bits: a GPU rounds both float32 operands of a matmul or a
convolution to TF32 and accumulates in float32, unless the call asks for ``Precision.HIGHEST`` (or the
``jax_default_matmul_precision`` setting is ``highest``/``float32``). ``install()`` wraps ``lax.dot_general`` and
``lax.conv_general_dilated`` to do the same rounding (to nearest, ties away from zero) on every backend. The suite
turns it on with ``FEDJAX_EMULATE_TF32=1`` (``make test-tf32``), before anything is traced.
"""

import jax
import jax.numpy as jnp
from jax._src import config as jax_config
from jax._src.lax import convolution as lax_convolution
from jax._src.interpreters import mlir
from jax._src.lax import lax as lax_core

FULL = {"highest", "float32", "tensorfloat32x3", "bf16_6x"}  # settings whose products are float32-exact enough


def to_tf32(x):
    """``x`` with float32 entries rounded to TF32 (10 mantissa bits); other dtypes unchanged."""
    x = jnp.asarray(x)
    if x.dtype != jnp.float32:
        return x
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    rounded = (bits + jnp.uint32(0x1000)) & jnp.uint32(0xFFFFE000)
    finite = jnp.isfinite(x)
    return jnp.where(finite, jax.lax.bitcast_convert_type(rounded, jnp.float32), x)


def _is_full(precision) -> bool:
    if precision is None:
        default = jax_config.default_matmul_precision.value
        return default is not None and str(default).lower() in FULL
    if isinstance(precision, (tuple, list)):
        return all(_is_full(p) for p in precision)
    if isinstance(precision, str):
        return precision.lower() in FULL
    return precision == jax.lax.Precision.HIGHEST


def _rounded_operands(rule):
    """A lowering rule that rounds the float32 operands of ``rule``'s primitive to TF32 first, unless the call
    asks for full precision."""
    round_one = mlir.lower_fun(to_tf32, multiple_results=False)

    def lowering(ctx, lhs, rhs, *args, precision=None, **params):
        if not _is_full(precision):
            lhs, rhs = (round_one(ctx.replace(avals_in=[aval], avals_out=[aval]), x)[0]
                        for x, aval in zip((lhs, rhs), ctx.avals_in[:2]))
        return rule(ctx, lhs, rhs, *args, precision=precision, **params)

    lowering.emulates_tf32 = True
    return lowering


def install():
    """From now on, lowers every default-precision float32 ``dot_general`` and ``conv_general_dilated`` on a CPU
    with its operands rounded to TF32 (at the XLA lowering, so ``jnp.einsum``, flax layers and the products of
    gradients are all covered and differentiation is untouched); idempotent."""
    for primitive in (lax_core.dot_general_p, lax_convolution.conv_general_dilated_p):
        entry = mlir._platform_specific_lowerings["cpu"].get(primitive) or mlir._lowerings[primitive]
        if getattr(entry.rule, "emulates_tf32", False):
            continue
        mlir.register_lowering(primitive, _rounded_operands(entry.rule), platform="cpu")
