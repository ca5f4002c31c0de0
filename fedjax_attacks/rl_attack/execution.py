"""The whole attack on a real FL run: the three phases interleaved with the rounds (seed paper 000, sec. 4.4).

``rl = make_rl_attack(fl_config, rl_config, dataset, model)`` builds, around ``fl.make_simulation``'s split round
(``client_updates`` / ``server_step``), the attackers' side:

* every round, the attackers note whether one of them is sampled; before ``tau_E`` they keep ``theta_t`` of those
  rounds (``distribution.record``) and behave honestly; they always remember the latest model they received;
* ``learn_distribution`` (phase 1, at round ``tau_E``): inverting gradients on the gradient estimates, the
  denoiser (trained on the attackers' images plus Gaussian noise) and the new ``P~``;
* ``learn_policy`` (phase 2, every ``chunk_rounds`` rounds until ``policy_until``): ``policy_iterations``
  simulated rounds per episode of the learner, whose episodes restart from the latest model the attackers received;
* ``block`` (phase 3 from ``tau_E`` on): ``eval_every`` real rounds where the sampled attackers submit what
  ``attack(agent, data).craft`` (an ``attacks.Attack``) makes of the latest policy's action, then a test
  evaluation (an ``fl.History`` row). ``block`` also runs the baselines (``RLAttack.attack_labels``): every
  mode shares one compiled program, the attack being a ``lax.switch`` on an unbatched index.

The attackers' machinery for the three phases that does not depend on the federation's data (``AttackPhases``:
inverting gradients, simulator, learner, crafter) is built once per static setting and shared, with its compiled
programs, by every run of that setting: the learned distribution, the attackers' data, ``M`` and the variant are
traced arguments.

``rl.run(key, mode)`` is the whole schedule as one pure function (a ``lax.scan`` over evaluation blocks whose
phase switches are ``lax.cond`` on the unbatched block index), so ``jax.vmap(rl.run)(keys)`` runs many seeds;
``run_with_progress(rl, keys)`` runs the same schedule from Python with a progress bar and the wall time of every
phase.
"""

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm.auto import tqdm

from fedjax_attacks import attacks, fl, inversion
from fedjax_attacks.attacks.base import AttackInput
from fedjax_attacks.models import accuracy, cross_entropy
from fedjax_attacks.rl_attack import distribution
from fedjax_attacks.rl_attack.actions import make_crafter
from fedjax_attacks.rl_attack.config import ActionSpace, RLAttackConfig
from fedjax_attacks.rl_attack.distribution import DISTRIBUTIONS, LearnedData, OwnData, Snapshots
from fedjax_attacks.rl_attack.policy import Learner, PolicyLearner, make_learner
from fedjax_attacks.rl_attack.simulator import FLSimulator, SimParams, observation
from fedjax_attacks.validation import check_index

RL = "rl"
_MODE_NAME = "mode (an index into RLAttack.attack_labels)"  # how errors name a bad mode


@struct.dataclass
class Attackers:
    """What the attackers know and hold: the ``snapshots`` of phase 1, ``last_seen`` (the latest global model one
    of them received), the initial model ``theta0``, the current ``P~`` (``data``), the policy ``learner`` and
    their PRNG ``key``."""

    snapshots: Snapshots
    last_seen: jax.Array
    theta0: jax.Array
    data: LearnedData
    learner: Learner
    key: jax.Array


@struct.dataclass
class RLState:
    """The real run's ``fl.FLState`` and the ``Attackers``."""

    fl: fl.FLState
    attackers: Attackers


