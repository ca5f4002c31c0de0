"""The attack interface the FL simulation calls, and the registry.

Each round the server samples ``w`` clients. Shapes stay static: the simulation computes the honest update of
every sampled client (the malicious clients' honest updates use their own data), then asks the attack for a full
``f32[w, d]`` array and keeps only the rows where ``malicious_mask`` is true:
``submitted = where(malicious_mask[:, None], attack.craft(key, inp), inp.updates)``.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class AttackInput:
    """What the attackers see in one round.

    Attributes:
      global_params: f32[d], the flat global model theta_t the round starts from.
      updates: f32[w, d], the honest update of each sampled client. Rows where ``malicious_mask`` is true are
        the attackers' own (computed on their data). Under partial knowledge the benign rows are zeroed by the
        simulation; only full-knowledge attacks may read them.
      malicious_mask: bool[w], which sampled clients are malicious.
      round: int32 scalar, the round index t.
      aggregate: the server's aggregation rule for this round, ``aggregate(updates f32[w, d]) -> f32[d]``, with
        the round's context (``key``, ``server_update``, ``previous_aggregate``) already bound; for
        aggregator-aware attacks such as LMP-Krum; static.
      full_knowledge: whether the benign rows of ``updates`` are real (static).
    """

    global_params: jax.Array
    updates: jax.Array
    malicious_mask: jax.Array
    round: jax.Array
    aggregate: Callable = struct.field(pytree_node=False)
    full_knowledge: bool = struct.field(pytree_node=False, default=False)

    @property
    def num_malicious(self) -> jax.Array:
        """int32 scalar: how many of the sampled clients are malicious this round."""
        return jnp.sum(self.malicious_mask.astype(jnp.int32))

    @property
    def num_sampled(self) -> int:
        """w, the number of clients sampled this round (static)."""
        return self.updates.shape[0]


def _identity_data(key, x, y):
    del key
    return x, y


@dataclasses.dataclass(frozen=True)
class Attack:
    """A model-poisoning attack.

    Attributes:
      name: registry name.
      craft: ``craft(key, inp: AttackInput) -> f32[w, d]``; only the malicious rows are used.
      poison_data: ``poison_data(key, x, y) -> (x, y)`` applied to a malicious client's batch before its honest
        update is computed (data poisoning such as label flipping); identity by default.
      needs_full_knowledge: the attack reads benign updates; the simulation refuses it under partial knowledge.
    """

    name: str
    craft: Callable[[jax.Array, AttackInput], jax.Array]
    poison_data: Callable[[jax.Array, Any, Any], tuple] = _identity_data
    needs_full_knowledge: bool = False


def _none_factory() -> Attack:
    return Attack(name="none", craft=lambda key, inp: inp.updates)


none = _none_factory()
_FACTORIES: dict[str, Callable[..., Attack]] = {}


def register(name: str, factory: Callable[..., Attack]) -> Callable[..., Attack]:
    """Registers ``factory(**hparams) -> Attack`` under ``name``; returns the factory."""
    _FACTORIES[name] = factory
    return factory


def names() -> list[str]:
    """The registered attack names, sorted."""
    return sorted(_FACTORIES)


def get(name: str, **hparams) -> Attack:
    """Returns the attack ``name`` built with ``hparams``; ``ValueError`` for an unknown name."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(names())}")
    return _FACTORIES[name](**hparams)


register("none", _none_factory)
