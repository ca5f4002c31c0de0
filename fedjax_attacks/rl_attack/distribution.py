"""Phase 1, distribution learning (seed paper 000, sec. 4.2, Alg. 2): the attackers' estimate ``P~``.

During the first ``tau_E`` rounds the attackers keep the global model ``theta_t(tau)`` of every round where one of
them is sampled (``Snapshots``, a ring of the latest ``max_targets + 1``). Consecutive sightings give gradient
estimates ``g_bar_tau = (theta_t(tau-1) - theta_t(tau)) / (eta (t(tau) - t(tau-1)))``, each inverted with inverting
gradients (``images_per_round`` images, labels optimised jointly, restarts vmapped) and cleaned by a denoising
autoencoder trained on the attackers' own images plus Gaussian noise. ``P~`` is the reconstructions plus the
attackers' own data, held as a fixed-capacity ``LearnedData`` buffer with masks, so that every variant (RL, RL
without distribution learning, RL0) has the same shapes and the simulator compiles once.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fedjax_attacks import inversion

DISTRIBUTIONS = ("learned", "own", "unlabeled")


@struct.dataclass
class LearnedData:
    """``P~`` as a padded buffer: ``x: f32[N, H, W, C]``, ``y: int32[N]``; ``train: bool[N]`` rows the simulated
    clients and the local search sample from (listed first in ``train_idx: int32[N]``, ``num_train`` of them);
    ``heldout: bool[N]`` rows held out for the reward, of which ``heldout_idx: int32[E]`` (a fixed draw) are the
    ones its loss is measured on."""

    x: jax.Array
    y: jax.Array
    train: jax.Array
    heldout: jax.Array
    heldout_idx: jax.Array
    train_idx: jax.Array
    num_train: jax.Array


@struct.dataclass
class Snapshots:
    """The global models an attacker received: ``params: f32[S, d]`` and ``rounds: int32[S]`` in a ring written
    at ``count % S``; ``count`` sightings so far (int32)."""

    params: jax.Array
    rounds: jax.Array
    count: jax.Array


def init_snapshots(capacity: int, dim: int) -> Snapshots:
    """An empty ring of ``capacity`` snapshots of ``f32[dim]`` models."""
    return Snapshots(jnp.zeros((capacity, dim), jnp.float32), jnp.zeros((capacity,), jnp.int32),
                     jnp.zeros((), jnp.int32))


def record(snaps: Snapshots, theta: jax.Array, round_: jax.Array, sighted: jax.Array) -> Snapshots:
    """Keeps ``theta_t`` (round ``t``) when ``sighted`` (an attacker is sampled in round ``t``); jittable."""
    pos = snaps.count % snaps.params.shape[0]
    params = jnp.where(sighted, snaps.params.at[pos].set(theta), snaps.params)
    rounds = jnp.where(sighted, snaps.rounds.at[pos].set(round_), snaps.rounds)
    return Snapshots(params, rounds, snaps.count + sighted.astype(jnp.int32))


def targets(snaps: Snapshots, lr: float) -> tuple[inversion.InversionTargets, jax.Array]:
    """The ``S - 1`` gradient estimates of consecutive sightings, oldest first, and ``valid: bool[S - 1]``
    (False where fewer than ``S`` sightings happened). Reuses ``inversion.targets_from_snapshots``."""
    capacity = snaps.params.shape[0]
    shift = snaps.count % capacity
    params = jnp.roll(snaps.params, -shift, axis=0)
    rounds = jnp.roll(snaps.rounds, -shift)
    filled = jnp.minimum(snaps.count, capacity)
    rounds = jnp.where(jnp.arange(capacity) >= capacity - filled, rounds, -jnp.arange(capacity, 0, -1))
    tgt = inversion.targets_from_snapshots(params, rounds, lr)
    return tgt, jnp.arange(capacity - 1) >= capacity - filled


def make_reconstructor(model, *, images_per_round: int, num_steps: int, num_restarts: int, learning_rate: float,
                       tv_weight: float, data_range=(0.0, 1.0)):
    """``reconstruct(key, targets) -> (x f32[S-1, B', H, W, C], labels int32[S-1, B'])``: inverting gradients
    (``inversion.inverting_gradients``) on every target, vmapped over targets (restarts vmapped inside)."""
    attack = inversion.inverting_gradients(model, batch_size=images_per_round, num_steps=num_steps,
                                           learning_rate=learning_rate, tv_weight=tv_weight,
                                           num_restarts=num_restarts, labels="joint", data_range=data_range)

    def reconstruct(key, tgt: inversion.InversionTargets):
        keys = jax.random.split(key, tgt.grads.shape[0])
        rec = jax.vmap(attack)(keys, tgt.params, tgt.grads)
        return rec.x, rec.labels

    return reconstruct


@struct.dataclass
class OwnData:
    """The attackers' own data, padded to a fixed capacity: ``x: f32[C, H, W, C']``, ``y: int32[C]`` and
    ``valid: bool[C]`` (padding rows repeat real ones but are never used)."""

    x: jax.Array
    y: jax.Array
    valid: jax.Array


def pad_own(x, y, capacity: int | None = None, multiple: int = 128) -> OwnData:
    """``OwnData`` from host arrays, padded to ``capacity`` rows (default: up to a multiple of ``multiple``), so
    runs with different shards share compiled programs. ``ValueError`` if the data does not fit."""
    n = len(y)
    if capacity is None:
        capacity = -(-max(n, 1) // multiple) * multiple
    if capacity < n:
        raise ValueError(f"RLAttackConfig.own_capacity={capacity} is smaller than the attackers' {n} samples")
    rows = np.resize(np.arange(n), capacity)
    return OwnData(jnp.asarray(x[rows]), jnp.asarray(y[rows], jnp.int32), jnp.asarray(np.arange(capacity) < n))


def assemble(key: jax.Array, recon_x: jax.Array, recon_y: jax.Array, recon_valid: jax.Array, own: OwnData,
             kind: jax.Array, *, heldout_fraction: float, heldout_size: int) -> LearnedData:
    """``P~`` from (denoised) reconstructions ``recon_x: f32[T, B', ...]`` (``recon_valid: bool[T]``) and the
    attackers' ``own`` data, concatenated by ``inversion.learned_distribution`` and masked by ``kind``, an index
    into ``DISTRIBUTIONS`` (traced, so every variant shares one program): ``"learned"`` keeps both, ``"own"`` only
    the attackers' data (RL without distribution learning), ``"unlabeled"`` only the reconstructions (RL0). A
    random ``heldout_fraction`` of the kept rows is held out for the reward (``heldout_size`` of them drawn once
    to measure it on); the rest is ``train``."""
    per_target = recon_x.shape[1]
    flat_x = recon_x.reshape((-1,) + recon_x.shape[2:])
    x, y = inversion.learned_distribution(flat_x, recon_y.reshape(-1), own.x, own.y)
    recon_rows = jnp.concatenate([jnp.repeat(recon_valid, per_target), jnp.zeros_like(own.valid)])
    own_rows = jnp.concatenate([jnp.zeros(flat_x.shape[0], bool), own.valid])
    keep = jnp.stack([recon_rows | own_rows, own_rows, recon_rows])[kind]
    k_split, k_eval = jax.random.split(key)
    held = keep & (jax.random.uniform(k_split, keep.shape) < heldout_fraction)
    train = keep & ~held
    return LearnedData(x=x, y=y, train=train, heldout=held, heldout_idx=sample_mask(k_eval, held, heldout_size),
                       train_idx=jnp.argsort(~train, stable=True).astype(jnp.int32),
                       num_train=jnp.sum(train.astype(jnp.int32)))


def sample_mask(key: jax.Array, mask: jax.Array, num: int) -> jax.Array:
    """``num`` row indices drawn uniformly, with replacement, among the rows where ``mask`` is true."""
    return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf), shape=(num,))


def sample(key: jax.Array, data: LearnedData, num: int) -> jax.Array:
    """``num`` indices of training rows of ``P~``, uniformly with replacement (cheap: one ``randint``)."""
    pos = jax.random.randint(key, (num,), 0, jnp.maximum(data.num_train, 1))
    return data.train_idx[pos]


def heldout_loss(model, params: jax.Array, data: LearnedData) -> jax.Array:
    """Mean cross-entropy of ``theta`` on the held-out rows ``heldout_idx`` of ``P~`` (the reward's ``f``)."""
    return model.loss(params, data.x[data.heldout_idx], data.y[data.heldout_idx])
