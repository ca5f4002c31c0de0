"""From the policy's action to the crafted update (seed paper 000, sec. 4.3, and the reference code's variants).

Every sampled attacker sends the same crafted FedSGD gradient ``u`` (the server applies ``theta <- theta - eta
agg``), found by a local search of ``E`` steps from the global model ``theta_t`` on minibatches of ``B~`` samples
of the learned distribution ``P~``:

* ``"paper"`` ``(gamma, E, lambda)``: ``E`` gradient-ascent steps of size ``eta_a`` on
  ``L(theta) = (1 - lambda) F(theta) + lambda cos(theta_t - theta, g(theta_t))``, ``g(theta_t)`` the mean gradient
  of ``P~`` at ``theta_t``, over ``G`` trajectories whose end points average to ``theta_bar``; the paper sends
  ``gamma (theta_t - theta_bar)``, here divided by ``eta_a`` so that ``gamma = E = 1, lambda = 0`` is the
  reversed gradient ``-grad F`` in the units of an honest gradient. The cosine is taken as 0 (and its gradient
  as 0) at ``theta = theta_t``, where it is undefined, so the first step climbs the loss alone.
* ``"reference"`` ``(eps, E)``: ``E`` SGD steps (descent, size ``eta_a``) give ``theta_E`` and the attackers send
  the model ``theta_t + eps (theta_t - theta_E)``, i.e. ``u = -eps sum_k grad F(theta_k)`` as a gradient.
* ``"fltrust"`` ``(eta_a, E, alpha)``: ``E`` SGD steps of size ``eta_a`` on ``-(1 - alpha) F_own(theta) + alpha
  F_root(theta)`` (climb the loss on ``P~``, stay close to a guessed root set), each followed by rescaling the
  change ``theta_t - theta`` to one server step ``eta ||g0^||`` with ``g0^`` the gradient on the guessed root set;
  the update has FLTrust's norm ``||g0^||``.

``E`` is ``round(action[1])`` clipped to ``[1, max_steps]``; the steps run in a ``fori_loop`` whose trip count is
the traced ``E``.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from fedjax_attacks.rl_attack.config import ActionSpace
from fedjax_attacks.rl_attack.distribution import LearnedData, sample


def make_crafter(model, space: ActionSpace, *, lr: float, attack_lr: float, attack_batch: int,
                 num_trajectories: int = 1, root_guess_size: int = 100) -> Callable:
    """``craft(key, action f32[k], theta_t f32[d], data: LearnedData) -> u f32[d]`` for ``space.kind``.

    ``action`` is what the policy outputs, in ``space.box`` (decoded here with ``space.decode``). ``lr`` is the
    server's eta (FedSGD); ``attack_lr`` the local-search step ``eta_a`` of the ``paper`` and ``reference`` kinds
    (``fltrust`` reads it from the action).
    """
    grad = jax.grad(model.loss)

    def minibatch(key, data: LearnedData, size: int):
        idx = sample(key, data, size)
        return data.x[idx], data.y[idx]

    def steps(action):
        return jnp.clip(jnp.round(action[1]), 1, space.max_steps).astype(jnp.int32)

    def reference(key, action, theta_t, data):
        def body(k, theta):
            return theta - attack_lr * grad(theta, *minibatch(jax.random.fold_in(key, k), data, attack_batch))

        theta_e = jax.lax.fori_loop(0, steps(action), body, theta_t)
        return action[0] * (theta_e - theta_t) / attack_lr

    def paper(key, action, theta_t, data):
        gamma, lam = action[0], action[2]
        k_g, key = jax.random.split(key)
        g_t = grad(theta_t, *minibatch(k_g, data, attack_batch))

        def objective(theta, x, y):
            a = theta_t - theta
            norm2 = jnp.sum(a * a)
            safe = jnp.sqrt(jnp.where(norm2 > 0, norm2, 1.0)) * jnp.maximum(jnp.linalg.norm(g_t), 1e-12)
            cos = jnp.where(norm2 > 0, jnp.vdot(a, g_t, precision=jax.lax.Precision.HIGHEST) / safe, 0.0)
            return (1 - lam) * model.loss(theta, x, y) + lam * cos

        def trajectory(traj_key):
            def body(k, theta):
                batch = minibatch(jax.random.fold_in(traj_key, k), data, attack_batch)
                return theta + attack_lr * jax.grad(objective)(theta, *batch)

            return jax.lax.fori_loop(0, steps(action), body, theta_t)

        theta_bar = jnp.mean(jax.vmap(trajectory)(jax.random.split(key, num_trajectories)), axis=0)
        return gamma * (theta_t - theta_bar) / attack_lr

    def fltrust(key, action, theta_t, data):
        eta_a, alpha = action[0], action[2]
        k_root, key = jax.random.split(key)
        root_x, root_y = minibatch(k_root, data, root_guess_size)
        g0 = grad(theta_t, root_x, root_y)
        radius = lr * jnp.linalg.norm(g0)

        def objective(theta, x, y):
            return -(1 - alpha) * model.loss(theta, x, y) + alpha * model.loss(theta, root_x, root_y)

        def body(k, theta):
            theta = theta - eta_a * jax.grad(objective)(theta, *minibatch(jax.random.fold_in(key, k), data,
                                                                           attack_batch))
            change = theta_t - theta
            norm2 = jnp.sum(change * change)
            return theta_t - jnp.where(norm2 > 0, radius / jnp.sqrt(jnp.where(norm2 > 0, norm2, 1.0)), 0.0) * change

        theta_e = jax.lax.fori_loop(0, steps(action), body, theta_t)
        return (theta_t - theta_e) / lr

    kind = {"reference": reference, "paper": paper, "fltrust": fltrust}[space.kind]

    def craft(key, action, theta_t, data):
        return kind(key, space.decode(jnp.asarray(action, jnp.float32)), theta_t, data)

    return craft
