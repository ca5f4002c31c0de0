"""The FL run as a pure function of a PRNG key: one ``lax.scan`` over blocks of ``eval_every`` rounds.

A round (Algorithm 1 of the seed paper, FedSGD by default): sample w of K clients without replacement; every
sampled client computes its honest update on a batch of its data (vmapped); the sampled malicious clients replace
theirs with what the attack crafts; the server aggregates with its rule and updates the global model theta.
"""

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm.auto import tqdm

from fedjax_attacks import aggregators, attacks
from fedjax_attacks.attacks.base import AttackInput
from fedjax_attacks.data import Dataset, Partition, partition
from fedjax_attacks.fl.config import FLConfig
from fedjax_attacks.models import FlatModel, accuracy, cross_entropy


@struct.dataclass
class FLState:
    """Carry of the scan: global parameters theta_t, the previous aggregate, the round t and the PRNG key."""

    params: jax.Array
    previous_aggregate: jax.Array
    round: jax.Array
    key: jax.Array


class History(NamedTuple):
    """Per evaluated round (every ``eval_every`` rounds, after the update): arrays of length T / eval_every."""

    round: jax.Array
    test_accuracy: jax.Array
    test_loss: jax.Array
    num_malicious_selected: jax.Array


class FLData(NamedTuple):
    """Device arrays the run reads: training/test sets, the client index table and the server's root data."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    client_indices: jax.Array
    client_sizes: jax.Array
    x_root: jax.Array
    y_root: jax.Array


@dataclasses.dataclass(frozen=True)
class Simulation:
    """The pieces of a run: ``init(key) -> FLState``, ``advance(state) -> (state, History of one block)``.

    ``run(key)`` = init, then ``lax.scan`` of ``advance`` over ``num_blocks`` blocks. ``round_step`` is one FL
    round, ``FLState -> (FLState, num_malicious_selected)``, reusable inside other loops (e.g. an RL simulator).
    """

    config: FLConfig
    model: FlatModel
    data: FLData
    partition: Partition
    init: Callable
    round_step: Callable
    advance: Callable
    num_blocks: int

    def run(self, key: jax.Array):
        """The whole experiment: ``(final_params, History)``; jit it, vmap it over keys."""
        state, history = jax.lax.scan(lambda s, _: self.advance(s), self.init(key), None, length=self.num_blocks)
        return state.params, history


def make_simulation(config: FLConfig, dataset: Dataset, model: FlatModel) -> Simulation:
    """Validates ``config`` against the data and model, partitions the data, and builds the pure round functions.

    Raises:
      ValueError: inconsistent config, unknown aggregator/attack, a full-knowledge attack under partial knowledge,
        a batch larger than some client's data, or a model whose input shape does not match the data.
    """
    config.validate()
    if tuple(model.input_shape) != tuple(dataset.input_shape):
        raise ValueError(f"model input shape {model.input_shape} does not match dataset {dataset.input_shape}")
    aggregate = aggregators.get(config.aggregator, **dict(config.aggregator_hparams))
    attack = attacks.get(config.attack, **dict(config.attack_hparams))
    if attack.needs_full_knowledge and config.knowledge != "full":
        raise ValueError(f"attack {config.attack!r} needs the benign updates (knowledge='full')")
    part = partition(dataset.y_train, config.num_clients, config.partition, seed=config.partition_seed,
                     q=config.q, alpha=config.alpha)
    if part.sizes.min() < config.batch_size:
        raise ValueError(f"batch_size B={config.batch_size} is larger than the smallest client's data "
                         f"({part.sizes.min()} samples under partition {config.partition!r})")
    root_size = min(config.root_size, len(dataset.y_train))
    root = np.random.default_rng(config.partition_seed + 1).choice(len(dataset.y_train), root_size, replace=False)
    data = FLData(*(jnp.asarray(a) for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test,
                                              part.indices, part.sizes, dataset.x_train[root], dataset.y_train[root])))
    client_update = _make_client_update(config, model)
    poisons_data = attack.poison_data is not attacks.none.poison_data
    attacked = config.attack != "none" and config.num_malicious > 0

    def init(key):
        init_key, key = jax.random.split(key)
        params = model.init(init_key)
        return FLState(params, jnp.zeros_like(params), jnp.zeros((), jnp.int32), key)

    def round_step(state: FLState):
        key, k_sample, k_batch, k_poison, k_client, k_attack, k_agg = jax.random.split(state.key, 7)
        sampled = sample_clients(k_sample, config.num_clients, config.clients_per_round)
        malicious = sampled < config.num_malicious
        batch_keys = jax.random.split(k_batch, (config.clients_per_round, config.local_steps))
        idx = jax.vmap(jax.vmap(sample_batch, (0, None, None, None)), (0, 0, 0, None))(
            batch_keys, data.client_indices[sampled], data.client_sizes[sampled], config.batch_size)
        x, y = data.x_train[idx], data.y_train[idx]  # [w, steps, B, ...]
        if poisons_data:
            px, py = jax.vmap(attack.poison_data)(jax.random.split(k_poison, config.clients_per_round), x, y)
            x = jnp.where(_expand(malicious, x), px, x)
            y = jnp.where(_expand(malicious, y), py, y)
        client_keys = jax.random.split(k_client, config.clients_per_round)
        honest = jax.vmap(client_update, (None, 0, 0, 0))(state.params, x, y, client_keys)
        server_update = client_update(state.params, data.x_root[None], data.y_root[None], k_client)
        round_aggregate = functools.partial(aggregate, key=k_agg, server_update=server_update,
                                            previous_aggregate=state.previous_aggregate)
        submitted = honest
        if attacked:
            visible = honest if config.knowledge == "full" else jnp.where(malicious[:, None], honest, 0.0)
            inp = AttackInput(state.params, visible, malicious, state.round, aggregate=round_aggregate,
                              full_knowledge=config.knowledge == "full")
            submitted = jnp.where(malicious[:, None], attack.craft(k_attack, inp), honest)
        agg = round_aggregate(submitted)
        if config.mode == "fedsgd":
            params = state.params - config.lr * agg
        else:
            params = state.params + config.server_lr * agg
        new_state = FLState(params, agg, state.round + 1, key)
        return new_state, jnp.sum(malicious.astype(jnp.int32))

    def advance(state: FLState):
        state, counts = jax.lax.scan(lambda s, _: round_step(s), state, None, length=config.eval_every,
                                     unroll=min(config.unroll, config.eval_every))
        logits = model.apply(state.params, data.x_test)
        record = History(state.round, accuracy(logits, data.y_test), cross_entropy(logits, data.y_test), counts[-1])
        return state, record

    return Simulation(config, model, data, part, init, round_step, advance, config.rounds // config.eval_every)


def make_run(config: FLConfig, dataset: Dataset, model: FlatModel) -> Callable:
    """``run(key) -> (final_params f32[d], History)``: the whole FL experiment as one pure, jittable function.

    ``jax.jit(jax.vmap(run))(keys)`` runs many seeds at once. Validation happens here, before tracing.
    """
    return make_simulation(config, dataset, model).run


def make_attack_sweep(config: FLConfig, dataset: Dataset, model: FlatModel, members) -> Callable:
    """``sweep(keys, attack_index) -> History``, jitted: one compilation serves every attack in ``members``.

    ``members`` is a sequence of ``(attack_name, hparams)``; the run uses ``attacks.switch`` on the int32
    ``attack_index`` (an argument, not a constant, so changing it does not recompile; keep it unbatched). Seeds
    (``keys`` of shape [S]) are vmapped. ``config.attack`` is ignored. Validation happens here, before tracing.
    """
    members = tuple((name, dict(hparams)) for name, hparams in members)
    config = dataclasses.replace(config, attack="switch", attack_hparams={"members": members, "index": 0})
    make_simulation(config, dataset, model)

    def sweep(keys, index):
        cfg = dataclasses.replace(config, attack_hparams={"members": members, "index": index})
        return jax.vmap(make_run(cfg, dataset, model))(keys)[1]

    return jax.jit(sweep)


def run_with_progress(sim: Simulation, keys: jax.Array, chunk_blocks: Optional[int] = None, desc: str = "FL rounds"):
    """Runs ``sim`` for a batch of seeds ``keys`` (shape [S] of keys) with a tqdm bar over rounds.

    The scan runs in jitted chunks of ``chunk_blocks`` evaluation blocks (default: about 20 chunks), so the bar
    moves without callbacks in the hot loop. Returns ``(final_params f32[S, d], History with leading axis S)``,
    identical to ``jax.vmap(sim.run)(keys)``.
    """
    n = sim.num_blocks
    chunk = chunk_blocks or max(1, n // 20)
    chunk = max(c for c in range(1, min(chunk, n) + 1) if n % c == 0)
    init = jax.jit(jax.vmap(sim.init))
    step = jax.jit(jax.vmap(lambda s: jax.lax.scan(lambda c, _: sim.advance(c), s, None, length=chunk)))
    state = init(keys)
    pieces = []
    with tqdm(total=sim.config.rounds, desc=desc, unit="round") as bar:
        for _ in range(n // chunk):
            state, hist = step(state)
            pieces.append(hist)
            jax.block_until_ready(state.params)
            bar.update(chunk * sim.config.eval_every)
    history = History(*(jnp.concatenate(parts, axis=1) for parts in zip(*pieces)))
    return state.params, history


def sample_clients(key: jax.Array, num_clients: int, num_sampled: int) -> jax.Array:
    """w distinct client ids drawn uniformly without replacement (int32[w])."""
    return jax.random.choice(key, num_clients, (num_sampled,), replace=False).astype(jnp.int32)


def sample_batch(key: jax.Array, indices: jax.Array, size: jax.Array, batch_size: int) -> jax.Array:
    """B distinct sample ids from one client's padded index row ``indices`` (int32[S]) with ``size`` valid entries."""
    scores = jax.random.uniform(key, indices.shape)
    scores = jnp.where(jnp.arange(indices.shape[0]) < size, scores, 2.0)
    _, pos = jax.lax.top_k(-scores, batch_size)
    return indices[pos]


def _expand(mask, like):
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def _make_client_update(config: FLConfig, model: FlatModel) -> Callable:
    """``update(theta, x f32[steps, B, ...], y, key) -> f32[d]``: a gradient (FedSGD) or a model delta (FedAvg)."""
    grad = jax.grad(model.loss)
    if config.mode == "fedsgd":
        return lambda params, x, y, key: grad(params, x[0], y[0])

    def fedavg_update(params, x, y, key):
        def local_step(p, batch):
            return p - config.lr * grad(p, *batch), None

        local, _ = jax.lax.scan(local_step, params, (x, y))
        return local - params

    return fedavg_update


