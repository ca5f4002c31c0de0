"""The model zoo: an MLP, a small CNN for 8x8 digits, LeNet-5 and the seed paper's MNIST CNN."""

from typing import Sequence

from flax import linen as nn

from fedjax_attacks.models.flat import FlatModel, flat_model


class MLP(nn.Module):
    """Flatten -> Dense(hidden) + ReLU per hidden layer -> Dense(num_classes)."""

    num_classes: int
    hidden: Sequence[int] = (64,)

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class DigitsCNN(nn.Module):
    """Small CNN for 8x8 inputs: conv 16 3x3 -> conv 32 3x3 stride 2 -> dense 64 -> dense C."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2))(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(self.num_classes)(x)


class LeNet5(nn.Module):
    """LeNet-5 (conv 6 5x5 -> avg pool -> conv 16 5x5 -> avg pool -> 120 -> 84 -> C), tanh; SAME padding on the
    first conv so 28x28 and 32x32 inputs both work."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Conv(6, (5, 5), padding="SAME")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.tanh(nn.Conv(16, (5, 5), padding="VALID")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.tanh(nn.Dense(120)(x))
        x = nn.tanh(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(x)


class PaperCNN(nn.Module):
    """The seed paper's MNIST CNN: conv 64 8x8/2 (SAME) -> conv 128 6x6/2 -> conv 128 5x5 -> dense C, ReLU."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(64, (8, 8), strides=(2, 2), padding="SAME")(x))
        x = nn.relu(nn.Conv(128, (6, 6), strides=(2, 2), padding="VALID")(x))
        x = nn.relu(nn.Conv(128, (5, 5), padding="VALID")(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


MODELS = {"mlp": MLP, "cnn": DigitsCNN, "lenet5": LeNet5, "paper_cnn": PaperCNN}
_MIN_SIDE = {"mlp": 1, "cnn": 2, "lenet5": 12, "paper_cnn": 27}


def get(name: str, num_classes: int, input_shape: Sequence[int], **kwargs) -> FlatModel:
    """Builds model ``name`` (``mlp``, ``cnn``, ``lenet5``, ``paper_cnn``) for ``input_shape`` = (H, W, C).

    ``kwargs`` go to the module (e.g. ``hidden=(128, 64)`` for the MLP).

    Raises:
      ValueError: unknown name, bad class count, or inputs too small for the architecture.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape}")
    if min(input_shape[:2]) < _MIN_SIDE[name]:
        raise ValueError(f"model {name!r} needs inputs of at least {_MIN_SIDE[name]}x{_MIN_SIDE[name]}, got {input_shape}")
    return flat_model(name, MODELS[name](num_classes=num_classes, **kwargs), input_shape, num_classes)
