"""The one run protocol shared by FL, PPO, TD3, DQN, ByzPG, DecByzPG and SleeperNets, and its chunked runner.

Every long run is a ``Trainer``: ``init(key, params) -> state`` and ``step(state, params) -> (state, metrics)``
for one unit of work (an FL evaluation block, a PPO update, a DecByzPG iteration), where ``params`` is a traced
pytree of what a sweep varies (``FLParams`` for FL, the environment's parameters for PPO/TD3/DQN,
``RunSettings`` for SleeperNets' comparison); ``run(key, params)`` is ``lax.scan`` of ``step`` from ``init``, and a
sweep is ``jax.vmap`` over keys and params. ``run_chunked`` runs the same scan in jitted chunks from Python, so a
tqdm bar moves without callbacks in the hot loop; it is the one driver of long runs, and the one place for
checkpoints and for ``on_chunk(steps_done, state)`` (logging, evaluation). Its result equals ``run`` (``vmap(run)``
for a batch of keys).
"""

import hashlib
import json
import os
import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm.auto import tqdm

from fedjax_attacks.results import to_json


def scan_steps(step: Callable, state: Any, num_steps: int):
    """``lax.scan`` of ``step: state -> (state, metrics)`` for ``num_steps`` steps: ``(state, stacked metrics)``."""
    return jax.lax.scan(lambda carry, _: step(carry), state, None, length=num_steps)


def run_chunked(trainer: "Trainer", key: jax.Array, params: Any = None, *, sweep: bool = False,
                chunk: Optional[int] = None, desc: str = "run", progress: bool = True,
                checkpoint_dir: Optional[str] = None, checkpoint_every: int = 1, config: Any = None,
                on_chunk: Optional[Callable[[int, Any], None]] = None):
    """Runs ``trainer.init`` then ``trainer.num_steps`` calls of ``trainer.step`` in jitted chunks of ``chunk``
    steps, with a tqdm bar (in ``trainer.unit``, ``trainer.unit_scale`` per step).

    With ``checkpoint_dir`` the whole run state (the carry and the metrics so far) is saved with orbax every
    ``checkpoint_every`` chunks, and a call finding a checkpoint there resumes from the latest one: a run killed
    after chunk k (or at any moment of a save) and started again with the same arguments ends with a
    bit-identical state and metrics. Use the same ``chunk`` when resuming. States must hold raw ``uint32`` PRNG
    keys (``jax.random.PRNGKey``), which orbax can save. ``on_chunk(steps_done, state)`` is called after each
    chunk with the state reached (logging, evaluating the policy so far, or interrupting a test).

    Each checkpoint records what it is a checkpoint of: the key, ``num_steps``, ``config`` and the state's
    shapes; a resume with any of them different is refused. It also records a SHA-256 of itself: a damaged
    latest step (a flipped bit, a truncated file) is removed with a warning and the run resumes from the intact
    step before it (two are kept).

    Args:
      trainer: the run (``Trainer``).
      key: one PRNG key, or a batch of keys (shape ``[S]`` of typed keys or ``[S, 2]`` of raw ``uint32`` keys),
        in which case every seed runs at once under ``vmap``.
      params: the ``params`` of ``init`` and ``step`` (default ``trainer.params``); shared by every seed unless
        ``sweep``.
      sweep: ``params`` has a leading axis of the keys' ``S``: run ``i`` uses key ``i`` and params ``i`` (a sweep
        of configurations, e.g. SleeperNets' attacks x budgets x seeds, in one program).
      chunk: steps per jitted call (default: about 20 chunks); the last chunk may be shorter (one more compile).
      desc: the bar's label.
      progress: show the bar.
      config: the run's configuration (an ``FLConfig``, a ``PPOConfig``, a dict: anything ``results.to_json``
        takes; default ``trainer.config``), recorded with the checkpoints; resuming a checkpoint of another
        config is refused.

    Returns:
      ``(final state, metrics stacked over steps)``; with a batch of keys both have a leading seed axis and the
      step axis is axis 1. Identical to ``scan_steps(lambda s: step(s, params), init(key, params), num_steps)``
      (vmapped for a batch).

    Raises:
      ValueError: ``num_steps`` or ``chunk`` not an int >= 1, ``sweep`` without a batch of keys or with params
        whose leading axis is not the keys', ``checkpoint_dir`` not a directory (or unable to be one), or holding
        a checkpoint of another run (the message lists what differs), or no intact checkpoint.
    """
    num_steps = trainer.num_steps
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"run_chunked: num_steps must be an int >= 1, got {num_steps!r}")
    batched = _is_key_batch(key)
    params = trainer.params if params is None else params
    if sweep:
        _check_sweep(key, params, batched)
    chunk = chunk or max(1, num_steps // 20)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"run_chunked: chunk must be an int >= 1, got {chunk!r}")
    chunk = min(chunk, num_steps)
    config = trainer.config if config is None else config

    def run_chunk(state, params, length):
        return scan_steps(lambda s: trainer.step(s, params), state, length)

    if checkpoint_dir is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"run_chunked: checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    checkpoints = None if checkpoint_dir is None else _Checkpoints(checkpoint_dir)
    wrap = (lambda f: jax.vmap(f, in_axes=(0, 0 if sweep else None))) if batched else (lambda f: f)
    axis = 1 if batched else 0
    chunk_fns = {}

    def chunk_fn(length):
        if length not in chunk_fns:
            chunk_fns[length] = jax.jit(wrap(lambda s, p, n=length: run_chunk(s, p, n)))
        return chunk_fns[length]

    state = jax.jit(wrap(trainer.init))(key, params)
    pieces, done, chunks = [], 0, 0
    if checkpoints is not None:
        run = {"key": _key_json(key), "num_steps": num_steps, "config": to_json(config), "state": _shapes(state)}
        metrics_shape = lambda steps: jax.eval_shape(wrap(lambda s, p: run_chunk(s, p, steps)), state, params)[1]
        done, resumed = checkpoints.resume(run, state, metrics_shape)
        if resumed is not None:
            state, metrics = resumed
            pieces.append(metrics)
    with tqdm(total=num_steps * trainer.unit_scale, initial=done * trainer.unit_scale, desc=desc, unit=trainer.unit,
              unit_scale=trainer.unit_scale > 1, disable=not progress) as bar:
        while done < num_steps:
            length = min(chunk, num_steps - done)
            state, metrics = chunk_fn(length)(state, params)
            jax.block_until_ready(state)
            pieces.append(metrics)
            done += length
            chunks += 1
            bar.update(length * trainer.unit_scale)
            if checkpoints is not None and (chunks % checkpoint_every == 0 or done == num_steps):
                pieces = [_concatenate(pieces, axis)]
                checkpoints.save(done, state, pieces[0])
            if on_chunk is not None:
                on_chunk(done, state)
    return state, _concatenate(pieces, axis)


def _check_sweep(key, params, batched):
    if not batched:
        raise ValueError("run_chunked: sweep=True needs a batch of keys, one per run")
    runs = int(np.shape(key)[0])
    leading = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree_util.tree_leaves(params)}
    if leading != {runs}:
        raise ValueError(f"run_chunked: sweep=True needs every leaf of params with a leading axis of {runs} (the "
                         f"keys'), got leading sizes {sorted(leading, key=str)}")


