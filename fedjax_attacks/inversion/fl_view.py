"""The attacker's view in FL: gradient estimates from the global models it receives (seed paper 000, Alg. 2).

A malicious client only sees the global model ``theta_t`` at the rounds ``t(tau)`` it is sampled. Under
FedSGD, ``theta_{t+1} = theta_t - eta * mean_k g_k(theta_t)``, so between two consecutive sightings

    ``g_bar_tau = (theta_{t(tau-1)} - theta_{t(tau)}) / (eta (t(tau) - t(tau-1)))``

is the average over the elapsed rounds of the aggregated client gradients: exactly the mean gradient of the
sampled clients' batches when one round elapsed, an approximation otherwise.
"""

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class InversionTargets:
    """``params: f32[S-1, d]`` (the model each estimate is inverted at, ``theta_{t(tau-1)}``),
    ``grads: f32[S-1, d]`` (``g_bar_tau``) and ``rounds_elapsed: int32[S-1]``."""

    params: jax.Array
    grads: jax.Array
    rounds_elapsed: jax.Array


def gradient_estimate(theta_prev: jax.Array, theta_new: jax.Array, lr: float, rounds_elapsed=1) -> jax.Array:
    """``g_bar = (theta_prev - theta_new) / (lr * rounds_elapsed)``: the aggregated gradient of FedSGD."""
    return (theta_prev - theta_new) / (lr * rounds_elapsed)


def targets_from_snapshots(snapshots: jax.Array, rounds: jax.Array, lr: float) -> InversionTargets:
    """Reconstruction targets from the global models ``snapshots: f32[S, d]`` an attacker received at the
    increasing rounds ``rounds: int[S]`` it was sampled (``S >= 2``).

    Target ``tau`` pairs ``g_bar_tau`` with ``theta_{t(tau-1)}``, the model at which the first of the elapsed
    updates was computed (the paper writes ``theta_{t(tau)}``; the earlier model is the one the gradients
    were taken at, exact for one elapsed round). Jittable; vmap over attackers.
    """
    if snapshots.ndim != 2 or snapshots.shape[0] < 2:
        raise ValueError(f"snapshots must be f32[S, d] with S >= 2, got shape {snapshots.shape}")
    if rounds.shape != snapshots.shape[:1]:
        raise ValueError(f"rounds must be int[{snapshots.shape[0]}], got shape {rounds.shape}")
    elapsed = jnp.diff(rounds).astype(jnp.int32)
    grads = gradient_estimate(snapshots[:-1], snapshots[1:], lr, elapsed[:, None].astype(snapshots.dtype))
    return InversionTargets(params=snapshots[:-1], grads=grads, rounds_elapsed=elapsed)
