"""Dataset loaders (on tiny files the tests write) and client partitions."""

import gzip
import os

import numpy as np
import pytest

from fedjax_attacks import data


def _write_idx(path, array, gz):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.tobytes()
    with (gzip.open if gz else open)(path + (".gz" if gz else ""), "wb") as f:
        f.write(payload)


def _write_mnist_like(folder, prefix="", test_word="t10k", n_train=12, n_test=5, side=28, num_classes=10, offset=0):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), (test_word, n_test)):
        images = rng.integers(0, 256, (n, side, side))
        labels = rng.integers(0, num_classes, n) + offset
        _write_idx(os.path.join(folder, f"{prefix}{split}-images-idx3-ubyte"), images, gz=(split == "train"))
        _write_idx(os.path.join(folder, f"{prefix}{split}-labels-idx1-ubyte"), labels, gz=False)
        arrays[split] = (images, labels)
    return arrays


def test_digits_is_stratified_and_normalized():
    ds = data.load("digits")
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_train.dtype == np.float32
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    test_share = np.bincount(ds.y_test, minlength=10) / np.bincount(np.concatenate([ds.y_train, ds.y_test]))
    np.testing.assert_allclose(test_share, 0.2, atol=0.01)
    again = data.load("digits")
    np.testing.assert_array_equal(ds.y_test, again.y_test)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_loader_reads_gzipped_and_raw_files(tmp_path, name):
    arrays = _write_mnist_like(str(tmp_path))
    ds = data.load(name, data_dir=str(tmp_path))
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k"][1])


def test_emnist_letters_transposes_and_shifts_labels(tmp_path):
    arrays = _write_mnist_like(str(tmp_path), prefix="emnist-letters-", test_word="test", num_classes=26, offset=1)
    ds = data.load("emnist_letters", data_dir=str(tmp_path))
    np.testing.assert_allclose(ds.x_train[0, ..., 0], arrays["train"][0][0].T / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, arrays["train"][1] - 1)
    assert ds.num_classes == 26


def test_cifar_binary_loader(tmp_path):
    rng = np.random.default_rng(1)
    records = {}
    for fname in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, 3).astype(np.uint8)
        pixels = rng.integers(0, 256, (3, 3072)).astype(np.uint8)
        np.concatenate([labels[:, None], pixels], axis=1).tofile(tmp_path / fname)
        records[fname] = (labels, pixels)
    ds = data.load("cifar10", data_dir=str(tmp_path))
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    labels, pixels = records["test_batch.bin"]
    np.testing.assert_array_equal(ds.y_test, labels)
    # Channel 0 (red) of image 0 is the first 1024 bytes, row-major.
    np.testing.assert_allclose(ds.x_test[0, :, :, 0], pixels[0, :1024].reshape(32, 32) / 255.0, rtol=1e-6)


def test_missing_and_malformed_files_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        data.load("mnist", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data_dir"):
        data.load("mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("imagenet")
    _write_mnist_like(str(tmp_path))
    with open(tmp_path / "t10k-labels-idx1-ubyte", "wb") as f:
        f.write(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.load("mnist", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data_batch_1.bin"):
        data.load("cifar10", data_dir=str(tmp_path))


@pytest.mark.parametrize("scheme", ["iid", "q_noniid", "dirichlet"])
def test_every_sample_assigned_exactly_once(scheme):
    labels = np.random.default_rng(12345).integers(0, 10, 2000)
    part = data.partition(labels, 50, scheme, seed=3)
    assigned = np.concatenate([part.client_samples(k) for k in range(part.num_clients)])
    np.testing.assert_array_equal(np.sort(assigned), np.arange(2000))
    assert part.indices.shape == (50, part.sizes.max()) and part.sizes.min() >= 1
    same = data.partition(labels, 50, scheme, seed=3)
    np.testing.assert_array_equal(part.indices, same.indices)


def _label_skew(part, labels):
    """Mean over clients of the largest label share."""
    return np.mean([np.bincount(labels[part.client_samples(k)], minlength=10).max() / part.sizes[k]
                    for k in range(part.num_clients)])


def test_label_skew_grows_with_q_and_malicious_spread_over_groups():
    labels = np.random.default_rng(12345).integers(0, 10, 5000)
    skews = [_label_skew(data.partition(labels, 100, "q_noniid", q=q), labels) for q in (0.1, 0.5, 0.9)]
    assert skews[0] < skews[1] < skews[2]
    part = data.partition(labels, 100, "q_noniid", q=1.0)
    # With q = 1 client k only holds labels with k mod 10 == label mod 10: clients 0..19 cover all 10 groups.
    home = {k: set(labels[part.client_samples(k)] % 10) for k in range(20)}
    assert all(home[k] == {k % 10} for k in range(20))
    dirichlet = [_label_skew(data.partition(labels, 50, "dirichlet", alpha=a), labels) for a in (100.0, 0.1)]
    assert dirichlet[0] < dirichlet[1]


def test_partition_rejects_bad_input():
    labels = np.arange(10) % 3
    with pytest.raises(ValueError, match="num_clients"):
        data.partition(labels, 11)
    with pytest.raises(ValueError, match="unknown partition"):
        data.partition(labels, 2, "pathological")
    with pytest.raises(ValueError, match="q must be"):
        data.partition(labels, 3, "q_noniid", q=1.5)
