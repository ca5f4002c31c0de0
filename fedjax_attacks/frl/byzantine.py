"""Byzantine agent behaviours of ByzPG / DecByzPG (Jordan et al., 2024, Sec. 6.2).

A behaviour turns what the ``n`` agents would honestly send, ``vectors: f32[n, d]``, into what a recipient
receives. Byzantine agents are a bool mask ``byzantine: bool[n]`` (``|B| = f``); the set may change every
iteration (Assumption 1), see ``byzantine_mask``.

* ``none``: everyone is honest (the mask is ignored by ``received``).
* ``random_action``: Byzantines act uniformly at random in their environment and otherwise follow the protocol
  (handled in the rollout: ``acts_randomly``); their messages are their honest computation.
* ``large_noise``: Byzantines send ``U[-scale, scale]^d`` noise (``scale = 1000`` in the paper), drawn
  independently for every recipient.
* ``avg_zero``: Byzantines send ``-(sum_{i honest} x_i) / f`` so that the plain average of all ``n`` messages is 0.
"""

import jax
import jax.numpy as jnp

BEHAVIOURS = ("none", "random_action", "large_noise", "avg_zero")


def check_behaviour(behaviour: str) -> None:
    """Raises ``ValueError`` for an unknown behaviour name."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown Byzantine behaviour {behaviour!r}; known: {', '.join(BEHAVIOURS)}")


def byzantine_mask(key, num_agents: int, num_byzantine: int, resample: bool) -> jax.Array:
    """``bool[n]`` marking the ``f`` Byzantine agents: the first ``f``, or a uniformly random set if ``resample``."""
    ranks = jax.random.permutation(key, num_agents) if resample else jnp.arange(num_agents)
    return ranks < num_byzantine


def acts_randomly(behaviour: str, byzantine):
    """``bool[n]``: which agents replace their policy by uniform random actions (RandomAction); a Python
    ``False`` for the other behaviours, so rollouts compile without the uniform sampling."""
    return byzantine if behaviour == "random_action" else False


def received(key, behaviour: str, vectors, byzantine, noise_scale: float = 1000.0) -> jax.Array:
    """What ONE recipient receives from each of the ``n`` senders, f32[n, d].

    Args:
      key: PRNG key of this recipient (LargeNoise draws fresh noise per recipient).
      behaviour: a name in ``BEHAVIOURS`` (static).
      vectors: f32[n, d], the honest message ``x_i`` of every agent.
      byzantine: bool[n] Byzantine mask.
      noise_scale: half-width of LargeNoise's uniform noise.
    """
    check_behaviour(behaviour)
    if behaviour == "large_noise":
        noise = jax.random.uniform(key, vectors.shape, minval=-noise_scale, maxval=noise_scale)
        return jnp.where(byzantine[:, None], noise, vectors)
    if behaviour == "avg_zero":
        honest_sum = jnp.sum(jnp.where(byzantine[:, None], 0.0, vectors), axis=0)
        num_byzantine = jnp.maximum(jnp.sum(byzantine), 1)
        return jnp.where(byzantine[:, None], -honest_sum / num_byzantine, vectors)
    return vectors


def broadcast(key, behaviour: str, vectors, byzantine, noise_scale: float = 1000.0) -> jax.Array:
    """All-to-all round: ``messages[r, s]`` is what recipient ``r`` receives from sender ``s``, f32[n, n, d]."""
    keys = jax.random.split(key, vectors.shape[0])
    return jax.vmap(received, in_axes=(0, None, None, None, None))(keys, behaviour, vectors, byzantine, noise_scale)
