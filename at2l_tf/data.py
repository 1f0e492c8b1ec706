"""Datasets of the paper as `tf.data` pipelines of one shape.

Every dataset yields `(image, label)` with `image` a float32 tensor in [0, 1] of
shape `spec.image_shape` and `label` an int64 class index:

* `mnist`: the MNIST copy shipped inside the package (`at2l_tf/resources/mnist`),
  verified against its SHA-256 checksums on load, so the main job runs with no
  network. 60,000 train / 10,000 test images; the last `validation_size`
  (default 5,000) training images form the validation split so that the test
  split stays untouched for final numbers.
* `cifar10`: through TFDS, the last `validation_size` training images as validation.
* `cats_vs_dogs`: through TFDS. Upstream has only a train split, so it is sliced
  80% / 10% / 10% into train / validation / test with TFDS split slicing;
  images are resized to `image_size` x `image_size`; label 0 = cat, 1 = dog.
* `image_folder`: a folder of class subfolders (`image_dir`), see `at2l_tf.image_folder`.

The TFDS datasets go through TFDS's own builders, as `tfds.load` does: the
first use downloads the upstream archive into `data_dir` (checksums as TFDS
registers them), generates the TFDS files and caches them there; later uses
read the cache without network. Split sizes are the prepared dataset's own
(`builder.info.splits`). A failure is one `DatasetError` line naming its real
cause: a Python module TFDS needs and cannot import (with the pip command), the
URL that could not be downloaded (with how to prepare the data elsewhere:
`tfds build NAME --data_dir=DIR`), a download with the wrong checksum, or a
data directory that cannot be written. `tests/test_tfds_builders.py` runs the
real builders on small archives in the upstream layouts, served over HTTP.

MNIST is read with NumPy rather than TFDS because TFDS would need to download
it; the IDX format is four lines of parsing.
"""

import dataclasses
import functools
import gzip
import hashlib
import importlib.resources
import os

import numpy as np
import tensorflow as tf

from at2l_tf import image_folder
from at2l_tf.errors import DatasetError

