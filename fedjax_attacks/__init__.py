"""fedjax_attacks: attacks and defenses for federated learning (FL) and federated RL in JAX.

Subpackages: ``data`` (datasets, client partitions), ``models`` (flax models with flat parameters),
``aggregators`` (robust aggregation), ``attacks`` (model poisoning), ``fl`` (the jitted FL simulation),
``inversion`` (gradient inversion), ``rgia`` (gradient inversion in federated RL), ``rl`` (functional RL),
``frl`` (federated RL: ByzPG / DecByzPG).
"""

__version__ = "0.1.0"
