"""The FL run as a pure function of a PRNG key: one ``lax.scan`` over blocks of ``eval_every`` rounds.

A round (Algorithm 1 of the seed paper, FedSGD by default): sample w of K clients without replacement; every
sampled client computes its honest update on a batch of its data (vmapped); the sampled malicious clients replace
theirs with what the attack crafts; the server aggregates with its rule and updates the global model theta.
"""

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fedjax_attacks import aggregators, attacks, sharding
from fedjax_attacks.attacks.base import AttackInput
from fedjax_attacks.data import Dataset, Partition, partition
from fedjax_attacks.fl.config import FLConfig
from fedjax_attacks.models import FlatModel, accuracy, cross_entropy
from fedjax_attacks.runner import Trainer
from fedjax_attacks.validation import check_index


@struct.dataclass
class FLState:
    """Carry of the run: global parameters theta_t, the aggregator's state, the round t and the PRNG key."""

    params: jax.Array
    aggregator_state: Any
    round: jax.Array
    key: jax.Array


@struct.dataclass
class FLParams:
    """Traced hyperparameters of a run (gymnax's ``EnvParams`` pattern): vmap a run over a batch of them.

    Attributes:
      lr: eta, the server's (FedSGD) or the clients' (FedAvg) learning rate.
      server_lr: FedAvg's server step on the aggregated delta.
      attack_index: which member of an attack sweep runs (``attacks.switch``; ignored otherwise).
      attack_hparams, aggregator_hparams: float hyperparameters that override ``FLConfig``'s by name (e.g.
        ``{"eps": 5.0}`` for IPM, ``{"tau": 10.0}`` for centered clipping); validated against the config.
    """

    lr: jax.Array
    server_lr: jax.Array
    attack_index: jax.Array
    attack_hparams: Mapping[str, jax.Array] = struct.field(default_factory=dict)
    aggregator_hparams: Mapping[str, jax.Array] = struct.field(default_factory=dict)


class RoundInput(NamedTuple):
    """What ``client_updates`` hands to whoever plays the attacker, for one round.

    Attributes:
      updates: f32[w, d], the honest update of every sampled client (a malicious client's is computed on its own,
        possibly poisoned, data).
      malicious_mask: bool[w], which sampled clients are malicious (ids < M).
      sampled: int32[w], the sampled client ids.
      global_params: f32[d], theta_t.
      server_update: f32[d], FLTrust's root-data update g0 (None when the aggregator does not need it).
      attack_key: the PRNG key the configured attack uses this round.
      aggregator_key: the PRNG key the server's aggregator uses this round.
    """

    updates: jax.Array
    malicious_mask: jax.Array
    sampled: jax.Array
    global_params: jax.Array
    server_update: Optional[jax.Array]
    attack_key: jax.Array
    aggregator_key: jax.Array


