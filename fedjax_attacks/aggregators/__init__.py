"""Robust aggregation rules: ``f32[n, d]`` client updates -> ``f32[d]`` aggregate, shaped like optax.

Contract shared by every rule (the FL simulation and FRL rely on it):

* Every name is a factory that closes over static hyperparameters and returns an ``Aggregator(init, update)``
  (``base.Aggregator``): ``init(dim) -> state`` (``()`` when stateless; centered clipping keeps its centre there)
  and ``update(updates f32[n, d], state, *, key=None, server_update=None) -> (f32[d], state)``. Calling it,
  ``agg(updates, **context)``, is the one-shot use with the initial state.
* Pre-aggregators (``norm_clip``, ``nnm``, ``bucketing`` without an aggregator) return ``f32[n', d]``, have
  ``pre=True`` and compose with a final rule through ``chain``, which threads the parts' states like
  ``optax.chain``; a server refuses one as its final rule (``check_final``).
* Context: ``key`` (PRNG key, e.g. bucketing, DnC), ``server_update`` (FLTrust's root-data update g0, f32[d]) and,
  for the geometric median, ``weights`` (alpha). ``Aggregator.needs`` names the context a rule cannot run without.
* Non-finite rows (NaN, Inf, or a norm that overflows such as 1e38) count as the farthest possible update: no
  robust rule returns a non-finite vector because of up to its tolerated number of them. ``mean`` is not robust.
* Integer updates give the float32 answer; float16/bfloat16 updates are computed in float32 and returned in their
  dtype. Distances, Gram matrices and cosines are computed at ``precision=HIGHEST`` on centred rows
  (``pairwise_sq_dists``), so the answer does not depend on the device.
* Invalid hyperparameters raise ``ValueError`` at factory time, or at the first call when they depend on ``n``.
* ``get(name, **hparams)`` looks a rule up by name; ``register`` adds one (built-in names are protected).
"""

from fedjax_attacks.aggregators._common import pairwise_sq_dists
from fedjax_attacks.aggregators.base import Aggregator, chain, check_final
from fedjax_attacks.aggregators.coordinatewise import median, trimmed_mean
from fedjax_attacks.aggregators.pre import bucketing, clipped_mean, clipped_median, nnm, norm_clip
from fedjax_attacks.aggregators.registry import get, mark_built_in, names, register
from fedjax_attacks.aggregators.reweighting import centered_clipping, fltrust, geometric_median
from fedjax_attacks.aggregators.rules import mean
from fedjax_attacks.aggregators.selection import authors_krum_scores, bulyan, dnc, krum, krum_scores, mda, multi_krum

mark_built_in()

__all__ = [
    "Aggregator", "bucketing", "bulyan", "centered_clipping", "chain", "check_final", "clipped_mean",
    "authors_krum_scores", "clipped_median", "dnc", "fltrust", "geometric_median", "get", "krum", "krum_scores", "mda", "mean", "median",
    "multi_krum", "names", "nnm", "norm_clip", "pairwise_sq_dists", "register", "trimmed_mean",
]
