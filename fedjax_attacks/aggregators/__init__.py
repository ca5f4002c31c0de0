"""Robust aggregation rules: ``f32[n, d]`` client updates -> ``f32[d]`` aggregate.

Contract shared by every rule (the FL simulation and DecByzPG rely on it):

* A factory closes over static hyperparameters and returns ``aggregate(updates, **context) -> f32[d]``
  (``mean`` and ``median`` have none and are rules themselves). Pre-aggregators (``norm_clip``, ``nnm``,
  ``bucketing`` without an aggregator) return ``f32[n', d]`` and compose with a final rule through ``chain``.
* ``context`` carries per-call data a rule may need and every rule accepts and ignores what it does not use:
  ``key`` (PRNG key, e.g. bucketing, DnC), ``server_update`` (FLTrust's root-data update g0, f32[d]),
  ``previous_aggregate`` (centered clipping's centre, f32[d]; zero when absent) and ``weights``
  (geometric median's alpha).
* Non-finite rows (NaN, Inf, or a norm that overflows such as 1e38) count as the farthest possible update: no
  robust rule returns a non-finite vector because of up to its tolerated number of them. ``mean`` is not robust.
* Invalid hyperparameters raise ``ValueError`` at factory time, or at the first call when they depend on ``n``.
* ``get(name, **hparams)`` looks a rule up by name.
"""

from fedjax_attacks.aggregators.coordinatewise import median, trimmed_mean
from fedjax_attacks.aggregators.pre import bucketing, chain, clipped_mean, clipped_median, nnm, norm_clip
from fedjax_attacks.aggregators.registry import get, names, register
from fedjax_attacks.aggregators.reweighting import centered_clipping, fltrust, geometric_median
from fedjax_attacks.aggregators.rules import mean
from fedjax_attacks.aggregators.selection import bulyan, dnc, krum, krum_scores, mda, multi_krum

__all__ = [
    "bucketing", "bulyan", "centered_clipping", "chain", "clipped_mean", "clipped_median", "dnc", "fltrust",
    "geometric_median", "get", "krum", "krum_scores", "mda", "mean", "median", "multi_krum", "names", "nnm",
    "norm_clip", "register", "trimmed_mean",
]
