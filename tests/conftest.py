"""Suite-wide setup.

- ``FEDJAX_EMULATE_TF32=1`` (``make test-tf32``) lowers default-precision float32 matmuls and convolutions as a TF32
  GPU computes them (``tests/tf32.py``), so a CPU checks that no result depends on it.
- Every test process of one run (the xdist workers, and the subprocesses some tests start) shares a fresh JAX
  compilation cache, so a program compiled by one test is not compiled again by another (``make test`` spends
  much of its time compiling). It lives in a temporary directory removed after the run; set
  ``JAX_COMPILATION_CACHE_DIR`` to keep one yourself.
- The fast suite compiles with ``jax_disable_most_optimizations`` (also in the environment, for subprocesses): its
  programs are toy-sized, so XLA's optimization passes cost more than they save (about a third of the suite's
  time on a 2-core CPU). The tests check the same computations (floats may be summed in another order, so a
  test against a file written by an optimized program turns the passes back on); ``make test-slow`` (longer runs,
  where optimized code pays) and anything run with ``FEDJAX_TEST_OPTIMIZED=1`` compile as users do.
"""

import os
import shutil
import tempfile

import jax

if os.environ.get("FEDJAX_EMULATE_TF32") == "1":
    import tf32

    tf32.install()

_OWN_CACHE = None


def pytest_configure(config):
    """The controller (or a plain run) makes the cache directory; xdist workers inherit it by the environment."""
    global _OWN_CACHE
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedjax_attacks_jit_")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    if os.environ.get("FEDJAX_TEST_OPTIMIZED") != "1":
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
        jax.config.update("jax_disable_most_optimizations", True)


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