def _concatenate(pieces, axis):
    return jax.tree_util.tree_map(lambda *parts: jnp.concatenate(parts, axis=axis), *pieces)


class _Checkpoints:
    """orbax-checkpoint storage of ``{"state", "metrics"}`` by steps done (two kept). Each step has a JSON record
    beside its arrays: the run it belongs to (see ``resume``), the steps done, and the SHA-256 of both."""

    def __init__(self, directory: str):
        import orbax.checkpoint as ocp  # imported here: only checkpointed runs pay for it

        try:  # a file in the way makes orbax's save thread fail and the process hang
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise ValueError(f"run_chunked: checkpoint_dir {directory!r} is not a directory ({e})") from None
        self._ocp, self._directory, self._run = ocp, directory, None
        self._manager = ocp.CheckpointManager(os.path.abspath(directory),
                                              options=ocp.CheckpointManagerOptions(max_to_keep=2))

    def save(self, done, state, metrics):
        arrays = {"state": state, "metrics": metrics}
        record = {"run": self._run, "done": done}
        record.update(record_sha256=_json_sha256(record), arrays_sha256=_arrays_sha256(arrays))
        self._manager.save(done, args=self._ocp.args.Composite(arrays=self._ocp.args.StandardSave(arrays),
                                                               record=self._ocp.args.JsonSave(record)))
        self._manager.wait_until_finished()

    def resume(self, run, state, metrics_shape):
        """Records what this run is (``run``: JSON values) and returns ``(done, (state, metrics))`` from its latest
        intact step, or ``(0, None)`` in an empty directory. Damaged steps after the intact one are removed with
        a warning; ``metrics_shape(done)`` is the shape of the metrics of ``done`` steps."""
        try:
            self._run = json.loads(json.dumps(run))
        except TypeError as e:
            raise ValueError(f"run_chunked: config must be JSON values after results.to_json ({e})") from None
        damaged = {}
        for done in sorted(self._manager.all_steps(), reverse=True):
            try:
                arrays = self._restore(done, state, metrics_shape(done))
            except _Damaged as e:
                damaged[done] = str(e)
                continue
            if damaged:
                for step in damaged:
                    self._manager.delete(step)
                warnings.warn(f"run_chunked: in checkpoint_dir {self._directory!r}, {_listing(damaged)} damaged; "
                              f"removed, resuming from step {done}", stacklevel=3)
            return done, (arrays["state"], arrays["metrics"])
        if damaged:
            raise ValueError(f"run_chunked: checkpoint_dir {self._directory!r} holds no intact checkpoint "
                             f"({_listing(damaged)} damaged); remove it to start the run again")
        return 0, None

    def _restore(self, done, state, metrics_shape):
        """The arrays of step ``done``, after checking its record: ``ValueError`` if it is of another run,
        ``_Damaged`` if it or the arrays do not read or do not match their SHA-256."""
        args = self._ocp.args
        try:
            record = self._manager.restore(done, args=args.Composite(record=args.JsonRestore()))["record"]
            intact = _json_sha256({"run": record["run"], "done": record["done"]}) == record["record_sha256"]
        except Exception as e:  # orbax and tensorstore raise many kinds of errors on a damaged file
            raise _Damaged(f"its record does not read: {type(e).__name__}") from None
        if not intact:
            raise _Damaged("its record does not match its SHA-256")
        differences = _differences(record["run"], self._run)
        if differences:
            raise ValueError(f"run_chunked: checkpoint_dir {self._directory!r} holds another run (step {done}): "
                             f"{'; '.join(differences)}; pass another checkpoint_dir, or remove it to start again")
        target = {"state": state, "metrics": metrics_shape}
        try:
            arrays = self._manager.restore(done, args=args.Composite(arrays=args.StandardRestore(target)))["arrays"]
        except Exception as e:
            raise _Damaged(f"its arrays do not read: {type(e).__name__}") from None
        if _arrays_sha256(arrays) != record["arrays_sha256"]:
            raise _Damaged("its arrays do not match their SHA-256")
        return arrays