class History(NamedTuple):
    """Per evaluated round (every ``eval_every`` rounds, after the update): arrays of length T / eval_every.

    ``num_skipped`` counts the rounds of the block whose aggregate was unusable (NaN/Inf, or a squared norm that
    overflows): refused under ``FLConfig.on_nonfinite="skip"``, applied anyway under ``"apply"``.
    ``num_malicious_selected`` is the attacker count of the block's last round."""

    round: jax.Array
    test_accuracy: jax.Array
    test_loss: jax.Array
    num_malicious_selected: jax.Array
    num_skipped: jax.Array


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
    """The pieces of a run, gymnax-style: pure functions of an ``FLState`` and traced ``FLParams``.

    * ``init(key) -> FLState``;
    * ``client_updates(state, params) -> RoundInput``: the server samples ``w`` clients and each computes its
      honest update (vmapped);
    * ``server_step(state, submitted f32[w, d], params) -> (state, metrics)``: the server aggregates what was
      submitted (threading the aggregator's state) and updates theta, refusing a non-finite result as
      ``FLConfig.on_nonfinite`` says; ``metrics`` maps ``num_malicious``, ``aggregate_norm`` and ``skipped``;
    * ``round_step(state, params) -> (state, (num_malicious, skipped))``: the two with the configured attack in
      between;
    * ``step(state, params=None) -> (state, History of one block)``: ``eval_every`` rounds, then a test evaluation.

    ``run(key, params=None)`` is ``init`` then ``lax.scan`` of ``step`` over ``num_blocks`` blocks. An external
    attacker (the RL attack's simulator, a user's own attack) drives ``client_updates`` and ``server_step``.
    With a ``mesh``, the w sampled clients' batches and updates are split over its ``"clients"`` axis.
    """

    config: FLConfig
    model: FlatModel
    data: FLData
    partition: Partition
    aggregator: aggregators.Aggregator
    attack: attacks.Attack
    init: Callable
    client_updates: Callable
    server_step: Callable
    round_step: Callable
    block: Callable
    num_blocks: int
    mesh: Optional[jax.sharding.Mesh] = None

    def default_params(self) -> FLParams:
        """``FLParams`` from the config: its learning rates, its switch index (0 unless ``attack="switch"`` names
        one), no hyperparameter overrides."""
        index = self.config.attack_hparams.get("index", 0) if self.config.attack == "switch" else 0
        return FLParams(jnp.float32(self.config.lr), jnp.float32(self.config.server_lr), jnp.int32(index))

    def step(self, state: FLState, params: Optional[FLParams] = None):
        """One evaluation block: ``eval_every`` rounds, then the test metrics -> ``(state, History row)``."""
        return self.block(state, self.default_params() if params is None else params)

    def trainer(self) -> Trainer:
        """The run in the library's protocol: ``init(key, params)`` (``init(key)``; the params are the blocks'),
        ``step(state, params)``, ``num_blocks`` steps, ``finish -> (final_params, History)``, default ``params``
        ``default_params()``; ``run_chunked`` drives it in chunks (progress, checkpoints)."""
        return Trainer(lambda key, params: self.init(key), self.step, self.num_blocks,
                       lambda state, history: (state.params, history), params=self.default_params(), unit="round",
                       unit_scale=self.config.eval_every, config=self.config)

    def run(self, key: jax.Array, params: Optional[FLParams] = None):
        """The whole experiment: ``(final_params, History)``; jit it, vmap it over keys (and params)."""
        return self.trainer().run(key, params)


