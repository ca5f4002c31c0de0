"""The attack interface the FL simulation and FRL call, and the registry.

Each round the server samples ``w`` clients. Shapes stay static: the simulation computes the honest update of
every sampled client (the malicious clients' honest updates use their own data), then asks the attack for a full
``f32[w, d]`` array and keeps only the rows where ``malicious_mask`` is true:
``submitted = where(malicious_mask[:, None], attack.craft(key, inp), inp.updates)``.
"""

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class AttackInput:
    """What the attackers see in one round (FL) or one exchange (FRL); every array is a traced argument.

    Attributes:
      updates: f32[w, d], the honest update of each sampled client (FRL: each agent's honest message). Rows
        where ``malicious_mask`` is true are the attackers' own (computed on their data). Under partial
        knowledge the benign rows are zeroed by the simulation; only full-knowledge attacks may read them.
      malicious_mask: bool[w], which sampled clients are malicious.
      round: int32 scalar, the round (iteration) index t.
      global_params: f32[d], the flat global model theta_t the round starts from, or None where there is none
        (decentralized FRL).
      aggregator_state: the server's aggregator state this round (e.g. centered clipping's centre).
      aggregator_key: the PRNG key the server's aggregator uses this round, or None.
      server_update: FLTrust's g0 (f32[d]) this round, or None.
      aggregator: the server's ``aggregators.Aggregator`` (static: functions only, no traced values).
      full_knowledge: whether the benign rows of ``updates`` are real (static).
    """

    updates: jax.Array
    malicious_mask: jax.Array
    round: jax.Array
    global_params: Optional[jax.Array] = None
    aggregator_state: Any = ()
    aggregator_key: Optional[jax.Array] = None
    server_update: Optional[jax.Array] = None
    aggregator: Any = struct.field(pytree_node=False, default=None)
    full_knowledge: bool = struct.field(pytree_node=False, default=False)

    @property
    def num_malicious(self) -> jax.Array:
        """int32 scalar: how many of the sampled clients are malicious this round."""
        return jnp.sum(self.malicious_mask.astype(jnp.int32))

    @property
    def num_sampled(self) -> int:
        """w, the number of clients sampled this round (static)."""
        return self.updates.shape[0]

    def aggregate(self, submitted: jax.Array) -> jax.Array:
        """What the server's rule would output for ``submitted: f32[w, d]`` this round (aggregator-aware attacks
        such as LMP-Krum), with the round's state, key and ``server_update``."""
        if self.aggregator is None:
            raise ValueError("this AttackInput carries no aggregator (aggregator-aware attacks need one)")
        count = ({"num_malicious": jnp.sum(jnp.asarray(self.malicious_mask, jnp.int32))}
                 if "num_malicious" in self.aggregator.needs else {})
        return self.aggregator.update(submitted, self.aggregator_state, key=self.aggregator_key,
                                      server_update=self.server_update, **count)[0]


def check_positive(value, name: str, allow_zero: bool = False):
    """``ValueError`` unless ``value`` is a finite number ``> 0`` (``>= 0`` with ``allow_zero``). A traced value
    (an ``FLParams`` override inside a jitted run) passes: it was validated where it was made."""
    if isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) and not (
            isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (np.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return value


def _identity_data(key, x, y):
    del key
    return x, y


@dataclasses.dataclass(frozen=True)
class Attack:
    """A model-poisoning attack, for FL and FRL alike.

    Attributes:
      name: registry name.
      craft: ``craft(key, inp: AttackInput) -> f32[w, d]``; only the malicious rows are used.
      poison_data: ``poison_data(key, x, y) -> (x, y)`` applied to a malicious client's batch before its honest
        update is computed (data poisoning such as label flipping); identity by default.
      poisons_data: whether ``poison_data`` changes anything (the simulation skips it otherwise).
      needs_full_knowledge: the attack reads benign updates; the simulation refuses it under partial knowledge.
    """

    name: str
    craft: Callable[[jax.Array, AttackInput], jax.Array]
    poison_data: Callable[[jax.Array, Any, Any], tuple] = _identity_data
    poisons_data: bool = False
    needs_full_knowledge: bool = False


def _none_factory() -> Attack:
    return Attack(name="none", craft=lambda key, inp: inp.updates)


none = _none_factory()
_FACTORIES: dict[str, Callable[..., Attack]] = {}
_BUILT_IN: set[str] = set()


def register(name: str, factory: Callable[..., Attack], *, overwrite: bool = False) -> Callable[..., Attack]:
    """Registers ``factory(**hparams) -> Attack`` under ``name``; returns the factory.

    Raises ``ValueError`` when ``name`` is a built-in attack, unless ``overwrite=True``.
    """
    if name in _BUILT_IN and not overwrite:
        raise ValueError(f"attack {name!r} is built in; pass overwrite=True to replace it")
    _FACTORIES[name] = factory
    return factory


def mark_built_in() -> None:
    """Marks every name registered so far as built in (called once by the package)."""
    _BUILT_IN.update(_FACTORIES)


def names() -> list[str]:
    """The registered attack names, sorted."""
    return sorted(_FACTORIES)


def get(name: str, **hparams) -> Attack:
    """Returns the attack ``name`` built with ``hparams``; ``ValueError`` for an unknown name."""
    if not isinstance(name, str) or name not in _FACTORIES:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(names())}")
    try:
        return _FACTORIES[name](**hparams)
    except TypeError as error:  # an unknown or missing hyperparameter
        raise ValueError(f"attack {name!r}: {error}") from None


register("none", _none_factory)