@dataclasses.dataclass(frozen=True)
class AttackPhases:
    """The attackers' three phases for one static setting (model, server rule, action space, ``K``, ``w``, ``B``,
    ``eta``): distribution learning (``distribution_learner``, inverting gradients and the denoiser), policy
    learning (the simulator ``env`` and the ``learner``) and the attack (``craft``). Its functions take the
    data-dependent parts (``P~``, the attackers' data, ``M``, the variant) as traced arguments; ``compiled(name)``
    caches their jitted, seed-vmapped versions so every run of the setting reuses them."""

    config: RLAttackConfig
    model: Any
    space: ActionSpace
    env: FLSimulator
    learner: PolicyLearner
    craft: Callable
    distribution_learner: "DistributionLearner"
    programs: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def sim_params(self, att: Attackers, num_malicious) -> SimParams:
        """The simulator's parameters: ``P~`` and the start model (latest seen, or ``theta0``)."""
        start = att.theta0 if self.config.episode_start == "initial" else att.last_seen
        return SimParams(att.data, start, jnp.asarray(num_malicious, jnp.int32), self.config.horizon)

    def init(self, key, theta0, own: OwnData, num_malicious) -> Attackers:
        """Before round 0: no snapshot, ``P~`` = the attackers' own data, a fresh learner."""
        k_data, k_learner, key = jax.random.split(key, 3)
        cfg = self.config
        empty_x = jnp.zeros((cfg.max_targets, cfg.images_per_round) + own.x.shape[1:], own.x.dtype)
        data = distribution.assemble(k_data, empty_x, jnp.zeros(empty_x.shape[:2], jnp.int32),
                                     jnp.zeros(cfg.max_targets, bool), own, jnp.int32(DISTRIBUTIONS.index("own")),
                                     heldout_fraction=cfg.heldout_fraction, heldout_size=cfg.heldout_size)
        att = Attackers(distribution.init_snapshots(cfg.max_targets + 1, theta0.shape[0]), theta0, theta0, data,
                        None, key)
        return att.replace(learner=self.learner.init(k_learner, self.sim_params(att, num_malicious)))

    def learn_distribution(self, att: Attackers, own: OwnData, kind) -> Attackers:
        """Phase 1 (``DistributionLearner.learn``) on the attackers' snapshots; ``P~`` of variant ``kind``."""
        data, key = self.distribution_learner.learn(att.snapshots, att.key, own, kind)
        return att.replace(data=data, key=key)

    def learn_policy(self, att: Attackers, num_malicious):
        """Phase 2, one chunk: restart the simulated episodes from the current start model and ``P~``, then
        ``policy_iterations`` simulated rounds per episode of learning, then the held-out choice of the deployed
        policy (``PolicyLearner.select``). Returns ``(att, metrics)``: per step, and ``selection`` (the choice and
        the state-dependence diagnostic)."""
        params = self.sim_params(att, num_malicious)
        learner = self.learner.reset(att.learner, params)
        learner, metrics = jax.lax.scan(lambda s, _: self.learner.step(s, params), learner, None, self.policy_steps)
        learner, selection = self.learner.select(learner, params)
        return att.replace(learner=learner), {**metrics, "selection": selection}

    @property
    def policy_steps(self) -> int:
        """Learner steps per chunk (``policy_iterations`` simulated rounds per environment, at least one step)."""
        return max(1, self.config.policy_iterations // self.learner.rounds_per_step)

    def attack(self, policy_params, data: LearnedData) -> attacks.Attack:
        """Phase 3's ``Attack``: ``craft`` feeds ``(theta_t, m_t)`` to the deployed policy ``policy_params`` and
        crafts the update of its action on ``P~``; every sampled attacker sends it."""

        def craft(key, inp: AttackInput):
            obs = observation(inp.global_params[self.env.observed], inp.malicious_mask)
            crafted = self.craft(key, self.learner.act(policy_params, obs), inp.global_params, data)
            return jnp.broadcast_to(crafted, inp.updates.shape)

        return attacks.Attack(name=RL, craft=craft)

    def compiled(self, name: str) -> Callable:
        """``name`` (``init``, ``learn_policy``) jitted and vmapped over seeds (the attackers' state and key
        batched, everything else shared), cached here."""
        if name not in self.programs:
            axes = {"init": (0, 0, None, None), "learn_policy": (0, None)}
            self.programs[name] = jax.jit(jax.vmap(getattr(self, name), in_axes=axes[name]))
        return self.programs[name]


@dataclasses.dataclass(frozen=True)
class DistributionLearner:
    """Phase 1's machinery for one model and inversion setting (shared by every server rule): inverting gradients
    (``reconstruct``) and the denoising autoencoder's training settings. ``learn`` is pure; ``compiled()`` its
    jitted, seed-vmapped version, cached."""

    config: RLAttackConfig
    reconstruct: Callable
    lr: float
    programs: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def learn(self, snapshots: Snapshots, key, own: OwnData, kind):
        """Invert the gradient estimates of ``snapshots``, train the denoiser on the attackers' images plus
        Gaussian noise, denoise, and form ``P~`` (variant ``kind``): ``(LearnedData, next key)``."""
        cfg = self.config
        k_rec, k_pool, k_den, k_data, key = jax.random.split(key, 5)
        targets, valid = distribution.targets(snapshots, self.lr)
        recon_x, recon_y = self.reconstruct(k_rec, targets)
        pool = own.x[distribution.sample_mask(k_pool, own.valid, own.x.shape[0])]  # the attackers' images
        denoiser = inversion.train_denoiser(k_den, pool, noise_std=cfg.noise_std, num_steps=cfg.denoiser_steps,
                                            batch_size=cfg.denoiser_batch)
        recon_x = denoiser(recon_x.reshape((-1,) + recon_x.shape[2:])).reshape(recon_x.shape)
        data = distribution.assemble(k_data, recon_x, recon_y, valid, own, kind,
                                     heldout_fraction=cfg.heldout_fraction, heldout_size=cfg.heldout_size)
        return data, key

    def compiled(self) -> Callable:
        """``learn`` jitted and vmapped over seeds (snapshots and keys batched)."""
        if "learn" not in self.programs:
            self.programs["learn"] = jax.jit(jax.vmap(self.learn, in_axes=(0, 0, None, None)))
        return self.programs["learn"]


_ATTACK_PHASES: dict = {}
_DISTRIBUTION_LEARNERS: dict = {}
_called: dict = {}  # id of a compiled program -> it has run once (so later calls of it do not compile)


def make_distribution_learner(config: RLAttackConfig, model, data_range: tuple, lr: float) -> DistributionLearner:
    """The ``DistributionLearner`` of this model and inversion setting, built on first use."""
    fields = ("images_per_round", "max_targets", "inversion_steps", "inversion_restarts", "inversion_lr",
              "tv_weight", "denoiser_steps", "denoiser_batch", "noise_std", "heldout_fraction", "heldout_size")
    key = (model.name, model.input_shape, model.num_classes, model.num_params, data_range, float(lr),
           tuple(getattr(config, f) for f in fields))
    if key not in _DISTRIBUTION_LEARNERS:
        reconstruct = distribution.make_reconstructor(
            model, images_per_round=config.images_per_round, num_steps=config.inversion_steps,
            num_restarts=config.inversion_restarts, learning_rate=config.inversion_lr, tv_weight=config.tv_weight,
            data_range=data_range)
        _DISTRIBUTION_LEARNERS[key] = DistributionLearner(config, reconstruct, float(lr))
    return _DISTRIBUTION_LEARNERS[key]


def _shared_config(config: RLAttackConfig) -> RLAttackConfig:
    """``config`` without the fields ``AttackPhases`` does not depend on (the schedule, the variant, the attackers'
    data and its padding)."""
    return dataclasses.replace(config, tau_e=1, policy_until=0, chunk_rounds=1, distribution="learned",
                               own_capacity=None, attacker_data=None)


def make_attack_phases(fl_config: fl.FLConfig, config: RLAttackConfig, space: ActionSpace, model, aggregator,
                       data_range: tuple, root_size: int) -> AttackPhases:
    """The ``AttackPhases`` of this static setting, built on first use (the schedule and variant fields of
    ``config`` do not matter to them)."""
    shared = _shared_config(config)
    key = (model.name, model.input_shape, model.num_classes, model.num_params, fl_config.aggregator,
           tuple(sorted(dict(fl_config.aggregator_hparams).items())), space, fl_config.num_clients,
           fl_config.clients_per_round, fl_config.batch_size, float(fl_config.lr), root_size, data_range, shared)
    if key not in _ATTACK_PHASES:
        attack_lr = config.attack_lr or fl_config.lr
        craft = make_crafter(model, space, lr=fl_config.lr, attack_lr=attack_lr, attack_batch=config.attack_batch,
                             num_trajectories=config.num_trajectories, root_guess_size=config.root_guess_size)
        env = FLSimulator(model, aggregator, space, craft, num_clients=fl_config.num_clients,
                          clients_per_round=fl_config.clients_per_round, batch_size=fl_config.batch_size,
                          lr=fl_config.lr, root_size=root_size)
        distribution_learner = make_distribution_learner(config, model, data_range, fl_config.lr)
        _ATTACK_PHASES[key] = AttackPhases(shared, model, space, env, make_learner(shared, env), craft,
                                           distribution_learner)
    return _ATTACK_PHASES[key]


@dataclasses.dataclass(frozen=True)
class RLAttack:
    """The model-based RL attack against one FL run, and the baselines it is compared with (``attack_labels``).

    ``attack_labels`` is ``("none", *baseline labels, "rl")``; ``block(state, mode)`` runs ``eval_every`` real
    rounds under ``attack_labels[mode]`` (baselines attack from round 0, the RL attack from ``tau_E``).

    A concrete ``mode`` (a Python or numpy integer, or a concrete 0-d integer array) outside
    ``[0, len(attack_labels))``, or not an integer, raises ``ValueError`` in ``schedule``, ``block``, ``run``
    and ``run_with_progress``. A traced mode (``block`` inside ``jit``, as in ``compiled("block")``) cannot be
    checked: ``lax.switch`` clamps it into range.
    """

    fl_config: fl.FLConfig
    config: RLAttackConfig
    phases: AttackPhases
    sim: fl.Simulation
    own: OwnData
    attack_labels: tuple
    block: Callable
    programs: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def variant(self, **changes) -> "RLAttack":
        """The same run with ``RLAttackConfig`` fields changed that only the attackers' phases read (e.g.
        ``distribution="own"`` for RL without distribution learning, ``"unlabeled"`` for RL0): shares this run's
        FL simulation and compiled programs. ``ValueError`` for a field the real rounds depend on."""
        config = dataclasses.replace(self.config, **changes)
        config.validate(self.fl_config)
        if (config.tau_e != self.config.tau_e or config.attacker_data != self.config.attacker_data
                or _shared_config(config) != _shared_config(self.config)):
            raise ValueError(f"RLAttack.variant: {sorted(changes)} change the real rounds or the shared AttackPhases; "
                             "build a new attack with make_rl_attack")
        return dataclasses.replace(self, config=config)

    @property
    def rl_index(self) -> int:
        """The index of the RL attack in ``attack_labels``."""
        return len(self.attack_labels) - 1

    @property
    def num_blocks(self) -> int:
        """Evaluation blocks of ``eval_every`` rounds in the run."""
        return self.fl_config.rounds // self.fl_config.eval_every

    @property
    def kind(self) -> jax.Array:
        """The variant (``config.distribution``) as the traced index ``assemble`` takes."""
        return jnp.int32(DISTRIBUTIONS.index(self.config.distribution))

    def init(self, key) -> RLState:
        """Round 0: the FL state (``sim.init``) and the attackers' (``AttackPhases.init``)."""
        k_fl, k_att = jax.random.split(key)
        fl_state = self.sim.init(k_fl)
        return RLState(fl_state, self.phases.init(k_att, fl_state.params, self.own, self.fl_config.num_malicious))

    def learn_distribution(self, state: RLState) -> RLState:
        """Phase 1 on the attackers' snapshots (``AttackPhases.learn_distribution``)."""
        return state.replace(attackers=self.phases.learn_distribution(state.attackers, self.own, self.kind))

    def learn_policy(self, state: RLState):
        """One chunk of phase 2 (``AttackPhases.learn_policy``): ``(state, metrics)``."""
        att, metrics = self.phases.learn_policy(state.attackers, self.fl_config.num_malicious)
        return state.replace(attackers=att), metrics

    def schedule(self, block: int, mode: int) -> dict:
        """What runs before evaluation block ``block`` under ``mode`` (host bools): ``distribution`` (phase 1)
        and ``policy`` (a chunk of phase 2); only the RL mode has them."""
        mode = check_index(mode, len(self.attack_labels), _MODE_NAME, scalar=True)
        start, cfg = block * self.fl_config.eval_every, self.config
        rl = mode == self.rl_index
        return {"distribution": rl and start == cfg.tau_e and cfg.distribution != "own",
                "policy": rl and start % cfg.chunk_rounds == 0 and start < cfg.last_policy_round
                and (cfg.distribution != "unlabeled" or start >= cfg.tau_e)}

    def run(self, key: jax.Array, mode: int | None = None):
        """The whole run under ``attack_labels[mode]`` (default: the RL attack): ``(final RLState, fl.History)``,
        one pure function; jit it, vmap it over keys."""
        mode = self.rl_index if mode is None else check_index(mode, len(self.attack_labels), _MODE_NAME, scalar=True)
        cfg = self.config

        def body(state, block):
            start = block * self.fl_config.eval_every
            if mode == self.rl_index:
                if cfg.distribution != "own":
                    state = jax.lax.cond(start == cfg.tau_e, self.learn_distribution, lambda s: s, state)
                learn = (start % cfg.chunk_rounds == 0) & (start < cfg.last_policy_round)
                if cfg.distribution == "unlabeled":
                    learn = learn & (start >= cfg.tau_e)
                state = jax.lax.cond(learn, lambda s: self.learn_policy(s)[0], lambda s: s, state)
            return self.block(state, jnp.int32(mode))

        return jax.lax.scan(body, self.init(key), jnp.arange(self.num_blocks))

    def compiled(self, name: str) -> Callable:
        """The per-run programs, jitted and vmapped over seeds: ``fl_init`` (``sim.init``) and ``block``
        (state batched, mode shared; the state's buffers are donated)."""
        if name not in self.programs:
            if name == "fl_init":
                self.programs[name] = jax.jit(jax.vmap(self.sim.init))
            else:
                self.programs[name] = jax.jit(jax.vmap(self.block, in_axes=(0, None)), donate_argnums=0)
        return self.programs[name]


def make_rl_attack(fl_config: fl.FLConfig, config: RLAttackConfig, dataset, model,
                   baselines: Sequence[tuple] = ()) -> RLAttack:
    """Validates both configs (before anything is traced) and builds the attack around ``fl.make_simulation``.

    ``fl_config.attack`` is ignored; ``baselines`` is a sequence of ``(label, attack name, hparams)`` run by the
    same program for comparison (modes ``1..len(baselines)``; mode 0 is no attack). The attackers' own data is
    ``attacker_rows``: ``config.attacker_data`` rows of the malicious clients' (ids ``< M``) shards.

    Raises:
      ValueError: naming the field: ``tau_e`` not below the rounds or not a multiple of ``eval_every``,
        ``chunk_rounds`` not a multiple of ``eval_every``, no attackers, an aggregator the simulator cannot mirror,
        an action range with low >= high, a data-poisoning baseline, and everything ``fl.make_simulation`` rejects.
    """
    space = config.validate(fl_config)
    if config.tau_e % fl_config.eval_every:
        raise ValueError(f"RLAttackConfig.tau_e={config.tau_e} must be a multiple of FLConfig.eval_every="
                         f"{fl_config.eval_every} (the attack starts at an evaluation-block boundary)")
    if config.chunk_rounds % fl_config.eval_every:
        raise ValueError(f"RLAttackConfig.chunk_rounds={config.chunk_rounds} must be a multiple of "
                         f"FLConfig.eval_every={fl_config.eval_every}")
    built = [attacks.get(name, **dict(hparams)) for _, name, hparams in baselines]
    for (label, _, _), attack in zip(baselines, built):
        if attack.poisons_data:
            raise ValueError(f"baselines: {label!r} poisons data; only model-poisoning baselines run here")
        if attack.needs_full_knowledge and fl_config.knowledge != "full":
            raise ValueError(f"baselines: {label!r} needs FLConfig.knowledge='full'")
    fl_config = dataclasses.replace(fl_config, attack="none", attack_hparams={})
    sim = fl.make_simulation(fl_config, dataset, model)
    own_rows = attacker_rows(sim.partition, fl_config, config)
    own = distribution.pad_own(dataset.x_train[own_rows], dataset.y_train[own_rows], config.own_capacity)
    data_range = (float(dataset.x_train.min()), float(dataset.x_train.max()))
    root_size = min(fl_config.root_size, len(dataset.y_train))
    phases = make_attack_phases(fl_config, config, space, model, sim.aggregator, data_range, root_size)
    attack_labels = ("none", *(label for label, _, _ in baselines), RL)
    block = _make_block(fl_config, config, sim, phases, built)
    return RLAttack(fl_config, config, phases, sim, own, attack_labels, block)


def attacker_rows(partition, fl_config: fl.FLConfig, config: RLAttackConfig) -> np.ndarray:
    """Indices into the training set of the rows the attackers share: ``config.attacker_data`` of the union of the
    malicious clients' (ids ``< M``) shards, drawn once without replacement with ``partition_seed`` (all of them
    if ``attacker_data`` is ``None`` or at least their number), sorted."""
    rows = np.concatenate([partition.client_samples(k) for k in range(fl_config.num_malicious)])
    if config.attacker_data is None or config.attacker_data >= len(rows):
        return np.sort(rows)
    rng = np.random.default_rng(fl_config.partition_seed)
    return np.sort(rng.choice(rows, config.attacker_data, replace=False))


def _make_block(fl_config: fl.FLConfig, config: RLAttackConfig, sim: fl.Simulation, phases: AttackPhases,
                baselines: Sequence[attacks.Attack]) -> Callable:
    """``block(state, mode) -> (state, fl.History row)``: ``eval_every`` real rounds under ``attack_labels[mode]``."""
    fl_params = sim.default_params()
    rl_index = len(baselines) + 1
    full = fl_config.knowledge == "full"

    def block(state: RLState, mode):
        check_index(mode, rl_index + 1, _MODE_NAME, scalar=True)
        att = state.attackers
        rl_attack = phases.attack(att.learner.deployed, att.data)
        crafts = [lambda key, inp: inp.updates, *(a.craft for a in baselines), rl_attack.craft]

        def real_round(carry, _):
            fl_state, att = carry
            rin = sim.client_updates(fl_state, fl_params)
            sighted = jnp.any(rin.malicious_mask)
            snaps = distribution.record(att.snapshots, rin.global_params, fl_state.round,
                                        sighted & (fl_state.round < config.tau_e))
            att = att.replace(snapshots=snaps, last_seen=jnp.where(sighted, rin.global_params, att.last_seen))
            visible = rin.updates if full else jnp.where(rin.malicious_mask[:, None], rin.updates, 0.0)
            inp = AttackInput(visible, rin.malicious_mask, fl_state.round, global_params=rin.global_params,
                              aggregator_state=fl_state.aggregator_state, aggregator_key=rin.aggregator_key,
                              server_update=rin.server_update, aggregator=sim.aggregator, full_knowledge=full)
            crafted = jax.lax.switch(mode, crafts, rin.attack_key, inp)
            active = (mode != rl_index) | (fl_state.round >= config.tau_e)
            submitted = jnp.where(rin.malicious_mask[:, None] & active, crafted, rin.updates)
            fl_state, metrics = sim.server_step(fl_state, submitted, fl_params)
            return (fl_state, att), (metrics["num_malicious"], metrics["skipped"])

        (fl_state, att), (counts, skipped) = jax.lax.scan(real_round, (state.fl, att), None,
                                                          length=fl_config.eval_every,
                                                          unroll=min(fl_config.unroll, fl_config.eval_every))
        logits = phases.model.apply(fl_state.params, sim.data.x_test)
        record = fl.History(fl_state.round, accuracy(logits, sim.data.y_test),
                            cross_entropy(logits, sim.data.y_test), counts[-1], jnp.sum(skipped.astype(jnp.int32)))
        return RLState(fl_state, att), record

    return block


@dataclasses.dataclass
class RunReport:
    """What ``run_with_progress`` returns: the final state, the ``fl.History`` (leading seed axis), the policy
    learning metrics of every chunk (list of dicts of host arrays ``[seeds, steps]``), wall times per phase in
    seconds (``compile_s``: the part of them spent in first calls, which compile), every call as ``(phase,
    seconds, first call)``, and the simulated and real rounds run per seed."""

    state: Any
    history: fl.History
    policy_metrics: list
    wall_s: dict
    calls: list
    simulated_rounds: int
    real_rounds: int

    def steady_s(self, phase: str) -> float:
        """Seconds spent in ``phase`` by calls that were not the first of their program (no compilation)."""
        return sum(seconds for name, seconds, first in self.calls if name == phase and not first)

    def steady_calls(self, phase: str) -> int:
        """How many calls of ``phase`` ``steady_s`` counts."""
        return sum(1 for name, _, first in self.calls if name == phase and not first)


def run_with_progress(rl: RLAttack, keys: jax.Array, mode: int | None = None, desc: str | None = None,
                      progress: bool = True) -> RunReport:
    """Runs ``rl``'s schedule under ``attack_labels[mode]`` (default RL) for the seeds ``keys`` (vmapped) from
    Python, one evaluation block at a time, with a tqdm bar; the same computation as
    ``jax.vmap(lambda k: rl.run(k, mode))(keys)``. Times each phase separately: ``distribution`` (phase 1),
    ``policy`` (phase 2), ``fl_rounds`` (the real rounds, including the attackers' crafting)."""
    mode = rl.rl_index if mode is None else check_index(mode, len(rl.attack_labels), _MODE_NAME, scalar=True)
    phases = rl.phases
    wall = {"init": 0.0, "distribution": 0.0, "policy": 0.0, "fl_rounds": 0.0, "compile_s": 0.0}
    calls = []

    def timed(name, fn, *args):
        first = not _called.get(id(fn), False)
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        elapsed = time.perf_counter() - start
        _called[id(fn)] = True
        wall[name] += elapsed
        wall["compile_s"] += elapsed if first else 0.0
        calls.append((name, elapsed, first))
        return out

    split = jax.vmap(jax.random.split)(keys)
    fl_state = timed("init", rl.compiled("fl_init"), split[:, 0])
    att = timed("init", phases.compiled("init"), split[:, 1], fl_state.params, rl.own, rl.fl_config.num_malicious)
    state = RLState(fl_state, att)
    history, metrics, simulated = [], [], 0
    label = desc or rl.attack_labels[mode]
    with tqdm(total=rl.fl_config.rounds, desc=label, unit="round", disable=not progress) as bar:
        for b in range(rl.num_blocks):
            plan = rl.schedule(b, mode)
            if plan["distribution"]:
                att = state.attackers
                learn = phases.distribution_learner.compiled()
                data, key = timed("distribution", learn, att.snapshots, att.key, rl.own, rl.kind)
                state = state.replace(attackers=att.replace(data=data, key=key))
            if plan["policy"]:
                att, m = timed("policy", phases.compiled("learn_policy"), state.attackers, rl.fl_config.num_malicious)
                state = state.replace(attackers=att)
                metrics.append(jax.tree.map(np.asarray, m))
                simulated += phases.policy_steps * phases.learner.rounds_per_step * rl.config.num_envs
            state, row = timed("fl_rounds", rl.compiled("block"), state, jnp.int32(mode))
            history.append(row)
            bar.update(rl.fl_config.eval_every)
    history = fl.History(*(jnp.stack(parts, axis=1) for parts in zip(*history)))
    return RunReport(state, history, metrics, wall, calls, simulated, rl.fl_config.rounds)
