"""One attack chosen by a (possibly traced) index: a sweep over attacks compiles the FL run once.

Each attack is different code, so an FL run per attack costs one XLA compilation each, which dominates a small
attack x defense matrix on a CPU. ``switch`` puts the attacks behind ``lax.switch`` on an int32 index that is an
argument of the jitted run: one compilation serves every attack, and only the selected branch executes (keep the
index unbatched; under ``vmap`` over the index ``lax.switch`` would evaluate every branch).
"""

from typing import Any, Mapping, Sequence

import jax

from fedjax_attacks.attacks.base import Attack, AttackInput, get, register
from fedjax_attacks.validation import check_index


def switch(members: Sequence[tuple[str, Mapping[str, Any]]], index: jax.Array | int = 0) -> Attack:
    """The attack ``members[index]``, with ``members`` a sequence of ``(name, hparams)`` for ``get``.

    ``index`` may be a traced int32 scalar (clamped to the valid range by ``lax.switch``); a concrete one outside
    ``[0, len(members))`` raises ``ValueError``. Both ``craft`` and ``poison_data`` dispatch on it; the switch
    needs full knowledge if any member does.
    """
    if not members:
        raise ValueError("switch: members must name at least one attack")
    check_index(index, len(members), "switch: index (an index into members)", scalar=True)
    built = [get(name, **dict(hparams)) for name, hparams in members]

    def craft(key: jax.Array, inp: AttackInput) -> jax.Array:
        return jax.lax.switch(index, [a.craft for a in built], key, inp)

    def poison_data(key, x, y):
        return jax.lax.switch(index, [a.poison_data for a in built], key, x, y)

    return Attack(
        name="switch",
        craft=craft,
        poison_data=poison_data,
        poisons_data=any(a.poisons_data for a in built),
        needs_full_knowledge=any(a.needs_full_knowledge for a in built),
    )


register("switch", switch)
