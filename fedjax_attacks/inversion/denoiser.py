"""The denoising autoencoder of distribution learning (seed paper 000, sec. 4.2; Vincent et al. 2008).

Inverting-gradients reconstructions are noisy; the attackers train a small convolutional autoencoder on
pairs (their clean images + Gaussian noise of std ``noise_std`` -> clean images) and apply it to the
reconstructions. The learned distribution ``P~`` is then the denoised reconstructions plus their own data.
"""

from typing import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax


class ConvAutoencoder(nn.Module):
    """Conv encoder (stride 2 halves H, W) and transposed-conv decoder; sigmoid output in [0, 1].

    Works for any even H and W (8x8 digits, 28x28 MNIST) and any channel count.
    """

    features: Sequence[int] = (16, 32)

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        h = nn.relu(nn.Conv(self.features[0], (3, 3))(x))
        h = nn.relu(nn.Conv(self.features[1], (3, 3), strides=(2, 2))(h))
        h = nn.relu(nn.ConvTranspose(self.features[0], (3, 3), strides=(2, 2))(h))
        return nn.sigmoid(nn.Conv(channels, (3, 3))(h))


@flax.struct.dataclass
class Denoiser:
    """A trained autoencoder: ``denoiser(x)`` maps images in [0, 1] to denoised images of the same shape."""

    params: dict
    module: ConvAutoencoder = flax.struct.field(pytree_node=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.module.apply({"params": self.params}, x)


def train_denoiser(
    key: jax.Array,
    clean_x: jax.Array,
    *,
    noise_std: float = 0.3,
    num_steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    features: Sequence[int] = (16, 32),
) -> Denoiser:
    """Trains ``ConvAutoencoder`` with Adam to minimize ``||AE(clip(x + noise_std * eps, 0, 1)) - x||^2`` on
    random minibatches of ``clean_x: f32[N, H, W, C]`` (the attackers' data), in one jitted ``lax.scan``."""
    if clean_x.ndim != 4 or clean_x.shape[1] % 2 or clean_x.shape[2] % 2:
        raise ValueError(f"clean_x must be f32[N, H, W, C] with even H and W, got {clean_x.shape}")
    if noise_std < 0 or num_steps < 1 or batch_size < 1:
        raise ValueError("noise_std must be >= 0 and num_steps, batch_size >= 1")
    module = ConvAutoencoder(tuple(features))
    k_init, k_train = jax.random.split(key)
    params = module.init(k_init, clean_x[:1])["params"]
    optimizer = optax.adam(learning_rate)

    def loss(p, noisy, clean):
        return jnp.mean(jnp.square(module.apply({"params": p}, noisy) - clean))

    @jax.jit
    def train(params, key, data):
        def step(carry, k):
            p, opt_state = carry
            k_idx, k_noise = jax.random.split(k)
            clean = data[jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])]
            noisy = jnp.clip(clean + noise_std * jax.random.normal(k_noise, clean.shape), 0.0, 1.0)
            grads = jax.grad(loss)(p, noisy, clean)
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), None

        (p, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, num_steps))
        return p

    return Denoiser(params=train(params, k_train, jnp.asarray(clean_x)), module=module)


def learned_distribution(
    recon_x: jax.Array, recon_labels: jax.Array, own_x: jax.Array, own_y: jax.Array, denoiser=None
) -> tuple[jax.Array, jax.Array]:
    """The attackers' estimate ``P~``: (denoised) reconstructions ``recon_x: f32[R, H, W, C]`` with their
    labels, concatenated with the attackers' own ``(own_x, own_y)``. Returns ``(x, y)``."""
    if denoiser is not None:
        recon_x = denoiser(recon_x)
    x = jnp.concatenate([recon_x, own_x.astype(recon_x.dtype)])
    y = jnp.concatenate([recon_labels.astype(jnp.int32), own_y.astype(jnp.int32)])
    return x, y
