import os
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf

from at2l_tf import data
from at2l_tf.errors import DatasetError

MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _count(ds):
    return sum(1 for _ in ds)


def test_mnist_split_sizes_and_published_test_label_counts():
    sizes = {s: len(data.load_mnist_arrays(s)[1]) for s in data.SPLITS}
    assert sizes == {"train": 55000, "validation": 5000, "test": 10000}
    _, labels = data.load_mnist_arrays("test")
    assert np.bincount(labels).tolist() == MNIST_TEST_LABEL_COUNTS


def test_mnist_validation_is_the_end_of_train_and_disjoint():
    train_x, train_y = data.load_mnist_arrays("train", validation_size=1000)
    val_x, val_y = data.load_mnist_arrays("validation", validation_size=1000)
    full_x, full_y = data.load_mnist_arrays("train", validation_size=0)
    # Validation is the last 1,000 of the 60,000, train exactly the rest:
    # no image is in both (a train split with the right length but the wrong
    # end, e.g. full[1000:], would overlap validation).
    np.testing.assert_array_equal(val_x, full_x[-1000:])
    np.testing.assert_array_equal(val_y, full_y[-1000:])
    np.testing.assert_array_equal(train_x, full_x[:-1000])
    np.testing.assert_array_equal(train_y, full_y[:-1000])
    # By content too: no validation image is also a training image.
    seen = {img.tobytes() for img in train_x}
    assert not any(img.tobytes() in seen for img in val_x)


def test_mnist_pipeline_shape_range_and_cap():
    ds = data.load("mnist", "test", max_examples=300)
    assert _count(ds) == 300
    batches = data.make_pipeline(ds, batch_size=128, drop_remainder=False)
    x, y = next(iter(batches))
    assert x.shape == (128, 28, 28, 1) and x.dtype == tf.float32 and y.dtype == tf.int64
    assert float(tf.reduce_min(x)) >= 0.0 and float(tf.reduce_max(x)) <= 1.0
    assert float(tf.reduce_max(x)) > 0.9  # Scaled to [0, 1], not [0, 1/255].
    assert [len(b[1]) for b in batches] == [128, 128, 44]


def test_shuffle_is_seeded():
    ds = data.load("mnist", "validation", max_examples=256)

    def first_labels(seed):
        batch = next(iter(data.make_pipeline(ds, batch_size=64, shuffle=True, seed=seed)))
        return batch[1].numpy().tolist()

    assert first_labels(1) == first_labels(1)
    assert first_labels(1) != first_labels(2)


def test_corrupted_mnist_file_is_a_clear_error(tmp_path):
    corrupt = tmp_path / "mnist"
    shutil.copytree(data.mnist_dir(), corrupt)
    path = corrupt / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="corrupted.*t10k-labels"):
        data.load_mnist_arrays("test", directory=str(corrupt))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: data.load("svhn", "train"), "unknown dataset 'svhn'.*mnist, cifar10, cats_vs_dogs"),
        (lambda: data.load("mnist", "dev"), "unknown split 'dev'"),
        (lambda: data.load("mnist", "test", max_examples=0), "max_examples=0"),
        (lambda: data.load_mnist_arrays("train", validation_size=60000), "validation_size=60000"),
    ],
)
def test_bad_arguments_name_the_value(call, match):
    with pytest.raises(DatasetError, match=match):
        call()


def test_tfds_split_slicing():
    # Through the real builders, on small archives: tests/test_tfds_builders.py.
    upstream = {"train": types.SimpleNamespace(num_examples=50000)}
    assert data._tfds_split("cats_vs_dogs", "train", 0, {}) == "train[:80%]"
    assert data._tfds_split("cats_vs_dogs", "validation", 0, {}) == "train[80%:90%]"
    assert data._tfds_split("cats_vs_dogs", "test", 0, {}) == "train[90%:]"
    assert data._tfds_split("cifar10", "train", 5000, upstream) == "train[:45000]"
    assert data._tfds_split("cifar10", "validation", 5000, upstream) == "train[45000:]"
    assert data._tfds_split("cifar10", "test", 5000, {}) == "test"
    with pytest.raises(DatasetError, match=r"validation_size must be in \[0, 50000\) .*received validation_size=50000"):
        data._tfds_split("cifar10", "validation", 50000, upstream)
