"""Coordinate-wise rules: median and trimmed mean (Yin et al., 2018), from order statistics over the clients.

A NaN entry counts as ``+inf`` (the farthest possible value) so that fewer than half NaN/Inf rows (fewer than
``num_trim`` for the trimmed mean on each side) never reach the output.
"""

import jax.numpy as jnp

from fedjax_attacks.aggregators._common import check_int, check_updates, sum_rows
from fedjax_attacks.aggregators.registry import register
from fedjax_attacks.aggregators.sorting import nan_to_inf, network_sort, order_statistic

# Up to this many clients, sorting all rows with the full network is one fused pass (measured fastest at n = 10);
# above, the full network no longer fuses and two selection networks plus one clipped sum win (n = 100).
_FULL_SORT_MAX_N = 16


def median(updates, **context):
    """Coordinate-wise median ``med_i x_ij`` (mean of the two middle values for even ``n``, as ``np.median``)."""
    del context
    n, _ = check_updates(updates, "median")
    if n % 2:
        return order_statistic(updates, n // 2)
    return 0.5 * (order_statistic(updates, n // 2 - 1) + order_statistic(updates, n // 2))


def trimmed_mean(num_trim: int = 1):
    """Coordinate-wise trimmed mean: per coordinate drop the ``num_trim`` (beta) largest and smallest values, average
    the remaining ``n - 2 num_trim``. Needs ``2 num_trim < n``.

    For small ``n`` the middle rows of a full sorting network are summed. For larger ``n``, with ``lo``/``hi`` the
    ``num_trim``-th smallest/largest value of a coordinate (two selection networks),
    ``sum of the kept values = sum_i clip(x_i, lo, hi) - num_trim (lo + hi)`` (exact with ties).
    """
    num_trim = check_int(num_trim, "trimmed_mean: num_trim", 0)

    def aggregate(updates, **context):
        del context
        n, _ = check_updates(updates, "trimmed_mean")
        if 2 * num_trim >= n:
            raise ValueError(f"trimmed_mean needs 2 * num_trim < n, got num_trim={num_trim}, n={n}")
        return trimmed_mean_of(updates, num_trim)

    return aggregate


def trimmed_mean_of(updates, num_trim: int):
    """Coordinate-wise mean of the values ranked ``num_trim .. n - 1 - num_trim`` (no validation)."""
    n = updates.shape[0]
    rows = [nan_to_inf(updates[i]) for i in range(n)]  # NaN/Inf rows are trimmed like +inf (fused, never stored)
    if num_trim == 0:
        return sum_rows(rows) / n
    if n <= _FULL_SORT_MAX_N:
        return sum_rows(network_sort(rows)[num_trim:n - num_trim]) / (n - 2 * num_trim)
    lo = order_statistic(updates, num_trim)
    hi = order_statistic(updates, n - 1 - num_trim)
    total = sum_rows(jnp.clip(row, lo, hi) for row in rows)
    return (total - num_trim * (lo + hi)) / (n - 2 * num_trim)


register("median", lambda: median)
register("trimmed_mean", trimmed_mean)