SPLITS = ("train", "validation", "test")
DEFAULT_VALIDATION_SIZE = 5000
DEFAULT_IMAGE_SIZE = 64  # Cats vs Dogs side length; small enough for a CPU.


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset.

    Attributes:
        name: registry name.
        num_classes: number of labels.
        image_shape: `(height, width, channels)` of one image.
        default_eps: L-inf radius used when `--eps` is not given.
        default_model: model registry name used when `--model` is not given.
    """

    name: str
    num_classes: int
    image_shape: tuple
    default_eps: float
    default_model: str


def get_spec(name, image_size=DEFAULT_IMAGE_SIZE, image_dir=None):
    """Returns the `DatasetSpec` of `name` (`image_folder`: of the folder `image_dir`).

    Raises:
        DatasetError: if `name` is not a known dataset.
    """
    if name == image_folder.NAME:
        return image_folder.get_spec(image_dir, image_size)
    if name == "mnist":
        return DatasetSpec("mnist", 10, (28, 28, 1), 0.3, "mnist_small")
    if name == "cifar10":
        return DatasetSpec("cifar10", 10, (32, 32, 3), 8 / 255, "cifar10_small")
    if name == "cats_vs_dogs":
        if image_size < 8:
            raise DatasetError(
                f"image_size must be >= 8, received image_size={image_size}"
            )
        return DatasetSpec(
            "cats_vs_dogs", 2, (image_size, image_size, 3), 8 / 255, "cats_vs_dogs_cnn"
        )
    raise DatasetError(
        f"unknown dataset {name!r}; known datasets: {', '.join(available_datasets())}"
    )


def available_datasets():
    """Names accepted by `load` and `--dataset`."""
    return ("mnist", "cifar10", "cats_vs_dogs", image_folder.NAME)


# --------------------------------------------------------------------- MNIST

_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


def mnist_dir():
    """Directory of the shipped MNIST IDX files (inside the installed package)."""
    return str(importlib.resources.files("at2l_tf") / "resources" / "mnist")


def _expected_checksums(directory):
    sums = {}
    with open(os.path.join(directory, "SHA256SUMS")) as f:
        for line in f:
            if line.strip():
                digest, fname = line.split()
                sums[fname] = digest
    return sums


def _read_idx(path, expected_sha256):
    with open(path, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected_sha256:
        raise DatasetError(
            f"MNIST file {path} is corrupted: SHA-256 {digest} does not match "
            f"{expected_sha256}; reinstall at2l_tf or restore the file"
        )
    data = gzip.decompress(raw)
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=4)
def _mnist_part(part, directory):
    sums = _expected_checksums(directory)
    images_f = _MNIST_FILES[(part, "images")]
    labels_f = _MNIST_FILES[(part, "labels")]
    images = _read_idx(os.path.join(directory, images_f), sums[images_f])
    labels = _read_idx(os.path.join(directory, labels_f), sums[labels_f])
    return images[..., None], labels.astype(np.int64)


def load_mnist_arrays(split, validation_size=DEFAULT_VALIDATION_SIZE, directory=None):
    """Returns MNIST `split` as uint8 images `(n, 28, 28, 1)` and int64 labels.

    Args:
        split: one of `train`, `validation`, `test`.
        validation_size: number of examples, taken from the end of the 60,000
            training images, that form `validation` and are removed from `train`.
        directory: where the IDX files and `SHA256SUMS` are; default the copy
            shipped with the package.

    Raises:
        DatasetError: on an unknown split, a bad `validation_size`, or a file
            whose checksum does not match.
    """
    directory = directory or mnist_dir()
    _check_split(split)
    if not 0 <= validation_size < 60000:
        raise DatasetError(
            f"validation_size must be in [0, 60000), received validation_size={validation_size}"
        )
    if split == "test":
        return _mnist_part("test", directory)
    images, labels = _mnist_part("train", directory)
    cut = 60000 - validation_size
    if split == "train":
        return images[:cut], labels[:cut]
    if validation_size == 0:
        raise DatasetError("the validation split is empty: validation_size=0")
    return images[cut:], labels[cut:]


# ---------------------------------------------------------------------- TFDS


def _tfds_split(name, split, validation_size, splits):
    """The TFDS split string of `split`.

    Args:
        name: `cifar10` or `cats_vs_dogs`.
        split: `train`, `validation` or `test`.
        validation_size: CIFAR-10 training examples, from the end of TFDS's
            `train`, that form `validation` (Cats vs Dogs is sliced by percent).
        splits: the prepared dataset's `builder.info.splits`; read only for
            CIFAR-10's `train` and `validation` (TFDS's `mock_data` leaves it empty).

    Raises:
        DatasetError: if `validation_size` is not in [0, CIFAR-10's training
            examples), or is 0 for `validation`.
    """
    if name == "cats_vs_dogs":
        return {"train": "train[:80%]", "validation": "train[80%:90%]", "test": "train[90%:]"}[
            split
        ]
    if split == "test":
        return "test"
    num_train = splits["train"].num_examples
    if not 0 <= validation_size < num_train:
        raise DatasetError(
            f"validation_size must be in [0, {num_train}) ({name} has {num_train} training "
            f"examples), received validation_size={validation_size}"
        )
    cut = num_train - validation_size
    if split == "train":
        return f"train[:{cut}]"
    if validation_size == 0:
        raise DatasetError("the validation split is empty: validation_size=0")
    return f"train[{cut}:]"


_PREPARE_ELSEWHERE = (
    "prepare it on a machine with network with `tfds build {name} --data_dir=DIR`, "
    "copy DIR here and pass --data_dir=DIR"
)


def _root_cause(error):
    """The innermost exception of `error`'s chain (the socket error under requests')."""
    seen = {id(error)}
    while (nxt := error.__cause__ or error.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        error = nxt
    return error


def _one_line(text):
    """`text` on one line: its lines joined by "; " (by a space after a colon)."""
    out = ""
    for line in (line.strip() for line in str(text).splitlines() if line.strip()):
        out += ("" if not out else " " if out.endswith(":") else "; ") + line
    return out


def _missing_module(name, error):
    """The `DatasetError` of an `ImportError` raised while TFDS prepares `name`."""
    if error.name is None:  # "cannot import name X from Y": a broken install, not a missing one.
        return DatasetError(f"cannot prepare {name}: TFDS failed to import: {_one_line(error)}")
    module = error.name.split(".")[0]
    return DatasetError(
        f"cannot prepare {name}: TFDS needs the Python module {module!r}, which is not "
        f"installed; install it with `pip install {module}`"
    )


def _prepared_builder(name, data_dir):
    """TFDS's builder of `name`, downloaded and prepared in `data_dir` if it was not.

    What `tfds.load` does before reading, with the errors a user can meet
    turned into one line; any other error propagates unchanged.

    Raises:
        DatasetError: naming the cause: a module TFDS cannot import (TFDS 4.9
            imports `importlib_resources` but declares it only for Python < 3.9,
            tensorflow/datasets#11212; setup.py requires it), a URL that cannot
            be downloaded, a download with the wrong checksum, or a data
            directory that cannot be written.
    """
    where = data_dir or "the default TFDS data dir (~/tensorflow_datasets)"
    try:
        # Imported lazily: slow, and MNIST needs none of it.
        import requests  # TFDS downloads with it and lets its errors through.
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
    except ImportError as e:
        raise _missing_module(name, e) from e
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
    except ImportError as e:  # TFDS imports some modules lazily, on first use.
        raise _missing_module(name, e) from e
    except requests.RequestException as e:  # Before OSError: these are OSErrors too.
        url = e.request.url if e.request is not None else "the download"
        raise DatasetError(
            f"{name} is not prepared in {where} and {url} could not be downloaded: "
            f"{_one_line(_root_cause(e))}; {_PREPARE_ELSEWHERE.format(name=name)}"
        ) from e
    except tfds.download.DownloadError as e:  # An HTTP status other than 200, with the URL.
        raise DatasetError(
            f"{name} is not prepared in {where} and could not be downloaded: {_one_line(e)}; "
            f"{_PREPARE_ELSEWHERE.format(name=name)}"
        ) from e
    except NonMatchingChecksumError as e:  # Names the URL, the file and both checksums.
        raise DatasetError(f"cannot prepare {name}: {_one_line(e)}") from e
    except OSError as e:  # The data directory: missing permissions, a full disk.
        raise DatasetError(f"cannot prepare {name} in {where}: {_one_line(e)}") from e
    return builder


def _load_tfds(name, split, data_dir, validation_size):
    builder = _prepared_builder(name, data_dir)
    tfds_split = _tfds_split(name, split, validation_size, builder.info.splits)
    return builder.as_dataset(split=tfds_split, as_supervised=True, shuffle_files=False)


# ------------------------------------------------------------------ pipeline


def load(
    name,
    split,
    *,
    data_dir=None,
    validation_size=DEFAULT_VALIDATION_SIZE,
    image_size=DEFAULT_IMAGE_SIZE,
    max_examples=None,
    image_dir=None,
):
    """Loads one split as an unbatched dataset of `(float32 image in [0, 1], int64 label)`.

    Args:
        name: dataset name, see `available_datasets()`.
        split: `train`, `validation` or `test`.
        data_dir: TFDS data directory (ignored for the shipped MNIST).
        validation_size: examples moved from train to validation (MNIST, CIFAR-10).
        image_size: square side of Cats vs Dogs images after resizing.
        max_examples: keep only the first `max_examples` examples (quick runs).
        image_dir: the folder of class subfolders of `image_folder` (`at2l_tf.image_folder`).

    Returns:
        A `tf.data.Dataset`; images have shape `get_spec(name, image_size).image_shape`.
    """
    spec = get_spec(name, image_size, image_dir)
    _check_split(split)
    if max_examples is not None and max_examples < 1:
        raise DatasetError(f"max_examples must be >= 1, received max_examples={max_examples}")
    if name == "mnist":
        images, labels = load_mnist_arrays(split, validation_size)
        if max_examples is not None:
            images, labels = images[:max_examples], labels[:max_examples]
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
    elif name == image_folder.NAME:
        ds = image_folder.load(image_dir, split, spec.image_shape[0], max_examples)
    else:
        ds = _load_tfds(name, split, data_dir, validation_size)
        if max_examples is not None:
            ds = ds.take(max_examples)
        if name == "cats_vs_dogs":
            side = spec.image_shape[0]

            def _resize(image, label):
                # Resized back to uint8 so that the cache stays 4x smaller.
                image = tf.image.resize(image, (side, side), antialias=True)
                return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), label

            ds = ds.map(_resize, num_parallel_calls=tf.data.AUTOTUNE)

    def _to_float(image, label):
        image = tf.ensure_shape(tf.cast(image, tf.float32) / 255.0, spec.image_shape)
        return image, tf.cast(label, tf.int64)

    return ds.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)


def make_pipeline(
    ds, *, batch_size, shuffle=False, seed=0, cache=True, drop_remainder=False, shuffle_buffer=10000
):
    """Caches, shuffles (seeded, reshuffled each epoch), batches and prefetches `ds`.

    Args:
        ds: an unbatched dataset from `load`.
        batch_size: examples per batch (>= 1).
        shuffle: shuffle with `seed` before batching.
        cache: cache decoded examples in memory (all datasets here fit).
        drop_remainder: drop the last partial batch (training: triplets need
            at least two examples and fixed shapes avoid retracing).
    """
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, received batch_size={batch_size}")
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _check_split(split):
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