class _Damaged(Exception):
    """A checkpoint step that does not read back as it was saved."""


def _listing(damaged: dict) -> str:
    return ", ".join(f"step {done} ({why})" for done, why in damaged.items()) + (" is" if len(damaged) == 1 else " are")


def _json_sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _arrays_sha256(tree) -> str:
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(jax.device_get(tree)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _differences(there, here, path: str = "") -> list:
    """Where two JSON values differ, as ``"path: <there> there, <here> here"`` lines (dicts by key)."""
    if isinstance(there, dict) and isinstance(here, dict):
        return [line for name in sorted(set(there) | set(here))
                for line in _differences(there.get(name), here.get(name), f"{path}.{name}" if path else name)]
    if json.dumps(there, sort_keys=True) == json.dumps(here, sort_keys=True):
        return []
    return [f"{path}: {_short(there)} there, {_short(here)} here"]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _key_json(key) -> list:
    """A PRNG key (or batch of keys) as nested lists of its raw ``uint32`` words."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).tolist()


def _shapes(state) -> list:
    """Every leaf of ``state`` as ``"path: dtype[shape]"``."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return [f"{jax.tree_util.keystr(path)}: {leaf.dtype}{list(leaf.shape)}" for path, leaf in leaves]


def _is_key_batch(key) -> bool:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


class Trainer(NamedTuple):
    """A long run in the protocol: ``init(key, params) -> carry``, ``step(carry, params) -> (carry, metrics)`` for
    one unit (one PPO update, one TD3/DQN iteration, one FL evaluation block), ``num_steps`` units, and
    ``finish(carry, metrics) -> output`` (the algorithm's ``TrainOutput``). ``params`` is the default traced
    pytree of what a sweep may vary (environment parameters, ``FLParams``, ``RunSettings``). ``run(key, params)``
    is the whole run as one jittable, vmappable function. ``config`` (the algorithm's config) is recorded with
    checkpoints, so a checkpoint of another config is not resumed."""

    init: Callable
    step: Callable
    num_steps: int
    finish: Callable
    params: Any = None
    unit: str = "update"
    unit_scale: int = 1
    config: Any = None

    def run(self, key, params=None):
        """The whole run: ``finish(*scan_steps(step(., params), init(key, params), num_steps))`` (``params``
        default ``self.params``)."""
        params = self.params if params is None else params
        carry, metrics = scan_steps(lambda c: self.step(c, params), self.init(key, params), self.num_steps)
        return self.finish(carry, metrics)

    def run_with_progress(self, key, params=None, *, sweep: bool = False, chunk: Optional[int] = None,
                          desc: str = "train", **runner_options):
        """``run`` for one key or a batch of keys (vmapped; with ``sweep`` each key with its own ``params``), in
        jitted chunks with a tqdm bar (``run_chunked``, which ``runner_options`` such as ``checkpoint_dir`` and
        ``on_chunk`` go to); ``finish`` is applied per run."""
        carry, metrics = run_chunked(self, key, params, sweep=sweep, chunk=chunk, desc=desc, **runner_options)
        finish = jax.vmap(self.finish) if _is_key_batch(key) else self.finish
        return finish(carry, metrics)


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
