"""S seeds of a PPO / TD3 / DQN run at once, optionally split over devices.

``make_seed_batch(train, mesh=None)(keys)`` is ``jax.jit(jax.vmap(train))(keys)`` for any ``train(key)`` (an
algorithm's ``make_train(...)`` or ``make_trainer(...).run``); with a ``jax.sharding.Mesh`` the seed axis is split
over its ``"seeds"`` axis (``fedjax_attacks.sharding.vmap_seeds``, the helper the FL attack sweep uses too).
"""

from typing import Callable, Optional

import jax

from fedjax_attacks import sharding


def make_seed_batch(train: Callable, mesh: Optional[jax.sharding.Mesh] = None) -> Callable:
    """``seeds(keys) -> outputs with a leading axis S``: ``train`` (one seed: ``train(key)``) vmapped over the
    keys and jitted; with ``mesh``, the S seeds are split over its ``"seeds"`` axis (each device runs S / size).

    Raises:
      ValueError: the mesh has no ``"seeds"`` axis (here), or its size does not divide S (at the first call).
    """
    return jax.jit(sharding.vmap_seeds(train, mesh))