def make_simulation(config: FLConfig, dataset: Dataset, model: FlatModel,
                    mesh: Optional[jax.sharding.Mesh] = None) -> Simulation:
    """Validates ``config`` against the data and model, partitions the data, and builds the pure round functions.

    With ``mesh`` (a ``jax.sharding.Mesh`` with a ``"clients"`` axis, e.g. ``sharding.make_mesh(clients=4)``), the
    sampled clients' batches and honest updates ``f32[w, d]`` are split over that axis (each device computes
    w / size updates); the attack and the aggregator see the whole ``f32[w, d]``, and XLA reduces across the shards
    where a rule allows (a mean) or gathers the rows (sorting, distances). Without a mesh nothing changes.

    Raises:
      ValueError: inconsistent config, unknown aggregator/attack, a pre-aggregator as the final rule, a
        full-knowledge attack under partial knowledge, a batch larger than some client's data, a model whose
        input shape does not match the data, or a mesh without a ``"clients"`` axis dividing w.
    """
    config.validate()
    if mesh is not None:
        sharding.check_divides(mesh, sharding.CLIENTS, config.clients_per_round, "FLConfig.clients_per_round w")
        mesh = sharding.auto_axes(mesh)
    dataset.validate()
    if tuple(model.input_shape) != tuple(dataset.input_shape):
        raise ValueError(f"model input shape {model.input_shape} does not match dataset {dataset.input_shape}")
    if model.num_classes < dataset.num_classes:
        raise ValueError(f"model {model.name!r} has {model.num_classes} outputs, fewer than the dataset's "
                         f"{dataset.num_classes} classes")
    aggregator = aggregators.check_final(aggregators.get(config.aggregator, **dict(config.aggregator_hparams)),
                                         f"FLConfig.aggregator={config.aggregator!r}")
    config = _with_dataset_classes(config, dataset.num_classes)
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
    attacked = config.attack != "none" and config.num_malicious > 0
    needs_g0 = "server_update" in aggregator.needs
    needs_count = "num_malicious" in aggregator.needs  # the authors' Krum reads the round's attacker count
    w = config.clients_per_round

    def aggregator_for(params: FLParams) -> aggregators.Aggregator:
        if not params.aggregator_hparams:
            return aggregator
        return aggregators.get(config.aggregator, **{**dict(config.aggregator_hparams), **params.aggregator_hparams})

    def attack_for(params: FLParams) -> attacks.Attack:
        if config.attack == "switch":
            return attacks.get("switch", **{**dict(config.attack_hparams), "index": params.attack_index})
        if not params.attack_hparams:
            return attack
        return attacks.get(config.attack, **{**dict(config.attack_hparams), **params.attack_hparams})

    # every device computes the updates of its w / size sampled clients
    clients_update = sharding.map_shards(jax.vmap(client_update, (None, 0, 0, 0, None)), mesh, sharding.CLIENTS,
                                         (False, True, True, True, False))

    def on_clients(tree):
        """The leading (client) axis on the mesh's ``"clients"`` axis; identity without a mesh."""
        return sharding.constrain(tree, mesh, sharding.CLIENTS)

    def round_keys(key):
        """``(next, sample, batch, poison, client, attack, aggregator)`` keys of the round started by ``key``."""
        return jax.random.split(key, 7)

    def server_update_at(params_flat, k_client, lr):
        return client_update(params_flat, data.x_root[None], data.y_root[None], k_client, lr)

    def init(key):
        init_key, key = jax.random.split(key)
        params = model.init(init_key)
        return FLState(params, aggregator.init(params.shape[0]), jnp.zeros((), jnp.int32), key)

    def client_updates(state: FLState, params: FLParams) -> RoundInput:
        _, k_sample, k_batch, k_poison, k_client, k_attack, k_agg = round_keys(state.key)
        sampled = sample_clients(k_sample, config.num_clients, w)
        malicious = sampled < config.num_malicious
        batch_keys = on_clients(jax.random.split(k_batch, (w, config.local_steps)))
        idx = jax.vmap(jax.vmap(sample_batch, (0, None, None, None)), (0, 0, 0, None))(
            batch_keys, data.client_indices[sampled], data.client_sizes[sampled], config.batch_size)
        x, y = on_clients((data.x_train[idx], data.y_train[idx]))  # [w, steps, B, ...]
        current_attack = attack_for(params)
        if attacked and current_attack.poisons_data:
            px, py = jax.vmap(current_attack.poison_data)(jax.random.split(k_poison, w), x, y)
            x = jnp.where(_expand(malicious, x), px, x)
            y = jnp.where(_expand(malicious, y), py, y)
        client_keys = on_clients(jax.random.split(k_client, w))
        honest = clients_update(state.params, x, y, client_keys, params.lr)
        g0 = server_update_at(state.params, k_client, params.lr) if needs_g0 else None
        return RoundInput(honest, malicious, sampled, state.params, g0, k_attack, k_agg)

    def server_step(state: FLState, submitted: jax.Array, params: FLParams):
        key, k_sample, _, _, k_client, _, k_agg = round_keys(state.key)
        malicious = sample_clients(k_sample, config.num_clients, w) < config.num_malicious
        g0 = server_update_at(state.params, k_client, params.lr) if needs_g0 else None
        count = {"num_malicious": jnp.sum(malicious.astype(jnp.int32))} if needs_count else {}
        agg, agg_state = aggregator_for(params).update(submitted, state.aggregator_state, key=k_agg,
                                                       server_update=g0, **count)
        if config.mode == "fedsgd":
            new_params = state.params - params.lr * agg
        else:
            new_params = state.params + params.server_lr * agg
        # unusable: NaN/Inf, or a squared norm that overflows (a 1e38 coordinate), as the robust rules define it
        skipped = ~jnp.isfinite(jnp.sum(agg * agg)) | ~jnp.all(jnp.isfinite(new_params))
        if config.on_nonfinite == "raise":
            jax.debug.callback(_raise_if_nonfinite, skipped, state.round)
        if config.on_nonfinite == "skip":
            new_params = jnp.where(skipped, state.params, new_params)
            agg_state = jax.tree_util.tree_map(lambda new, old: jnp.where(skipped, old, new), agg_state,
                                               state.aggregator_state)
        metrics = {"num_malicious": jnp.sum(malicious.astype(jnp.int32)), "aggregate_norm": jnp.linalg.norm(agg),
                   "skipped": skipped}
        return FLState(new_params, agg_state, state.round + 1, key), metrics

    def round_step(state: FLState, params: FLParams):
        rin = client_updates(state, params)
        submitted = rin.updates
        if attacked:
            visible = rin.updates if config.knowledge == "full" else jnp.where(rin.malicious_mask[:, None],
                                                                                rin.updates, 0.0)
            inp = AttackInput(visible, rin.malicious_mask, state.round, global_params=state.params,
                              aggregator_state=state.aggregator_state, aggregator_key=rin.aggregator_key,
                              server_update=rin.server_update, aggregator=aggregator_for(params),
                              full_knowledge=config.knowledge == "full")
            crafted = attack_for(params).craft(rin.attack_key, inp)
            submitted = jnp.where(rin.malicious_mask[:, None], crafted, rin.updates)
        state, metrics = server_step(state, submitted, params)
        return state, (metrics["num_malicious"], metrics["skipped"])

    def block(state: FLState, params: FLParams):
        state, (counts, skipped) = jax.lax.scan(lambda s, _: round_step(s, params), state, None,
                                                length=config.eval_every, unroll=min(config.unroll, config.eval_every))
        logits = model.apply(state.params, data.x_test)
        record = History(state.round, accuracy(logits, data.y_test), cross_entropy(logits, data.y_test), counts[-1],
                         jnp.sum(skipped.astype(jnp.int32)))
        return state, record

    return Simulation(config, model, data, part, aggregator, attack, init, client_updates, server_step, round_step,
                      block, config.rounds // config.eval_every, mesh)


def make_run(config: FLConfig, dataset: Dataset, model: FlatModel,
             mesh: Optional[jax.sharding.Mesh] = None) -> Callable:
    """``run(key, params=None) -> (final_params f32[d], History)``: the whole FL experiment as one pure, jittable
    function.

    ``jax.jit(jax.vmap(run))(keys)`` runs many seeds at once. With ``mesh``, each round's sampled clients are split
    over its ``"clients"`` axis (see ``make_simulation``); ``sharding.vmap_seeds(run, mesh)`` also splits seeds
    over ``"seeds"``. Validation happens here, before tracing.
    """
    return make_simulation(config, dataset, model, mesh).run


def make_attack_sweep(config: FLConfig, dataset: Dataset, model: FlatModel, members,
                      mesh: Optional[jax.sharding.Mesh] = None) -> Callable:
    """``sweep(keys, attack_index) -> History``, jitted (``sweep.lower(keys, attack_index)`` lowers it, as a jitted
    function's ``lower``): one compilation serves every attack in ``members``.

    ``members`` is a sequence of ``(attack_name, hparams)``; the run uses ``attacks.switch`` on
    ``FLParams.attack_index``. ``config.attack`` is ignored; seeds (``keys`` of shape [S]) are vmapped. A scalar
    ``attack_index`` runs one member (only its branch executes: the cheap way to loop over attacks); an int32[A]
    vector vmaps the run over ``FLParams`` and returns Histories with a leading axis A (every branch then executes
    for every member, as ``lax.switch`` does under ``vmap``). With ``mesh``, the S seeds are split over its
    ``"seeds"`` axis (which must divide S) and, where the mesh also has a ``"clients"`` axis, each round's clients
    over that one. Validation happens here, before tracing.

    A concrete ``attack_index`` (a Python or numpy integer, or an integer array) outside ``[0, len(members))``, or
    one that is not an integer (a bool, float or string), raises ``ValueError`` before the call is traced. A traced
    index (``sweep`` called inside ``jit``, ``vmap`` or ``eval_shape``) cannot be checked and is clamped into range
    by ``lax.switch``.
    """
    members = tuple((name, dict(hparams)) for name, hparams in members)
    config = dataclasses.replace(config, attack="switch", attack_hparams={"members": members, "index": 0})
    if mesh is not None:
        sharding.axis_size(mesh, sharding.SEEDS, "make_attack_sweep")
    clients_mesh = mesh if mesh is not None and sharding.CLIENTS in mesh.axis_names else None
    sim = make_simulation(config, dataset, model, clients_mesh)
    run_seeds = sharding.vmap_seeds(sim.run, mesh)

    def over_seeds(keys, params):
        return run_seeds(keys, params)[1]

    def sweep(keys, attack_index):
        index = jnp.asarray(attack_index, jnp.int32)
        params = sim.default_params().replace(attack_index=index)
        if index.ndim == 0:
            return over_seeds(keys, params)
        params = params.replace(lr=jnp.broadcast_to(params.lr, index.shape),
                                server_lr=jnp.broadcast_to(params.server_lr, index.shape))
        return jax.vmap(over_seeds, (None, 0))(keys, params)

    jitted = jax.jit(sweep)

    def checked(keys, attack_index):
        check_index(attack_index, len(members), "attack_index (an index into the sweep's members)")
        return jitted(keys, attack_index)

    def lower(keys, attack_index):
        """The jitted sweep lowered at these arguments (``.compile()`` it), after the same index check."""
        check_index(attack_index, len(members), "attack_index (an index into the sweep's members)")
        return jitted.lower(keys, attack_index)

    checked.lower = lower
    return checked


def run_with_progress(sim: Simulation, keys: jax.Array, chunk_blocks: Optional[int] = None, desc: str = "FL rounds",
                      params: Optional[FLParams] = None, **runner_options):
    """Runs ``sim`` for a batch of seeds ``keys`` (shape [S] of keys) with a tqdm bar over rounds.

    The shared chunked runner (``fedjax_attacks.runner.run_chunked``) runs chunks of ``chunk_blocks`` evaluation
    blocks (default: about 20 chunks); ``runner_options`` (``checkpoint_dir``, ``checkpoint_every``, ``on_chunk``)
    go to it, so a long run saves its state and resumes (a checkpoint of another ``FLConfig`` or ``params`` is
    refused). Returns ``(final_params f32[S, d], History with leading axis S)``, identical to
    ``jax.vmap(sim.run)(keys)``.
    """
    return sim.trainer().run_with_progress(keys, params, chunk=chunk_blocks, desc=desc,
                                           config={"FLConfig": sim.config, "FLParams": params}, **runner_options)


def _with_dataset_classes(config: FLConfig, num_classes: int) -> FLConfig:
    """``label_flip`` relabels ``y -> C - 1 - y``: its ``C`` is the dataset's unless the config sets it (also
    for the members of a ``switch``)."""
    def fill(name, hparams):
        hparams = dict(hparams)
        if name == "label_flip":
            hparams.setdefault("num_classes", num_classes)
        return hparams

    hparams = fill(config.attack, config.attack_hparams)
    if config.attack == "switch" and "members" in hparams:
        hparams["members"] = tuple((name, fill(name, member)) for name, member in hparams["members"])
    return dataclasses.replace(config, attack_hparams=hparams)


def _raise_if_nonfinite(nonfinite, round_index):
    """Host side of ``on_nonfinite="raise"``: stops the run naming the round."""
    if bool(np.any(nonfinite)):
        rounds = np.atleast_1d(np.asarray(round_index))[np.atleast_1d(np.asarray(nonfinite))]
        raise FloatingPointError(f"FL round {int(rounds[0])}: the aggregate is non-finite (NaN/Inf); "
                                 f"FLConfig.on_nonfinite='skip' refuses such rounds")


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
    """``update(theta, x f32[steps, B, ...], y, key, lr) -> f32[d]``: a gradient (FedSGD) or a model delta (FedAvg,
    ``local_steps`` SGD steps at the clients' learning rate ``lr``)."""
    grad = jax.grad(model.loss)
    if config.mode == "fedsgd":
        return lambda params, x, y, key, lr: grad(params, x[0], y[0])

    def fedavg_update(params, x, y, key, lr):
        def local_step(p, batch):
            return p - lr * grad(p, *batch), None

        local, _ = jax.lax.scan(local_step, params, (x, y))
        return local - params

    return fedavg_update
