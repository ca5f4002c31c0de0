"""Averaging agreement (El-Mhamdi et al., 2021) as used by DecByzPG's Avg-Agree (Jordan et al., 2024, App. A.3).

Each round, every agent ``i`` broadcasts its parameters, receives ``Theta_i = (theta_{j->i})_j`` (f32[n, d];
Byzantine senders may send anything, differently to each recipient) and replaces its parameters by

* MDA (minimum diameter averaging): the average of the subset ``S`` of ``n - f`` received vectors with the
  smallest diameter ``max_{a, b in S} ||theta_a - theta_b||`` (exact search over the static array of all
  ``C(n, n - f)`` subsets, fine for ``n <= 16``);
* GDA (greedy diameter averaging): the average of the ``n - f`` received vectors closest to the agent's own
  ``theta_i``.

``average_agreement`` repeats this for a static number of rounds (``O(log n)`` in the paper).
"""

import math

import jax
import jax.numpy as jnp

from fedjax_attacks import aggregators
from fedjax_attacks.attacks.base import Attack
from fedjax_attacks.frl import byzantine as byz

RULES = ("mda", "gda", "none")
MAX_MDA_SUBSETS = 100_000


def pairwise_distances(vectors, mask=None) -> jax.Array:
    """Euclidean distances ``||x_a - x_b||``, f32[n, n], from the library's one pairwise-distance function
    (``aggregators.pairwise_sq_dists``: centred rows, ``HIGHEST`` precision); non-finite inputs, and rows outside
    ``mask`` when given, give ``+inf``."""
    return jnp.sqrt(aggregators.pairwise_sq_dists(vectors, mask))


def diameter(vectors, mask=None) -> jax.Array:
    """``max_{a, b} ||x_a - x_b||`` over the rows with ``mask`` (all rows by default)."""
    dist = pairwise_distances(vectors, mask)
    if mask is not None:
        dist = jnp.where(mask[:, None] & mask[None, :], dist, 0.0)
    return jnp.max(dist)


def mda(received, num_byzantine: int) -> jax.Array:
    """Minimum diameter averaging of ``received: f32[n, d]``: mean of the ``n - f`` subset of least diameter
    (``fedjax_attacks.aggregators.mda``: exact search over a static array of all subsets)."""
    return aggregators.mda(num_byzantine)(received)


def gda(own, received, num_byzantine: int) -> jax.Array:
    """Greedy diameter averaging: mean of the ``n - f`` rows of ``received`` closest to ``own`` (f32[d])."""
    n = received.shape[0]
    dist = jnp.sqrt(jnp.sum((received - own) ** 2, axis=-1))
    dist = jnp.where(jnp.isfinite(dist), dist, jnp.inf)
    _, nearest = jax.lax.top_k(-dist, n - num_byzantine)
    return jnp.mean(received[nearest], axis=0)


def check_rule(rule: str, num_agents: int, num_byzantine: int) -> None:
    """``ValueError`` for an unknown rule, ``f`` out of range, or an MDA subset search that is too large."""
    if rule not in RULES:
        raise ValueError(f"unknown agreement rule {rule!r}; known: {', '.join(RULES)}")
    if not 0 <= num_byzantine < num_agents:
        raise ValueError(f"need 0 <= num_byzantine < num_agents, got f={num_byzantine}, n={num_agents}")
    if rule == "mda":
        if math.comb(num_agents, num_byzantine) > MAX_MDA_SUBSETS:
            raise ValueError(f"MDA over C({num_agents}, {num_byzantine}) subsets is too large; use 'gda'")


def agree_once(key, rule: str, params, byzantine, attack: Attack, num_byzantine: int, round_index=0,
               per_recipient: bool = True) -> jax.Array:
    """One all-to-all round of ``rule`` on ``params: f32[n, d]``; the Byzantine senders' messages are crafted by
    ``attack`` (``fedjax_attacks.frl.byzantine.broadcast``). Returns f32[n, d].

    Byzantine agents still run the rule on their own state (they cannot alter local state, Sec. 3.1).
    """
    if rule == "none":
        return params
    messages = byz.broadcast(key, attack, params, byzantine, round_index, per_recipient)  # [recipient, sender, d]
    if rule == "mda":
        return jax.vmap(mda, in_axes=(0, None))(messages, num_byzantine)
    return jax.vmap(gda, in_axes=(0, 0, None))(params, messages, num_byzantine)


def average_agreement(key, rule: str, params, byzantine, attack: Attack, num_byzantine: int, num_rounds: int,
                      round_index=0, per_recipient: bool = True) -> jax.Array:
    """Avg-Agree: ``num_rounds`` (static) rounds of ``agree_once``; returns the agents' parameters f32[n, d]."""
    def round_(theta, k):
        return agree_once(k, rule, theta, byzantine, attack, num_byzantine, round_index, per_recipient), None

    return jax.lax.scan(round_, params, jax.random.split(key, num_rounds))[0]
