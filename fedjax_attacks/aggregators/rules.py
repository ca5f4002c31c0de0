"""Aggregation rules (placeholder module: only ``mean`` so far; the robust suite lands here)."""

import jax.numpy as jnp

from fedjax_attacks.aggregators.registry import register


def _mean_factory():
    def aggregate(updates, **context):
        """Plain average (FedAvg/FedSGD). Not robust: one non-finite row makes the result non-finite."""
        del context
        return jnp.mean(updates, axis=0)

    return aggregate


mean = _mean_factory()
register("mean", _mean_factory)
