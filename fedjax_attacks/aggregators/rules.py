"""The plain average (FedAvg / FedSGD), the non-robust baseline."""

from fedjax_attacks.aggregators._common import check_updates, sum_rows, weighted_row_sum
from fedjax_attacks.aggregators.base import Aggregator, stateless
from fedjax_attacks.aggregators.registry import register


def mean() -> Aggregator:
    """Plain average ``(1/n) sum_i x_i`` (FedAvg/FedSGD). Not robust: one non-finite row makes it non-finite."""
    return stateless(mean_of, name="mean")


def mean_of(updates, **context):
    """The plain average of ``updates: f32[n, d]`` (the function behind ``mean()``)."""
    del context
    n, _ = check_updates(updates, "mean")
    if n > 256:
        return weighted_row_sum(updates, [1.0 / n] * n)
    return sum_rows(updates[i] for i in range(n)) / n


register("mean", mean)
