"""Coordinate-wise rules: median and trimmed mean (Yin et al., 2018), from order statistics over the clients.

A NaN entry counts as ``+inf`` (the farthest possible value) so that fewer than half NaN/Inf rows (fewer than
``num_trim`` for the trimmed mean on each side) never reach the output.
"""

import jax.numpy as jnp

from fedjax_attacks.aggregators._common import check_int, check_updates, sum_rows
from fedjax_attacks.aggregators.base import Aggregator, stateless
from fedjax_attacks.aggregators.registry import register
from fedjax_attacks.aggregators.sorting import check_method, nan_to_inf, network_sort, order_statistic, sort_columns

# Up to this many clients, sorting all rows with the full network is one fused pass (measured fastest at n = 10);
# above, the full network no longer fuses and two selection networks plus one clipped sum win (n = 100).
_FULL_SORT_MAX_N = 16


def median(method: str | None = None) -> Aggregator:
    """Coordinate-wise median ``med_i x_ij`` (mean of the two middle values for even ``n``, as ``np.median``).

    ``method``: ``"network"`` (a sorting network, fastest on CPU), ``"sort"`` (XLA's sort, fastest on GPU/TPU) or
    None, chosen from the backend and ``n`` at trace time (``sorting.default_method``).
    """
    check_method(method)
    return stateless(lambda updates, **context: median_of(updates, method), name="median")


def median_of(updates, method: str | None = None):
    """The coordinate-wise median of ``updates: f32[n, d]`` (no hyperparameters to validate)."""
    n, _ = check_updates(updates, "median")
    if check_method(method, n) == "sort":
        ordered = sort_columns(updates)
        return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
    if n % 2:
        return order_statistic(updates, n // 2, "network")
    return 0.5 * (order_statistic(updates, n // 2 - 1, "network") + order_statistic(updates, n // 2, "network"))


def trimmed_mean(num_trim: int = 1, method: str | None = None) -> Aggregator:
    """Coordinate-wise trimmed mean: per coordinate drop the ``num_trim`` (beta) largest and smallest values, average
    the remaining ``n - 2 num_trim``. Needs ``2 num_trim < n``.

    With ``method="sort"`` (the default on GPU/TPU) the middle rows of XLA's sort are averaged. With the sorting
    network (the default on CPU): for small ``n`` the middle rows of a full network are summed; for larger ``n``,
    with ``lo``/``hi`` the ``num_trim``-th smallest/largest value of a coordinate (two selection networks),
    ``sum of the kept values = sum_i clip(x_i, lo, hi) - num_trim (lo + hi)`` (exact with ties).
    """
    num_trim = check_int(num_trim, "trimmed_mean: num_trim", 0)
    check_method(method)

    def aggregate(updates, **context):
        del context
        n, _ = check_updates(updates, "trimmed_mean")
        if 2 * num_trim >= n:
            raise ValueError(f"trimmed_mean needs 2 * num_trim < n, got num_trim={num_trim}, n={n}")
        return trimmed_mean_of(updates, num_trim, method)

    return stateless(aggregate, name="trimmed_mean")


def trimmed_mean_of(updates, num_trim: int, method: str | None = None):
    """Coordinate-wise mean of the values ranked ``num_trim .. n - 1 - num_trim`` (no validation)."""
    n = updates.shape[0]
    if check_method(method, n) == "sort":
        return jnp.mean(sort_columns(updates)[num_trim:n - num_trim], axis=0)  # a GPU reduces rows fast
    rows = [nan_to_inf(updates[i]) for i in range(n)]  # NaN/Inf rows are trimmed like +inf (fused, never stored)
    if num_trim == 0:
        return sum_rows(rows) / n
    if n <= _FULL_SORT_MAX_N:
        return sum_rows(network_sort(rows)[num_trim:n - num_trim]) / (n - 2 * num_trim)
    lo = order_statistic(updates, num_trim, "network")
    hi = order_statistic(updates, n - 1 - num_trim, "network")
    total = sum_rows(jnp.clip(row, lo, hi) for row in rows)
    return (total - num_trim * (lo + hi)) / (n - 2 * num_trim)


register("median", median)
register("trimmed_mean", trimmed_mean)
