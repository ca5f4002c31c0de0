"""The generic inversion optimizer: one jitted ``lax.scan`` over steps, vmapped over random restarts.

What is optimized is any pytree of fake data ``z`` (images and label logits for image inversion; fake
(s, a, r, s') tuples for RGIA) and the objective is any ``loss_fn(z, aux) -> f32[]`` where ``aux`` carries
the traced data of one target (the shared gradient, the model parameters it was computed at, ...).
Nothing here knows about images or models.
"""

from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[Any, Any], jax.Array]


@flax.struct.dataclass
class MultiStartResult:
    """Outcome of ``num_restarts`` independent runs on one target.

    best: the restart with the lowest final selection loss (pytree like one ``z``);
    best_loss: its loss; finals: every restart's final ``z`` (leading axis R);
    final_losses: f32[R]; loss_history: f32[R, num_steps] (objective before each step).
    """

    best: Any
    best_loss: jax.Array
    finals: Any
    final_losses: jax.Array
    loss_history: jax.Array


def make_minimizer(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    signed_gradients: bool = False,
    project: Optional[Callable[[Any], Any]] = None,
) -> Callable[[Any, Any], tuple[Any, jax.Array]]:
    """Returns ``minimize(z0, aux) -> (z_final, loss_history f32[num_steps])``.

    Each step: ``l, g = value_and_grad(loss_fn)(z, aux)``; ``g <- sign(g)`` if ``signed_gradients``
    (inverting gradients, Geiping et al. 2020); an ``optimizer`` update; then ``z <- project(z)`` (e.g. the
    box constraint on pixels). The loop is a single ``lax.scan``; the learning-rate schedule lives inside
    ``optimizer``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")

    def minimize(z0, aux):
        def step(carry, _):
            z, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(z, aux)
            if signed_gradients:
                grads = jax.tree_util.tree_map(jnp.sign, grads)
            updates, opt_state = optimizer.update(grads, opt_state, z)
            z = optax.apply_updates(z, updates)
            if project is not None:
                z = project(z)
            return (z, opt_state), loss

        (z, _), history = jax.lax.scan(step, (z0, optimizer.init(z0)), None, length=num_steps)
        return z, history

    return minimize


def make_multistart(
    minimize: Callable[[Any, Any], tuple[Any, jax.Array]],
    init_fn: Callable[[jax.Array], Any],
    select_fn: LossFn,
    num_restarts: int,
) -> Callable[[jax.Array, Any], MultiStartResult]:
    """Returns ``solve(key, aux) -> MultiStartResult``: ``num_restarts`` restarts vmapped, best one kept.

    ``init_fn(key) -> z0`` draws one restart's starting point (one key per restart, split from ``key``);
    ``select_fn(z, aux)`` scores the final iterates (usually the matching loss); non-finite scores never win.
    Vmap ``solve`` again over keys and ``aux`` to attack many targets at once.
    """
    if num_restarts < 1:
        raise ValueError(f"num_restarts must be >= 1, got {num_restarts}")

    def solve(key, aux):
        z0 = jax.vmap(init_fn)(jax.random.split(key, num_restarts))
        finals, history = jax.vmap(minimize, in_axes=(0, None))(z0, aux)
        scores = jax.vmap(select_fn, in_axes=(0, None))(finals, aux)
        scores = jnp.where(jnp.isfinite(scores), scores, jnp.inf)
        i = jnp.argmin(scores)
        best = jax.tree_util.tree_map(lambda leaf: leaf[i], finals)
        return MultiStartResult(best, scores[i], finals, scores, history)

    return solve


def step_decay_schedule(learning_rate: float, num_steps: int) -> optax.Schedule:
    """Inverting gradients' schedule: ``learning_rate`` times 0.1 at 3/8, 5/8 and 7/8 of ``num_steps``."""
    boundaries = {int(num_steps * f): 0.1 for f in (3 / 8, 5 / 8, 7 / 8)}
    return optax.piecewise_constant_schedule(learning_rate, boundaries)
