"""The TF32 emulation behind ``make test-tf32`` really rounds default-precision products (and only those)."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np

import tf32

CHECK = """
import numpy as np, jax, jax.numpy as jnp, flax.linen as nn
a = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
exact = a.astype(np.float64) @ a.astype(np.float64)
rel = lambda x: float(np.max(np.abs(np.asarray(x, np.float64) - exact)) / np.max(np.abs(exact)))
dense = nn.Dense(64, use_bias=False)
params = {"params": {"kernel": jnp.asarray(a)}}
conv = jax.lax.conv_general_dilated(jnp.ones((1, 4, 4, 1)), jnp.full((1, 1, 1, 1), 0.1001), (1, 1), "SAME",
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
with jax.default_matmul_precision("highest"):
    context = rel(jax.jit(jnp.matmul)(a, a))
print(rel(jnp.dot(a, a)), rel(jnp.einsum("ij,jk->ik", a, a)), rel(dense.apply(params, a)),
      rel(jnp.dot(a, a, precision="highest")), context, float(conv[0, 0, 0, 0]))
"""


def test_to_tf32_keeps_ten_mantissa_bits():
    x = jnp.asarray([1.0, 1.0 + 2.0 ** -10, 1.0 + 2.0 ** -11, 1.0 + 2.0 ** -12, -3.0, np.inf, np.nan], jnp.float32)
    out = np.asarray(tf32.to_tf32(x))
    np.testing.assert_array_equal(out[:5], [1.0, 1.0 + 2.0 ** -10, 1.0 + 2.0 ** -10, 1.0, -3.0])
    assert out[5] == np.inf and np.isnan(out[6])
    assert tf32.to_tf32(jnp.arange(3)).dtype == jnp.int32


def test_emulation_rounds_default_precision_products_only():
    env = dict(os.environ, FEDJAX_EMULATE_TF32="0", PYTHONPATH=os.path.dirname(__file__))
    script = "import tf32; tf32.install()\n" + CHECK
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    dot, einsum, dense, highest, context, conv_scale = map(float, out.stdout.split())
    for rounded in (dot, einsum, dense):  # TF32's relative error ~2^-11 per operand, not float32's ~1e-7
        assert 1e-4 < rounded < 1e-2
    assert highest < 1e-6 and context < 1e-6
    np.testing.assert_allclose(conv_scale, 0.10009765625)  # 0.1001 with 10 mantissa bits
