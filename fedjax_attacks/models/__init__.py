"""Small flax.linen classifiers with a flat-parameter view (``FlatModel``), and ``get(name, ...)``."""

from fedjax_attacks.models.flat import FlatModel, accuracy, cross_entropy
from fedjax_attacks.models.zoo import MODELS, MLP, DigitsCNN, LeNet5, PaperCNN, get

__all__ = ["FlatModel", "MODELS", "MLP", "DigitsCNN", "LeNet5", "PaperCNN", "accuracy", "cross_entropy", "get"]
