"""Robust aggregation rules: ``f32[n, d]`` client updates -> ``f32[d]`` aggregate.

Contract shared by every rule (the FL simulation and DecByzPG rely on it):

* A factory closes over static hyperparameters and returns ``aggregate(updates, **context) -> f32[d]``.
* ``context`` carries per-call data a rule may need and every rule accepts and ignores what it does not use:
  ``key`` (PRNG key, e.g. bucketing), ``server_update`` (FLTrust's root-data update g0, f32[d]) and
  ``previous_aggregate`` (centered clipping's center, f32[d]).
* ``get(name, **hparams)`` looks a rule up by name.
"""

from fedjax_attacks.aggregators.registry import get, names, register
from fedjax_attacks.aggregators.rules import mean

__all__ = ["get", "mean", "names", "register"]
