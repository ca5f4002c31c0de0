"""The ``Aggregator`` type, shaped like optax's ``GradientTransformation``, and ``chain``.

``init(dim) -> state`` gives the rule's initial state (``()`` for stateless rules; centered clipping keeps its
centre there). ``update(updates f32[n, d], state, *, key=None, server_update=None) -> (f32[d], state)`` aggregates
one round and returns the next state; pre-aggregators return ``f32[n', d]`` instead of ``f32[d]``. Calling the
object, ``agg(updates, **context)``, is the one-shot use with the initial state.

Inputs are computed in float32 at least: integer (and bool) updates give the float32 answer; float16/bfloat16
updates are computed in float32 and the result is returned in their dtype.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

CONTEXT = ("key", "server_update", "num_malicious")


@dataclasses.dataclass(frozen=True)
class Aggregator:
    """A robust aggregation rule or a pre-aggregator.

    A frozen dataclass (hashable, compared by its fields), so it is a static argument of ``jax.jit`` and can itself
    be jitted: ``jax.jit(rule)(updates)``.

    Attributes:
      init: ``init(dim) -> state``.
      update: ``update(updates, state, *, key=None, server_update=None, **extra) -> (output, state)``.
      pre: a pre-aggregator (``f32[n, d] -> f32[n', d]``), never the final rule of a server.
      needs: context the rule cannot run without (``"key"``, ``"server_update"``, ``"num_malicious"``: the
        attackers sampled this round, which the authors' Krum reads), for early validation.
      name: a readable name for error messages.
    """

    init: Callable[[int], Any]
    update: Callable[..., tuple]
    pre: bool = False
    needs: frozenset = frozenset()
    name: str = "aggregator"

    def __call__(self, updates, **context):
        """One-shot use: ``update`` from the initial state; returns only the output."""
        updates = jnp.asarray(updates)
        dim = updates.shape[-1] if updates.ndim else 0
        return self.update(updates, self.init(dim), **context)[0]


def as_float(updates):
    """``(updates as a float32-or-wider array, dtype to return)``: ints/bools -> float32 (and a float32 answer),
    float16/bfloat16 -> computed in float32 and returned in their dtype."""
    updates = jnp.asarray(updates)
    if not jnp.issubdtype(updates.dtype, jnp.floating):
        return updates.astype(jnp.float32), jnp.dtype(jnp.float32)
    if jnp.finfo(updates.dtype).bits < 32:
        return updates.astype(jnp.float32), updates.dtype
    return updates, updates.dtype


def stateless(fn: Callable, *, name: str, pre: bool = False, needs=()) -> Aggregator:
    """Wraps ``fn(updates, **context) -> output`` (no state) as an ``Aggregator`` whose state is ``()``."""

    def update(updates, state, **context):
        x, dtype = as_float(updates)
        return fn(x, **context).astype(dtype), state

    return Aggregator(lambda dim: (), update, pre=pre, needs=frozenset(needs), name=name)


def chain(*parts: Aggregator) -> Aggregator:
    """Composes pre-aggregators with a final rule, threading their states like ``optax.chain``:
    ``chain(norm_clip(2.0), bucketing(bucket_size=2), krum(1))``.

    Every part gets the same context, except ``key``, which part ``k`` receives as ``fold_in(key, k)``. Only the
    last part may be a final rule; the chain is a pre-aggregator when its last part is.
    """
    if not parts:
        raise ValueError("chain needs at least one aggregator")
    for i, part in enumerate(parts):
        if not isinstance(part, Aggregator):
            raise ValueError(f"chain: part {i} must be an Aggregator (e.g. aggregators.get(name, **hparams)), "
                             f"got {part!r}")
        if i < len(parts) - 1 and not part.pre:
            raise ValueError(f"chain: part {i} ({part.name}) is a final rule; only the last part may be one")

    def init(dim):
        return tuple(part.init(dim) for part in parts)

    def update(updates, state, *, key=None, **context):
        if not isinstance(state, (tuple, list)) or len(state) != len(parts):
            raise ValueError(f"{name}: state must be the tuple of its {len(parts)} parts' states (from init), got "
                             f"{type(state).__name__} {state!r:.80}")
        new_state = []
        for k, (part, part_state) in enumerate(zip(parts, state)):
            part_key = None if key is None else jax.random.fold_in(key, k)
            updates, part_state = part.update(updates, part_state, key=part_key, **context)
            new_state.append(part_state)
        return updates, tuple(new_state)

    needs = frozenset().union(*(part.needs for part in parts))
    name = "chain(" + ", ".join(part.name for part in parts) + ")"
    return Aggregator(init, update, pre=parts[-1].pre, needs=needs, name=name)


def check_final(aggregator: Aggregator, where: str) -> Aggregator:
    """``ValueError`` unless ``aggregator`` is an ``Aggregator`` usable as a server's final rule."""
    if not isinstance(aggregator, Aggregator):
        raise ValueError(f"{where}: expected an Aggregator, got {aggregator!r}")
    if aggregator.pre:
        raise ValueError(f"{where}: {aggregator.name} is a pre-aggregator (f32[n, d] -> f32[n', d]), not a final "
                         f"rule; chain it with one, e.g. chain({aggregator.name}, median()) or "
                         f"bucketing(aggregator='krum')")
    return aggregator
