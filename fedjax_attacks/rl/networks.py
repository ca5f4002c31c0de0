"""Small flax networks and action distributions for PPO, TD3 and DQN.

Continuous actions: every network works in the unit box ``[-1, 1]^d``; ``scale_action`` maps that box affinely
onto the environment's ``Box(low, high)`` so arbitrary bounds work the same way.
"""

from typing import Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "identity": lambda x: x}


def activation(name: str) -> Callable:
    """The activation function called ``name`` (``"tanh"``, ``"relu"`` or ``"identity"``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def scale_action(unit_action: chex.Array, low: chex.Array, high: chex.Array) -> chex.Array:
    """Maps ``unit_action`` from ``[-1, 1]`` (clipped first) onto ``[low, high]``."""
    unit_action = jnp.clip(unit_action, -1.0, 1.0)
    return low + 0.5 * (unit_action + 1.0) * (high - low)


@struct.dataclass
class Categorical:
    """Categorical distribution over ``logits[..., num_actions]``."""

    logits: chex.Array

    def sample(self, key: chex.PRNGKey) -> chex.Array:
        """Draws integer actions."""
        return jax.random.categorical(key, self.logits)

    def log_prob(self, action: chex.Array) -> chex.Array:
        """Log-probability of integer ``action``."""
        log_p = jax.nn.log_softmax(self.logits)
        return jnp.take_along_axis(log_p, action[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def entropy(self) -> chex.Array:
        """Entropy in nats."""
        log_p = jax.nn.log_softmax(self.logits)
        return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)

    def mode(self) -> chex.Array:
        """Most likely action."""
        return jnp.argmax(self.logits, axis=-1)

    def probs(self) -> chex.Array:
        """Action probabilities."""
        return jax.nn.softmax(self.logits)


@struct.dataclass
class DiagGaussian:
    """Diagonal Gaussian with ``mean[..., d]`` and ``log_std[..., d]``."""

    mean: chex.Array
    log_std: chex.Array

    def sample(self, key: chex.PRNGKey) -> chex.Array:
        """Draws real-valued actions."""
        return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape)

    def log_prob(self, action: chex.Array) -> chex.Array:
        """Log-density of ``action``, summed over the action dimensions."""
        z = (action - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z**2 - self.log_std - 0.5 * np.log(2 * np.pi), axis=-1)

    def entropy(self) -> chex.Array:
        """Differential entropy, summed over the action dimensions."""
        return jnp.sum(self.log_std + 0.5 * np.log(2 * np.pi * np.e), axis=-1) * jnp.ones(self.mean.shape[:-1])

    def mode(self) -> chex.Array:
        """The mean."""
        return self.mean


def _dense(features: int, scale: float) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros)


def _policy_head(module: nn.Module, h: chex.Array, num_actions: int, discrete: bool):
    """Actor output layer of ``module``: ``Categorical`` logits, or a unit-box ``DiagGaussian`` whose
    state-independent ``log_std`` parameter starts at 0."""
    out = _dense(num_actions, 0.01)(h)
    if discrete:
        return Categorical(out)
    log_std = module.param("log_std", nn.initializers.zeros, (num_actions,))
    return DiagGaussian(out, jnp.broadcast_to(log_std, out.shape))


class MLP(nn.Module):
    """The one MLP of the RL engine (PPO/TD3/DQN torsos, policy-gradient policies, RGIA's transition models):
    hidden layers with the given activation, then optionally an output layer of width ``out`` with
    ``output_activation``.

    ``orthogonal_init``: orthogonal weights (gain sqrt 2 for hidden layers, 1 for the output), as CleanRL and
    PureJaxRL; False keeps flax's default (LeCun normal), as the policy-gradient papers' PyTorch-like policies.
    """

    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"
    out: int | None = None
    output_activation: str = "identity"
    orthogonal_init: bool = True

    @nn.compact
    def __call__(self, x):
        act = activation(self.activation)
        dense = (lambda width, gain: _dense(width, gain)) if self.orthogonal_init else (
            lambda width, gain: nn.Dense(width))
        for width in self.hidden:
            x = act(dense(width, np.sqrt(2))(x))
        if self.out is not None:
            x = activation(self.output_activation)(dense(self.out, 1.0)(x))
        return x


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (CleanRL / PureJaxRL PPO): ``obs -> (distribution, value)``.

    Discrete: ``Categorical`` over ``num_actions``. Continuous: ``DiagGaussian`` in the unit box with a
    state-independent learned ``log_std`` (initialised at 0).
    """

    num_actions: int
    discrete: bool
    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs):
        dist = _policy_head(self, MLP(self.hidden, self.activation)(obs), self.num_actions, self.discrete)
        value = _dense(1, 1.0)(MLP(self.hidden, self.activation)(obs))[..., 0]
        return dist, value


