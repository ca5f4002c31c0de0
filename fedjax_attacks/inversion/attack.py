"""Gradient inversion of image classifiers: DLG and inverting gradients, vmapped over restarts.

``attack = inverting_gradients(model, batch_size=B)`` returns a jitted
``attack(key, params, g_bar) -> Reconstruction`` that reconstructs the ``B`` images (and labels) whose mean
cross-entropy gradient at ``params`` is ``g_bar``. ``jax.vmap(attack)(keys, params, g_bars)`` attacks many
targets at once; the restarts are vmapped inside.
"""

import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_attacks.inversion import matching
from fedjax_attacks.inversion.optimize import make_minimizer, make_multistart, step_decay_schedule

LABEL_MODES = ("joint", "infer")


@flax.struct.dataclass
class Reconstruction:
    """Result of one attack: the best restart's images ``x: f32[B, H, W, C]``, label distribution
    ``probs: f32[B, K]`` and ``labels: int32[B]``, its matching loss; every restart's ``restart_x``
    (f32[R, B, H, W, C]) and ``restart_losses: f32[R]``; ``loss_history: f32[R, num_steps]``."""

    x: jax.Array
    probs: jax.Array
    labels: jax.Array
    loss: jax.Array
    restart_x: jax.Array
    restart_losses: jax.Array
    loss_history: jax.Array


def dlg(
    model,
    *,
    batch_size: int,
    num_steps: int = 300,
    learning_rate: float = 0.1,
    num_restarts: int = 1,
    labels: str = "joint",
) -> Callable[[jax.Array, jax.Array, jax.Array], Reconstruction]:
    """Deep leakage from gradients (Zhu et al. 2019): minimize ``||grad F(x', y') - g_bar||^2`` over dummy
    images ``x'`` and soft labels ``y' = softmax(logits)`` (``labels='joint'``), or over ``x'`` with the labels
    inferred from the output-bias gradient (``labels='infer'``: iDLG, Zhao et al. 2020).

    Adam with a constant ``learning_rate`` replaces the paper's L-BFGS (robust inside a fixed-length scan);
    images start uniform in [0, 1] and are not boxed.
    """
    _check_learning_rate(learning_rate)
    return _gradient_inversion(
        model, batch_size=batch_size, num_steps=num_steps, num_restarts=num_restarts,
        labels=labels, distance=matching.l2_distance, tv_weight=0.0,
        optimizer=optax.adam(learning_rate), signed_gradients=False, box=None,
    )


def inverting_gradients(
    model,
    *,
    batch_size: int,
    num_steps: int = 1000,
    learning_rate: float = 0.05,
    tv_weight: float = 2e-2,
    num_restarts: int = 1,
    labels: str = "joint",
    data_range: tuple[float, float] = (0.0, 1.0),
) -> Callable[[jax.Array, jax.Array, jax.Array], Reconstruction]:
    """Inverting gradients (Geiping et al. 2020), the attack of the model-based RL attack's distribution
    learning (seed paper 000, sec. 4.2): minimize over the dummy batch ``D_dummy`` of ``B'`` images

        ``1 - cos(grad_theta F_dummy(theta), g_bar) + beta / B' * sum_x TV(x)``

    with Adam on the signed gradient, ``learning_rate`` x0.1 at 3/8, 5/8 and 7/8 of ``num_steps``, pixels
    boxed to ``data_range``; labels optimized jointly as soft labels or inferred (``labels='infer'``).
    ``beta`` is ``tv_weight``. The best restart is chosen by the cosine term alone.
    """
    _check_learning_rate(learning_rate)
    return _gradient_inversion(
        model, batch_size=batch_size, num_steps=num_steps, num_restarts=num_restarts,
        labels=labels, distance=matching.cosine_distance, tv_weight=tv_weight,
        optimizer=optax.adam(step_decay_schedule(learning_rate, num_steps)), signed_gradients=True,
        box=data_range,
    )


def _check_learning_rate(learning_rate) -> None:
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not (
            math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")


def _gradient_inversion(
    model, *, batch_size, num_steps, num_restarts, labels, distance, tv_weight, optimizer,
    signed_gradients, box,
):
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tv_weight < 0:
        raise ValueError(f"tv_weight must be >= 0, got {tv_weight}")
    if box is not None and not box[0] < box[1]:
        raise ValueError(f"data_range must be (low, high) with low < high, got {box}")
    input_shape, num_classes = tuple(model.input_shape), model.num_classes
    bias_idx = matching.output_bias_indices(model) if labels == "infer" else None
    low, high = box if box is not None else (0.0, 1.0)

    def probs_of(z, fixed_probs):
        return jax.nn.softmax(z["y"]) if labels == "joint" else fixed_probs

    def match_loss(z, aux):
        params, g_bar, fixed_probs = aux
        g = matching.soft_label_gradient(model, params, z["x"], probs_of(z, fixed_probs))
        return distance(g, g_bar)

    def loss(z, aux):
        return match_loss(z, aux) + tv_weight * jnp.mean(matching.total_variation(z["x"]))

    def init(key):
        kx, ky = jax.random.split(key)
        z = {"x": jax.random.uniform(kx, (batch_size, *input_shape), minval=low, maxval=high)}
        if labels == "joint":
            z["y"] = jax.random.normal(ky, (batch_size, num_classes))
        return z

    def project(z):
        return {**z, "x": jnp.clip(z["x"], low, high)} if box is not None else z

    minimize = make_minimizer(loss, optimizer, num_steps, signed_gradients=signed_gradients, project=project)
    solve = make_multistart(minimize, init, match_loss, num_restarts)

    @jax.jit
    def attack(key, params, g_bar):
        """Reconstructs the batch behind the shared gradient ``g_bar: f32[d]`` at model ``params: f32[d]``."""
        if params.shape != (model.num_params,) or g_bar.shape != (model.num_params,):
            raise ValueError(f"params and g_bar must be f32[{model.num_params}], got {params.shape}, {g_bar.shape}")
        if labels == "infer":
            inferred = matching.infer_labels(g_bar[bias_idx], batch_size)
            fixed_probs = jax.nn.one_hot(inferred, num_classes)
        else:
            fixed_probs = jnp.zeros((batch_size, num_classes))
        out = solve(key, (params, g_bar, fixed_probs))
        probs = probs_of(out.best, fixed_probs)
        return Reconstruction(
            x=out.best["x"], probs=probs, labels=jnp.argmax(probs, axis=-1).astype(jnp.int32),
            loss=out.best_loss, restart_x=out.finals["x"], restart_losses=out.final_losses,
            loss_history=out.loss_history,
        )

    return attack
