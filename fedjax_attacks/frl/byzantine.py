"""Byzantine agents of ByzPG / DecByzPG (Jordan et al., 2024, Sec. 6.2), with the attacks of the FL registry.

Byzantine agents are a bool mask ``byzantine: bool[n]`` (``|B| = f``); the set may change every iteration
(Assumption 1), see ``byzantine_mask``. What they send is any ``fedjax_attacks.attacks.Attack``: its ``craft``
sees every agent's honest message (``updates``, full knowledge), the mask, and the recipient's aggregator with its
state. The paper's behaviours: LargeNoise is ``attacks.large_noise`` (``U[-1000, 1000]^d``, fresh per recipient),
AvgZero is ``attacks.avg_zero`` (``-(sum_{i honest} x_i) / f``, so the plain average of all messages is 0), and
RandomAction is a rollout behaviour (``acts_randomly``), not a message.
"""

import jax
import jax.numpy as jnp

from fedjax_attacks.attacks.base import Attack, AttackInput


def byzantine_mask(key, num_agents: int, num_byzantine: int, resample: bool) -> jax.Array:
    """``bool[n]`` marking the ``f`` Byzantine agents: the first ``f``, or a uniformly random set if ``resample``."""
    ranks = jax.random.permutation(key, num_agents) if resample else jnp.arange(num_agents)
    return ranks < num_byzantine


def acts_randomly(random_actions: bool, byzantine):
    """``bool[n]``: which agents replace their policy by uniform random actions (RandomAction); a Python
    ``False`` when the config has none, so rollouts compile without the uniform sampling."""
    return byzantine if random_actions else False


def received(key, attack: Attack, vectors, byzantine, round_index, aggregator=None, aggregator_state=(),
             aggregator_key=None) -> jax.Array:
    """What ONE recipient receives from each of the ``n`` senders, f32[n, d]: honest rows as sent, Byzantine rows
    crafted by ``attack`` from every honest message ``vectors: f32[n, d]``.

    ``aggregator``, ``aggregator_state`` and ``aggregator_key`` are the recipient's (for aggregator-aware attacks).
    """
    if attack.name == "none":
        return vectors
    inp = AttackInput(vectors, byzantine, jnp.asarray(round_index, jnp.int32), aggregator_state=aggregator_state,
                      aggregator_key=aggregator_key, aggregator=aggregator, full_knowledge=True)
    return jnp.where(byzantine[:, None], attack.craft(key, inp), vectors)


def broadcast(key, attack: Attack, vectors, byzantine, round_index, per_recipient: bool = True, aggregator=None,
              aggregator_states=None, aggregator_keys=None) -> jax.Array:
    """All-to-all round: ``messages[r, s]`` is what recipient ``r`` receives from sender ``s``, f32[n, n, d].

    With ``per_recipient`` every recipient gets its own crafted message (its own key, and its own aggregator
    state ``aggregator_states[r]`` when given); otherwise one crafted message goes to all.
    """
    n = vectors.shape[0]
    if attack.name == "none":
        return jnp.broadcast_to(vectors, (n,) + vectors.shape)
    if not per_recipient:
        state = () if aggregator_states is None else jax.tree_util.tree_map(lambda s: s[0], aggregator_states)
        agg_key = None if aggregator_keys is None else aggregator_keys[0]
        one = received(key, attack, vectors, byzantine, round_index, aggregator, state, agg_key)
        return jnp.broadcast_to(one, (n,) + vectors.shape)
    keys = jax.random.split(key, n)
    states = () if aggregator_states is None else aggregator_states
    state_axis = None if aggregator_states is None else 0
    key_axis = None if aggregator_keys is None else 0

    def one(recipient_key, state, agg_key):
        return received(recipient_key, attack, vectors, byzantine, round_index, aggregator, state, agg_key)

    return jax.vmap(one, in_axes=(0, state_axis, key_axis))(keys, states, aggregator_keys)
