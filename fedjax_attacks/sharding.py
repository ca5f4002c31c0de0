"""Sharding runs over devices and hosts: a ``jax.sharding.Mesh`` with named axes, and batch axes put on them.

The library's batch axes map to mesh axes by name: the w sampled clients of an FL round to ``"clients"``, the
seeds (or configurations) of a sweep or of a PPO/TD3/DQN seed batch to ``"seeds"``, the agents of ByzPG /
DecByzPG to ``"agents"``. A function that takes ``mesh=`` checks, before anything is traced, that the mesh has the
axis it needs and that the axis size divides the work (``ValueError`` naming both otherwise). Inside jitted code
the batch axis is placed with ``jax.lax.with_sharding_constraint`` (``constrain``): GSPMD partitions the vmapped
computation along it and inserts the collectives (an all-reduce for a mean over clients, an all-gather where a
rule needs every row). Where GSPMD would not split a computation by itself, ``map_shards`` runs it per device
with ``jax.shard_map``. Sharding never changes what is computed, only where: a sharded run equals the unsharded
one up to float summation order.

Several hosts: call ``jax.distributed.initialize()`` first in every process (one per host, the same script);
``jax.devices()`` then lists every host's devices and ``make_mesh`` spans them.
"""

from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

CLIENTS = "clients"
SEEDS = "seeds"
AGENTS = "agents"


def make_mesh(seeds: int = 1, clients: int = 1, *, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A mesh with axes ``("seeds", "clients")`` of the given sizes over the first ``seeds * clients`` devices
    (default ``jax.devices()``, every host's after ``jax.distributed.initialize()``).

    Raises:
      ValueError: a size below 1, or more devices asked for than there are.
    """
    for name, size in (("seeds", seeds), ("clients", clients)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"make_mesh: {name} must be an int >= 1, got {size!r}")
    devices = list(jax.devices() if devices is None else devices)
    if seeds * clients > len(devices):
        raise ValueError(f"make_mesh: seeds={seeds} x clients={clients} = {seeds * clients} devices asked for, "
                         f"{len(devices)} available")
    grid = np.asarray(devices[:seeds * clients], dtype=object).reshape(seeds, clients)
    return Mesh(grid, (SEEDS, CLIENTS), axis_types=(AxisType.Auto, AxisType.Auto))


def axis_size(mesh: Mesh, axis: str, what: str = "") -> int:
    """The size of ``mesh``'s axis ``axis``.

    Raises:
      ValueError: ``mesh`` is not a ``jax.sharding.Mesh`` or has no axis named ``axis``.
    """
    if not isinstance(mesh, Mesh):
        raise ValueError(f"{what or 'mesh'}: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.axis_names:
        raise ValueError(f"{what or 'mesh'}: the mesh has no axis named {axis!r} (its axes: {mesh.axis_names}); "
                         f"build one with fedjax_attacks.sharding.make_mesh")
    return int(mesh.shape[axis])


def check_divides(mesh: Mesh, axis: str, count: int, what: str) -> int:
    """Checks that ``mesh``'s axis ``axis`` exists and its size divides ``count`` items of work (``what`` names
    them, e.g. ``"FLConfig.clients_per_round w"``); returns the axis size.

    Raises:
      ValueError: no such axis, or ``count`` not a multiple of its size.
    """
    size = axis_size(mesh, axis, what)
    if count % size:
        raise ValueError(f"{what}={count} is not divisible by the mesh axis {axis!r} of size {size}: every device "
                         f"along {axis!r} must get the same number")
    return size


def auto_axes(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis of type ``Auto`` (``jax.make_mesh`` makes ``Explicit`` axes by default), so GSPMD
    propagates the constraints this module places."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def batch_sharding(mesh: Mesh, axis: Optional[str]) -> NamedSharding:
    """``NamedSharding`` splitting an array's leading axis over mesh axis ``axis`` (the other axes replicated);
    ``axis=None`` replicates the whole array."""
    return NamedSharding(auto_axes(mesh), PartitionSpec(axis) if axis is not None else PartitionSpec())


def constrain(tree: Any, mesh: Optional[Mesh], axis: Optional[str]) -> Any:
    """Inside jitted code: every leaf's leading axis placed on mesh axis ``axis`` (``None``: replicated, i.e.
    gathered on every device). No-op without a mesh."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh, axis))


def map_shards(fn: Callable, mesh: Optional[Mesh], axis: str, batched: Sequence[bool]) -> Callable:
    """``fn(*args)`` run by every device on its own slice (``jax.shard_map``): the arguments flagged in
    ``batched`` and every output have a leading axis split over mesh axis ``axis``; the others are replicated.
    ``fn`` must act row by row on that axis (a ``vmap``), so the result equals ``fn`` on the whole batch. Used
    where GSPMD would not split a computation by itself (per-client convolution gradients, whose client axis
    becomes a convolution's feature groups). No-op without a mesh."""
    if mesh is None:
        return fn
    specs = tuple(PartitionSpec(axis) if b else PartitionSpec() for b in batched)
    return jax.shard_map(fn, mesh=auto_axes(mesh), in_specs=specs, out_specs=PartitionSpec(axis), check_vma=False)


def shard(tree: Any, mesh: Mesh, axis: str) -> Any:
    """Outside jitted code: puts every leaf of ``tree`` on the devices with its leading axis split over
    ``axis`` (``jax.device_put``); checks the axis divides it."""
    for leaf in jax.tree_util.tree_leaves(tree):
        check_divides(mesh, axis, np.shape(leaf)[0], f"leading axis of a {np.shape(leaf)} array")
    return jax.device_put(tree, batch_sharding(mesh, axis))


def vmap_seeds(fn: Callable, mesh: Optional[Mesh] = None, axis: str = SEEDS) -> Callable:
    """``batched(keys, *args) = jax.vmap(fn, (0, None, ...))(keys, *args)``: ``fn(key, *args)`` over a leading
    batch of S seeds (or configurations) with the other arguments shared. With ``mesh``, the batch is split over
    mesh axis ``axis`` (``vmap(spmd_axis_name=axis)``, so constraints inside ``fn``, such as FL's ``"clients"``,
    keep the seed axis split too) and the outputs stay split. Jit the result.

    Raises:
      ValueError (when traced): the mesh has no ``axis``, or its size does not divide S.
    """
    if mesh is not None:
        mesh = auto_axes(mesh)
        axis_size(mesh, axis, "vmap_seeds")

    def batched(keys, *args):
        in_axes = (0,) + (None,) * len(args)
        if mesh is None:
            return jax.vmap(fn, in_axes)(keys, *args)
        check_divides(mesh, axis, keys.shape[0], "number of seeds S")
        out = jax.vmap(fn, in_axes, spmd_axis_name=axis)(constrain(keys, mesh, axis), *args)
        return constrain(out, mesh, axis)

    return batched
