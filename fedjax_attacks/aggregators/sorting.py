"""Order statistics over the client axis with a compare-exchange sorting network.

XLA's CPU sort is slow (``jnp.median`` over 100 rows of 1e5 coordinates takes about a second). Batcher's odd-even
merge sort network, unrolled into ``jnp.minimum``/``jnp.maximum`` on whole rows, is elementwise over the
coordinates; asking for one position lets XLA drop every comparator that does not feed it and fuse the rest into
a single pass. For more than ``_TILE_ABOVE_N`` clients the network runs over column tiles inside a ``fori_loop``
(measured faster at n = 100, d = 1e5: the tile's rows stay in cache); for few clients the plain fused network is
several times faster (n = 10: 0.4 ms against 2.4 ms).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

# Columns per tile: 1e5 floats of 100 rows do not fit in cache; tiles of this width do.
_TILE = 2048
_TILE_ABOVE_N = 32


@functools.lru_cache(maxsize=None)
def batcher_pairs(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort for ``n`` inputs.

    Built for the next power of two; comparators touching an index ``>= n`` are dropped (equivalent to padding
    with ``+inf``, which such comparators never move).
    """
    p = 1
    while p < n:
        p *= 2
    pairs = []
    size = 1
    while size < p:
        k = size
        while k >= 1:
            for j in range(k % size, p - k, 2 * k):
                for i in range(min(k, p - j - k)):
                    if (i + j) // (size * 2) == (i + j + k) // (size * 2) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        size *= 2
    return tuple(pairs)


def network_sort(rows):
    """Sorts a list of ``n`` equally shaped arrays elementwise (ascending) with Batcher's network."""
    rows = list(rows)
    for a, b in batcher_pairs(len(rows)):
        rows[a], rows[b] = jnp.minimum(rows[a], rows[b]), jnp.maximum(rows[a], rows[b])
    return rows


METHODS = ("network", "sort")


# The unrolled network's program grows as n log^2 n: on a 2-core CPU (d = 2e4) it compiles in 6 s at n = 64 and
# 17 s at n = 128 (running 58x and 28x faster than XLA's sort), while n = 400 took 162 s and 8.7 GB to compile.
_NETWORK_MAX_N = 128


def default_method(n: int | None = None) -> str:
    """``"network"`` on a CPU backend (XLA's CPU sort is slow) for up to ``_NETWORK_MAX_N`` rows (or ``n``
    unknown), ``"sort"`` (XLA's sort) above it and on GPU and TPU, where the unrolled network loses (measured on an
    H100 at n = 100, d = 1e5: 3.84 ms against 0.51 ms). Chosen at trace time from ``jax.default_backend()``."""
    small = n is None or n <= _NETWORK_MAX_N
    return "network" if jax.default_backend() == "cpu" and small else "sort"


def check_method(method, n: int | None = None):
    """``method`` or the backend's default for ``n`` rows; ``ValueError`` for an unknown name."""
    if method is None:
        return default_method(n)
    if method not in METHODS:
        raise ValueError(f"order statistics method must be one of {METHODS} or None, got {method!r}")
    return method


def sort_columns(updates):
    """Every column sorted ascending (XLA's sort), NaN counted as ``+inf``: ``f32[n, d]``."""
    return jnp.sort(nan_to_inf(updates), axis=0)


def order_statistic(updates, position: int, method=None):
    """The ``position``-th smallest value (0-based) of every column of ``updates: f32[n, d]`` -> ``f32[d]``.

    NaN counts as ``+inf`` (replaced tile by tile, in cache); ``+-inf`` sort correctly. ``method``: ``"network"``
    (the sorting network below), ``"sort"`` (XLA's sort) or None (``default_method()``).
    """
    n, d = updates.shape
    if check_method(method, n) == "sort":
        return sort_columns(updates)[position]
    if n <= _TILE_ABOVE_N:
        return network_sort(nan_to_inf(updates[i]) for i in range(n))[position]
    num_tiles = max(2, -(-d // _TILE))
    width = -(-d // num_tiles)

    def body(t, out):
        start = jnp.minimum(t * width, d - width)  # the last tile overlaps its neighbour instead of padding
        tile = lax.dynamic_slice_in_dim(updates, start, width, axis=1)
        value = network_sort(nan_to_inf(tile[i]) for i in range(n))[position]
        return lax.dynamic_update_slice_in_dim(out, value, start, axis=0)

    return lax.fori_loop(0, num_tiles, body, jnp.zeros((d,), updates.dtype))


def nan_to_inf(values):
    """NaN -> ``+inf``: the farthest possible value, which comparators then order correctly."""
    return jnp.where(jnp.isnan(values), jnp.inf, values)
