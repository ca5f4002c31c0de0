"""Suite-wide setup. ``FEDJAX_EMULATE_TF32=1`` (``make test-tf32``) lowers default-precision float32 matmuls and
convolutions as a TF32 GPU computes them (``tests/tf32.py``), so a CPU checks that no result depends on it."""

import os

if os.environ.get("FEDJAX_EMULATE_TF32") == "1":
    import tf32

    tf32.install()
