"""A flax module seen through flat parameter vectors f32[d], the form clients, attacks and aggregators use."""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.flatten_util import ravel_pytree


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy; ``labels`` are int class ids [B] or probability vectors [B, C] (soft labels)."""
    if labels.ndim == logits.ndim:
        return jnp.mean(optax.softmax_cross_entropy(logits, labels))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max logit equals the int label."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


@dataclasses.dataclass(frozen=True)
class FlatModel:
    """A classifier with parameters as one flat vector theta: f32[num_params].

    Attributes:
      name: registry name.
      module: the flax.linen module.
      input_shape: (H, W, C) of one input.
      num_classes: number of output logits.
      num_params: d, the length of theta.
      unravel: f32[d] -> the module's parameter pytree.
      init_pytree: the parameter pytree of ``init(PRNGKey(0))`` (a template for shapes).
    """

    name: str
    module: nn.Module
    input_shape: tuple
    num_classes: int
    num_params: int
    unravel: Callable
    init_pytree: dict = dataclasses.field(repr=False)

    def init(self, key: jax.Array) -> jax.Array:
        """Fresh flat parameters theta_0 = f32[d] drawn with ``key``."""
        variables = self.module.init(key, jnp.zeros((1, *self.input_shape), jnp.float32))
        return ravel_pytree(variables["params"])[0]

    def apply(self, params: jax.Array, x: jax.Array) -> jax.Array:
        """Logits f32[B, C] for inputs x: f32[B, H, W, C] under flat parameters ``params``."""
        return self.module.apply({"params": self.unravel(params)}, x)

    def loss(self, params: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
        """Mean cross-entropy F(theta) on a batch (int or soft labels)."""
        return cross_entropy(self.apply(params, x), y)

    def accuracy(self, params: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
        """Classification accuracy on a batch with int labels."""
        return accuracy(self.apply(params, x), y)

    def ravel(self, pytree) -> jax.Array:
        """The module's parameter pytree -> flat f32[d]."""
        return ravel_pytree(pytree)[0]


def flat_model(name: str, module: nn.Module, input_shape: tuple, num_classes: int) -> FlatModel:
    """Wraps ``module`` as a ``FlatModel`` (initializes it once to learn the parameter layout)."""
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape), jnp.float32))
    flat, unravel = ravel_pytree(variables["params"])
    return FlatModel(name, module, tuple(input_shape), num_classes, int(flat.size), unravel, variables["params"])
