"""The one run protocol shared by FL, PPO, TD3, DQN, ByzPG and DecByzPG, and its chunked runner.

Every long run is ``init(key) -> state`` and ``step(state) -> (state, metrics)`` for one unit of work (an FL
evaluation block, a PPO update, a DecByzPG iteration); ``run(key)`` is ``lax.scan`` of ``step`` from ``init``.
``run_chunked`` runs the same scan in jitted chunks from Python, so a tqdm bar moves without callbacks in the hot
loop; it is also the one place a checkpoint hook belongs. Its result equals ``run`` (``vmap(run)`` for a batch of
keys).
"""

import os
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import serialization
from tqdm.auto import tqdm


def scan_steps(step: Callable, state: Any, num_steps: int):
    """``lax.scan`` of ``step: state -> (state, metrics)`` for ``num_steps`` steps: ``(state, stacked metrics)``."""
    return jax.lax.scan(lambda carry, _: step(carry), state, None, length=num_steps)


def run_chunked(init: Callable, step: Callable, num_steps: int, key: jax.Array, *, chunk: Optional[int] = None,
                desc: str = "run", unit: str = "step", unit_scale: int = 1, progress: bool = True,
                checkpoint_dir: Optional[str] = None, checkpoint_every: int = 1,
                on_chunk: Optional[Callable[[int], None]] = None):
    """Runs ``init`` then ``num_steps`` calls of ``step`` in jitted chunks of ``chunk`` steps, with a tqdm bar.

    With ``checkpoint_dir`` the whole run state (the carry and the metrics so far) is saved with orbax every
    ``checkpoint_every`` chunks, and a call finding a checkpoint there resumes from the latest one: a run killed
    after chunk k and started again with the same arguments ends with a bit-identical state and metrics. Use
    the same ``chunk`` when resuming. States must hold raw ``uint32`` PRNG keys (``jax.random.PRNGKey``), which
    orbax can save. ``on_chunk(steps_done)`` is called after each chunk (logging, or interrupting a test).

    Args:
      init: ``init(key) -> state``.
      step: ``step(state) -> (state, metrics)`` (a pytree of arrays).
      num_steps: how many steps the whole run takes (static).
      key: one PRNG key, or a batch of keys (shape ``[S]`` of typed keys or ``[S, 2]`` of raw ``uint32`` keys),
        in which case every seed runs at once under ``vmap``.
      chunk: steps per jitted call (default: about 20 chunks); the last chunk may be shorter (one more compile).
      desc, unit, unit_scale: the bar's label, unit name and units per step (e.g. rounds per FL block).
      progress: show the bar.

    Returns:
      ``(final state, metrics stacked over steps)``; with a batch of keys both have a leading seed axis and the
      step axis is axis 1. Identical to ``scan_steps(step, init(key), num_steps)`` (vmapped for a batch).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"run_chunked: num_steps must be an int >= 1, got {num_steps!r}")
    batched = _is_key_batch(key)
    chunk = chunk or max(1, num_steps // 20)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"run_chunked: chunk must be an int >= 1, got {chunk!r}")
    chunk = min(chunk, num_steps)

    def run_chunk(state, length):
        return scan_steps(step, state, length)

    if checkpoint_dir is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"run_chunked: checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    wrap = jax.vmap if batched else (lambda f, **_: f)
    axis = 1 if batched else 0
    chunk_fns = {}

    def chunk_fn(length):
        if length not in chunk_fns:
            chunk_fns[length] = jax.jit(wrap(lambda s, n=length: run_chunk(s, n)))
        return chunk_fns[length]

    state = jax.jit(wrap(init))(key)
    pieces, done, chunks = [], 0, 0
    checkpoints = None if checkpoint_dir is None else _Checkpoints(checkpoint_dir)
    if checkpoints is not None and checkpoints.latest() is not None:
        done = checkpoints.latest()
        metrics_shape = jax.eval_shape(wrap(lambda s: run_chunk(s, done)), state)[1]
        state, restored = checkpoints.restore(done, state, metrics_shape)
        pieces.append(restored)
    with tqdm(total=num_steps * unit_scale, initial=done * unit_scale, desc=desc, unit=unit,
              disable=not progress) as bar:
        while done < num_steps:
            length = min(chunk, num_steps - done)
            state, metrics = chunk_fn(length)(state)
            jax.block_until_ready(state)
            pieces.append(metrics)
            done += length
            chunks += 1
            bar.update(length * unit_scale)
            if checkpoints is not None and (chunks % checkpoint_every == 0 or done == num_steps):
                pieces = [_concatenate(pieces, axis)]
                checkpoints.save(done, state, pieces[0])
            if on_chunk is not None:
                on_chunk(done)
    return state, _concatenate(pieces, axis)


def _concatenate(pieces, axis):
    return jax.tree_util.tree_map(lambda *parts: jnp.concatenate(parts, axis=axis), *pieces)


class _Checkpoints:
    """orbax-checkpoint storage of ``{"state", "metrics"}`` by steps done (two kept)."""

    def __init__(self, directory: str):
        import orbax.checkpoint as ocp  # imported here: only checkpointed runs pay for it

        self._ocp = ocp
        self._manager = ocp.CheckpointManager(os.path.abspath(directory),
                                              options=ocp.CheckpointManagerOptions(max_to_keep=2))

    def latest(self):
        return self._manager.latest_step()

    def save(self, done, state, metrics):
        self._manager.save(done, args=self._ocp.args.StandardSave({"state": state, "metrics": metrics}))
        self._manager.wait_until_finished()

    def restore(self, done, state, metrics_shape):
        target = {"state": state, "metrics": metrics_shape}
        restored = self._manager.restore(done, args=self._ocp.args.StandardRestore(target))
        return restored["state"], restored["metrics"]


def _is_key_batch(key) -> bool:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


class Trainer(NamedTuple):
    """A long run in the protocol: ``init(key) -> carry``, ``step(carry) -> (carry, metrics)`` for one unit
    (one PPO update, one TD3/DQN iteration), ``num_steps`` units, and ``finish(carry, metrics) -> output`` (the
    algorithm's ``TrainOutput``). ``run(key)`` is the whole run as one jittable, vmappable function."""

    init: Callable
    step: Callable
    num_steps: int
    finish: Callable
    unit: str = "update"
    unit_scale: int = 1

    def run(self, key):
        """The whole run: ``finish(*scan_steps(step, init(key), num_steps))``."""
        return self.finish(*scan_steps(self.step, self.init(key), self.num_steps))

    def run_with_progress(self, key, chunk: Optional[int] = None, desc: str = "train", **runner_options):
        """``run`` for one key or a batch of keys (vmapped), in jitted chunks with a tqdm bar (``run_chunked``;
        ``runner_options`` such as ``checkpoint_dir`` go to it)."""
        carry, metrics = run_chunked(self.init, self.step, self.num_steps, key, chunk=chunk, desc=desc,
                                     unit=self.unit, unit_scale=self.unit_scale, **runner_options)
        return self.finish(carry, metrics)


def export_params(path: str, params: Any) -> None:
    """Writes a parameter pytree to ``path`` as flax msgpack bytes: FL's final ``theta`` (``f32[d]``, or a batch
    ``f32[S, d]`` of seeds) or an RL policy's parameters (e.g. ``TrainOutput.train_state.params``)."""
    with open(path, "wb") as f:
        f.write(serialization.to_bytes(jax.device_get(params)))


def import_params(path: str, like: Any) -> Any:
    """Reads parameters written by ``export_params``; ``like`` is a pytree of the same structure and shapes
    (e.g. ``model.init(key)`` for FL); a mismatch raises ``ValueError``."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        params = serialization.from_bytes(like, raw)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"import_params: {path!r} does not hold a pytree shaped like `like` ({e})") from None
    got = jax.tree_util.tree_map(jnp.shape, params)
    want = jax.tree_util.tree_map(jnp.shape, like)
    if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(like) or got != want:
        raise ValueError(f"import_params: {path!r} holds shapes {got}, `like` has {want}")
    return params
