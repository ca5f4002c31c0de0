"""Datasets and client partitions.

``load(name, data_dir=None)`` returns a ``Dataset`` (images float32 in [0, 1], NHWC; labels int32).
``digits`` (scikit-learn's 8x8 handwritten digits) is embedded; MNIST, Fashion-MNIST, EMNIST and CIFAR-10 load
from local files. ``partition(...)`` splits the training set over K clients (iid, the q-non-iid scheme of Fang et
al. used by the seed paper, or Dirichlet(alpha)) into a padded, vmappable ``Partition``.
"""

from fedjax_attacks.data.datasets import DATASETS, Dataset, load
from fedjax_attacks.data.partition import Partition, partition

__all__ = ["DATASETS", "Dataset", "Partition", "load", "partition"]