class ConvActorCritic(nn.Module):
    """Conv torso shared by actor and critic heads, for image observations ``[..., H, W, C]``.

    For gymnax MinAtar (``Breakout-MinAtar``: 10x10xC) and stacked Atari-style frames in SleeperNets. The torso
    follows MinAtar's networks: one ``kernel x kernel`` convolution per entry of ``channels`` (stride 1,
    ``'VALID'`` padding), flattened, then ``hidden`` dense layers; observations are cast to float32 and any
    number of leading batch axes works. Heads as in ``ActorCritic``.
    """

    num_actions: int
    discrete: bool
    channels: Sequence[int] = (16, 32)
    kernel: int = 3
    hidden: Sequence[int] = (256,)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        batch_shape = obs.shape[:-3]
        x = obs.reshape((-1,) + obs.shape[-3:]).astype(jnp.float32)
        for i, features in enumerate(self.channels):
            x = activation(self.activation)(PatchConv(features, self.kernel, name=f"Conv_{i}")(x))
        h = MLP(self.hidden, self.activation)(x.reshape(batch_shape + (-1,)))
        return _policy_head(self, h, self.num_actions, self.discrete), _dense(1, 1.0)(h)[..., 0]


class QNetwork(nn.Module):
    """``obs -> Q[..., num_actions]`` for DQN."""

    num_actions: int
    hidden: Sequence[int] = (120, 84)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        return nn.Dense(self.num_actions)(MLP(self.hidden, self.activation)(obs))


class DeterministicActor(nn.Module):
    """``obs -> tanh(z)`` in the unit box ``[-1, 1]^action_dim`` (TD3 actor); ``return_preactivation=True``
    returns ``(tanh(z), z)``."""

    action_dim: int
    hidden: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs, return_preactivation: bool = False):
        h = obs
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        z = nn.Dense(self.action_dim)(h)
        return (nn.tanh(z), z) if return_preactivation else nn.tanh(z)


class TwinCritic(nn.Module):
    """Two independent ``Q(obs, unit_action)`` heads (TD3): returns ``f32[2, ...]``."""

    hidden: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], axis=-1)
        qs = []
        for _ in range(2):
            h = x
            for width in self.hidden:
                h = nn.relu(nn.Dense(width)(h))
            qs.append(nn.Dense(1)(h)[..., 0])
        return jnp.stack(qs)


class PatchConv(nn.Module):
    """Stride-1 ``'VALID'`` convolution as patches times a matrix, with ``nn.Conv``'s parameters.

    Same ``kernel`` ``[k, k, C_in, features]`` (orthogonal init, scale sqrt 2) and ``bias`` as ``nn.Conv``, same
    output. Written as im2col + matmul because XLA's CPU backend computes ``nn.Conv``'s kernel gradient inside
    a ``lax.scan`` (every PPO update) about 15x slower than outside it; the matmul form has no such cliff
    (PPO on Breakout-MinAtar: 5x more env steps/s on a 2-core CPU).
    """

    features: int
    kernel: int = 3

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.orthogonal(np.sqrt(2)),
                            (self.kernel, self.kernel, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        patches = jax.lax.conv_general_dilated_patches(  # [..., H', W', C_in * k * k], ordered (C_in, kh, kw)
            x, (self.kernel, self.kernel), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        matrix = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, self.features)
        return patches @ matrix + bias
